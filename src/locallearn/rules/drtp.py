"""Direct Random Target Projection (Frenkel, Lefebvre & Bol, Front. Neurosci. 2021).

Algorithm (per mini-batch, every block at once, no error and no backward pass):
    h_k = f_k(h_{k-1})                 # block k; input detached
    delta_k = onehot(y) B_k            # B_k: block k's FIXED random matrix, a function of
                                       #   the target only, so block k can update as soon as
                                       #   its forward pass is done
    block k:  minimise  sum(h_k * delta_k) / n      # gradient = delta_k through f_k only
    head:     minimise  cross_entropy(head(h_L), y) # the output layer's own error
                                                    # (head input detached)

DRTP is DFA with the error ``e = softmax(s) - onehot(y)`` replaced by the
target: for one-hot targets, the sign of every entry of ``-e`` is the sign of
``onehot(y)``, so ``onehot(y) B_k`` is a projection of a surrogate error
(sign conventions follow the authors' code, where the hidden-layer gradient
is ``onehot(y) B_k``; B_k is symmetric around zero, so the sign is a convention).

Faithful to the authors' code: the hidden-layer signal is taken after the
activation; in a conv -> ReLU -> pool block it enters *before* the pooling
(``pre_pool``, default True; False: after the pool).

Deviations from the paper (each an option):
- Activation. The paper's networks use tanh units; ``mlp``/``cnn`` use ReLU, and
  along the linear surrogate a ReLU unit grows without bound. ``squash`` (default
  True) applies tanh to the block's output, so units saturate as tanh units do.
- ``normalize`` (default True): what the next block and the head read is divided
  by its per-sample RMS (parameter-free, forward only), so a block's growth
  does not change the next block's input scale (mnist1d cnn, seeds 0-1,
  best_val_accuracy mean 0.786 with, 0.701 without).
- ``conv_signal`` (default ``"max"``): the paper projects the target onto every
  unit of a conv map (``"map"``), i.e. position-specific class codes for a
  shift-equivariant layer; on mnist1d (random shifts) it learned little. With
  ``"max"`` the projection has one entry per channel and the signal reaches each
  channel's strongest response over positions (``"mean"``: the mean over
  positions): "this channel fires somewhere for these classes". Dense blocks are
  unaffected. mnist1d cnn, seeds 0-1, best_val_accuracy mean: max 0.786, map 0.530,
  mean 0.481 (docs/results/defaults.md).
- ``head_lr``: a separate learning rate for the head (default: the run's).
- Adam replaces SGD (mnist1d cnn, seed 0, best_val_accuracy: Adam lr 1e-3 0.775, SGD
  with momentum 0.9 at lr 0.01 0.660, at lr 0.1 0.3925).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.measure.diagnostics import gradient_alignment
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules._feedback import (
    count_valid,
    one_hot,
    pre_pool_shape,
    project,
    random_matrix,
    split_pool,
    surrogate,
)
from locallearn.rules._norm import rms_normalise
from locallearn.rules.base import BlockwiseRule, ParamGroup, StagePlan, Staging, cross_entropy


@RULES.register("drtp", help="Direct Random Target Projection: fixed random projection of targets")
class DRTP(BlockwiseRule):
    # 40 epochs: backed by mnist5k's validation split (figures: the last section of
    # docs/results/frozen_controls.md); on mnist1d cnn validation still rises at 40, a
    # budget there (docs/results/defaults.md).
    defaults = {"epochs": 40, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}

    options = (
        Option("squash", bool, "tanh on each block's activity"),
        Option("pre_pool", bool, "a conv block's signal enters before its pooling"),
        Option("normalize", bool, "RMS-normalise what the next block reads"),
        Option("conv_signal", str, "a conv map's signal: per unit, or per channel (max/mean)",
               choices=("map", "max", "mean")),
        Option("head_lr", float, "the head's learning rate (None: the run's)", above=0,
               nullable=True),
    )

    def __init__(self, network: Network, task: Task, squash: bool = True,
                 pre_pool: bool = True, normalize: bool = True,
                 conv_signal: str = "max", head_lr: float | None = None) -> None:
        super().__init__(network, task)
        self.squash, self.normalize, self.pre_pool = squash, normalize, pre_pool
        self.conv_signal, self.head_lr = conv_signal, head_lr
        self.signal_shapes = [pre_pool_shape(b) if pre_pool else tuple(b.out_shape)
                              for b in network.blocks]
        if conv_signal != "map":  # one entry per channel of a conv map
            self.signal_shapes = [s[:1] for s in self.signal_shapes]
        for k, shape in enumerate(self.signal_shapes):
            self.register_buffer(f"projection{k}", random_matrix(task.num_classes,
                                                                 math.prod(shape)))

    def projection(self, k: int) -> Tensor:
        """B_k, fixed: maps the one-hot target to block k's output."""
        return getattr(self, f"projection{k}")

    def activity(self, h: Tensor) -> Tensor:
        """What block k passes on: its output, squashed into [-1, 1] if ``squash``."""
        return torch.tanh(h) if self.squash else h

    def param_groups(self) -> list[ParamGroup]:
        groups = super().param_groups()
        if self.head_lr is not None:
            groups[-1].options["lr"] = self.head_lr
        return groups

    def passed(self, h: Tensor) -> Tensor:
        """What the next block and the head read: the activity, RMS-normalised per
        sample if ``normalize``."""
        h = self.activity(h.detach())
        return rms_normalise(h) if self.normalize else h

    def block_input(self, k: int, h: Tensor) -> Tensor:
        return self.passed(h) if k > 0 else h.detach()

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        delta = project(one_hot(y, self.task.num_classes), self.projection(k),
                        self.signal_shapes[k])
        a = self.activity(out)
        if self.conv_signal != "map" and a.dim() > 2:
            a = a.flatten(2).amax(2) if self.conv_signal == "max" else a.flatten(2).mean(2)
        return surrogate(a, delta, count_valid(y))

    @property
    def staging(self) -> StagePlan:
        # Pipeline stages call block_loss on the pooled output, while the loop below puts
        # the signal before pooling: the same loss only without a pool, or for the channel
        # max through max-pooling windows that tile the map (max of maxima).
        pools = [split_pool(b)[1] for b in self.network.blocks]
        if self.pre_pool and not all(p is None or self._max_commutes(b, p)
                                     for b, p in zip(self.network.blocks, pools, strict=True)):
            return StagePlan(Staging.NONE, "its signal enters before pooling, which a stage "
                                           "does not see; stage it with "
                                           "--set rule.pre_pool=false")
        return StagePlan(Staging.BLOCKWISE)

    def _max_commutes(self, block: nn.Module, pool: nn.Module) -> bool:
        if self.conv_signal != "max" or not isinstance(pool, nn.MaxPool2d):
            return False
        k, s, pad = pool.kernel_size, pool.stride, pool.padding
        size = pre_pool_shape(block)[1:]
        return (k == s and pad == 0 and not pool.ceil_mode
                and all(n % (k if isinstance(k, int) else k[i]) == 0
                        for i, n in enumerate(size)))

    # The loop below detaches every block's input like BlockwiseRule's, so block k's
    # graph can be freed before block k+1 runs (activation memory flat in depth).
    streams_losses = True

    def epoch_diagnostics(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """Per weight layer: angle between this rule's gradient and backprop's."""
        return {"gradient_alignment": gradient_alignment(self, x, y)}

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        return list(self.iter_losses(x, y))

    def iter_losses(self, x: Tensor, y: Tensor) -> Iterator[Tensor]:
        # As BlockwiseRule's loop, but a conv block's signal enters before its pooling.
        h = x
        for k, block in enumerate(self.network.blocks):
            pre, pool = split_pool(block) if self.pre_pool else (block, None)
            a = pre(self.block_input(k, h))
            h = a if pool is None else pool(a)
            if block.trainable:
                yield self.block_loss(k, a, y)
        if any(p.requires_grad for p in self.network.head.parameters()):
            yield self.head_loss(h, y)

    def head_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(self.network.head(self.passed(h)), y)

    def predict(self, x: Tensor) -> Tensor:
        h = x
        for k, block in enumerate(self.network.blocks):
            h = block(self.block_input(k, h))
        return self.network.head(self.passed(h))
