"""Accuracy of a rule on a split, and the validation figure that picks the best epoch."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from locallearn.data.base import IGNORE_INDEX


def to_device(obj: Any, device: torch.device) -> Any:
    if hasattr(obj, "to"):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    return obj


def count_correct(scores: Tensor, y: Tensor) -> tuple[int, int]:
    mask = y != IGNORE_INDEX
    return int((scores.argmax(-1)[mask] == y[mask]).sum()), int(mask.sum())


@torch.no_grad()
def evaluate(rule, loader, device: torch.device, per_block: bool = True) -> dict[str, Any]:
    """Accuracy of ``rule.predict`` (and of every block's readout, if any)."""
    was_training = rule.training
    rule.eval()
    correct = total = 0
    block_correct: list[int] | None = None
    for x, y in loader:
        x, y = to_device(x, device), to_device(y, device)
        pred, scores = rule.predict_with_blocks(x) if per_block else (rule.predict(x), None)
        c, n = count_correct(pred, y)
        correct, total = correct + c, total + n
        if scores is not None:
            counts = [count_correct(s, y)[0] for s in scores]
            block_correct = counts if block_correct is None else [
                a + b for a, b in zip(block_correct, counts, strict=True)]
    rule.train(was_training)
    if total == 0:  # an empty split has no accuracy (not 0.0, which reads as a result)
        return {"accuracy": None, "per_block_accuracy": None}
    return {
        "accuracy": correct / total,
        "per_block_accuracy": None if block_correct is None else [c / total for c in block_correct],
    }


def evaluate_split(rule, dataset, split: str, device: torch.device,
                   batch_size: int) -> dict[str, Any]:
    """The dataset's own evaluation if it has one (graphs, text), else accuracy.

    A custom ``dataset.evaluate(rule, split, device, batch_size)`` returns a dict
    with ``accuracy`` and ``per_block_accuracy`` plus any extra metrics, which
    land in summary.json as ``test_<name>``.
    """
    custom = getattr(dataset, "evaluate", None)
    if custom is not None:
        result = custom(rule, split, device, batch_size)
        result.setdefault("per_block_accuracy", None)
        return result
    return evaluate(rule, dataset.loader(split, batch_size), device)


def selection_score(dataset, val: dict[str, Any]) -> tuple[str, float | None]:
    """The validation figure that picks the best epoch: the dataset's ``selection_metric``
    (link prediction: AUC, as accuracy at a fixed threshold stays near 0.5), else accuracy."""
    metric = getattr(dataset, "selection_metric", "accuracy")
    value = val.get(metric)
    if value is None or not math.isfinite(value):
        return "accuracy", val["accuracy"]
    return metric, float(value)
