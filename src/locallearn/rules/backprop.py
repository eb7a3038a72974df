"""Backpropagation: the baseline every other rule is measured against.

Algorithm: one forward pass through all blocks and the head, cross-entropy on
the output, the exact gradient of that single loss for every parameter.
There is one parameter group (the whole network): nothing is local.
"""

from __future__ import annotations

from torch import Tensor

from locallearn.rules import RULES
from locallearn.rules.base import ParamGroup, Rule, cross_entropy


@RULES.register("backprop", help="end-to-end backpropagation of the output cross-entropy")
class Backprop(Rule):
    needs_gradient_through_blocks = True
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}
    supports_kinds = ("image", "signal", "vector", "graph", "text")

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("network", [p for p in self.network.parameters() if p.requires_grad])]

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        return [cross_entropy(self.network(x), y)]
