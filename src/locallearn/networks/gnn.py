"""Graph neural networks (``gcn:128,128``, ``sage:...``, ``gat:...``) from torch_geometric layers.

Each block is one message-passing layer followed by ReLU (GAT: 4 heads,
concatenated), as in ForwardGNN's ``GNNConv``.

How blocks see the graph: a network's input is a graph batch (anything with
``.x`` and ``.edge_index``, e.g. :class:`locallearn.data.graphs.GraphBatch`). The
first block reads the batch, records its ``edge_index`` (and, for link
prediction, the node pairs to score) in the network's :class:`GraphContext`, and
returns a plain node-feature tensor ``(num_nodes, width)``. Later blocks, the
head and readouts take plain tensors and read the graph from that shared context.
So to every learning rule a GNN looks like a network on a "batch" of nodes:
``h[k]`` is ``(nodes, width)``, targets are ``(nodes,)`` with IGNORE_INDEX outside
the split, and generic code (detach, masks, readouts) works unchanged. A forward
pass must therefore start at block 0 (which every rule does).

Heads: node classification uses a linear layer per node. Link prediction
(``task="link"``) scores each node pair ``(u, v)`` of ``batch.edge_label_index``
by the dot product ``s = <z_u, z_v>`` and returns two-class scores ``[0, s]``, so
cross-entropy with targets 1 (edge) / 0 (non-edge) is the usual binary
cross-entropy on ``s`` and every classification rule trains link predictors too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from locallearn.errors import UserError
from locallearn.networks import NETWORKS, parse_int_list
from locallearn.networks.network import Block, Network
from locallearn.options import Option, declare

GNN_TASKS = ("node", "link")
GAT_HEADS = 4
GRAPH_TASK = Option("task", str, "what the head predicts: node classes or links (the graph "
                    "datasets set it)", choices=GNN_TASKS)


class GraphContext:
    """The graph the current forward pass runs on (set by the first block)."""

    def __init__(self) -> None:
        self.edge_index: Tensor | None = None
        self.edge_label_index: Tensor | None = None
        self.num_nodes: int = 0

    def bind(self, batch: Any) -> Tensor:
        """Record ``batch``'s graph and return its node features."""
        if not hasattr(batch, "edge_index") or not hasattr(batch, "x"):
            raise UserError("a graph network needs a graph batch with .x and .edge_index "
                            "(use a graph dataset such as csbm, karate or cora)")
        self.edge_index = batch.edge_index
        self.edge_label_index = getattr(batch, "edge_label_index", None)
        self.num_nodes = int(batch.x.shape[0])
        return batch.x

    def require_edges(self) -> Tensor:
        if self.edge_index is None:
            raise RuntimeError("graph block called before block 0 saw a graph batch")
        return self.edge_index


