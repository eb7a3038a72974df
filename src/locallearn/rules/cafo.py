"""Cascaded-Forward, CaFo (Zhao et al., 2023): a predictor on every block, trained locally.

Algorithm (per mini-batch, every block at once, each block + predictor with its own
optimiser):
    h_k = block_k(stopgrad(h_{k-1}))              # nothing flows back between blocks
    p_k = P_k(stopgrad(h_k))                      # block k's predictor: linear to classes
    predictor:  L_k = cross_entropy(p_k, y)       # ("mse": squared error to the one-hot)
    block k, by ``blocks``:
        "dfa":    e_k = softmax(p_k) - onehot(y); delta_k = e_k B_k (B_k fixed, random)
                  minimise sum(h_k * delta_k) / n   # DFA from its *own* predictor's error
        "random": frozen at its random initialisation (the paper's plain CaFo)
        "local":  the predictor's gradient through block k (a one-block backprop)
Prediction: the sum of all predictors' outputs (each block votes), one pass;
``predict="last"`` uses the last predictor only.

The network's head is the last block's predictor, so ``mlp:500,500`` has the weights
it has under backprop plus one predictor per earlier block.

Deviations from the paper: the paper trains the blocks first (randomly fixed, or by
DFA from the network's output error) and then each predictor in turn, each for its
own epochs; here blocks and predictors learn together on every mini-batch, and a
block's DFA error comes from its own predictor, so no signal crosses a block
boundary and the rule stays block-local (and stageable). The sparsemax loss is left
out; "ce" and "mse" are offered. Adam replaces plain SGD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules import RULES
from locallearn.rules._feedback import count_valid, one_hot, project, random_matrix, surrogate
from locallearn.rules.base import BlockwiseRule, cross_entropy

BLOCKS = ("dfa", "random", "local")
LOSSES = ("ce", "mse")
PREDICT = ("sum", "last")


@RULES.register("cafo", help="Cascaded-Forward: a locally trained predictor on every block, "
                             "predictions summed")
class CascadedForward(BlockwiseRule):
    defaults = {"epochs": 15, "lr": 3e-3, "optimizer": "adam", "batch_size": 64}
    head_in_last_block = True

    options = (
        Option("blocks", str, "how the blocks learn: dfa, fixed random, or local CE",
               choices=BLOCKS),
        Option("loss", str, "the predictors' loss", choices=LOSSES),
        Option("predict", str, "sum of all predictors, or the last one", choices=PREDICT),
    )

    def __init__(
        self, network: Network, task: Task, blocks: str = "dfa", loss: str = "ce",
        predict: str = "sum",
    ) -> None:
        super().__init__(network, task)
        if network.head is None:
            raise UserError("cafo needs a network with an output head (the last predictor)")
        self.block_mode = blocks
        self.loss_kind = loss
        self.predict_with = predict
        last = len(network.blocks) - 1
        self.predictors = nn.ModuleList([network.make_readout(k) for k in range(last)])
        if blocks == "random":
            for block in network.blocks:
                block.requires_grad_(False)
        for k, block in enumerate(network.blocks):
            self.register_buffer(f"feedback{k}", random_matrix(task.num_classes,
                                                               block.out_features))

    def readouts(self) -> dict[int, list[nn.Module]]:
        return {k: [m] for k, m in enumerate(self.predictors)}

    def predictor(self, k: int, h: Tensor) -> Tensor:
        """p_k: class scores from block k's output."""
        if k == len(self.network.blocks) - 1:
            return self.network.head(h)
        return self.predictors[k](h)

    def predictor_loss(self, p: Tensor, y: Tensor) -> Tensor:
        if self.loss_kind == "mse":
            target = one_hot(y, self.task.num_classes)
            return F.mse_loss(p, target, reduction="sum") / count_valid(y)
        return cross_entropy(p, y)

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        if self.block_mode == "local":
            return self.predictor_loss(self.predictor(k, out), y)
        p = self.predictor(k, out.detach())
        loss = self.predictor_loss(p, y)
        if self.block_mode == "dfa" and out.requires_grad:
            with torch.no_grad():
                e = (p.softmax(1) if self.loss_kind == "ce" else p) - one_hot(
                    y, self.task.num_classes)
                delta = project(e, getattr(self, f"feedback{k}"), tuple(out.shape[1:]))
            loss = loss + surrogate(out, delta, count_valid(y))
        return loss

    # -- inference -----------------------------------------------------------
    has_block_readout = True

    def block_readout(self, k: int, h: Tensor) -> Tensor:
        return self.predictor(k, h)

    def predict(self, x: Tensor) -> Tensor:
        scores = self.block_scores(x)
        if self.predict_with == "last":
            return scores[-1]
        return torch.stack(scores).sum(0)
