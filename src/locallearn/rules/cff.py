"""Collaborative Forward-Forward (Lorberbom et al., AAAI 2024, "Layer Collaboration
in the Forward-Forward Algorithm").

Algorithm (per mini-batch, every layer at once, each with its own optimiser):
    positive / negative data, normalisation between layers, goodness: as in ``ff``
    forward pass: G_1 .. G_L for positive and negative data
    for each layer k:
        C_k = G_k + gamma * sum_{j != k} stopgrad(G_j)    # the network's goodness,
                                                          # only layer k's own part trainable
        L_k = softplus(theta_L - C_k(pos)) + softplus(C_k(neg) - theta_L)
    theta_L = theta * (1 + gamma * (L - 1))               # threshold for a sum of L goodnesses
Prediction: by default the goodness summed over all layers for every candidate label
(one pass per label), exactly the quantity every layer was trained to make large for
the true label; ``predict="readout"`` gives ``ff``'s linear readout (one pass
instead of one per label). On validation the two are level (mnist5k mlp:500,500, seeds
0-2, best_val_accuracy mean 0.935 goodness, 0.9375 readout, within seed noise;
docs/results/defaults.md), so the default stays the quantity the layers are trained on.

Why: under FF each layer learns to separate positive from negative data on its own,
so a layer keeps working on samples that the layers below already got right. With
the others' goodness in its probability, layer k's gradient is large only for
samples the *network* still gets wrong, so the layers share the work.

Locality: the other layers' goodness enters only as a constant (detached), so loss k
still reaches only layer k's weights. But it needs every layer's goodness of the
same batch before any layer's loss exists, so the losses cannot be streamed block by
block. Split into pipeline stages (random negatives, goodness prediction), the
goodness summed over earlier layers travels forward with the activation and the
last stage sends the total back, like dfa's output error (``--staleness k``: a stage
may use a total up to k micro-batches late, see :mod:`locallearn.parallel.stages`).

Deviations from the paper: ``gamma`` (default 1, the paper's setting) weights the
other layers' goodness; the threshold grows with the number of layers so the
per-layer operating point matches ``ff``; the rest follows ``ff`` (mean goodness,
hardest-wrong-label negatives, the optional readout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules.ff_common import LABEL_PASS_ROWS, GoodnessRule


@RULES.register("cff", help="Collaborative Forward-Forward: each layer's loss sees all layers' "
                            "goodness (others detached)")
class CollaborativeForwardForward(GoodnessRule):
    defaults = {"epochs": 12, "lr": 2e-3, "optimizer": "adam", "batch_size": 50}
    # Loss k needs every layer's goodness: no streaming; stages exchange the sum.
    shares_goodness = True

    options = (Option("gamma", float, "weight of the other layers' goodness", low=0),)

    def __init__(
        self, network: Network, task: Task, gamma: float = 1.0,
        threshold: float = 2.0, goodness: str = "mean",
        negatives: str = "hardest", predict: str = "goodness", skip_first: bool = False,
        label_scale: float = 5.0, label_pass_rows: int = LABEL_PASS_ROWS,
    ) -> None:
        super().__init__(network, task, threshold=threshold, goodness=goodness, negatives=negatives,
                         predict=predict, skip_first=skip_first, label_scale=label_scale,
                         label_pass_rows=label_pass_rows)
        self.gamma = gamma

    def layer_losses(self, g_pos: list[Tensor], g_neg: list[Tensor]) -> list[Tensor]:
        goodness = [torch.cat([p, n]) for p, n in zip(g_pos, g_neg, strict=True)]
        total = sum(g.detach() for g in goodness)
        return [self.shared_loss(g, total - g.detach(), len(goodness)) for g in goodness]

    def shared_loss(self, g: Tensor, others: Tensor, layers: int) -> Tensor:
        """Loss of one layer from its goodness ``g`` (positive rows, then negative) and
        the other ``layers - 1`` layers' summed goodness ``others`` (a constant)."""
        theta = self.threshold * (1 + self.gamma * (layers - 1))
        c_pos, c_neg = (g + self.gamma * others).chunk(2)
        return self.collab_loss(c_pos, c_neg, theta)

    def collab_loss(self, c_pos: Tensor, c_neg: Tensor, theta: float) -> Tensor:
        return (F.softplus(theta - c_pos) + F.softplus(c_neg - theta)).mean()
