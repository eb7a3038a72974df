"""What one benchmark cell does, by suite kind: ``train``, ``memory``, ``efficiency``.

Each kind is a function ``(cell, settings, cell_dir, device) -> dict`` registered in
:data:`CELL_KINDS`; the dict becomes the cell's row in ``results.jsonl``.
All three go through the real training loop (:class:`Trainer` and its step), so
what is measured is what ``locallearn train`` does.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from locallearn.bench.suite import Cell
from locallearn.registry import Registry

CELL_KINDS: Registry = Registry("benchmark kind")

# Cell options that are not TrainConfig fields.
SECTION_OPTIONS = ("data_options", "net_options")


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    sections = {k: options[k] for k in SECTION_OPTIONS if k in options}
    return {k: v for k, v in options.items() if k not in SECTION_OPTIONS}, sections


@CELL_KINDS.register("train", help="train to the end; accuracy, time, memory, per-epoch history")
def train_cell(cell: Cell, settings: dict[str, Any], cell_dir: Path, device: str) -> dict:
    from locallearn.training import train

    train_options, sections = split_options(cell.options)
    train_options.setdefault("device", device)
    result = train(rule=cell.rule, data=cell.data, net=cell.net, seed=cell.seed,
                   out=str(cell_dir), overwrite=True, quiet=True, checkpoint=False,
                   rule_options=cell.rule_options, **sections, **train_options)
    s = result.summary
    history = [json.loads(line) for line in (cell_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    keep = ("epochs", "test_accuracy", "best_val_accuracy", "best_epoch",
            "per_block_test_accuracy", "per_layer_test_accuracy", "train_seconds",
            "samples_per_second", "peak_memory_bytes", "memory", "num_parameters", "device",
            "train_config", "freeze_blocks")
    row = {k: s.get(k) for k in keep}
    row.update({k: v for k, v in s.items() if k.startswith("test_") and k not in row})
    row["history"] = [{"epoch": h["epoch"], "val_accuracy": h["val_accuracy"],
                       "elapsed_train_seconds": h["elapsed_train_seconds"],
                       "loss": sum(h["loss"]) if h.get("loss") else None,
                       "diagnostics": h.get("diagnostics")} for h in history]
    if settings.get("attack"):
        row["robustness"] = attack_row(result, settings["attack"], train_options["device"])
    return row


def attack_row(result: Any, attack: dict[str, Any], device: str) -> dict[str, Any] | None:
    """Clean and attacked test accuracy of a trained cell (suite ``settings: {attack:
    {kind: fgsm|pgd, eps: E, steps: N}}``); None for data with its own evaluation."""
    from locallearn.errors import UserError
    from locallearn.measure.robustness import robust_accuracy
    from locallearn.training.trainer import resolve_device

    if not isinstance(attack, dict) or "kind" not in attack or "eps" not in attack:
        raise UserError("suite settings attack must be a mapping with kind and eps, e.g. "
                        "{kind: fgsm, eps: 0.1}")
    if getattr(result.dataset, "evaluate", None) is not None:
        return None
    return robust_accuracy(result.rule, result.dataset, "test", str(attack["kind"]),
                           float(attack["eps"]), int(attack.get("steps", 10)),
                           device=resolve_device(device))


def _setup(cell: Cell, device: str, batch_size: int):
    """Dataset, rule, trainer and optimisers for measuring a few training steps."""
    from locallearn.training import TrainConfig, Trainer
    from locallearn.training.spec import RunSpec
    from locallearn.training.trainer import to_device

    train_options, sections = split_options(cell.options)
    config = TrainConfig(**{k: v for k, v in train_options.items()
                            if k in TrainConfig.__dataclass_fields__},
                         seed=cell.seed, device=device, quiet=True, checkpoint=False)
    trainer = Trainer(config, {})
    dataset, _, rule = RunSpec(cell.rule, cell.data, cell.net, cell.seed,
                               data_options=sections.get("data_options"),
                               net_options=sections.get("net_options"),
                               rule_options=cell.rule_options).build()
    rule.to(trainer.device).train()
    optimizers = trainer.make_optimizers(rule)
    x, y = next(dataset.loader("train", batch_size, shuffle=True, seed=cell.seed))
    if len(y) < batch_size:
        from locallearn.errors import UserError

        raise UserError(f"{cell.data} has only {len(y)} training samples; batch {batch_size}")
    return trainer, rule, optimizers, to_device(x, trainer.device), to_device(y, trainer.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@CELL_KINDS.register("memory", help="a few training steps; allocator-level peak, fixed state "
                                    "apart from activations, saved-tensor peak")
def memory_cell(cell: Cell, settings: dict[str, Any], cell_dir: Path, device: str) -> dict:
    """The allocator-level memory of a few training steps (see
    :mod:`locallearn.measure.memory`), on a copy of the rule as ``locallearn train`` does."""
    from locallearn.measure import measure_training_memory, peak_rss_bytes

    batch_size = int(cell.options.get("batch_size", 512))
    steps = int(settings.get("steps", 3))
    trainer, rule, optimizers, x, y = _setup(cell, device, batch_size)
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    rss_before = peak_rss_bytes()
    memory = measure_training_memory(rule, optimizers, trainer.make_optimizers, trainer._step,
                                     x, y, dev, steps=steps)
    return {"memory": memory, "batch_size": batch_size, "steps": steps,
            "depth": len(rule.network.blocks), "streams_losses": bool(rule.streams_losses),
            **{k: memory[k] for k in ("peak_memory_bytes", "activation_peak_bytes",
                                      "fixed_state_bytes", "gradient_bytes",
                                      "saved_tensor_peak_bytes")},
            "peak_rss_before_bytes": rss_before, "device": str(dev)}


_PEAK_REPEATS = 5


def matmul_peak_flops(m: int, k: int, n: int, device: torch.device) -> dict[str, float]:
    """Best FLOP/s of ``torch.matmul`` on (m,k)@(k,n) and the two transposed layouts a
    linear layer's backward uses, timed here and now (same process, same load)."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    layouts = {"nn": (a, b), "nt": (a, b.t().contiguous().t()),
               "tn": (a.t().contiguous().t(), b)}
    best: dict[str, float] = {}
    flops = 2.0 * m * k * n
    for name, (p, q) in layouts.items():
        torch.matmul(p, q)  # warm-up
        _sync(device)
        times = []
        for _ in range(_PEAK_REPEATS):
            t0 = time.perf_counter()
            torch.matmul(p, q)
            _sync(device)
            times.append(time.perf_counter() - t0)
        best[name] = flops / min(times)
    return best


