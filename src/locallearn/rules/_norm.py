"""The normalisations the rules share: one helper per meaning.

* :func:`rms_normalise`: each sample divided by its root mean square (over every
  entry of the sample), the hand-off of ff, lls, ccl, drtp, tpsgd and pepita.
* :func:`l2_normalise_rows`: each row (a graph node) divided by its L2 norm,
  ForwardGNN's "LayerNormalization".
"""

from __future__ import annotations

from torch import Tensor


def rms_normalise(h: Tensor, eps: float = 1e-6) -> Tensor:
    """``h`` divided by its per-sample RMS, ``sqrt(mean(h^2) + eps)`` (parameter-free)."""
    return h / h.flatten(1).square().mean(1).add(eps).sqrt().view(-1, *[1] * (h.dim() - 1))


def l2_normalise_rows(h: Tensor, eps: float = 1e-8) -> Tensor:
    """Each row divided by its L2 norm (plus ``eps``)."""
    return h / (h.norm(dim=1, keepdim=True) + eps)
