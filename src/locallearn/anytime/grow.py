"""Growing: add a block on top of a trained network and train only the new block.

Algorithm (a locally trained network makes this cheap: no gradient ever reaches the
earlier blocks, so freezing them changes nothing about how the new block learns)::

    best = validation accuracy of the trained network
    repeat (at most max_blocks times):
        net' = net + a fresh copy of the last block       # rule rebuilt: new readouts
        copy every weight of net into net'; freeze the old blocks and their readouts
        train net' with the run's rule and settings       # only new block + readouts move
        if validation accuracy of net' <= best: stop (net' discarded)
        net, best = net', its validation accuracy

What stays trainable besides the new block: modules the rebuilt rule has that the old
one had not (the new block's readout, e.g. FF's readout term for the old last layer),
and the head, whose input is now the new block (it starts from the old head's weights).
For rules whose head is the last block's readout (mono-forward), the old head becomes
the old last block's readout and is frozen. Freezing covers parameters: buffers such as
batch-norm statistics of old blocks would still move in train mode (none of the
built-in networks has any).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from locallearn.anytime.importance import accuracy
from locallearn.anytime.runs import LoadedRun, build_rule
from locallearn.errors import UserError
from locallearn.rules.base import BlockwiseRule, Rule
from locallearn.training.trainer import Trainer, evaluate


def _last_block_readout(rule: Rule, k: int) -> list[nn.Module]:
    """Modules that read block k out in a block-wise rule (head included if it does)."""
    if not isinstance(rule, BlockwiseRule):
        return []
    mods = list(rule.readouts().get(k, []))
    if rule.head_in_last_block and k == len(rule.network.blocks) - 1 and rule.network.head:
        mods.append(rule.network.head)
    return mods


def transfer(old: Rule, new: Rule) -> set[str]:
    """Copy old's weights into new (same names and shapes); names of the copied tensors.

    The head is copied as a warm start but not reported (it reads a new block now).
    A head that was old's last-block readout is also copied into new's readout of
    that block when their shapes line up, and that readout is reported as copied.
    """
    new_state, copied = new.state_dict(), set()
    with torch.no_grad():
        for name, value in old.state_dict().items():
            if name in new_state and new_state[name].shape == value.shape:
                new_state[name].copy_(value)
                if not name.startswith("network.head."):
                    copied.add(name)
        last = len(old.network.blocks) - 1
        if isinstance(old, BlockwiseRule) and old.head_in_last_block:
            src = _last_block_readout(old, last)
            dst = _last_block_readout(new, last)
            if len(src) == len(dst) == 1:
                a, b = list(src[0].parameters()), list(dst[0].parameters())
                if [p.shape for p in a] == [p.shape for p in b]:
                    for p, q in zip(a, b, strict=True):
                        q.copy_(p)
                    names = {id(p): n for n, p in new.named_parameters()}
                    copied |= {names[id(q)] for q in b}
    return copied


def freeze(rule: Rule, names: set[str], old_blocks: int) -> None:
    """Freeze the old blocks and every other copied tensor."""
    for name, p in rule.named_parameters():
        in_old_block = any(name.startswith(f"network.blocks.{k}.") for k in range(old_blocks))
        if in_old_block or name in names:
            p.requires_grad_(False)


def grow(run: LoadedRun, max_blocks: int = 3, epochs: int | None = None,
         device: str = "cpu", quiet: bool = True, log=None) -> dict[str, Any]:
    """Grow ``run``'s network block by block while validation accuracy improves."""
    if any(t.get("kind") == "prune" for t in run.transforms):
        raise UserError("cannot grow a pruned model; grow the original run instead")
    if max_blocks < 1:
        raise UserError(f"--max-blocks must be >= 1, got {max_blocks}")
    rule, dataset = run.rule, run.dataset
    if not len(dataset.val):  # decisions are made on validation, never on the test split
        raise UserError("grow decides on the validation split, and this run's is empty; "
                        "train with data.val_fraction > 0")
    split = "val"
    best_val = accuracy(rule, dataset.loader(split, 1024), device)
    base_test = evaluate(rule, dataset.loader("test", 1024), torch.device(device))
    steps = [{"blocks": len(rule.network.blocks), "added": 0, "val_accuracy": best_val,
              "test_accuracy": base_test["accuracy"],
              "per_block_test_accuracy": base_test["per_block_accuracy"], "kept": True}]
    if log:
        log(f"  {steps[0]['blocks']} blocks (trained run): val {best_val:.4f}  "
            f"test {base_test['accuracy']:.4f}")
    transforms, last_tried = run.transforms, None
    for i in range(1, max_blocks + 1):
        new, _ = build_rule({**run.config, "transforms": transforms}, dataset,
                            extra_transforms=[{"kind": "grow", "blocks": 1}], seed_offset=i)
        old_blocks = len(rule.network.blocks)
        copied = transfer(rule, new)
        freeze(new, copied, old_blocks)
        before = {n: p.detach().clone() for n, p in new.named_parameters() if not p.requires_grad}
        config = run.train_config(out=None, quiet=quiet, resume=False, overwrite=False,
                                  checkpoint=False, measure_memory=False, patience=0,
                                  early_exit=False,
                                  device=device, **({"epochs": epochs} if epochs else {}))
        Trainer(config).fit(new, dataset)
        last_tried = new
        for n, p in new.named_parameters():  # the contract: frozen weights never move
            if n in before and not torch.equal(before[n], p.detach().to(before[n].device)):
                raise AssertionError(f"frozen weight {n} changed while growing")
        new.eval()
        val = accuracy(new, dataset.loader(split, 1024), device)
        test = evaluate(new, dataset.loader("test", 1024), torch.device(device))
        kept = val > best_val
        steps.append({"blocks": old_blocks + 1, "added": i, "val_accuracy": val,
                      "test_accuracy": test["accuracy"],
                      "per_block_test_accuracy": test["per_block_accuracy"], "kept": kept})
        if log:
            log(f"  {old_blocks + 1} blocks (+{i}): val {val:.4f}  test {test['accuracy']:.4f}"
                f"  {'kept' if kept else 'no better: discarded, stop'}")
        if not kept:
            break
        rule, best_val = new, val
        transforms = transforms + [{"kind": "grow", "blocks": 1}]
    # rule: the best network (old blocks left frozen); last_tried: the last grown rule
    # trained, kept or not.
    return {"rule": rule, "transforms": transforms, "steps": steps, "split": split,
            "last_tried": last_tried}
