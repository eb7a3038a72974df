"""Pieces shared by the ForwardGNN rules (private module: registers no rule).

ForwardGNN: Park et al., "Forward Learning of Graph Neural Networks", ICLR 2024.
The rules run on :mod:`locallearn.networks.gnn` networks and read the graph
from the batch (``x``, ``edge_index``; ``train_y`` for node classification,
``edge_label_index`` for link prediction).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from locallearn.data.base import IGNORE_INDEX, Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.rules.base import ParamGroup, Rule


def add_virtual_nodes(x: Tensor, edge_index: Tensor, link_to: Tensor, features: Tensor,
                      bidirectional: bool = True) -> tuple[Tensor, Tensor]:
    """Append one virtual node per class; node ``i`` gets an edge to virtual node
    ``link_to[i]`` (none where ``link_to[i]`` is IGNORE_INDEX).

    Returns the augmented features (real nodes first, then the ``C`` virtual nodes
    with ``features``) and the augmented edge_index.
    """
    n = x.shape[0]
    nodes = torch.nonzero(link_to != IGNORE_INDEX).flatten()
    virtual = n + link_to[nodes]
    if bidirectional:
        extra = torch.stack([torch.cat([nodes, virtual]), torch.cat([virtual, nodes])])
    else:
        extra = torch.stack([nodes, virtual])
    return torch.cat([x, features.to(x.dtype)]), torch.cat([edge_index, extra], dim=1)


def wrong_classes(y: Tensor, num_classes: int, generator: torch.Generator | None = None,
                  count: int = 1) -> list[Tensor]:
    """``count`` different wrong classes per node (IGNORE_INDEX stays IGNORE_INDEX)."""
    n = y.shape[0]
    r = torch.rand(n, num_classes, generator=generator).to(y.device)
    known = y != IGNORE_INDEX
    r[known, y[known]] = 2.0  # sorts last: never drawn
    order = torch.argsort(r, dim=1)
    out = []
    for i in range(min(count, num_classes - 1)):
        wrong = order[:, i].clone()
        wrong[~known] = IGNORE_INDEX
        out.append(wrong)
    return out


def ff_loss(goodness: Tensor, positive: bool, theta: float) -> Tensor:
    """Forward-Forward logistic loss on ``goodness - theta`` (target 1 or 0)."""
    logits = goodness - theta
    target = torch.ones_like(logits) if positive else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def pair_products(z: Tensor, pairs: Tensor) -> Tensor:
    """``z_u * z_v`` for every pair (u, v): shape (pairs, width)."""
    return z[pairs[0]] * z[pairs[1]]


def two_class(p: Tensor) -> Tensor:
    """Probabilities of "edge" -> two-class scores ``[1 - p, p]``."""
    return torch.stack([1 - p, p], dim=-1)


def graph_of(x: Tensor, edge_index: Tensor, edge_label_index: Tensor | None = None) -> Any:
    return SimpleNamespace(x=x, edge_index=edge_index, edge_label_index=edge_label_index)


class GraphForwardRule(Rule):
    """Base of the ForwardGNN rules: GNN blocks, one loss per block, no head.

    The network's own head is not used (predictions come from the layers'
    embeddings), so it is frozen and left out of the parameter groups.
    """

    supports_kinds = ("graph",)
    tasks: ClassVar[tuple[str, ...]] = ("node", "link")
    defaults = {"epochs": 200, "lr": 1e-3, "optimizer": "adam", "batch_size": 1,
                "weight_decay": 5e-4}

    def __init__(self, network: Network, task: Task) -> None:
        super().__init__(network, task)
        if not hasattr(network, "context"):
            raise UserError(f"rule {self.name!r} needs a graph network (gcn:, sage:, gat:), "
                            f"got {network.spec!r}")
        self.graph_task = network.graph_task
        if self.graph_task not in self.tasks:
            hint = " (for links use ff-link, sf, sf-top-input or sf-top-loss)" \
                if self.graph_task == "link" else ""
            raise UserError(f"rule {self.name!r} does not do the {self.graph_task} task{hint}")
        if network.head is not None:
            network.head.requires_grad_(False)

    def param_groups(self) -> list[ParamGroup]:
        return self.block_groups()

    def bind(self, x: Tensor, edge_index: Tensor, pairs: Tensor | None = None) -> None:
        """Point the network's blocks at this graph (the rule runs blocks on tensors)."""
        self.network.context.bind(graph_of(x, edge_index, pairs))

    @staticmethod
    def train_labels(batch: Any) -> Tensor:
        y = getattr(batch, "train_y", None)
        if y is None:
            raise UserError("ForwardGNN node rules need batch.train_y (labels of the training "
                            "nodes); use a locallearn graph dataset")
        return y