def make_conv(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    from torch_geometric.nn import GATConv, GCNConv, SAGEConv

    if kind == "gcn":
        return GCNConv(in_channels, out_channels)
    if kind == "sage":
        return SAGEConv(in_channels, out_channels, aggr="mean")
    if kind == "gat":
        if out_channels % GAT_HEADS:
            raise UserError(f"gat widths must be multiples of {GAT_HEADS} (heads), "
                            f"got {out_channels}")
        return GATConv(in_channels, out_channels // GAT_HEADS, heads=GAT_HEADS)
    raise UserError(f"unknown graph layer {kind!r}; use gcn, sage or gat")


class GraphBlock(Block):
    """One message-passing layer + ReLU; block 0 also binds the graph batch."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, context: GraphContext,
                 first: bool, name: str = "") -> None:
        super().__init__(make_conv(kind, in_channels, out_channels), name=name)
        self.kind = kind
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.first = first
        # A plain attribute, not a module: the context holds tensors of the current batch only.
        self.__dict__["context"] = context
        self.in_shape, self.out_shape = (in_channels,), (out_channels,)

    def forward(self, x: Any) -> Tensor:
        if self.first and not isinstance(x, Tensor):
            x = self.context.bind(x)
        return torch.relu(self.body(x, self.context.require_edges()))

    def widen_input(self, extra: int) -> None:
        """Rebuild the layer with ``extra`` more input channels (fresh weights).

        For rules that feed more than the previous block's output (labels appended
        to node features, top-down signals concatenated to the input).
        """
        device = next(self.body.parameters()).device
        self.in_channels += extra
        self.body = make_conv(self.kind, self.in_channels, self.out_channels).to(device)
        self.in_shape = (self.in_channels,)


class NodeHead(nn.Module):
    """Class scores per node."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h)


class LinkHead(nn.Module):
    """Two-class scores ``[0, <p(z_u), p(z_v)>]`` for every pair in ``edge_label_index``.

    ``p`` is the identity for the network's own head and a learned linear map for
    the per-block readouts that local rules add (``projection=True``).
    """

    def __init__(self, context: GraphContext, in_features: int, projection: bool = False) -> None:
        super().__init__()
        self.__dict__["context"] = context
        self.projection = nn.Linear(in_features, in_features) if projection else None

    def forward(self, h: Tensor) -> Tensor:
        pairs = self.context.edge_label_index
        if pairs is None:
            raise UserError("link prediction needs node pairs (batch.edge_label_index); "
                            "use a graph dataset with --task link")
        if self.projection is not None:
            h = self.projection(h)
        s = (h[pairs[0]] * h[pairs[1]]).sum(-1, keepdim=True)
        return torch.cat([torch.zeros_like(s), s], dim=-1)


class GraphNetwork(Network):
    """A :class:`Network` of :class:`GraphBlock` whose input is a graph batch."""

    def __init__(self, blocks: Sequence[GraphBlock], head: nn.Module | None,
                 input_shape: Sequence[int], num_classes: int, context: GraphContext,
                 task: str, spec: str = "custom") -> None:
        super().__init__(blocks, head, input_shape, num_classes, spec=spec,
                         readout_builder=self._readout)
        self.__dict__["context"] = context
        self.graph_task = task

    def _readout(self, block: Block, num_outputs: int) -> nn.Module:
        if self.graph_task == "link":
            return LinkHead(self.context, block.out_features, projection=True)
        return NodeHead(block.out_features, num_outputs)

    def _infer_shapes(self) -> None:
        # Shapes are known from the layer widths; a GNN cannot run on a zero tensor.
        pass

    def rows(self, x: Any) -> int:
        return int(x.x.shape[0])  # one row per node

    def bind(self, x: Any) -> None:
        device = next(self.parameters()).device
        self.context.bind(x.to(device) if hasattr(x, "to") else x)


@NETWORKS.register("gcn", help="gcn:W1,W2,... graph convolution layers (Kipf & Welling)")
@declare(GRAPH_TASK)
def gcn(argument: str, input_shape: tuple[int, ...], num_classes: int,
        task: str = "node") -> GraphNetwork:
    return graph_network("gcn", argument, input_shape, num_classes, task)


@NETWORKS.register("sage", help="sage:W1,W2,... GraphSAGE layers, mean aggregation")
@declare(GRAPH_TASK)
def sage(argument: str, input_shape: tuple[int, ...], num_classes: int,
         task: str = "node") -> GraphNetwork:
    return graph_network("sage", argument, input_shape, num_classes, task)


@NETWORKS.register("gat", help="gat:W1,W2,... graph attention layers, 4 heads concatenated")
@declare(GRAPH_TASK)
def gat(argument: str, input_shape: tuple[int, ...], num_classes: int,
        task: str = "node") -> GraphNetwork:
    return graph_network("gat", argument, input_shape, num_classes, task)


def graph_network(kind: str, argument: str, input_shape: tuple[int, ...], num_classes: int,
                  task: str = "node") -> GraphNetwork:
    widths = parse_int_list(f"{kind}:{argument}", argument, default=[128, 128])
    if len(input_shape) != 1:
        raise UserError(f"{kind} needs node features of shape (features,), got {input_shape}; "
                        f"use a graph dataset (csbm, karate, cora, ...)")
    context = GraphContext()  # task: checked by create_network against GRAPH_TASK
    blocks, in_channels = [], input_shape[0]
    for i, width in enumerate(widths):
        blocks.append(GraphBlock(kind, in_channels, width, context, first=i == 0,
                                 name=f"{kind}{i}"))
        in_channels = width
    head = LinkHead(context, in_channels) if task == "link" else NodeHead(in_channels, num_classes)
    return GraphNetwork(blocks, head, input_shape, num_classes, context, task)
