"""Efficiency figures that mean something, per rule:

- FLOPs per training sample, and that relative to backprop's on the same net and batch
  (``torch.utils.flop_counter`` on one real training step: redundant work such as FF's
  ten label passes counts, so a rule that does more arithmetic for the same update shows
  it here rather than as a high "fraction of peak");
- time to accuracy: training seconds until the *validation* accuracy first reaches a
  fixed target (e.g. 0.90 on mnist5k), from each run's per-epoch history
  (``metrics.jsonl``). Reported only, never used to choose anything;
- the achieved fraction of ``torch.matmul``'s peak, only for nets whose counted FLOPs are
  all matmuls: a conv net's FLOP/s against a matmul's peak compares unrelated kernels, so
  it is left out (``None``) unless measured against a conv peak.
"""

from __future__ import annotations

import statistics
from typing import Any

# Validation accuracy a run must reach for "time to accuracy", by data set.
ACCURACY_TARGETS = {"mnist5k": 0.90, "digits": 0.90, "mnist1d": 0.60}

# A fraction of peak above this is measurement noise or a bug (the test asserts it).
FRACTION_NOISE = 0.10


def uses_convolution(flops_by_op: dict[str, float]) -> bool:
    return any("conv" in str(op) for op, v in flops_by_op.items() if v)


def time_to_accuracy(history: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds at the end of the first epoch whose validation accuracy reaches
    ``target``; None if no epoch does."""
    for h in history:
        acc = h.get("val_accuracy")
        if acc is not None and acc >= target:
            return h.get("elapsed_train_seconds")
    return None


def times_to_accuracy(rows: list[dict[str, Any]],
                      targets: dict[str, float] | None = None) -> dict[tuple, dict[str, Any]]:
    """Per (data, net, rule) of the trained (not frozen) train rows: the target, how many
    seeds reached it, and the mean seconds of those that did."""
    from locallearn.report.html import is_frozen

    targets = ACCURACY_TARGETS if targets is None else targets
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if (r.get("kind", "train") != "train" or r.get("status", "ok") != "ok"
                or is_frozen(r) or r.get("data") not in targets):
            continue
        key = (r.get("data"), r.get("net"), r.get("rule"))
        entry = out.setdefault(key, {"target": targets[r["data"]], "runs": 0, "seconds": []})
        entry["runs"] += 1
        t = time_to_accuracy(r.get("history") or [], targets[r["data"]])
        if t is not None:
            entry["seconds"].append(t)
    for entry in out.values():
        entry["mean_seconds"] = statistics.mean(entry["seconds"]) if entry["seconds"] else None
    return out


def relative_flops(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each efficiency row's FLOPs per sample over backprop's on the same net and batch,
    by row key."""
    bp = {(r.get("net"), r.get("batch_size")): r.get("flops_per_sample") for r in rows
          if r.get("kind") == "efficiency" and r.get("rule") == "backprop"
          and r.get("status") == "ok"}
    out = {}
    for r in rows:
        if r.get("kind") != "efficiency" or r.get("status") != "ok":
            continue
        base = bp.get((r.get("net"), r.get("batch_size")))
        out[r["key"]] = r["flops_per_sample"] / base if base else None
    return out
