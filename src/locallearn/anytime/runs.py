"""Load a trained run directory back into a rule, and write derived models (pruned, grown).

A run directory holds ``config.json`` (rule, data, net and their options) and the
weights (``checkpoint.*``, ``best.*``). Derived models keep the original spec and add
a list of ``transforms`` to ``config.json``, replayed in order on load:

* ``{"kind": "grow", "blocks": n}``: n copies of the last block appended to the network
  before the rule is built (so the rule makes readouts for them);
* ``{"kind": "prune", "skip": [...], "exit": e}``: blocks in ``skip`` replaced by the
  identity, and with ``exit`` set, every block after ``e`` dropped and predictions read
  from block ``e``'s readout (see :mod:`locallearn.anytime.prune`).

This way any network family can be pruned or grown without a new spec syntax.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from locallearn.errors import UserError
from locallearn.measure.hardware import hardware_info
from locallearn.networks.network import Network
from locallearn.rules import Rule
from locallearn.training.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    load_rule_tensors,
    save_checkpoint,
    write_json_atomic,
)
from locallearn.training.runfolder import ensure_dir, holds_run, project_files
from locallearn.training.spec import RunSpec
from locallearn.training.trainer import TrainConfig, evaluate, resolve_device


@dataclass
class LoadedRun:
    rule: Rule
    dataset: Any
    config: dict[str, Any]
    summary: dict[str, Any]
    directory: Path

    @property
    def transforms(self) -> list[dict[str, Any]]:
        return list(self.config.get("transforms", []))

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The run's training settings (unknown keys from other versions dropped)."""
        known = {f.name for f in fields(TrainConfig)}
        settings = {k: v for k, v in self.config.get("train", {}).items() if k in known}
        settings.update(overrides)
        from locallearn.training.run import coerce_setting

        # A run folder's values pass the same typed check as flags and config files.
        config = TrainConfig(**{k: coerce_setting(k, v) for k, v in settings.items()})
        config.validate()
        return config


def read_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; train one first with "
                        f"'locallearn train ... --out {run_dir}'")
    path = run_dir / "config.json"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory (no config.json); pass the --out "
                        f"folder of 'locallearn train'")
    config = read_json_object(path)
    for key in ("rule", "data", "net"):
        if not isinstance(config.get(key), str):
            raise UserError(f"{path} has no {key!r} name; retrain the run")
    for key in ("rule_options", "data_options", "net_options", "train"):
        if not isinstance(config.get(key) or {}, dict):
            raise UserError(f"{path}: {key!r} is not a mapping; retrain the run")
    if not isinstance(config.get("data_dir") or "", str):
        raise UserError(f"{path}: 'data_dir' is not a path; retrain the run")
    if not isinstance(config.get("transforms") or [], list):
        raise UserError(f"{path}: 'transforms' is not a list; retrain the run")
    return config


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a run folder, or one line saying the file is damaged."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        obj = None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is damaged (not a JSON object); retrain the run")
    return obj


def grow_network(network: Network, blocks: int) -> None:
    """Append ``blocks`` freshly initialised copies of the last block (in place)."""
    last = network.blocks[-1]
    if tuple(last.in_shape) != tuple(last.out_shape):
        raise UserError(f"cannot grow this network: its last block maps "
                        f"{'x'.join(map(str, last.in_shape))} to "
                        f"{'x'.join(map(str, last.out_shape))}, and growing stacks copies of "
                        f"the last block, which must keep its shape")
    for _ in range(blocks):
        block = copy.deepcopy(last)
        for m in block.modules():
            if hasattr(m, "reset_parameters") and m is not block:
                m.reset_parameters()
        block.name = f"{last.name or 'block'}+"
        network.blocks.append(block)
    network._infer_shapes()


