"""Run a suite's cells, skipping those already done, appending rows to ``results.jsonl``.

Layout of the output folder::

    DIR/results.jsonl   one row per finished cell (status ok / skipped / error)
    DIR/suite.yaml      the suite as run (so `locallearn report DIR` knows it)
    DIR/runs/<cell>/    run directory of train cells (summary.json, metrics.jsonl)
    DIR/report.md, DIR/report.html

A cell whose key has an ``ok`` or ``skipped`` row is not run again; an ``error``
row is retried on the next run. Rows are appended and flushed one by one, so an
interrupted benchmark loses at most the cell in progress.
"""

from __future__ import annotations

import datetime
import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from locallearn.bench.cells import CELL_KINDS
from locallearn.bench.suite import Cell, Suite
from locallearn.errors import UserError
from locallearn.measure import hardware_info
from locallearn.report.provenance import command_line, load_average, source_commit

DONE = ("ok", "skipped")


def read_results(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / "results.jsonl"
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # The last line cut by a kill mid-write: that cell simply runs again.
            if n != len(lines):
                raise UserError(f"{path} line {n} is not JSON; delete that line or the "
                                f"file") from None
    return rows


def _drop_cut_last_line(path: Path) -> None:
    """Remove a last line left half-written by a kill, so new rows start on a clean line."""
    if not path.exists():
        return
    text = path.read_text()
    if not text or text.endswith("\n"):
        return
    head, _, last = text.rpartition("\n")
    try:
        json.loads(last)
        path.write_text(text + "\n")
    except json.JSONDecodeError:
        path.write_text(head + "\n" if head else "")


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of every cell key, in first-seen order."""
    by_key: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_key[r["key"]] = r
    return list(by_key.values())


def skip_reason(cell: Cell, kinds: dict[str, str]) -> str | None:
    """Why a rule cannot run on the cell's data, from the rule's declared data kinds."""
    from locallearn.rules import RULES

    rule_cls = RULES.get(cell.rule)
    data_kind = kinds.get(cell.data)
    if data_kind is not None and data_kind not in rule_cls.supports_kinds:
        return (f"{cell.rule} supports {', '.join(rule_cls.supports_kinds)} data, "
                f"{cell.data} is {data_kind}")
    return None


def data_kind(name: str, seed: int) -> str | None:
    from locallearn.data import load_dataset

    try:
        return load_dataset(name, seed=seed).task.kind
    except UserError:
        return None


def run_suite(suite: Suite, out: Path, device: str = "auto", quiet: bool = False,
              only_rules: list[str] | None = None, threads: int | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, int]:
    """Run every cell not yet done; return counts by status of the cells run now.

    ``threads`` (or the suite's ``settings.threads``) sets torch's CPU threads for the
    run; each row records the number used.
    """
    # One thread per process unless asked: parallel cells on a shared machine otherwise
    # oversubscribe its cores (torch's default of 2 on 2 cores ran the demo several times
    # slower: docs/results/efficiency.md).
    threads = threads or suite.settings.get("threads") or 1
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run_cells(suite, Path(out), device, quiet, only_rules, on_row)
    finally:
        torch.set_num_threads(before)


def _run_cells(suite: Suite, out: Path, device: str, quiet: bool,
               only_rules: list[str] | None,
               on_row: Callable[[dict[str, Any]], None] | None) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    cells = suite.cells()
    if only_rules:
        cells = [c for c in cells if c.rule in only_rules]
    _drop_cut_last_line(out / "results.jsonl")
    done = {r["key"] for r in read_results(out) if r.get("status") in DONE}
    todo = [c for c in cells if c.key not in done]
    kinds = {d: data_kind(d, 0) for d in sorted({c.data for c in todo})}
    hw = hardware_info(_device(device))
    # What made the figures: code, command and (per cell) the machine's load.
    made_by = {"commit": source_commit(), "command": command_line()}
    run_fn = CELL_KINDS.get(suite.kind)
    counts = {"ok": 0, "skipped": 0, "error": 0, "already_done": len(cells) - len(todo)}
    if todo:
        _warm_up(_device(device))
    progress = _progress(todo, quiet, suite.name)
    for cell in progress:
        if hasattr(progress, "set_postfix_str"):
            progress.set_postfix_str(f"{cell.rule} {cell.data} {cell.net[:24]} s{cell.seed}")
        row: dict[str, Any] = {
            "suite": suite.name, "kind": cell.kind, "key": cell.key, "rule": cell.rule,
            "data": cell.data, "net": cell.net, "seed": cell.seed, "options": cell.options,
            "rule_options": cell.rule_options, "hardware": hw, **made_by,
            "load_average": load_average(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
        }
        reason = skip_reason(cell, kinds)
        if reason:
            row.update(status="skipped", reason=reason)
        else:
            cell_dir = out / "runs" / cell.slug
            try:
                torch.manual_seed(cell.seed)
                row.update(run_fn(cell, suite.settings, cell_dir, device))
                row["status"] = "ok"
                if cell_dir.exists():
                    row["run_dir"] = str(cell_dir.relative_to(out))
            except UserError as exc:
                # The rule refuses this data or network (a declared limitation).
                row.update(status="skipped", reason=str(exc))
            except Exception as exc:  # a broken rule must not stop the whole benchmark
                row.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc(limit=8))
        counts[row["status"]] += 1
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
        if on_row is not None:
            on_row(row)
    return counts


def _device(name: str) -> torch.device:
    from locallearn.training.trainer import resolve_device

    return resolve_device(name)


def _warm_up(device: torch.device) -> None:
    """Pay torch's one-time start-up costs (first autograd and optimiser calls, about
    a second on CPU) before the first cell, so they are not billed to its rule."""
    from torch import nn

    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)
    opt = torch.optim.Adam(model.parameters())
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 16, device=device)),
                                           torch.randint(0, 4, (8,), device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _progress(cells: list[Cell], quiet: bool, name: str):
    if quiet:
        return cells
    from tqdm.auto import tqdm

    return tqdm(cells, desc=f"bench {name}", unit="cell", dynamic_ncols=True)
