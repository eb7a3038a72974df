"""What each block of a trained rule keeps: dimensionality and linear-probe accuracy.

Why tpsgd and drtp barely beat their frozen control (docs/results/frozen_controls.md):
a block trained toward a fixed code per class keeps little beyond the class. For one
trained run per rule (and the frozen control of the first), per block on the
validation split:

- ``dead``: fraction of units silent on every validation sample;
- ``pr``: participation ratio of the centred features' covariance spectrum,
  ``(sum s^2)^2 / sum s^4`` (about how many directions carry the variance);
- ``r90``: number of principal directions holding 90 % of the variance;
- ``probe``: validation accuracy of a logistic-regression probe fitted on the block's
  training-split features (standardised; full batch, Adam lr 1e-2, 300 steps, L2 1e-4).

The probe on the raw inputs is printed as ``input``. Selection never uses these figures.

    PYTHONPATH=src python benchmarks/block_codes.py --rules tpsgd,tpsgd:loss=mse,drtp,dfa

A rule may carry options after a colon (``tpsgd:loss=mse``, several joined by ``;``).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from locallearn.training.run import train


def block_features(rule, x: Tensor) -> list[Tensor]:
    """Each block's output on ``x``, read the way the rule's own forward pass reads it."""
    feats, h = [], x
    with torch.no_grad():
        for k, block in enumerate(rule.network.blocks):
            h = block(rule.block_input(k, h) if hasattr(rule, "block_input") else h)
            feats.append(h.flatten(1))
    return feats


def probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor,
          classes: int, steps: int = 300) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (val_x - mean) / std
    w = torch.zeros(a.shape[1], classes, requires_grad=True)
    c = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, c], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + c, train_y) + 1e-4 * w.square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((b @ w + c).argmax(1) == val_y).float().mean().item()


def spectrum(h: Tensor) -> tuple[float, int]:
    s2 = torch.linalg.svdvals(h - h.mean(0)).square()
    e = s2 / s2.sum()
    return (1 / e.square().sum()).item(), int((e.cumsum(0) < 0.9).sum().item()) + 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", default="tpsgd,tpsgd:loss=mse,drtp,dfa")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--net", default="mlp:500,500")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    specs = args.rules.split(",")
    runs = [(s, False) for s in specs] + [(specs[0], True)]
    print("| run | block | dead | pr | r90 | probe (val) |\n|---|---|---|---|---|---|")
    for spec, frozen in runs:
        name, _, opts = spec.partition(":")
        options = dict(o.split("=", 1) for o in opts.split(";") if o)
        res = train(name, args.data, args.net, seed=args.seed, quiet=True, checkpoint=False,
                    measure_memory=False, early_exit=False, diagnostics=False,
                    freeze_blocks=frozen, rule_options=options)
        rule, data = res.rule, res.dataset
        classes = data.task.num_classes
        label = f"`{spec}`" + (" frozen" if frozen else "")
        pairs = zip(block_features(rule, data.train.x), block_features(rule, data.val.x),
                    strict=True)
        for k, (htr, hva) in enumerate(pairs):
            pr, r90 = spectrum(hva)
            dead = (hva.amax(0) <= 0).float().mean().item()
            acc = probe(htr, data.train.y, hva, data.val.y, classes)
            print(f"| {label} | {k} | {dead:.3f} | {pr:.1f} | {r90} | {acc:.4f} |", flush=True)
    x_acc = probe(data.train.x.flatten(1), data.train.y, data.val.x.flatten(1), data.val.y,
                  classes)
    print(f"| input | - | - | - | - | {x_acc:.4f} |")


if __name__ == "__main__":
    main()
