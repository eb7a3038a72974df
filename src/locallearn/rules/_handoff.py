"""A block-wise family whose blocks hand on an RMS-normalised output (lls, ccl)."""

from __future__ import annotations

from torch import Tensor

from locallearn.rules._norm import rms_normalise
from locallearn.rules.base import BlockwiseRule, cross_entropy


class RMSHandOffRule(BlockwiseRule):
    """A block-wise rule whose blocks hand on their output divided by its per-sample RMS
    (when ``rms_norm``): the next block, the head and prediction all read that. For
    losses that ignore activity scale (lls, ccl), so the scale would otherwise drift."""

    rms_norm: bool = True

    def passed_on(self, h: Tensor) -> Tensor:
        return rms_normalise(h) if self.rms_norm else h

    def block_input(self, k: int, h: Tensor) -> Tensor:
        return self.passed_on(h.detach()) if k > 0 else h.detach()

    def head_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(self.network.head(self.passed_on(h.detach())), y)

    def predict(self, x: Tensor) -> Tensor:
        return self.network.head(self.passed_on(self.features(x)[-1]))
