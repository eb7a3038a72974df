"""SymBa (Lee & Song, 2023): Forward-Forward with a symmetric loss on the goodness gap.

Algorithm (per mini-batch, every layer at once, each with its own optimiser):
    positive / negative data, normalisation between layers, goodness: as in ``ff``
    for each layer k:
        h_k = relu(W_k normalise(h_{k-1}))         # input detached: nothing flows back
        Delta_k = G_k(pos) - G_k(neg)              # gap of the same sample's two versions
        L_k = softplus(-alpha * Delta_k)           # = log(1 + exp(-alpha * Delta_k))
Prediction: as in ``ff`` (readout in one pass, or goodness summed over layers per label).

Why: Hinton's loss pushes positive goodness above a threshold and negative goodness
below it as two separate terms, and their gradients are unbalanced (one side
saturates first). SymBa scores the *gap* between each positive and its own negative,
so both get equal and opposite gradients and no threshold is needed.

Deviations from the paper: goodness is the mean (not the sum) of squared activities
by default, so ``alpha`` does not depend on the layer's width (the paper's alpha=4
with sums; mean goodness uses a larger alpha, default 10); the negative is the
same image with a wrong label (hardest by goodness by default, see ``ff``), the
same labelling scheme as the paper's supervised experiments; the linear readout
is an addition (as in ``ff``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules.ff_common import LABEL_PASS_ROWS, GoodnessRule


@RULES.register("symba", help="SymBa: Forward-Forward with a symmetric loss on the goodness gap")
class SymBa(GoodnessRule):
    defaults = {"epochs": 12, "lr": 2e-3, "optimizer": "adam", "batch_size": 50}

    options = (Option("alpha", float, "sharpness of the symmetric loss", above=0),)

    def __init__(
        self, network: Network, task: Task, alpha: float = 10.0,
        threshold: float = 2.0, goodness: str = "mean",
        negatives: str = "hardest", predict: str = "readout", skip_first: bool = False,
        label_scale: float = 5.0, label_pass_rows: int = LABEL_PASS_ROWS,
    ) -> None:
        super().__init__(network, task, threshold=threshold, goodness=goodness, negatives=negatives,
                         predict=predict, skip_first=skip_first, label_scale=label_scale,
                         label_pass_rows=label_pass_rows)
        self.alpha = alpha

    def pair_loss(self, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        return F.softplus(-self.alpha * (g_pos - g_neg)).mean()
