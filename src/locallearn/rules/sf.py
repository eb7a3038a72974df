"""ForwardGNN single-forward learning: ``sf``, ``sf-top-input``, ``sf-top-loss``.

Park et al., "Forward Learning of Graph Neural Networks" (ICLR 2024), Sec. 3.2-3.3.
No negative inputs: one forward pass, each GNN layer learns by itself.

Node classification (virtual label nodes). The graph gets one virtual node per
class with fixed random features; every training node is joined (both ways) to
the virtual node of its class. Per step, for every layer k at once::

    z_k  = GNN_k( normalise(input_k).detach() )           # normalise: row L2
    L_k  = CE( z_k[train] @ z_k[virtual]^T / T, y[train] ) # a node should resemble
                                                           # its class's virtual node
Link prediction: no virtual nodes; ``L_k = BCE( <z_k[u], z_k[v]>, edge? )`` over
the split's positive and sampled negative pairs.

What ``input_k`` is, per rule:

* ``sf``: the output of layer k-1 in this step (input features for k = 0).
* ``sf-top-input`` (top-down signal to the input): ``[s_{k-1}, s_{k+1}]``
  concatenated, where ``s_j`` is layer j's output from the *previous* step (all
  detached; ``s_{-1}`` = input features, ``s_L`` = the label matrix: one-hot for
  training and virtual nodes, uniform elsewhere; for links the last layer gets no
  top-down part). Layer k therefore has ``width_{k+1}`` more input channels.
  States start from one bottom-up pass with zeros for the top-down part.
  Prediction: bottom-up pass, then ``test_steps`` (10) synchronous updates of
  all layers; class probabilities of steps 2..9 of every layer are summed.
* ``sf-top-loss`` (top-down signal to the loss): input as in ``sf`` but from the
  previous step's states; the loss compares ``mean(z_k, s_{k+1}, ..., s_{L-1})``
  (the layers above, detached) instead of ``z_k``.

Prediction (``sf``, ``sf-top-loss``): the sum over layers of the softmax of the
layer's node-vs-virtual-node scores (links: mean over layers of the edge
probability), as in the paper's code.

Deviations from the paper's code: (1) ``sf`` trains all layers at once (each on
the current, detached output of the layer below) instead of one layer after
another to convergence; the Trainer's early stopping and checkpoints are per
run, not per layer. (2) Training non-edges for links are redrawn every epoch.
(3) The previous-step states of the top-down rules live in memory only; a
resumed run rebuilds them with one bottom-up pass. (4) Gradient clipping of the
paper's ``sf-top-loss`` code (max norm 1) is not applied.
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
    two_class,
)
from locallearn.rules._norm import l2_normalise_rows
from locallearn.rules.base import cross_entropy


@RULES.register("sf", help="ForwardGNN single-forward: per-layer loss, no negatives (graphs)")
class SingleForward(GraphForwardRule):

    options = (
        Option("temperature", float, "softmax temperature of the similarity scores", above=0),
        Option("bidirectional", bool, "virtual label nodes linked both ways"),
    )

    def __init__(self, network: Network, task: Task, temperature: float = 1.0,
                 bidirectional: bool = True) -> None:
        super().__init__(network, task)
        self.temperature = temperature
        self.bidirectional = bidirectional
        self.num_classes = task.num_classes
        # Fixed random features of the virtual label nodes (a buffer: saved, never trained).
        self.register_buffer("virtual_features",
                             torch.randn(task.num_classes, task.input_shape[0]))

    # -- the graph each layer sees ----------------------------------------------
    def graph_inputs(self, batch: Any) -> tuple[Tensor, int]:
        """Bind the (augmented) graph and return its node features and #real nodes."""
        n = batch.x.shape[0]
        if self.graph_task == "link":
            self.bind(batch.x, batch.edge_index, batch.edge_label_index)
            return batch.x, n
        x, edge_index = add_virtual_nodes(batch.x, batch.edge_index, self.train_labels(batch),
                                          self.virtual_features, self.bidirectional)
        self.bind(x, edge_index)
        return x, n

    def layer_outputs(self, batch: Any) -> tuple[list[Tensor], int]:
        h, n = self.graph_inputs(batch)
        outs = []
        for block in self.network.blocks:
            h = block(l2_normalise_rows(h.detach()))
            outs.append(h)
        return outs, n

    # -- scores from one layer's embeddings ---------------------------------------
    def logits(self, z: Tensor, n: int) -> Tensor:
        """Node task: (real nodes, classes) scores; link task: one score per pair."""
        if self.graph_task == "link":
            pairs = self.network.context.edge_label_index
            return (z[pairs[0]] * z[pairs[1]]).sum(-1)
        return z[:n] @ z[n:].t() / self.temperature

    def layer_loss(self, z: Tensor, n: int, y: Tensor) -> Tensor:
        s = self.logits(z, n)
        if self.graph_task == "link":
            return F.binary_cross_entropy_with_logits(s, y.float())
        return cross_entropy(s, y)

    def layer_probabilities(self, z: Tensor, n: int) -> Tensor:
        s = self.logits(z, n)
        return torch.sigmoid(s) if self.graph_task == "link" else torch.softmax(s, -1)

    def combine(self, probabilities: list[Tensor]) -> Tensor:
        """Node: summed class probabilities; link: two-class scores of the mean edge probability."""
        if self.graph_task == "link":
            return two_class(torch.stack(probabilities).mean(0))
        return torch.stack(probabilities).sum(0)

    # -- Rule interface -------------------------------------------------------------
    def losses(self, x: Any, y: Tensor) -> list[Tensor]:
        outs, n = self.layer_outputs(x)
        return [self.layer_loss(z, n, y) for z in outs]

    @torch.no_grad()
    def predict(self, x: Any) -> Tensor:
        outs, n = self.layer_outputs(x)
        return self.combine([self.layer_probabilities(z, n) for z in outs])

    @torch.no_grad()
    def block_scores(self, x: Any) -> list[Tensor]:
        outs, n = self.layer_outputs(x)
        if self.graph_task == "link":
            return [two_class(self.layer_probabilities(z, n)) for z in outs]
        return [self.logits(z, n) for z in outs]


