"""Sign-symmetric feedback: usf, brsf, frsf (Liao, Leibo & Poggio, AAAI 2016;
Moskovitz, Litwin-Kumar & Abbott, 2018).

Algorithm (per mini-batch), feedback alignment with B built from W's signs only:
    forward:   a_l = W_l h_{l-1} + b_l,  h_l = f(a_l),  s = a_L      # as in backprop
    output:    delta_L = softmax(s) - onehot(y)
    feedback:  usf   B_l = sign(W_l)                       # uniform magnitudes
               brsf  B_l = sign(W_l) ⊙ |R_l|,  R_l drawn anew every batch
               frsf  B_l = sign(W_l) ⊙ |R_l|,  R_l drawn once, fixed
    backward:  delta_{l-1} = (delta_l B_l) ⊙ f'(a_{l-1})
    update:    dW_l = delta_l^T h_{l-1},  db_l = sum(delta_l)

B follows W's signs as W learns (it is rebuilt from sign(W) at every forward pass),
but never its magnitudes: the backward pass is :mod:`locallearn.rules.fa`'s, which
does not even save W, and B is a function of sign(W) (and of random magnitudes that
never depend on W). tests/test_sign_symmetry.py rescales W's magnitudes, keeping its
signs, and checks that the gradients sent down are unchanged.

Deviations from the papers:
* Scale. Liao et al.'s usf uses B = sign(W) (entries +-1) together with batch
  normalisation and "batch manhattan" updates to cope with the large signals. Here
  every magnitude is drawn (brsf, frsf) or fixed (usf) at the scale of the layer's
  initial W: R_l is drawn as torch initialises W (uniform in +-1/sqrt(fan_in)) and
  usf's constant is that distribution's root mean square, 1/sqrt(3 fan_in). A
  fixed per-layer factor depends on W's shape only, not on its values; with Adam
  (per-parameter step sizes, close to batch manhattan's sign updates) the overall
  scale matters little anyway. No batch normalisation.
* Optimiser: Adam at 1e-3 (the same as fa and the backprop baseline), not SGD.
* Like fa: every linear and convolution of the network (blocks and head) uses B;
  non-weight layers (ReLU, pooling, flatten) backpropagate exactly; one parameter
  group and one loss, the output cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.rules import RULES
from locallearn.rules.fa import FeedbackAlignment, init_like


class SignSymmetry(FeedbackAlignment):
    """Feedback alignment whose B has W's signs; subclasses choose the magnitudes."""

    keeps_random_feedback = False
    magnitudes = "uniform"  # "uniform" (usf), "batch" (brsf), "fixed" (frsf)

    def __init__(self, network: Network, task: Task) -> None:
        super().__init__(network, task)
        # usf: the RMS of the layer's init distribution U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        self.scales = [1.0 / math.sqrt(3.0 * layer.weight[0].numel()) for layer in self.layers]

    def magnitude(self, i: int) -> Tensor | float:
        """|B| of the i-th weight layer; never a function of W's values."""
        if self.magnitudes == "uniform":
            return self.scales[i]
        if self.magnitudes == "batch":
            return init_like(self.layers[i].weight).abs()
        return getattr(self, f"feedback{i}").abs()

    def feedback(self, i: int) -> Tensor:
        """B for the i-th weight layer: sign(W) times this rule's magnitudes (brsf: a
        new draw at every call, and the rule calls it once per batch)."""
        sign = torch.sign(self.layers[i].weight.detach())
        return sign * self.magnitude(i)


@RULES.register("usf", help="Sign symmetry: feedback B = sign(W), uniform magnitudes")
class UniformSignFeedback(SignSymmetry):
    magnitudes = "uniform"


@RULES.register("brsf", help="Sign symmetry: B = sign(W) times random magnitudes drawn each batch")
class BatchRandomSignFeedback(SignSymmetry):
    magnitudes = "batch"


@RULES.register("frsf", help="Sign symmetry: B = sign(W) times fixed random magnitudes")
class FixedRandomSignFeedback(SignSymmetry):
    magnitudes = "fixed"
    keeps_random_feedback = True
