"""LLS: local learning inspired by neural activity synchronisation.

Apolinario, Roy & Roy, "LLS: Local Learning Rule for Deep Neural Networks
Inspired by Neural Activity Synchronization" (WACV 2025).

Every block k has a FIXED set of periodic basis vectors, one per class (a
buffer, not a parameter): unit n of class c's vector is ``cos(w_c n)``. The
block learns to make its (pooled, normalised) activity oscillate in step with
the basis vector of the true class.

Algorithm (per mini-batch, every block at once):
    h_k = f_k(r(h_{k-1}))                   # h_{k-1} detached: nothing flows back;
                                            #   r: divide by its RMS (rms_norm)
    z_k = normalise(pool(h_k))              # conv maps: adaptive average pool to
                                            #   pool x pool (1-D: pool); vectors as is
    s_k = z_k B_k^T / T                     # B_k: classes x dim(z_k), FIXED periodic
    LLS:      L_k = cross_entropy(s_k, y)                  # no trainable parameter added
    LLS-M:    L_k = cross_entropy(s_k * m_k, y)            # m_k: one learned gain per class
    LLS-MxM:  L_k = cross_entropy(s_k M_k, y)              # M_k: classes x classes, learned
    update f_k (and m_k / M_k) with dL_k only
    head:     cross_entropy(head(r(h_L)), y)  # h_L detached: the output layer's own loss

Prediction: the network head. ``per_block_test_accuracy`` reports each block's
``argmax s_k`` (with its modulation).

Deviations from the paper: class frequencies ``w_c`` are spaced evenly in
(0, pi) radians per unit (the authors' code uses ``sin(w n)`` with w evenly in
[50, 512] rad, which folds back into that range, unevenly); ``waveform="square"``
takes the sign of the cosine, as in the authors' square-wave option. The
modulation of LLS-M / LLS-MxM starts at the identity (ones / identity matrix),
so training starts from plain LLS (the authors start from small random values).
Each block passes on its output divided by its per-sample RMS (``rms_norm``,
default True; forward-only, no parameters): the LLS loss ignores the scale of
h_k, which then drifts and slowed the head trained on it (on mnist5k mlp:500,500,
seeds 0-1, best_val_accuracy is the same with and without: 0.939; see
docs/results/defaults.md). Adam at lr 1e-3, no batch norm, no schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules._handoff import RMSHandOffRule
from locallearn.rules.base import cross_entropy

VARIANTS = ("lls", "m", "mxm")
WAVEFORMS = ("cosine", "square")


def variant_name(variant: object) -> object:
    """"LLS-MxM", "lls_m", "M" ... -> "mxm", "m", ... (other values pass unchanged)."""
    if not isinstance(variant, str):
        return variant
    return variant.lower().removeprefix("lls-").replace("lls_", "")


def periodic_basis(classes: int, dim: int, waveform: str = "cosine") -> Tensor:
    """``classes x dim``: row c is ``cos(w_c n)``, n = 0..dim-1, w_c evenly in (0, pi)."""
    w = math.pi * torch.arange(1, classes + 1, dtype=torch.float64) / (classes + 1)
    basis = torch.cos(w[:, None] * torch.arange(dim, dtype=torch.float64)[None, :]).float()
    return torch.sign(basis) if waveform == "square" else basis


class Modulation(nn.Module):
    """The learned part of LLS-M (a gain per class) or LLS-MxM (a class-mixing matrix)."""

    def __init__(self, classes: int, matrix: bool) -> None:
        super().__init__()
        self.matrix = matrix
        self.weight = nn.Parameter(torch.eye(classes) if matrix else torch.ones(classes))

    def forward(self, s: Tensor) -> Tensor:
        return s @ self.weight if self.matrix else s * self.weight


@RULES.register("lls", help="LLS: fixed periodic basis per layer (variant=lls|m|mxm)")
class LLS(RMSHandOffRule):
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}

    options = (
        Option("variant", str, "LLS, LLS-M or LLS-MxM (learned modulation)", choices=VARIANTS,
               parse=variant_name),
        Option("pool", int, "conv maps: adaptive average pool to pool x pool", low=1),
        Option("temperature", float, "softmax temperature of the basis scores", above=0),
        Option("waveform", str, "the fixed periodic basis", choices=WAVEFORMS),
        Option("rms_norm", bool, "RMS-normalise each block's input"),
    )

    def __init__(self, network: Network, task: Task, variant: str = "lls", pool: int = 2,
                 temperature: float = 1.0, waveform: str = "cosine", rms_norm: bool = True) -> None:
        super().__init__(network, task)
        self.variant, self.pool, self.temperature = variant, pool, temperature
        self.rms_norm = rms_norm
        modulations = []
        for k, block in enumerate(network.blocks):
            dim = self.latent_size(block.out_shape)
            self.register_buffer(f"basis{k}", periodic_basis(task.num_classes, dim, waveform))
            modulations.append(nn.Identity() if variant == "lls"
                               else Modulation(task.num_classes, matrix=variant == "mxm"))
        self.modulation = nn.ModuleList(modulations)

    def latent_size(self, shape: tuple[int, ...]) -> int:
        if len(shape) == 1:
            return shape[0]
        if len(shape) not in (2, 3):
            raise UserError(f"lls: unsupported block output shape {shape}")
        return shape[0] * math.prod(min(self.pool, s) for s in shape[1:])

    def basis(self, k: int) -> Tensor:
        """B_k, fixed: one periodic vector per class."""
        return getattr(self, f"basis{k}")

    def latent(self, h: Tensor) -> Tensor:
        """z = normalise(pool(h)): one unit-norm row per sample."""
        if h.dim() == 3:
            h = F.adaptive_avg_pool1d(h, min(self.pool, h.shape[2]))
        elif h.dim() == 4:
            h = F.adaptive_avg_pool2d(h, (min(self.pool, h.shape[2]), min(self.pool, h.shape[3])))
        return F.normalize(h.flatten(1), dim=1)

    def scores(self, k: int, h: Tensor) -> Tensor:
        """Block k's class scores: synchrony of its activity with each class's basis vector."""
        s = self.latent(h) @ self.basis(k).t() / self.temperature
        return self.modulation[k](s)

    def readouts(self) -> dict[int, list[nn.Module]]:
        if self.variant == "lls":
            return {}
        return {k: [m] for k, m in enumerate(self.modulation)}

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(self.scores(k, out), y)

    has_block_readout = True

    def block_readout(self, k: int, h: Tensor) -> Tensor:
        return self.scores(k, h)
