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


_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


def split_pool(block: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(body before the pooling, pooling)`` for a block whose body is a Sequential
    ending in a pooling layer (the cnn's conv -> ReLU -> pool); else ``(block, None)``.

    Lets a rule inject its signal at the activation before pooling, as the DRTP
    and PEPITA authors' conv code does, while the block's output stays pooled."""
    body = getattr(block, "body", None)
    if isinstance(body, nn.Sequential) and len(body) > 1 and isinstance(body[-1], _POOLS):
        return body[:-1], body[-1]
    return block, None


@torch.no_grad()
def pre_pool_shape(block: nn.Module) -> tuple[int, ...]:
    """Shape (without batch) of ``block``'s activity before its final pooling."""
    pre, pool = split_pool(block)
    if pool is None:
        return tuple(block.out_shape)
    return tuple(pre(torch.zeros(1, *block.in_shape)).shape[1:])
