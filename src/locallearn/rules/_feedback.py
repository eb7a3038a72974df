"""Pieces shared by the rules with fixed random feedback (dfa, drtp, tpsgd, pepita).

A *feedback matrix* is a fixed random tensor held as a buffer of the rule: it is
saved in checkpoints and moved with ``.to(device)`` but is never a parameter, so
no optimiser can change it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from locallearn.data.base import IGNORE_INDEX


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    """Float one-hot targets; rows whose target is IGNORE_INDEX are all zero."""
    valid = y != IGNORE_INDEX
    out = torch.zeros(y.shape[0], num_classes, device=y.device)
    out[valid] = nn.functional.one_hot(y[valid], num_classes).float()
    return out


def count_valid(y: Tensor) -> int:
    """Number of rows that carry a target (the batch size surrogates average over)."""
    return max(int((y != IGNORE_INDEX).sum()), 1)


def random_matrix(rows: int, cols: int, bound: float | None = None) -> Tensor:
    """Uniform in [-bound, bound]; by default bound = 1/sqrt(rows), so that a
    one-hot (or probability-difference) vector of length ``rows`` is projected
    to entries of order 1/sqrt(rows), like a freshly initialised layer's output."""
    bound = 1.0 / math.sqrt(rows) if bound is None else bound
    return torch.empty(rows, cols).uniform_(-bound, bound)


def project(signal: Tensor, matrix: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``signal @ matrix`` reshaped to a block's output shape (batch, *shape)."""
    return (signal @ matrix).view(signal.shape[0], *shape)


def surrogate(h: Tensor, delta: Tensor, n: int) -> Tensor:
    """Scalar whose gradient w.r.t. ``h`` is ``delta / n``: the loss form of an
    update rule "move ``h`` against ``delta``" averaged over ``n`` samples."""
    return (h * delta.detach()).sum() / n
