"""Layer importance: what each block adds, measured by skipping it.

For every block whose output has its input's shape, the block is replaced by the
identity and the test accuracy of ``rule.predict`` is measured again (the drop is
the block's importance); for every block whose input and output have the same
number of values, the mean cosine similarity between the two (per sample, on the
test set) says how much the block changes its input. Both follow the
layer-redundancy literature (e.g. "ShortGPT", Men et al. 2024, and Gromov et al.
2024), which prunes the blocks whose removal changes the output least.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from locallearn.rules.base import Rule
from locallearn.training.trainer import evaluate


def skippable(rule: Rule, k: int) -> bool:
    """True when block k keeps its input's shape, so the identity can stand in for it."""
    block = rule.network.blocks[k]
    return tuple(block.in_shape) == tuple(block.out_shape)


@contextmanager
def skipped(rule: Rule, blocks: Sequence[int]) -> Iterator[None]:
    """Temporarily replace the bodies of ``blocks`` by the identity."""
    saved = {k: rule.network.blocks[k].body for k in blocks}
    try:
        for k in blocks:
            rule.network.blocks[k].body = nn.Identity()
        yield
    finally:
        for k, body in saved.items():
            rule.network.blocks[k].body = body


def accuracy(rule: Rule, loader, device: torch.device | str = "cpu") -> float:
    return evaluate(rule, loader, torch.device(device), per_block=False)["accuracy"]


@torch.no_grad()
def cosine_similarities(rule: Rule, loader, device: torch.device | str = "cpu"
                        ) -> list[float | None]:
    """Mean per-sample cosine similarity between each block's input and output.

    Measured with forward hooks during ``rule.predict``, so each block sees exactly
    what the rule feeds it (e.g. FF's normalised activities); None where the input
    and output have different numbers of values.
    """
    blocks = rule.network.blocks
    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)

    def hook(k: int):
        def fn(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0] if inputs else None
            if not torch.is_tensor(x) or not torch.is_tensor(output):
                return
            a, b = x.flatten(1).float(), output.flatten(1).float()
            if a.shape != b.shape:
                return
            sims = F.cosine_similarity(a, b, dim=1)
            sums[k] += float(sims.sum())
            counts[k] += int(sims.numel())
        return fn

    handles = [b.register_forward_hook(hook(k)) for k, b in enumerate(blocks)]
    was = rule.training
    rule.eval()
    try:
        for x, _ in loader:
            rule.predict(x.to(device))
    finally:
        for h in handles:
            h.remove()
        rule.train(was)
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def layer_importance(rule: Rule, dataset, split: str = "test",
                     device: torch.device | str = "cpu", batch_size: int = 1024
                     ) -> tuple[float, list[dict[str, Any]]]:
    """Accuracy with every block, and per block: accuracy when skipped, drop, cosine."""
    base = accuracy(rule, dataset.loader(split, batch_size), device)
    cos = cosine_similarities(rule, dataset.loader(split, batch_size), device)
    rows = []
    for k, block in enumerate(rule.network.blocks):
        row: dict[str, Any] = {
            "block": k, "name": block.name,
            "in_shape": list(block.in_shape), "out_shape": list(block.out_shape),
            "parameters": sum(p.numel() for p in block.parameters()),
            "skip_accuracy": None, "accuracy_drop": None, "cosine": cos[k],
        }
        if skippable(rule, k) and len(rule.network.blocks) > 1:
            with skipped(rule, [k]):
                acc = accuracy(rule, dataset.loader(split, batch_size), device)
            row["skip_accuracy"], row["accuracy_drop"] = acc, base - acc
        rows.append(row)
    return base, rows