def count_step_flops(trainer, rule, optimizers, x, y) -> tuple[float, float, bool]:
    """Matmul/conv FLOPs of one real training step (forward, backward, update), the
    matmul share of them, and whether any are convolutions, from
    ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    from locallearn.bench.efficiency import uses_convolution

    with FlopCounterMode(display=False) as counter:
        trainer._step(rule, optimizers, x, y)
    total = float(counter.get_total_flops())
    by_op = {str(op): float(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    matmul = sum(v for op, v in by_op.items()
                 if any(s in op for s in ("mm", "addmm", "bmm", "matmul", "linear")))
    return total, matmul, uses_convolution(by_op)


@CELL_KINDS.register("efficiency", help="FLOPs per training sample, step time, and (MLPs "
                                        "only) FLOP/s as a fraction of torch.matmul's peak")
def efficiency_cell(cell: Cell, settings: dict[str, Any], cell_dir: Path, device: str) -> dict:
    batch_size = int(cell.options.get("batch_size", 1024))
    warmup = int(settings.get("warmup_steps", 2))
    min_steps = int(settings.get("min_steps", 3))
    min_seconds = float(settings.get("min_seconds", 3.0))
    trainer, rule, optimizers, x, y = _setup(cell, device, batch_size)
    dev = trainer.device
    width = max(b.out_features for b in rule.network.blocks)
    peak_before = matmul_peak_flops(batch_size, width, width, dev)
    flops, matmul_flops, conv = count_step_flops(trainer, rule, optimizers, x, y)
    for _ in range(warmup):
        trainer._step(rule, optimizers, x, y)
    _sync(dev)
    times = []
    t_start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - t_start < min_seconds:
        t0 = time.perf_counter()
        trainer._step(rule, optimizers, x, y)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    peak_after = matmul_peak_flops(batch_size, width, width, dev)
    peak = max(*peak_before.values(), *peak_after.values())
    step_seconds = sorted(times)[len(times) // 2]  # median: robust to a neighbour's burst
    achieved = flops / step_seconds
    # Against a matmul peak only when every counted FLOP is a matmul (see bench/efficiency.py).
    fraction = (achieved / peak if peak > 0 and math.isfinite(achieved) and not conv
                and matmul_flops == flops else None)
    return {"batch_size": batch_size, "width": width, "depth": len(rule.network.blocks),
            "flops_per_step": flops, "matmul_flops_per_step": matmul_flops,
            "flops_per_sample": flops / batch_size, "step_seconds_median": step_seconds,
            "step_seconds_min": min(times), "steps_timed": len(times),
            "achieved_flops": achieved, "peak_matmul_flops": peak,
            "peak_matmul_by_layout": {k: max(peak_before[k], peak_after[k]) for k in peak_before},
            "efficiency": fraction, "has_convolutions": conv,
            "threads": torch.get_num_threads(), "device": str(dev)}
