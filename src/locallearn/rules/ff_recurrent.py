"""Recurrent Forward-Forward over static images (Hinton 2022, "The Forward-Forward
Algorithm", the section on a recurrent network that treats a static image as a
boring video).

Algorithm, as the paper describes it: the image is clamped at the bottom, the label
(one-hot) at the top, and every hidden layer is updated from the normalised states of
the layer below and the layer above at the previous time step::

    h_0 = x (clamped),  h_{L+1} = onehot(label) (clamped)
    h_k(0) = one bottom-up pass
    for t = 1..T:                                        # synchronous, damped
        new_k = f( W_k norm(h_{k-1}(t-1)) + V_k norm(h_{k+1}(t-1)) + b_k )
        h_k(t) = d h_k(t-1) + (1 - d) new_k
        layer k at step t: FF loss on goodness(h_k(t)) of positive data (true label)
                           and negative data (a wrong label)
    predict: run T steps with each candidate label at the top; the label whose summed
             goodness (all layers, steps score_from..T) is largest wins.

Every state from step t-1 is detached before step t uses it, so the loss of layer k
at step t reaches only layer k's own weights, bottom-up W_k, b_k and top-down V_k:
no gradient crosses time or layers (parameter group k = block k plus V_k).

Deviations and choices:
* Network: an ``mlp`` (block k = Linear then an elementwise activation). The
  bottom-up weights are the blocks' Linears; the top-down weights V_k (width_{k+1} ->
  width_k, and classes -> width of the top layer for the label) are new, no bias, drawn
  as torch draws a Linear's weights. The network's head is not used (prediction is by
  goodness) and stays fixed.
* Normalisation: each sample's state divided by its root mean square (as ``ff``), not
  by its length. The image is fed as it is (standardised data), the label as a one-hot
  times ``label_scale``; neither is normalised.
* Defaults: ``steps=4`` synchronous updates after the bottom-up pass, damping
  ``d=0.3`` (new state = 0.3 old + 0.7 computed), scoring over steps 2..4
  (``score_from=2``: in a two-layer net the label reaches the bottom layer at step 2),
  mean goodness with threshold 2 and Hinton's logistic loss, as ``ff``. Fewer steps
  than the paper's run keep the cost (steps x layers x 2 passes in training, steps x
  classes passes at test time) modest on a CPU. Adam at 1e-3 replaces the paper's
  optimiser.
* Negatives: the best-scoring wrong label under the current model (``"hardest"``,
  one extra prediction pass per batch; the paper also draws negative labels from the
  model's own predictions), or ``"random"``. The label enters as one-hot times
  ``label_scale=5``. Both chosen on digits' validation split; more steps did not help
  and no damping was within noise, so the paper's damping stays (figures:
  docs/results/ff.md, "Recurrent Forward-Forward").
* Each layer's loss is averaged over the steps (the paper's per-step updates applied
  once per batch).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules._norm import rms_normalise
from locallearn.rules.base import ParamGroup, Rule
from locallearn.rules.ff_common import (
    ELEMENTWISE,
    LABEL_PASS_ROWS,
    NORM_EPS,
    goodness,
    label_chunks,
    wrong_labels,
)


def split_mlp_block(block: nn.Module) -> tuple[nn.Linear, nn.Sequential] | None:
    """``(linear, activation)`` of a block that is [Flatten,] Linear, elementwise...;
    None for any other block."""
    body = getattr(block, "body", None)
    if not isinstance(body, nn.Sequential):
        return None
    mods = [m for m in body if not isinstance(m, nn.Flatten)]
    if not mods or not isinstance(mods[0], nn.Linear) or not all(
            isinstance(m, ELEMENTWISE) for m in mods[1:]):
        return None
    return mods[0], nn.Sequential(*mods[1:])


@RULES.register("ff-recurrent",
                help="Recurrent Forward-Forward: layers read the layer below and above at t-1")
class RecurrentForwardForward(Rule):
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}
    supports_kinds = ("image", "signal", "vector")
    rows_per_example = 2  # positive then negative data

    options = (
        Option("steps", int, "synchronous updates after the bottom-up pass", low=1),
        Option("damping", float, "share of the previous state kept at each update",
               low=0, high=0.99),
        Option("score_from", int, "first step whose goodness counts for prediction", low=1),
        Option("threshold", float, "goodness threshold theta of the logistic loss"),
        Option("label_scale", float, "size of the one-hot label clamped at the top", above=0),
        Option("negatives", str, "wrong labels: random, or the best-scoring wrong one",
               choices=("random", "hardest")),
        Option("label_pass_rows", int, "most rows the every-label goodness pass (hard "
               "negatives, prediction) runs at once, in whole labels; 0: all at once", low=0),
    )

    def __init__(self, network: Network, task: Task, steps: int = 4, damping: float = 0.3,
                 score_from: int = 2, threshold: float = 2.0, label_scale: float = 5.0,
                 negatives: str = "hardest", label_pass_rows: int = LABEL_PASS_ROWS) -> None:
        super().__init__(network, task)
        if score_from > steps:
            raise UserError(f"rule {self.name!r} needs score_from <= steps; got steps={steps}, "
                            f"score_from={score_from}")
        self.damping, self.threshold, self.label_scale = damping, threshold, label_scale
        self.steps, self.score_from, self.negatives = steps, score_from, negatives
        self.label_pass_rows = label_pass_rows
        parts = [split_mlp_block(b) for b in network.blocks]
        if any(p is None for p in parts):
            raise UserError(f"rule {self.name!r} needs an mlp network (each block a Linear and "
                            f"an activation); use --net mlp:W1,W2,...")
        self.linears = [p[0] for p in parts]
        self.activations = [p[1] for p in parts]
        widths = [lin.out_features for lin in self.linears]
        above = widths[1:] + [task.num_classes]
        self.top_down = nn.ModuleList()
        for width, upper in zip(widths, above, strict=True):
            v = nn.Linear(upper, width, bias=False)
            nn.init.kaiming_uniform_(v.weight, a=math.sqrt(5))
            self.top_down.append(v)
        if network.head is not None:
            network.head.requires_grad_(False)

    # -- the recurrent pass --------------------------------------------------
    def label_input(self, labels: Tensor | None, n: int, like: Tensor) -> Tensor:
        """The clamped top: one-hot times ``label_scale`` (None: the neutral label)."""
        c = self.task.num_classes
        if labels is None:
            return like.new_full((n, c), self.label_scale / c)
        return F.one_hot(labels, c).to(like.dtype) * self.label_scale

    def run(self, x: Tensor, top: Tensor) -> list[list[Tensor]]:
        """States ``[t][k]`` for t = 1..steps (after the bottom-up pass at t = 0)."""
        inp = x.flatten(1)
        states, h = [], inp
        with torch.no_grad():
            for lin, act in zip(self.linears, self.activations, strict=True):
                h = act(lin(h if h is inp else rms_normalise(h, NORM_EPS)))
                states.append(h)
        history = []
        for _ in range(self.steps):
            prev = [s.detach() for s in states]  # nothing flows back in time
            states = []
            for k, (lin, act) in enumerate(zip(self.linears, self.activations, strict=True)):
                below = inp if k == 0 else rms_normalise(prev[k - 1], NORM_EPS)
                upper = top if k == len(prev) - 1 else rms_normalise(prev[k + 1], NORM_EPS)
                new = act(lin(below) + self.top_down[k](upper))
                states.append(self.damping * prev[k] + (1 - self.damping) * new)
            history.append(states)
        return history

    def block_modules(self) -> list[nn.Module]:
        # The top-down weights are the hidden layers' own (recurrent) weights: the frozen
        # control keeps them at their random init too.
        return [*self.network.blocks, *self.top_down]

    # -- training ------------------------------------------------------------
    def param_groups(self) -> list[ParamGroup]:
        groups = []
        for k, block in enumerate(self.network.blocks):
            params = [p for p in [*block.parameters(), *self.top_down[k].parameters()]
                      if p.requires_grad]
            if params:
                groups.append(ParamGroup(f"block{k}", params))
        return groups

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        n = x.shape[0]
        if self.negatives == "hardest":
            with torch.no_grad():
                y_neg = wrong_labels(y, self.task.num_classes, self.predict(x))
        else:
            y_neg = wrong_labels(y, self.task.num_classes)
        both = torch.cat([x, x])
        top = self.label_input(torch.cat([y, y_neg]), 2 * n, x)
        history = self.run(both, top)
        out = []
        for k, block in enumerate(self.network.blocks):
            if not any(p.requires_grad for p in [*block.parameters(),
                                                  *self.top_down[k].parameters()]):
                continue
            per_step = []
            for states in history:
                g_pos, g_neg = goodness(states[k]).chunk(2)
                per_step.append((F.softplus(self.threshold - g_pos)
                                 + F.softplus(g_neg - self.threshold)).mean())
            out.append(torch.stack(per_step).mean())
        return out

    # -- inference -----------------------------------------------------------
    def label_goodness(self, x: Tensor) -> list[Tensor]:
        """Per layer, goodness summed over steps score_from..steps, for every candidate
        label: list of (batch, classes). The labels run in chunks of whole labels of at
        most ``label_pass_rows`` rows (each chunk's pass keeps every step's states); rows
        are computed alone, so the chunk size changes no score."""
        n = x.shape[0]
        parts = []
        for labels in label_chunks(n, self.task.num_classes, self.label_pass_rows, x.device):
            c = len(labels)
            history = self.run(x.repeat(c, *([1] * (x.dim() - 1))),
                               self.label_input(labels.repeat_interleave(n), c * n, x))
            scored = history[self.score_from - 1:]
            parts.append([torch.stack([goodness(s[k]) for s in scored]).sum(0).view(c, n).t()
                          for k in range(len(self.linears))])
            del history, scored
        return [torch.cat(per_layer, 1) for per_layer in zip(*parts, strict=True)]

    def predict(self, x: Tensor) -> Tensor:
        return torch.stack(self.label_goodness(x)).sum(0)

    def block_scores(self, x: Tensor) -> list[Tensor]:
        return self.label_goodness(x)

    def predict_with_blocks(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        per_layer = self.label_goodness(x)
        return torch.stack(per_layer).sum(0), per_layer

    def features(self, x: Tensor) -> list[Tensor]:
        """Every layer's last state with the neutral label at the top."""
        return self.run(x, self.label_input(None, x.shape[0], x))[-1]

    def epoch_diagnostics(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """Mean goodness per layer, over all steps, of positive and negative data."""
        with torch.no_grad():
            n = x.shape[0]
            y_neg = wrong_labels(y, self.task.num_classes)
            history = self.run(torch.cat([x, x]),
                               self.label_input(torch.cat([y, y_neg]), 2 * n, x))
            pos, neg = [], []
            for k in range(len(self.linears)):
                g = torch.stack([goodness(s[k]) for s in history]).mean(0)
                p, q = g.chunk(2)
                pos.append(float(p.mean()))
                neg.append(float(q.mean()))
        return {"goodness_positive": pos, "goodness_negative": neg}
