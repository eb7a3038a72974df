"""Scalable Forward-Forward (Krutsylo, 2025) for convolutional networks.

Algorithm (per mini-batch, one unit after another, each with its own optimiser):
    units = consecutive groups of ``blocks_per_unit`` network blocks
    h = x
    for each unit u:
        h = unit_u(layer_norm(stopgrad(h)))    # first unit: the raw input; inside a unit
                                               # backprop runs through all its blocks
        z = aux_u(h)                           # 1x1 conv, one output channel per class
        goodness="channel":  G_c = mean over positions of z_c^2          (batch, classes)
            L_u = cross_entropy(G, y)          # the true class is the positive goodness,
                                               # every other class a negative one
        goodness="position": G_c,p = z_c,p^2 at every position p
            L_u = mean over p of cross_entropy(G_:,p, y)
Prediction (``predict``): "goodness" averages every unit's log-softmax of its class
goodness (each unit votes), "last" uses the last unit's only, "head" the network's
head trained with cross-entropy on the detached last features. All in one pass.
``per_layer_test_accuracy`` is each unit's vote, reported at the unit's last block.

Unlike ``ff``, the label is not written into the input and there is no second
(negative) pass: the goodness of each class's channel is compared with the others.
``blocks_per_unit=1`` trains every block on its own (the paper's pure FF);
``blocks_per_unit>1`` is the paper's hybrid mode: ordinary backprop inside a unit
(e.g. a residual block made of several conv layers), none across units.

Deviations from the paper: the class goodness is turned into a loss with softmax
cross-entropy over classes (true class positive, the rest negative); the layer
normalisation has no learned affine part; units train on the same mini-batch in
one sweep rather than one unit after another per mini-batch (the same gradients,
as nothing flows back between units). On flat (MLP) features the auxiliary map is
a linear layer and both goodness kinds coincide.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules.base import BlockwiseRule, ParamGroup, StagePlan, Staging

GOODNESS = ("channel", "position")
PREDICT = ("goodness", "last", "head")


def class_map(shape: tuple[int, ...], num_classes: int, kernel_size: int) -> nn.Module:
    """The auxiliary map from a block's output to one channel (or unit) per class."""
    if len(shape) == 3:
        return nn.Conv2d(shape[0], num_classes, kernel_size, padding=kernel_size // 2)
    if len(shape) == 2:
        return nn.Conv1d(shape[0], num_classes, kernel_size, padding=kernel_size // 2)
    n = 1
    for d in shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, num_classes))


@RULES.register("sff", help="Scalable Forward-Forward: per-class channel goodness for conv nets; "
                            "hybrid mode backprops inside a block only")
