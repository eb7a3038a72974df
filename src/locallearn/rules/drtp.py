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

Deviations from the paper: the signal enters each block at its output and runs
through the block's own layers (for conv -> ReLU -> pool blocks: after the pool;
the authors inject it before pooling). Adam replaces SGD. The paper's networks
mostly use tanh; the default here is the network's own activation (ReLU for
``mlp``/``cnn``), because the target is a fixed pattern per class, the
surrogate is linear in h_k and ReLU units grow without bound along it. Option
``normalize`` (default True) divides each block's output fed to the next block
and to the head by its per-sample RMS, which keeps that growth from reaching the
next block (a parameter-free, forward-only change).
"""

from __future__ import annotations

import torch
from torch import Tensor

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.rules import RULES
from locallearn.rules._feedback import count_valid, one_hot, project, random_matrix, surrogate
from locallearn.rules.base import BlockwiseRule, cross_entropy


@RULES.register("drtp", help="Direct Random Target Projection: fixed random projection of targets")
class DRTP(BlockwiseRule):
    name = "drtp"
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}

    def __init__(self, network: Network, task: Task, squash: bool = True) -> None:
        super().__init__(network, task)
        self.squash = squash
        for k, block in enumerate(network.blocks):
            self.register_buffer(f"projection{k}", random_matrix(task.num_classes,
                                                                 block.out_features))

    def projection(self, k: int) -> Tensor:
        """B_k, fixed: maps the one-hot target to block k's output."""
        return getattr(self, f"projection{k}")

    def activity(self, h: Tensor) -> Tensor:
        """What block k passes on: its output, squashed into [-1, 1] if ``squash``."""
        return torch.tanh(h) if self.squash else h

    def block_input(self, k: int, h: Tensor) -> Tensor:
        h = h.detach()
        return self.activity(h) if k > 0 else h

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        block = self.network.blocks[k]
        delta = project(one_hot(y, self.task.num_classes), self.projection(k), block.out_shape)
        return surrogate(self.activity(out), delta, count_valid(y))

    def head_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(self.network.head(self.activity(h.detach())), y)

    def predict(self, x: Tensor) -> Tensor:
        h = x
        for k, block in enumerate(self.network.blocks):
            h = block(self.block_input(k, h))
        return self.network.head(self.activity(h))