def build_rule(config: dict[str, Any], dataset=None, extra_transforms: list | None = None,
               seed_offset: int = 0) -> tuple[Rule, Any]:
    """A fresh (untrained) rule for the run's config with its transforms replayed."""
    from locallearn.anytime.prune import apply_prune

    spec = RunSpec.from_settings(config, seed=int(config.get("train", {}).get("seed", 0)))
    transforms = list(config.get("transforms", [])) + list(extra_transforms or [])
    grown = sum(t.get("blocks", 0) for t in transforms if t.get("kind") == "grow")
    dataset, _, rule = spec.build(
        dataset, seed_offset, adapt_network=(lambda net: grow_network(net, grown)) if grown
        else None)
    for t in transforms:
        if t.get("kind") == "prune":
            apply_prune(rule, t.get("skip", []), t.get("exit"))
        elif t.get("kind") != "grow":
            raise UserError(f"unknown transform {t.get('kind')!r} in config.json")
    return rule, dataset


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """The trained rule of a run directory (with its dataset, config and summary)."""
    run_dir = Path(run_dir)
    resolve_device(device)  # --device cuda without CUDA: one line before any work
    config = read_config(run_dir)
    train = config.get("train", {})
    # The weights summary.json was measured with: best.* when early stopping restored it.
    stem = "best" if train.get("patience") and has_checkpoint(run_dir, "best") else "checkpoint"
    if not has_checkpoint(run_dir, stem):
        raise UserError(f"{run_dir} has no saved weights ({stem}.safetensors); the run was "
                        f"trained without checkpoints or did not finish an epoch")
    rule, dataset = build_rule(config)
    tensors, meta = load_checkpoint(run_dir, stem=stem)
    load_rule_tensors(rule, tensors, f"weights in {run_dir} do not fit its config.json",
                      "retrain the run")
    rule.load_extra_state(meta.get("rule_extra", {}))
    rule.to(resolve_device(device))  # --device cuda without CUDA: one line
    rule.eval()
    summary_path = run_dir / "summary.json"
    summary = read_json_object(summary_path) if summary_path.exists() else {}
    return LoadedRun(rule, dataset, config, summary, run_dir)


def prepare_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    ensure_dir(out)
    if holds_run(out) and not overwrite:
        raise UserError(f"{out} already holds a run; pass --overwrite to "
                        f"replace it or choose another --out")
    for f in project_files(out):
        f.unlink()
    return out


def held_out_metrics(rule: Rule, dataset, device: str = "cpu", batch_size: int = 1024
                 ) -> dict[str, Any]:
    test = evaluate(rule, dataset.loader("test", batch_size), torch.device(device))
    return {"test_accuracy": test["accuracy"],
            "per_block_test_accuracy": test["per_block_accuracy"],
            "per_layer_test_accuracy": test["per_block_accuracy"],  # old name, one release
            "num_parameters": sum(p.numel() for p in rule.parameters()),
            "blocks": len(rule.network.blocks)}


def save_model(out: Path, rule: Rule, config: dict[str, Any], transforms: list[dict],
               summary: dict[str, Any]) -> None:
    """Write a derived model as a run directory that :func:`load_run` reads back."""
    config = {**config, "transforms": transforms}
    write_json_atomic(out / "config.json", config)
    tensors = {f"rule.{k}": v for k, v in rule.state_dict().items()}
    run_info = {k: config.get(k) for k in ("rule", "data", "net", "rule_options",
                                            "data_options", "net_options", "data_dir")}
    save_checkpoint(out, tensors, {"epoch": -1, "rule_extra": rule.extra_state(),
                                   "run": run_info, "transforms": transforms})
    write_json_atomic(out / "summary.json", {
        **run_info, "transforms": transforms, **summary,
        "seed": config.get("train", {}).get("seed"), "train_config": config.get("train", {}),
        "torch_version": torch.__version__, "hardware": hardware_info("cpu")})


def drop_modules(rule: Rule, modules: list[nn.Module]) -> None:
    """Replace each module (wherever the rule holds it) by a parameter-free identity."""
    targets = {id(m) for m in modules}
    for parent in list(rule.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in targets:
                setattr(parent, child_name, nn.Identity())
