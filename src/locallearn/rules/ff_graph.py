"""ForwardGNN's Forward-Forward rules for graphs: ``ff-label``, ``ff-vn``, ``ff-link``.

Park et al., "Forward Learning of Graph Neural Networks" (ICLR 2024), Sec. 3.1.
Every GNN layer k learns, at once and on its own, to give high *goodness*
``G(z) = sum_j z_j^2`` to positive data and low goodness to negative data::

    z_k  = GNN_k( normalise(z_{k-1}).detach() )         # normalise: row L2
    L_k  = BCE( G(z_k^+) - theta, 1 ) + mean_neg BCE( G(z_k^-) - theta, 0 )
    (theta = 2; losses over the training nodes, or over the node pairs for links)

* ``ff-label`` (node classification, label appending): the input is the node's
  features with a label vector appended: one-hot of the true class of a
  training node (positive) or of ``num_negatives`` (2) random wrong classes
  (negatives, each its own forward pass); uniform ``1/C`` for all other nodes.
  Layer 0 gets ``C`` more input channels.
* ``ff-vn`` (node classification, virtual label nodes): one virtual node per class
  with fixed random features; positive graph: each training node joined (both
  ways) to its class's virtual node; negative graphs: to a wrong class's virtual
  node. As in the paper's code, every layer's negative graphs take the positive
  graph's features from the layer below (only the links differ).
* ``ff-link`` (link prediction): positive data are the split's edges, negative
  data sampled non-edges; the goodness of a pair is ``G(z_u * z_v)``.

Prediction. Node rules try every class ``c``: training nodes keep their own label
(or virtual-node link), every other node gets ``c``; a node's score for ``c`` is
its goodness ``mean_j z_j^2 - theta`` summed over layers (one forward pass per
class). Links: the mean over layers of ``sigmoid(G(z_u * z_v) - theta)``.

Training and prediction use different goodness: the loss reads the *summed*
squares ``sum_j z_j^2`` (against theta = 2), prediction the *mean* ``mean_j z_j^2``
(a per-layer constant factor 1/width, so each layer's class ranking is the same,
but layers of different widths weigh differently in the sum over layers).

Deviations from the paper's code: all layers train at once (the code trains one
layer to convergence, then the next); at prediction time every non-training
node, not only the evaluated split's nodes, is given the candidate label, and
the validation nodes' labels are not added to the known ones for testing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from locallearn.data.base import IGNORE_INDEX, Task
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules._graph import (
    GraphForwardRule,
    add_virtual_nodes,
    ff_loss,
    pair_products,
    two_class,
    wrong_classes,
)
from locallearn.rules._norm import l2_normalise_rows


def sum_goodness(z: Tensor) -> Tensor:
    return z.square().sum(-1)


class GraphFF(GraphForwardRule):
    """Shared settings of the graph Forward-Forward rules."""

    options = (
        Option("theta", float, "goodness threshold"),
        Option("num_negatives", int, "wrong classes per training node (one pass each)", low=1),
    )

    def __init__(self, network: Network, task: Task, theta: float = 2.0,
                 num_negatives: int = 2) -> None:
        super().__init__(network, task)
        self.theta = theta
        self.num_negatives = num_negatives
        self.num_classes = task.num_classes

    def contrast(self, pos: Tensor, negs: list[Tensor]) -> Tensor:
        """FF loss of positive and negative goodness values."""
        neg = torch.stack([ff_loss(g, False, self.theta) for g in negs]).mean()
        return ff_loss(pos, True, self.theta) + neg

    def negatives_for(self, y: Tensor) -> list[Tensor]:
        return wrong_classes(y, self.num_classes, count=self.num_negatives)


@RULES.register("ff-label", help="ForwardGNN forward-forward, one-hot label appended to node "
                "features (graphs)")
class GraphFFLabel(GraphFF):
    tasks = ("node",)

    def __init__(self, network: Network, task: Task, theta: float = 2.0,
                 num_negatives: int = 2) -> None:
        super().__init__(network, task, theta, num_negatives)
        network.blocks[0].widen_input(task.num_classes)

    def with_labels(self, x: Tensor, labels: Tensor) -> Tensor:
        """Features + one-hot of ``labels`` (uniform where IGNORE_INDEX)."""
        c = self.num_classes
        appended = torch.full((x.shape[0], c), 1.0 / c, device=x.device)
        known = labels != IGNORE_INDEX
        appended[known] = F.one_hot(labels[known], c).to(appended.dtype)
        return torch.cat([x, appended], dim=1)

    def chains(self, batch: Any, views: list[Tensor]) -> list[list[Tensor]]:
        """Each view's outputs at every layer (``out[view][k]``), inputs detached."""
        self.bind(batch.x, batch.edge_index)
        outs = []
        for h in views:
            layer_outs = []
            for block in self.network.blocks:
                h = block(l2_normalise_rows(h.detach()))
                layer_outs.append(h)
            outs.append(layer_outs)
        return outs

    def losses(self, x: Any, y: Tensor) -> list[Tensor]:
        known = y != IGNORE_INDEX
        views = [self.with_labels(x.x, labels) for labels in [y, *self.negatives_for(y)]]
        pos, *negs = self.chains(x, views)
        return [self.contrast(sum_goodness(pos[k][known]),
                              [sum_goodness(n[k][known]) for n in negs])
                for k in range(len(self.network.blocks))]

    @torch.no_grad()
    def class_goodness(self, x: Any) -> Tensor:
        """(classes, layers, nodes): goodness of every candidate label at every layer."""
        known = self.train_labels(x)
        views = []
        for c in range(self.num_classes):
            labels = torch.where(known != IGNORE_INDEX, known, torch.full_like(known, c))
            views.append(self.with_labels(x.x, labels))
        outs = self.chains(x, views)
        return torch.stack([torch.stack([z.square().mean(-1) - self.theta for z in per_class])
                            for per_class in outs])

    def predict(self, x: Any) -> Tensor:
        return self.class_goodness(x).sum(1).t()

    def block_scores(self, x: Any) -> list[Tensor]:
        g = self.class_goodness(x)
        return [g[:, k].t() for k in range(g.shape[1])]