class ScalableForwardForward(BlockwiseRule):
    defaults = {"epochs": 8, "lr": 2e-3, "optimizer": "adam", "batch_size": 64}

    options = (
        Option("goodness", str, "goodness per channel or per position", choices=GOODNESS),
        Option("blocks_per_unit", int, "blocks trained together by one loss", low=1),
        Option("predict", str, "by goodness, the last unit's map, or the head",
               choices=PREDICT),
        Option("kernel_size", int, "kernel of each unit's class map (odd)", low=1),
    )

    def __init__(
        self, network: Network, task: Task, goodness: str = "channel", blocks_per_unit: int = 1,
        predict: str = "goodness", kernel_size: int = 1,
    ) -> None:
        super().__init__(network, task)
        n = len(network.blocks)
        if not 1 <= blocks_per_unit <= n:
            raise UserError(f"rule 'sff' option blocks_per_unit must be between 1 and the "
                            f"number of blocks ({n}); got {blocks_per_unit}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserError(f"rule 'sff' option kernel_size must be a positive odd number; "
                            f"got {kernel_size}")
        self.goodness_kind = goodness
        self.predict_with = predict
        self.units = [list(range(a, min(a + blocks_per_unit, n)))
                      for a in range(0, n, blocks_per_unit)]
        self.starts = {u[0] for u in self.units}
        self.aux = nn.ModuleList([class_map(network.blocks[u[-1]].out_shape, task.num_classes,
                                            kernel_size) for u in self.units])
        self.unit_of_last = {u[-1]: i for i, u in enumerate(self.units)}

    @property
    def staging(self) -> StagePlan:
        # Pipeline stages assume one loss per block: only the pure (per-block) mode splits.
        if len(self.units) < len(self.network.blocks):
            return StagePlan(Staging.NONE, "a unit of several blocks has one loss; stage it "
                                           "with --set rule.blocks_per_unit=1")
        return StagePlan(Staging.BLOCKWISE)

    # -- training ------------------------------------------------------------
    def readouts(self) -> dict[int, list[nn.Module]]:
        return {u[-1]: [self.aux[i]] for i, u in enumerate(self.units)}

    def param_groups(self) -> list[ParamGroup]:
        groups = []
        for i, unit in enumerate(self.units):
            params = [p for k in unit for p in self.network.blocks[k].parameters()
                      if p.requires_grad]
            params += list(self.aux[i].parameters())
            name = f"block{unit[0]}" if len(unit) == 1 else f"blocks{unit[0]}-{unit[-1]}"
            groups.append(ParamGroup(name, params))
        head = self.network.head
        if head is not None and any(p.requires_grad for p in head.parameters()):
            groups.append(ParamGroup("head", [p for p in head.parameters() if p.requires_grad]))
        return groups

    def block_input(self, k: int, h: Tensor) -> Tensor:
        if k not in self.starts:
            return h  # inside a unit: backprop goes through
        if k == 0:
            return h.detach()
        # Between units: cut the graph and pass on only the normalised pattern.
        return F.layer_norm(h.detach(), h.shape[1:])

    def class_goodness(self, u: int, h: Tensor) -> Tensor:
        """(batch, classes) for "channel", (batch, classes, positions) for "position"."""
        z = self.aux[u](h)
        sq = z.square()
        if sq.dim() == 2:
            return sq
        sq = sq.flatten(2)
        return sq.mean(2) if self.goodness_kind == "channel" else sq

    def unit_loss(self, u: int, h: Tensor, y: Tensor) -> Tensor:
        g = self.class_goodness(u, h)
        if g.dim() == 3:  # one classification per position
            return F.cross_entropy(g, y[:, None].expand(-1, g.shape[2]))
        return F.cross_entropy(g, y)

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        # Used by pipeline stages (one block per unit there).
        return self.unit_loss(self.unit_of_last[k], out, y)

    def iter_losses(self, x: Tensor, y: Tensor) -> Iterator[Tensor]:
        h = x
        for u, unit in enumerate(self.units):
            for k in unit:
                h = self.network.blocks[k](self.block_input(k, h))
            yield self.unit_loss(u, h, y)
        head = self.network.head
        if head is not None and any(p.requires_grad for p in head.parameters()):
            yield self.head_loss(h, y)

    # -- inference -----------------------------------------------------------
    def unit_scores(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every unit's class log-probabilities from its goodness, and the last features."""
        h, scores = x, []
        for u, unit in enumerate(self.units):
            for k in unit:
                h = self.network.blocks[k](self.block_input(k, h))
            g = self.class_goodness(u, h)
            logp = F.log_softmax(g, 1)
            scores.append(logp.mean(2) if logp.dim() == 3 else logp)
        return scores, h

    def block_scores(self, x: Tensor) -> list[Tensor]:
        """One entry per block: the scores of the last unit finished by that block.

        Inside a unit (hybrid mode) no new vote exists yet, so a block repeats the
        previous unit's scores, and blocks inside the first unit score zeros (chance):
        what an exit after that block could predict.
        """
        scores, out = self.unit_scores(x)[0], []
        current = x.new_zeros(x.shape[0], self.task.num_classes)
        for k in range(len(self.network.blocks)):
            if k in self.unit_of_last:
                current = scores[self.unit_of_last[k]]
            out.append(current)
        return out

    def predict(self, x: Tensor) -> Tensor:
        scores, h = self.unit_scores(x)
        if self.predict_with == "head" and self.network.head is not None:
            return self.network.head(h)
        if self.predict_with == "last":
            return scores[-1]
        return torch.stack(scores).mean(0)
