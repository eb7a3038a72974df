"""Forward-Forward for next-token models (``ff-seq``): goodness of (activity, next token).

After Hinton, "The Forward-Forward Algorithm" (2022): every layer learns, by
itself, high *goodness* for positive data (an input with its true label) and low
goodness for negative data (the same input with a wrong label). For a causal
transformer (``gpt:DxW``) the "input" is every prefix of the window and its
label is the next token. Writing candidate labels into the token stream would
let attention carry one position's candidate to later positions, so here the
label enters each layer's goodness at the layer's output instead, through a
per-layer label embedding ``E_k`` (vocab x width, trained with layer k)::

    for each block k (every position t at once):
        a_k = normalise(block_k(a_{k-1}.detach()))     # per-position RMS normalisation
        G_k(t, c) = mean_j (a_k[t] + E_k[c])_j^2        # goodness of "next token is c"
        c_neg = a random wrong token (or the hardest: highest G_k(t, .))
        L_k = mean_t softplus(theta - G_k(t, y_t)) + softplus(G_k(t, c_neg) - theta)
    L_readout = CE(readout(a.detach()), y)              # a linear map per layer, summed

``G_k(t, c)`` for every candidate costs one matrix product (``|a|^2 + 2 a.E_c +
|E_c|^2``), so the goodness prediction needs a single pass, not one per token.
Prediction (``predict``): ``"readout"`` (default) the summed per-layer linear
readouts (LayerNorm + linear per position; the network's head is the last
layer's part) on the normalised activities: calibrated probabilities, so
perplexity is meaningful; ``"goodness"`` softmax over candidates of
``sum_k G_k(t, c)``. ``block_scores``: each layer's ``G_k(t, .)`` (the per-layer
next-token accuracy in summary.json is that of the layer's goodness).

Deviations from the paper: the label enters at each layer's output (a learned
label embedding per layer) rather than in the input of the first layer; all
layers learn at once; negatives are random wrong tokens by default (Hinton
prefers hard ones; here ``negatives="hardest"``, the wrong token of highest
goodness at that layer, stops improving after 6-10 epochs: on ``gpt:2x32``, 40,000
characters, 20 epochs, seeds 0-2, best validation next-character accuracy mean 0.292
random, 0.257 hardest, level at 8 epochs; docs/results/defaults.md).
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
from locallearn.rules.base import BlockwiseRule, StagePlan, Staging, cross_entropy

NEGATIVES = ("hardest", "random")
PREDICT = ("readout", "goodness")


def normalise_positions(h: Tensor, eps: float = 1e-8) -> Tensor:
    """Each position's vector divided by its root mean square (causal: no mixing)."""
    return h / h.square().mean(-1, keepdim=True).add(eps).sqrt()


def candidate_goodness(a: Tensor, table: Tensor) -> Tensor:
    """``mean_j (a[b, t] + table[c])_j^2`` for every candidate c: (batch, length, vocab)."""
    width = a.shape[-1]
    return (a.square().sum(-1, keepdim=True) + 2 * a @ table.t()
            + table.square().sum(-1)) / width


@RULES.register("ff-seq", help="Forward-Forward for gpt: per-layer goodness of (prefix, next "
                "token) against a wrong token")
class SequenceForwardForward(BlockwiseRule):
    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 64}
    supports_kinds = ("text",)

    options = (
        Option("threshold", float, "goodness threshold theta"),
        Option("negatives", str, "wrong token: random or of highest goodness",
               choices=NEGATIVES),
        Option("predict", str, "summed linear readouts, or softmax of summed goodness",
               choices=PREDICT),
    )

    def __init__(self, network: Network, task: Task, threshold: float = 2.0,
                 negatives: str = "random", predict: str = "readout") -> None:
        super().__init__(network, task)
        if network.head is None or any(len(b.out_shape) != 2 for b in network.blocks):
            raise UserError("ff-seq needs a token-sequence network with a head (gpt:DxW)")
        self.threshold = threshold
        self.negatives = negatives
        self.predict_with = predict
        vocab = task.num_classes
        self.labels = nn.ModuleList()  # E_k, trained with block k
        for block in network.blocks:
            table = nn.Embedding(vocab, block.out_shape[-1])
            nn.init.normal_(table.weight, std=0.5)
            self.labels.append(table)
        self.projections = nn.ModuleList(
            [network.make_readout(k) for k in range(len(network.blocks) - 1)])

    # The head's loss reads every layer's activity (the summed readout).
    staging = StagePlan(Staging.NONE, "its readout reads every layer's activity")

    def readouts(self) -> dict[int, list[nn.Module]]:
        groups: dict[int, list[nn.Module]] = {k: [e] for k, e in enumerate(self.labels)}
        # The readout's parts learn together with the network's head (one group).
        groups[len(self.network.blocks)] = list(self.projections)
        return groups

    def block_input(self, k: int, h: Tensor) -> Tensor:
        # Block 0 reads token ids; later blocks the normalised, detached activity below.
        return h if k == 0 else normalise_positions(h.detach())

    def goodness(self, k: int, h: Tensor) -> Tensor:
        return candidate_goodness(normalise_positions(h), self.labels[k].weight)

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        g = self.goodness(k, out)
        valid = y != IGNORE_INDEX
        g, y = g[valid], y[valid]
        g_pos = g.gather(1, y[:, None]).squeeze(1)
        with torch.no_grad():
            if self.negatives == "hardest":
                wrong = g.masked_fill(F.one_hot(y, g.shape[1]).bool(), float("-inf")).argmax(1)
            else:
                shift = torch.randint(1, g.shape[1], y.shape, device=y.device)
                wrong = (y + shift) % g.shape[1]
        g_neg = g.gather(1, wrong[:, None]).squeeze(1)
        return (F.softplus(self.threshold - g_pos) + F.softplus(g_neg - self.threshold)).mean()

    # -- the readout ----------------------------------------------------------------
    def readout(self, outs: list[Tensor]) -> Tensor:
        acts = [normalise_positions(h).detach() for h in outs]
        last = len(acts) - 1
        parts = [self.projections[k](a) for k, a in enumerate(acts[:last])]
        return torch.stack([*parts, self.network.head(acts[last])]).sum(0)

    def head_loss(self, h: Tensor, y: Tensor) -> Tensor:
        # Called after the block losses; the readout needs every layer's activity.
        return cross_entropy(self.readout(self._outs), y)

    def iter_losses(self, x: Tensor, y: Tensor):
        self._outs: list[Tensor] = []
        h = x
        for k, block in enumerate(self.network.blocks):
            h = block(self.block_input(k, h))
            self._outs.append(h.detach())
            yield self.block_loss(k, h, y)
        yield self.head_loss(h, y)
        self._outs = []

    # -- inference ---------------------------------------------------------------------
    def block_scores(self, x: Tensor) -> list[Tensor]:
        return [self.goodness(k, h) for k, h in enumerate(self.features(x))]

    def predict(self, x: Tensor) -> Tensor:
        outs = self.features(x)
        if self.predict_with == "goodness":
            return torch.stack([self.goodness(k, h) for k, h in enumerate(outs)]).sum(0)
        return self.readout(outs)
