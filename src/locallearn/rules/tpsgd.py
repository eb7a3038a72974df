"""Target Projection SGD, tpSGD (Lomnitz, Daniels, Zhang & Piacentino, "Learning
with Local Gradients at the Edge", AAAI 2023).

Algorithm (per mini-batch, every block at once, forward passes only):
    h_k = f_k(h_{k-1})                      # block k; input detached
    t_k = onehot(y) P_k                     # local target: FIXED random projection of the label
    block k:  minimise  loss(h_k, t_k)      # any differentiable loss (``loss`` option):
                                            #   mse  -> (t_k - h_k) ⊙ f'(a_k) delta rule
                                            #   l1   -> sign(t_k - h_k) ⊙ f'(a_k)
                                            #   huber (smooth l1), cosine
    head:     minimise  cross_entropy(head(h_L), y)   # head input detached

tpSGD generalises DRTP: DRTP's update is the gradient of the *linear* loss
``-<h_k, t_k>`` (no target to reach, only a direction), tpSGD regresses h_k
onto the projected target with a real loss, so updates vanish once the block
produces its class's code.

Deviations from the paper: targets are set at each block's output (a block of
the cnn is conv -> ReLU -> pool). The projected targets of a ReLU block are
rectified (``max(t_k, 0)``), since a ReLU output cannot be negative and a
negative target would only push the unit's pre-activation down without bound.
Adam replaces plain SGD (same optimiser as the backprop baseline). Options:
- ``loss`` (default ``"auto"``: ``l1``, the paper's sign-of-residual variant, for a
  dense block, ``mse`` for a conv block), chosen on validation (best_val_accuracy
  means): mnist5k ``mlp:500,500``, seeds 0-2, l1 0.922, mse 0.916, blocks frozen
  0.908; mnist1d ``cnn``, seeds 0-1, mse 0.965, l1 0.950 (docs/results/defaults.md;
  docs/results/frozen_controls.md says why the blocks add little over random features).
- ``head_lr``: a separate learning rate for the head (default: the run's).
- ``conv_target`` (default ``"max"``): ``"map"`` gives every unit of a conv map
  its own target (a position-specific class code, which a shift-equivariant
  layer cannot produce on shifted inputs: mnist1d cnn near chance with mse; with l1,
  best_val_accuracy 0.746 against 0.950 for ``"max"``, seeds 0-1); ``"max"`` gives
  one target per channel, reached by the channel's strongest response over positions.
  Dense blocks are unaffected.
- ``normalize`` (default True): the next block and the head read the block's
  output divided by its per-sample RMS (parameter-free, forward only); mnist1d
  cnn, seeds 0-1, best_val_accuracy mean 0.965 with, 0.9275 without.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from locallearn.data.base import IGNORE_INDEX, Task
from locallearn.measure.diagnostics import gradient_alignment
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules._feedback import one_hot, project, random_matrix
from locallearn.rules._norm import rms_normalise
from locallearn.rules.base import BlockwiseRule, ParamGroup, cross_entropy


def _cosine(h: Tensor, t: Tensor) -> Tensor:
    return (1 - F.cosine_similarity(h.flatten(1), t.flatten(1), dim=1)).mean()


# Per-sample losses summed over units and averaged over the batch, so that their
# scale does not depend on the width of the block.
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": lambda h, t: F.mse_loss(h, t, reduction="sum") / h.shape[0],
    "l1": lambda h, t: F.l1_loss(h, t, reduction="sum") / h.shape[0],
    "huber": lambda h, t: F.smooth_l1_loss(h, t, reduction="sum") / h.shape[0],
    "cosine": _cosine,
}


@RULES.register("tpsgd", help="tpSGD: layer-wise SGD toward random projections of the labels")
class TPSGD(BlockwiseRule):
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}

    options = (
        Option("loss", str, "distance of a block's output to its target (auto: l1 for a "
               "dense block, mse for a conv block)", choices=("auto", *LOSSES)),
        Option("target_scale", float, "size of the fixed random class targets", above=0),
        Option("conv_target", str, "a conv map's target: per unit, or per channel on its max",
               choices=("map", "max")),
        Option("normalize", bool, "RMS-normalise each block's input"),
        Option("head_lr", float, "the head's learning rate (None: the run's)", above=0,
               nullable=True),
    )

    def __init__(self, network: Network, task: Task, loss: str = "auto",
                 target_scale: float = 1.0, conv_target: str = "max",
                 normalize: bool = True, head_lr: float | None = None) -> None:
        super().__init__(network, task)
        self.head_lr = head_lr
        self.loss_name = loss
        # Block k's loss; "auto" as chosen on validation (see the module docstring).
        self.loss_names = [loss if loss != "auto" else "mse" if len(b.out_shape) > 1 else "l1"
                           for b in network.blocks]
        self.conv_target = conv_target
        self.normalize = normalize
        # A conv map's target: one entry per unit ("map") or per channel ("max").
        self.target_shapes = [b.out_shape[:1] if conv_target == "max" else b.out_shape
                              for b in network.blocks]
        for k, shape in enumerate(self.target_shapes):
            # Entries of order target_scale: a unit-scale code per class.
            p = random_matrix(task.num_classes, math.prod(shape), bound=target_scale * 3**0.5)
            self.register_buffer(f"projection{k}", p)

    def param_groups(self) -> list[ParamGroup]:
        groups = super().param_groups()
        for g in groups:
            if g.name == "head" and self.head_lr is not None:
                g.options["lr"] = self.head_lr
        return groups

    def projection(self, k: int) -> Tensor:
        """P_k, fixed: maps the one-hot label to block k's local target."""
        return getattr(self, f"projection{k}")

    def target(self, k: int, y: Tensor) -> Tensor:
        t = project(one_hot(y, self.task.num_classes), self.projection(k), self.target_shapes[k])
        return t.clamp_min(0) if self._rectified(k) else t

    def _rectified(self, k: int) -> bool:
        body = self.network.blocks[k].body
        modules = list(body.modules()) if isinstance(body, torch.nn.Module) else []
        return any(isinstance(m, torch.nn.ReLU) for m in modules)

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        valid = y != IGNORE_INDEX
        if self.conv_target == "max" and out.dim() > 2:
            out = out.flatten(2).amax(2)  # each channel's strongest response
        return LOSSES[self.loss_names[k]](out[valid], self.target(k, y)[valid].detach())

    def block_input(self, k: int, h: Tensor) -> Tensor:
        h = h.detach()
        return rms_normalise(h) if self.normalize and k > 0 else h

    def head_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(self.network.head(self.block_input(1, h)), y)

    def epoch_diagnostics(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """Per weight layer: angle between this rule's gradient and backprop's."""
        return {"gradient_alignment": gradient_alignment(self, x, y)}

    def predict(self, x: Tensor) -> Tensor:
        h = x
        for k, block in enumerate(self.network.blocks):
            h = block(self.block_input(k, h))
        return self.network.head(self.block_input(1, h))
