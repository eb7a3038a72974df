"""Black-box layers: callables with no gradient and no model of their internals.

Stand-ins for physical or simulated layers (as in model-free Forward-Forward
work). Rules that never differentiate through other blocks (ff, mono-forward,
local, drtp, noprop, ...) train the blocks around them; rules that would need
a gradient through them (backprop, fa) refuse such networks.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from locallearn.networks.network import BlackBox, Block


class NumpyRandomFeatures:
    """``tanh(x R)`` computed in NumPy with a fixed random matrix R (width kept)."""

    def __init__(self, features: int, seed: int = 0, scale: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.matrix = rng.standard_normal((features, features)).astype(np.float32)
        self.matrix *= scale / np.sqrt(features)

    def __call__(self, x: Tensor) -> np.ndarray:
        return np.tanh(x.cpu().numpy().reshape(x.shape[0], -1) @ self.matrix)


def black_box_block(fn, name: str = "blackbox") -> Block:
    """Wrap any callable (tensor in, tensor or array out) as a non-differentiable block."""
    return Block(BlackBox(fn), name=name, differentiable=False)


def numpy_block(features: int, seed: int = 0) -> Block:
    return black_box_block(NumpyRandomFeatures(features, seed), name=f"numpy{seed}")


__all__ = ["NumpyRandomFeatures", "black_box_block", "numpy_block"]
