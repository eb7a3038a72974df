"""Counter-Current Learning (Kao & Hariharan, NeurIPS 2024).

Two anti-parallel networks: the forward network (the blocks) carries the input
up, a feedback network carries the targets down, and each level pairs the two
streams with a local loss, like the two flows of a counter-current exchanger.

Algorithm (per mini-batch; blocks k = 0..L-1, then the head):
    forward:   h_k = f_k(r(h_{k-1}))                 # h_{k-1} detached; r: divide by
                                                     #   its RMS (rms_norm)
    feedback:  t_L = I_C                             # one signal per class (one-hot)
               t_k = g_{k+1}(t_{k+1})                # t_{k+1} detached; g_{k+1} maps the
                                                     #   space of level k+1 down to level k
                                                     #   (g_L is the head's mirror: classes
                                                     #   -> last block's output)
    level k:   C_k = h_k t_k^T                       # batch x classes: match of each sample's
                                                     #   activity with each class's signal
               L_k = mse(C_k, onehot(y))             # updates f_k AND g_{k+1}, nothing else
    head:      cross_entropy(head(r(h_{L-1})), y)    # input detached
Prediction: the forward network (head). ``per_block_test_accuracy`` reports
``argmax_c C_k`` per block.

Feedback layers mirror the forward ones: linear + activation for mlp blocks and
for the head; for conv -> ReLU -> pool blocks, nearest upsampling back to the
input size, then a 3x3 convolution + activation. The feedback activation is
ELU (the authors' default), so signals can be negative.

Scale of the pairing (``normalize``): ``auto`` (default) follows the authors'
code, which uses cosine similarities (rows of h_k and t_k normalised) for conv
maps and the raw product for MLP layers (here divided by the layer width, so
that the loss does not grow with it); ``true`` / ``false`` force one or the other
(the authors' choice, kept; mnist5k mlp:500,500, seeds 0-1, best_val_accuracy mean:
auto 0.941, cosine 0.929; docs/results/defaults.md).

Deviations from the paper: the input-level pair (x against g_0's output) trains
only a feedback layer that nothing reads when classifying, so it is left out.
Each block passes on its output divided by its per-sample RMS (``rms_norm``,
default True; forward-only, no parameters): a cosine pairing leaves the scale of
h_k free to drift, which slowed the head, trained on h_L (best_val_accuracy mean,
seeds 0-2: mnist1d cnn 0.943 with, 0.920 without, lower on every seed; mnist5k
mlp:500,500, raw product, 0.9425 with, 0.9475 without, within seed noise;
docs/results/defaults.md). Adam at lr 1e-3
instead of SGD with gradient clipping; no batch norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import IGNORE_INDEX, Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules._handoff import RMSHandOffRule
from locallearn.rules.base import StagePlan, Staging


class FeedbackLayer(nn.Module):
    """g: maps a signal of shape ``src`` (per class) to shape ``dst``."""

    def __init__(self, src: tuple[int, ...], dst: tuple[int, ...]) -> None:
        super().__init__()
        self.src, self.dst = src, dst
        self.conv = len(src) >= 2 and len(dst) == len(src)
        if self.conv:
            conv = {2: nn.Conv1d, 3: nn.Conv2d}.get(len(dst))
            if conv is None:
                raise UserError(f"ccl: unsupported block output shape {dst}")
            self.layer = conv(src[0], dst[0], 3, padding=1)
        else:
            self.layer = nn.Linear(math.prod(src), math.prod(dst))

    def forward(self, t: Tensor) -> Tensor:
        if self.conv:
            t = F.interpolate(t, size=self.dst[1:], mode="nearest")
            return F.elu(self.layer(t))
        return F.elu(self.layer(t.flatten(1))).view(t.shape[0], *self.dst)


@RULES.register("ccl", help="Counter-Current Learning: feedback net on targets, paired per layer")
class CCL(RMSHandOffRule):
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}
    # The feedback chain above block k is read (without gradient) by block k's loss,
    # so pipeline stages would need each other's feedback weights.
    staging = StagePlan(Staging.NONE, "block k's loss reads the feedback network above it")

    options = (
        Option("normalize", (bool, str), "normalise the paired activities (auto: conv only)",
               choices=(True, False, "auto")),
        Option("rms_norm", bool, "RMS-normalise each block's input"),
    )

    def __init__(self, network: Network, task: Task, normalize: bool | str = "auto",
                 rms_norm: bool = True) -> None:
        super().__init__(network, task)
        if network.head is None:
            raise UserError("ccl needs a network with an output head (the top of the feedback "
                            "network mirrors it)")
        self.normalize, self.rms_norm = normalize, rms_norm
        blocks = network.blocks
        shapes = [b.out_shape for b in blocks] + [(task.num_classes,)]
        # feedback[k] = g_{k+1}: level k+1 -> level k, for k = 0..L-1.
        self.feedback = nn.ModuleList(
            [FeedbackLayer(shapes[k + 1], shapes[k]) for k in range(len(blocks))])
        self.register_buffer("classes", torch.eye(task.num_classes))

    def normalized(self, k: int) -> bool:
        if self.normalize == "auto":  # as in the authors' code: cosine for conv maps only
            return len(self.network.blocks[k].out_shape) >= 2
        return bool(self.normalize)

    def readouts(self) -> dict[int, list[nn.Module]]:
        return {k: [g] for k, g in enumerate(self.feedback)}

    def signal(self, k: int) -> Tensor:
        """t_k (classes x block k's output): only g_{k+1} is differentiated."""
        t = self.classes
        with torch.no_grad():
            for j in range(len(self.network.blocks) - 1, k, -1):
                t = self.feedback[j](t)
        return self.feedback[k](t.detach())

    def match(self, k: int, h: Tensor) -> Tensor:
        """C_k = h_k t_k^T: each sample's activity against each class's feedback signal."""
        a, t = h.flatten(1), self.signal(k).flatten(1)
        if self.normalized(k):
            a, t = F.normalize(a, dim=1), F.normalize(t, dim=1)
        else:
            a, t = a / math.sqrt(a.shape[1]), t / math.sqrt(t.shape[1])
        return a @ t.t()

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        valid = y != IGNORE_INDEX
        c = self.match(k, out[valid])
        target = F.one_hot(y[valid], self.task.num_classes).to(c.dtype)
        return F.mse_loss(c, target)

    has_block_readout = True

    def block_readout(self, k: int, h: Tensor) -> Tensor:
        return self.match(k, h)