@RULES.register("ff-vn", help="ForwardGNN forward-forward with virtual label nodes (graphs)")
class GraphFFVirtualNodes(GraphFF):
    tasks = ("node",)

    options = (Option("bidirectional", bool, "virtual label nodes linked both ways"),)

    def __init__(self, network: Network, task: Task, theta: float = 2.0,
                 num_negatives: int = 2, bidirectional: bool = True) -> None:
        super().__init__(network, task, theta, num_negatives)
        self.bidirectional = bidirectional
        self.register_buffer("virtual_features",
                             torch.randn(task.num_classes, task.input_shape[0]))

    def graphs(self, batch: Any, links: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Augmented features (same for every link pattern) and one edge_index per pattern."""
        x = None
        edges = []
        for link_to in links:
            x, edge_index = add_virtual_nodes(batch.x, batch.edge_index, link_to,
                                              self.virtual_features, self.bidirectional)
            edges.append(edge_index)
        return x, edges

    def run(self, x: Tensor, edges: list[Tensor], shared: bool) -> list[list[Tensor]]:
        """``out[k][g]``: layer k's output on graph g. ``shared``: every graph's layer
        input is graph 0's output from the layer below (training, as in the paper);
        otherwise each graph runs its own chain (class-by-class prediction)."""
        inputs = [x] * len(edges)
        outs = []
        for block in self.network.blocks:
            layer = []
            for g, edge_index in enumerate(edges):
                self.bind(x, edge_index)
                layer.append(block(l2_normalise_rows(inputs[g].detach())))
            outs.append(layer)
            inputs = [layer[0]] * len(edges) if shared else layer
        return outs

    def losses(self, x: Any, y: Tensor) -> list[Tensor]:
        n = x.x.shape[0]
        known = torch.nonzero(y != IGNORE_INDEX).flatten()
        feats, edges = self.graphs(x, [y, *self.negatives_for(y)])
        outs = self.run(feats, edges, shared=True)
        losses = []
        for layer in outs:
            pos, *negs = [sum_goodness(z[:n][known]) for z in layer]
            losses.append(self.contrast(pos, negs))
        return losses

    @torch.no_grad()
    def class_goodness(self, x: Any) -> Tensor:
        n = x.x.shape[0]
        known = self.train_labels(x)
        links = [torch.where(known != IGNORE_INDEX, known, torch.full_like(known, c))
                 for c in range(self.num_classes)]
        feats, edges = self.graphs(x, links)
        outs = self.run(feats, edges, shared=False)
        return torch.stack([torch.stack([z[:n].square().mean(-1) - self.theta for z in layer])
                            for layer in outs]).transpose(0, 1)

    def predict(self, x: Any) -> Tensor:
        return self.class_goodness(x).sum(1).t()

    def block_scores(self, x: Any) -> list[Tensor]:
        g = self.class_goodness(x)
        return [g[:, k].t() for k in range(g.shape[1])]


@RULES.register("ff-link", help="ForwardGNN forward-forward for link prediction: edges are "
                "positive, non-edges negative data")
class GraphFFLink(GraphFF):
    tasks = ("link",)

    def layer_outputs(self, batch: Any) -> list[Tensor]:
        self.bind(batch.x, batch.edge_index, batch.edge_label_index)
        h, outs = batch.x, []
        for block in self.network.blocks:
            h = block(l2_normalise_rows(h.detach()))
            outs.append(h)
        return outs

    def losses(self, x: Any, y: Tensor) -> list[Tensor]:
        losses = []
        for z in self.layer_outputs(x):
            g = sum_goodness(pair_products(z, x.edge_label_index))
            losses.append(self.contrast(g[y == 1], [g[y == 0]]))
        return losses

    @torch.no_grad()
    def layer_probabilities(self, x: Any) -> list[Tensor]:
        return [torch.sigmoid(torch.nan_to_num(
            sum_goodness(pair_products(z, x.edge_label_index)) - self.theta))
            for z in self.layer_outputs(x)]

    def predict(self, x: Any) -> Tensor:
        return two_class(torch.stack(self.layer_probabilities(x)).mean(0))

    def block_scores(self, x: Any) -> list[Tensor]:
        return [two_class(p) for p in self.layer_probabilities(x)]