class StatefulSingleForward(SingleForward):
    """Single-forward rules whose layers read the previous step's states."""

    def __init__(self, network: Network, task: Task, temperature: float = 1.0,
                 bidirectional: bool = True) -> None:
        super().__init__(network, task, temperature, bidirectional)
        self._states: list[Tensor] | None = None  # [input, out_0, ..., out_{L-1}], detached

    def fresh_states(self, h: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def states_for(self, h: Tensor) -> list[Tensor]:
        s = self._states
        if s is None or s[0].shape != h.shape or s[0].device != h.device:
            with torch.no_grad():
                s = self.fresh_states(h)
        return s


@RULES.register("sf-top-loss",
                help="ForwardGNN single-forward, layers above (detached) averaged into the loss")
class SingleForwardTopLoss(StatefulSingleForward):

    def fresh_states(self, h: Tensor) -> list[Tensor]:
        states = [l2_normalise_rows(h)]
        for block in self.network.blocks:
            h = block(h)
            states.append(l2_normalise_rows(h).detach())
        return states

    def mixed(self, k: int, z: Tensor, states: list[Tensor]) -> Tensor:
        """mean(z_k, s_{k+1}, ..., s_{L-1}): the top-down signal enters the loss only."""
        above = [s.detach() for s in states[k + 2:]]
        return torch.stack([z, *above]).mean(0)

    def losses(self, x: Any, y: Tensor) -> list[Tensor]:
        h, n = self.graph_inputs(x)
        states = self.states_for(h)
        losses, new_states = [], [l2_normalise_rows(h)]
        for k, block in enumerate(self.network.blocks):
            z = block(states[k].detach())
            losses.append(self.layer_loss(self.mixed(k, z, states), n, y))
            # Normalise the detached output: building (and never using) a graph here would
            # keep it alive under saved-tensor hooks (the memory meter), a leak.
            new_states.append(l2_normalise_rows(z.detach()))
        self._states = new_states
        return losses

    @torch.no_grad()
    def _per_layer(self, x: Any) -> tuple[list[Tensor], int]:
        h, n = self.graph_inputs(x)
        states = self.fresh_states(h)
        mixed = [self.mixed(k, block(states[k]), states)
                 for k, block in enumerate(self.network.blocks)]
        return mixed, n

    @torch.no_grad()
    def predict(self, x: Any) -> Tensor:
        mixed, n = self._per_layer(x)
        return self.combine([self.layer_probabilities(z, n) for z in mixed])

    @torch.no_grad()
    def block_scores(self, x: Any) -> list[Tensor]:
        mixed, n = self._per_layer(x)
        if self.graph_task == "link":
            return [two_class(self.layer_probabilities(z, n)) for z in mixed]
        return [self.logits(z, n) for z in mixed]


@RULES.register("sf-top-input",
                help="ForwardGNN single-forward, the layer above's last state fed to the input")
class SingleForwardTopInput(StatefulSingleForward):

    options = (Option("test_steps", int, "inference iterations of the top input", low=3),)

    def __init__(self, network: Network, task: Task, temperature: float = 1.0,
                 bidirectional: bool = True, test_steps: int = 10) -> None:
        super().__init__(network, task, temperature, bidirectional)
        self.test_steps = test_steps
        blocks = network.blocks
        self.top_widths = [blocks[k + 1].out_features for k in range(len(blocks) - 1)]
        self.top_widths.append(task.num_classes if self.graph_task == "node" else 0)
        for block, extra in zip(blocks, self.top_widths, strict=True):
            if extra:
                block.widen_input(extra)

    def label_matrix(self, batch: Any, n_all: int) -> Tensor:
        """The top state above the last layer: one-hot labels of training and virtual
        nodes, uniform elsewhere."""
        c = self.num_classes
        m = torch.full((n_all, c), 1.0 / c, device=batch.x.device)
        y = self.train_labels(batch)
        known = torch.nonzero(y != IGNORE_INDEX).flatten()
        m[known] = F.one_hot(y[known], c).float()
        m[y.shape[0]:] = torch.eye(c, device=m.device)
        return m

    def top(self, k: int, states: list[Tensor], top_state: Tensor | None) -> Tensor | None:
        if k + 2 < len(states):
            return states[k + 2]
        return top_state

    def layer_input(self, k: int, below: Tensor, above: Tensor | None) -> Tensor:
        parts = [l2_normalise_rows(below)]
        if self.top_widths[k]:
            parts.append(l2_normalise_rows(above) if above is not None
                         else below.new_zeros(below.shape[0], self.top_widths[k]))
        return torch.cat(parts, dim=1).detach()

    def fresh_states(self, h: Tensor) -> list[Tensor]:
        states = [h]
        for k, block in enumerate(self.network.blocks):
            states.append(block(self.layer_input(k, states[-1], None)).detach())
        return states

    def step(self, states: list[Tensor], top_state: Tensor | None) -> list[Tensor]:
        """All layers at once from the previous states; returns the new outputs (with grad)."""
        return [block(self.layer_input(k, states[k], self.top(k, states, top_state)))
                for k, block in enumerate(self.network.blocks)]

    def _top_state(self, x: Any, h: Tensor) -> Tensor | None:
        return self.label_matrix(x, h.shape[0]) if self.graph_task == "node" else None

    def losses(self, x: Any, y: Tensor) -> list[Tensor]:
        h, n = self.graph_inputs(x)
        states = self.states_for(h)
        outs = self.step(states, self._top_state(x, h))
        self._states = [h] + [z.detach() for z in outs]
        return [self.layer_loss(z, n, y) for z in outs]

    @torch.no_grad()
    def _accumulated(self, x: Any) -> tuple[list[Tensor], list[Tensor], int]:
        h, n = self.graph_inputs(x)
        top_state = self._top_state(x, h)
        states = self.fresh_states(h)
        collected, last = [], []
        for t in range(self.test_steps):
            outs = self.step(states, top_state)
            states = [h] + outs
            if t >= 2:  # the paper's storable steps: all but the first two
                collected += [self.layer_probabilities(z, n) for z in outs]
            last = outs
        return collected, last, n

    @torch.no_grad()
    def predict(self, x: Any) -> Tensor:
        collected, _, _ = self._accumulated(x)
        return self.combine(collected)

    @torch.no_grad()
    def block_scores(self, x: Any) -> list[Tensor]:
        _, last, n = self._accumulated(x)
        if self.graph_task == "link":
            return [two_class(self.layer_probabilities(z, n)) for z in last]
        return [self.logits(z, n) for z in last]
