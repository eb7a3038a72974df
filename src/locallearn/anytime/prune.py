"""Depth pruning: keep K blocks of a trained network and write the smaller model.

Two ways to keep K of L blocks, both scored on the validation split:

* **skip**: drop the L-K blocks whose removal hurts least (greedy: remove the block
  whose skipping keeps validation accuracy highest, then repeat), replacing each by
  the identity. Only blocks that keep their input's shape can go; the rule's own
  prediction (head) is kept.
* **truncate**: keep the first K blocks and predict from block K-1's own readout;
  every later block, its readout and the head are dropped. Needs block-by-block
  readouts (see :class:`locallearn.anytime.exits.Anytime`); this is what locally
  trained networks make cheap, and the only option when shapes forbid skipping.

The candidate with the higher validation accuracy is written (ties: truncate, the
smaller model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from locallearn.anytime.exits import Anytime, block_table
from locallearn.anytime.importance import accuracy, skippable, skipped
from locallearn.errors import UserError
from locallearn.rules.base import BlockwiseRule, Rule


def apply_prune(rule: Rule, skip: list[int], exit: int | None) -> None:
    """Skip ``skip`` (identity) and, with ``exit``, cut the network after block ``exit``."""
    blocks = rule.network.blocks
    n = len(blocks)
    for k in skip:
        if not 0 <= k < n or not skippable(rule, k):
            raise UserError(f"cannot skip block {k}: it does not exist or changes the shape")
        blocks[k].body = nn.Identity()
    if exit is None or exit == n - 1:
        return
    if not 0 <= exit < n:
        raise UserError(f"cannot cut after block {exit}: the network has {n} blocks")
    anytime = Anytime(rule)
    if anytime.mode not in ("goodness", "readout"):
        raise UserError(f"rule {rule.name!r} has no block-by-block readouts, so the network "
                        f"cannot be cut after block {exit}; prune by skipping blocks instead")
    used = list(anytime.readout_modules[: exit + 1]) if anytime.readout_modules else []
    # Readouts of later blocks and the head are never used again: drop their weights.
    unused: list[nn.Module] = []
    if isinstance(rule, BlockwiseRule):
        unused += [m for mods in rule.readouts().values() for m in mods]
    if rule.network.head is not None:
        unused.append(rule.network.head)
    from locallearn.anytime.runs import drop_modules

    drop_modules(rule, [m for m in unused if all(m is not u for u in used)])
    rule.network.blocks = nn.ModuleList(list(blocks[: exit + 1]))
    anytime.num_blocks = exit + 1
    rule.cut_readout = anytime

    def predict(x: Tensor) -> Tensor:
        return anytime.all_scores(x)[-1]

    def block_scores(x: Tensor) -> list[Tensor]:
        return anytime.all_scores(x)

    # Instance attributes shadow the rule's methods: the cut model answers from block
    # `exit`'s readout, and per-block scores come from the kept readouts only.
    rule.predict = predict
    # The cut network has no head any more: calling it must give the same scores as the
    # rule's prediction, not block `exit`'s bare features.
    rule.network.forward = predict
    if anytime.mode == "readout":
        rule.block_scores = block_scores


def choose_prune(rule: Rule, dataset, keep: int, device: torch.device | str = "cpu",
                 batch_size: int = 1024) -> dict[str, Any]:
    """Score the skip and truncate candidates for keeping ``keep`` blocks on validation."""
    n = len(rule.network.blocks)
    if not 1 <= keep <= n:
        raise UserError(f"--keep must be between 1 and {n} (the number of blocks), got {keep}")
    if not len(dataset.val):  # decisions are made on validation, never on the test split
        raise UserError("prune decides on the validation split, and this run's is empty; "
                        "train with data.val_fraction > 0")
    split = "val"

    def val_accuracy() -> float:
        return accuracy(rule, dataset.loader(split, batch_size), device)

    candidates = []
    can_skip = [k for k in range(n) if skippable(rule, k)]
    if n - keep <= len(can_skip):
        removed: list[int] = []
        acc = val_accuracy()
        while len(removed) < n - keep:
            trials = []
            for k in can_skip:
                if k not in removed:
                    with skipped(rule, removed + [k]):
                        trials.append((val_accuracy(), k))
            acc, best = max(trials, key=lambda t: (t[0], t[1]))
            removed.append(best)
        candidates.append({"kind": "skip", "skip": sorted(removed), "exit": None,
                           "val_accuracy": acc})
    with torch.no_grad():
        has_readouts = rule.block_scores(dataset.split(split).x[:8].to(device)) is not None
    if has_readouts and keep < n:
        anytime = Anytime(rule, probe=dataset.split(split).x[:8].to(device))
        if anytime.mode in ("goodness", "readout"):  # readouts that survive the cut
            _, correct = block_table(anytime, dataset.loader(split, batch_size), device)
            candidates.append({"kind": "truncate", "skip": [], "exit": keep - 1,
                               "val_accuracy": correct[:, keep - 1].float().mean().item()})
    if not candidates:
        raise UserError(f"cannot keep {keep} of {n} blocks: too few blocks keep their shape "
                        f"to be skipped, and rule {rule.name!r} has no block-by-block readouts "
                        f"to cut the network at")
    chosen = max(candidates, key=lambda c: (c["val_accuracy"], c["kind"] == "truncate"))
    return {"split": split, "candidates": candidates, "chosen": chosen}
