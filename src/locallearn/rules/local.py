"""Greedy local supervised learning: an auxiliary classifier per block.

Belilovsky, Eickenberg & Oyallon, "Greedy layerwise learning can scale to
ImageNet" / "Decoupled Greedy Learning" (2019, 2020); predsim loss from
Nøkland & Eidnes, "Training neural networks with local error signals" (ICML 2019).

Algorithm (per mini-batch, every block at once):
    h_k = f_k(h_{k-1})                       # h_{k-1} detached: nothing flows back
    s_k = aux_k(h_k)                         # block k's own auxiliary classifier
    pred:     L_k = cross_entropy(s_k, y)
    predsim:  L_k = (1 - beta) cross_entropy(s_k, y)
                    + beta * mse(S(sim_k(h_k)), S(onehot(y)))
    update f_k and aux_k (and sim_k) with dL_k only
    head:     cross_entropy(head(h_L), y)    # h_L detached: the output layer's own loss
where S(z) is the batch's cosine-similarity matrix of mean-centred rows.

Auxiliary classifiers (``aux``):
    linear: the network's own readout for block k (flatten + linear; per-node
            for graphs, per-position next-token scores for gpt, pooled for vit).
    mlp:    a hidden layer of the block's width over the feature axis (linear +
            ReLU per vector, per node, per token; a 1x1 convolution for conv
            blocks), then that readout.

Similarity branch (predsim): conv outputs pass through a 3x3 convolution and are
summarised by the standard deviation of each channel over space (as in
Nøkland & Eidnes' code); other outputs are used as they are, one row per sample
(per node for graphs, per position for gpt, flattened tokens for vit). Rows
whose target is IGNORE_INDEX are left out, and at most ``sim_samples`` rows
(random) enter S, so the matrix stays small for graphs and token sequences.

Deviations from the papers: Adam at lr 1e-3 (the backprop baseline's settings)
instead of their SGD/Adam schedules; no dropout, no batch norm; the pred loss of
conv blocks uses the network's flatten + linear readout rather than Nøkland &
Eidnes' average pooling to <= 2048 features; prediction comes from the network
head (trained on the detached last block), and each block's auxiliary scores go
to ``per_block_test_accuracy``. Link prediction accepts ``loss="pred"`` only
(its targets label node pairs, not nodes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import IGNORE_INDEX, Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules.base import BlockwiseRule, cross_entropy

AUX_KINDS = ("linear", "mlp")
LOSSES = ("pred", "predsim")


class FeatureLayer(nn.Module):
    """Linear + ReLU over the feature axis (dim 1 for conv maps, the last dim otherwise)."""

    def __init__(self, width: int, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.linear = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        if self.channels_first:
            return torch.relu(self.linear(h.movedim(1, -1))).movedim(-1, 1)
        return torch.relu(self.linear(h))


def similarity_matrix(z: Tensor) -> Tensor:
    """Cosine similarities of the mean-centred rows of ``z`` (rows, features)."""
    z = z - z.mean(dim=1, keepdim=True)
    z = z / (z.norm(dim=1, keepdim=True) + 1e-8)
    return (z @ z.t()).clamp(-1, 1)


@RULES.register("local", help="greedy local learning: aux classifier per block (predsim option)")
class LocalLearning(BlockwiseRule):
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128}
    supports_kinds = ("image", "signal", "vector", "graph", "text")

    options = (
        Option("aux", str, "each block's auxiliary classifier", choices=AUX_KINDS),
        Option("loss", str, "prediction loss, or prediction plus similarity (predsim)",
               choices=LOSSES),
        Option("beta", float, "predsim: weight of the similarity term", low=0, high=1),
        Option("sim_samples", int, "predsim: rows of the similarity matrix", low=2),
    )

    def __init__(self, network: Network, task: Task, aux: str = "linear", loss: str = "pred",
                 beta: float = 0.99, sim_samples: int = 512) -> None:
        super().__init__(network, task)
        if loss == "predsim" and getattr(network, "graph_task", "node") == "link":
            raise UserError("local loss='predsim' needs a class per node; for --task link "
                            "use loss='pred'")
        self.aux_kind, self.loss_kind, self.beta = aux, loss, beta
        self.sim_samples = sim_samples
        aux_modules, sim_modules = [], []
        for k, block in enumerate(network.blocks):
            conv = self._is_conv(k)
            readout = network.make_readout(k)
            if aux == "mlp":
                width = block.out_shape[0] if conv else block.out_shape[-1]
                readout = nn.Sequential(FeatureLayer(width, conv), readout)
            aux_modules.append(readout)
            sim_modules.append(self._sim_branch(k) if loss == "predsim" else nn.Identity())
        self.aux = nn.ModuleList(aux_modules)
        self.sim = nn.ModuleList(sim_modules)

    def _is_conv(self, k: int) -> bool:
        """Block k's output is a (channels, *space) map of a plain conv network."""
        return self.network.readout_builder is None and len(self.network.blocks[k].out_shape) >= 2

    def _sim_branch(self, k: int) -> nn.Module:
        if not self._is_conv(k):
            return nn.Identity()
        shape = self.network.blocks[k].out_shape
        conv = {2: nn.Conv1d, 3: nn.Conv2d}.get(len(shape))
        if conv is None:
            raise UserError(f"local predsim: unsupported block output shape {shape}")
        return conv(shape[0], shape[0], 3, padding=1)

    def readouts(self) -> dict[int, list[nn.Module]]:
        return {k: [a, s] for k, (a, s) in enumerate(zip(self.aux, self.sim, strict=True))}

    # -- the block's loss -----------------------------------------------------
    def sim_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        z = self.sim[k](out)
        if self._is_conv(k):
            z = z.flatten(2).std(dim=2)             # (batch, channels)
        elif y.dim() >= 2 or z.shape[0] != y.shape[0]:
            z = z.reshape(-1, z.shape[-1])          # one row per position / node
        else:
            z = z.flatten(1)
        targets = y.reshape(-1)
        keep = torch.nonzero(targets != IGNORE_INDEX).flatten()
        if keep.numel() > self.sim_samples:
            keep = keep[torch.randperm(keep.numel(), device=keep.device)[: self.sim_samples]]
        z, targets = z[keep], targets[keep]
        if z.shape[0] < 2:
            return out.sum() * 0.0
        onehot = F.one_hot(targets, self.task.num_classes).to(z.dtype)
        return F.mse_loss(similarity_matrix(z), similarity_matrix(onehot))

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        pred = cross_entropy(self.aux[k](out), y)
        if self.loss_kind == "pred":
            return pred
        return (1 - self.beta) * pred + self.beta * self.sim_loss(k, out, y)

    # -- inference ------------------------------------------------------------
    has_block_readout = True

    def block_readout(self, k: int, h: Tensor) -> Tensor:
        return self.aux[k](h)
