"""Mono-Forward (Gong, Li & Abdulla, 2025): a local cross-entropy at every layer.

Algorithm (per mini-batch, every layer i at once):
    a_i = f(W_i a_{i-1})                 # a_{i-1} detached: nothing flows back
    G_i = a_i M_i^T                      # M_i: the layer's own projection to class scores
    L_i = cross_entropy(G_i, y)          # update W_i and M_i with dL_i only
Prediction: G of the last layer, or of the layer that was best on validation
(``predict_from="best"``).

The network's head serves as the last layer's projection M_L, so
``mlp:500,500`` has the weights it has under backprop plus one projection per
earlier block. Deviation: the projections ``M_i`` (the network's readouts and its
head) carry a bias per class; the paper's ``G_i = a_i M_i^T`` has none.
"""

from __future__ import annotations

from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules.base import BlockwiseRule, cross_entropy


@RULES.register("mono-forward", help="Mono-Forward: per-layer projection to classes, local CE")
class MonoForward(BlockwiseRule):
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}
    supports_kinds = ("image", "signal", "vector", "graph", "text")
    head_in_last_block = True

    options = (Option("predict_from", str, "the last block, or the best on validation",
                      choices=("last", "best")),)

    def __init__(self, network: Network, task: Task, predict_from: str = "last") -> None:
        super().__init__(network, task)
        self.predict_from = predict_from
        self.best_block = len(network.blocks) - 1
        self.projections = nn.ModuleList(
            [network.make_readout(k) for k in range(len(network.blocks) - 1)]
        )

    def readouts(self) -> dict[int, list[nn.Module]]:
        return {k: [m] for k, m in enumerate(self.projections)}

    def project(self, k: int, a: Tensor) -> Tensor:
        """G_k: class scores from block k's activity."""
        if k == len(self.network.blocks) - 1:
            return self.network.head(a)
        return self.projections[k](a)

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(self.project(k, out), y)

    has_block_readout = True

    def block_readout(self, k: int, h: Tensor) -> Tensor:
        return self.project(k, h)

    def on_validation(self, result: dict) -> None:
        per_block = result.get("per_block_accuracy")
        if per_block:
            self.best_block = max(range(len(per_block)), key=per_block.__getitem__)

    def predict(self, x: Tensor) -> Tensor:
        if self.predict_from == "best":
            h = x
            for block in self.network.blocks[: self.best_block + 1]:
                h = block(h)
            return self.project(self.best_block, h)
        return self.network(x)

    def extra_state(self) -> dict:
        return {"best_block": self.best_block}

    def load_extra_state(self, state: dict) -> None:
        self.best_block = state.get("best_block", self.best_block)
