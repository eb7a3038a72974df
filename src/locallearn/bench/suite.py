"""Benchmark suites: a YAML file describing a matrix of cells, expanded at run time.

A suite file (``locallearn/configs/suites/NAME.yaml``, or any path) holds::

    description: one line shown in the report
    kind: train                # what one cell does: train | memory | efficiency
    rules: all                 # "all" = every registered rule (RULES.names() at run time),
                               # or a list; "exclude" removes names from it
    tasks:                     # (data, net) pairs; "depths" repeats an mlp width
      - {data: mnist5k, net: "mlp:500,500"}
      - {data: mnist5k, net: "mlp:1024", depths: [2, 4, 8]}
    seeds: [0, 1, 2]
    options: {epochs: 2}       # TrainConfig fields for every cell (kind-specific ones too)
    rule_options: {ff: {...}}  # per-rule constructor options
    controls: [frozen]         # also run each rule and seed with freeze_blocks=true

A *cell* is one (rule, data, net, seed, options) combination; its key decides
whether a resumed run skips it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from locallearn.errors import UserError

SUITE_KEYS = {"description", "kind", "rules", "exclude", "tasks", "seeds", "options",
              "rule_options", "settings", "controls"}

# Control runs a suite can add beside every cell: name -> options laid over the cell's.
CONTROLS = {"frozen": {"freeze_blocks": True}}


@dataclass(frozen=True)
class Cell:
    """One run of the matrix."""

    kind: str
    rule: str
    data: str
    net: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    rule_options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        opts = json.dumps({"options": self.options, "rule_options": self.rule_options},
                          sort_keys=True, default=str)
        digest = hashlib.sha1(opts.encode()).hexdigest()[:8]
        return f"{self.kind}/{self.rule}/{self.data}/{self.net}/seed{self.seed}/{digest}"

    @property
    def slug(self) -> str:
        """The key as a folder name."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.key.replace("/", "--"))
        return safe[:150]


@dataclass
class Suite:
    name: str
    kind: str
    description: str
    rules: list[str] | str
    tasks: list[dict[str, Any]]
    seeds: list[int]
    options: dict[str, Any]
    rule_options: dict[str, dict[str, Any]]
    exclude: list[str]
    # Kind-wide settings that are not per-cell (e.g. how long to time each cell).
    settings: dict[str, Any]
    # Controls (see CONTROLS) run for every rule, task and seed beside the cell itself.
    controls: list[str] = field(default_factory=list)

    def rule_names(self) -> list[str]:
        from locallearn.rules import RULES

        if self.rules == "all":
            names = RULES.names()
        else:
            names = list(self.rules)
            for n in names:
                RULES.get(n)  # one-line error for a misspelt rule
        return [n for n in names if n not in self.exclude]

    def cells(self) -> list[Cell]:
        out = []
        for task in expand_tasks(self.tasks):
            for rule in self.rule_names():
                for seed in self.seeds:
                    options = dict(self.options, **task.get("options", {}))
                    for extra in [{}] + [CONTROLS[c] for c in self.controls]:
                        out.append(Cell(self.kind, rule, task["data"], task["net"], int(seed),
                                        dict(options, **extra),
                                        dict(self.rule_options.get(rule, {}))))
        return out


def expand_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"net": "mlp:1024", "depths": [2, 4]}`` -> ``mlp:1024,1024`` and ``mlp:1024 x 4``."""
    out = []
    for task in tasks:
        depths = task.get("depths")
        if depths is None:
            out.append(task)
            continue
        family, _, width = task["net"].partition(":")
        for d in depths:
            out.append({**{k: v for k, v in task.items() if k != "depths"},
                        "net": f"{family}:{','.join([width] * int(d))}"})
    return out


def builtin_suites() -> list[str]:
    folder = resources.files("locallearn") / "configs" / "suites"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name (``smoke``) or a suite file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"suite file {path} not found")
        text, name = path.read_text(), path.stem
    else:
        if name_or_path not in builtin_suites():
            raise UserError(f"unknown suite {name_or_path!r}; built-in suites: "
                            f"{', '.join(builtin_suites())} (or pass a path to a YAML file)")
        text = (resources.files("locallearn") / "configs" / "suites"
                / f"{name_or_path}.yaml").read_text()
        name = name_or_path
    return parse_suite(name, text)


def parse_suite(name: str, text: str) -> Suite:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"suite {name}: YAML does not parse: "
                        f"{str(exc).strip().splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"suite {name}: expected a mapping of settings")
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise UserError(f"suite {name}: unknown key {sorted(unknown)[0]!r}; "
                        f"known: {', '.join(sorted(SUITE_KEYS))}")
    from locallearn.bench.cells import CELL_KINDS

    kind = raw.get("kind", "train")
    CELL_KINDS.get(kind)
    tasks = raw.get("tasks") or []
    if not tasks or not all(isinstance(t, dict) and "data" in t and "net" in t for t in tasks):
        raise UserError(f"suite {name}: 'tasks' must be a list of {{data: ..., net: ...}}")
    controls = list(raw.get("controls") or [])
    for c in controls:
        if c not in CONTROLS:
            raise UserError(f"suite {name}: unknown control {c!r}; known: "
                            f"{', '.join(sorted(CONTROLS))}")
    rules = raw.get("rules", "all")
    if rules != "all" and not isinstance(rules, list):
        raise UserError(f"suite {name}: 'rules' must be 'all' or a list of rule names")
    return Suite(name=name, kind=kind, description=str(raw.get("description", "")),
                 rules=rules, tasks=tasks, seeds=list(raw.get("seeds", [0])),
                 options=dict(raw.get("options") or {}),
                 rule_options=dict(raw.get("rule_options") or {}),
                 exclude=list(raw.get("exclude") or []),
                 settings=dict(raw.get("settings") or {}), controls=controls)
