"""NoProp-DT (Li, Teh & Pascanu, 2025): T blocks, each a denoiser of a noisy label embedding.

Algorithm (per mini-batch; every block t = 1..T takes its own step):
    u_y = W_Embed[y]                                   # one-hot, or a learned prototype
    z_{t-1} = sqrt(abar_{t-1}) u_y + sqrt(1 - abar_{t-1}) eps      # sampled, never computed
    û_t = softmax(block_t(x, z_{t-1})) @ W_Embed       # block t: own input embedding of x
    L_t = || û_t - u_y ||^2                            # updates block t only
    L_head = CE(classifier(z_T), y),  z_T ~ q(z_T | y)  # the classifier: z_T sampled too
           [+ KL(q(z_0|y) || N(0, I)) + sum_t (T/2) eta (SNR(t) - SNR(t-1)) || û_t - u_y ||^2
              for learned prototypes: the embedding's share of the paper's objective]
Inference (eq. 3): z_0 ~ N(0, I); z_t = a_t û_t + b_t z_{t-1} + sqrt(c_t) eps_t, with
(a_t, b_t, c_t) the Gaussian posterior q(z_t | z_{t-1}, u); prediction = classifier(z_T).

Noise schedule: abar_t = cos^2(pi/2 (1 - t/T)) for t = 0..T (cosine, as in the paper),
clipped to [1e-3, 0.99]; q(z_t | y) = N(sqrt(abar_t) u_y, (1 - abar_t) I), so z_0 is almost
pure noise and z_T almost the clean embedding.

Locality. Block t's loss reaches only block t (its input embedding, label path and
fusion layers): z_{t-1} is sampled from the fixed noising process, not computed by block
t-1, and W_Embed enters block t's loss detached. The *shared pieces the paper allows*
are the classifier and, for learned prototypes, W_Embed (Algorithm 1 updates them with
every block); here they form one extra group "head" whose loss holds the terms of the
paper's objective that reach them, with the blocks' outputs detached.

Design in this library: the network given with ``--net`` (e.g. ``cnn``, ``mlp:256``)
is the input embedding of every block; block 1 uses the network's own modules, blocks
2..T fresh copies (so there are T times the network's feature weights). The
network's head is frozen and unused. Options: ``steps`` (T, 10), ``inference_steps``
(default T, at most T; fewer skips levels: the block trained at level r jumps straight
to the next level kept, with the posterior between the two levels), ``embedding``
(``onehot`` or ``prototype``), ``embed_dim``, ``hidden`` (256: width of the label path
and the fusion layer), ``eta`` (0.1), ``inference_noise`` (False; True adds eq. 3's
noise term). ``per_block_test_accuracy``: each step's block's own class guess
(argmax of its logits), then the classifier on z_T.

Deviations from the paper:
* Block t's loss is the plain squared error, without the paper's weight
  (T/2) eta (SNR(t) - SNR(t-1)). Each block has its own Adam optimiser, which is
  invariant to a constant scale of its loss, so the update is the same as the paper's
  (up to Adam's epsilon); with SGD the paper's weights would make block 1, the block
  that matters most at inference (it sees almost pure noise), learn ~1000x slower than
  block T. The weights do matter for W_Embed, and are kept in the head's loss.
* W_Embed gets no gradient through the blocks' input z_{t-1} (which would need a
  backward pass through block t into the embedding); it learns from the CE, KL and
  the denoising targets. One-hot embeddings are unaffected.
* abar is clipped at 0.99 at t = T (the cosine schedule reaches 1, an infinite SNR)
  and at 1e-3 at t = 0.
* All T blocks take a step on every mini-batch (the paper's Algorithm 1 visits the
  blocks in turn; each block sees the same data and objective either way, and the
  ordering does not matter as no block depends on another).
* Architecture: the paper's block (its Fig. 6) has a fixed CNN for x and FC layers for
  z; here the input path is the network from ``--net``, then two FC layers for z and
  two for the fusion, no batch norm.
* The classifier starts at 5 W_Embed (scores 5 <u_c, z_T>, the nearest-embedding
  readout): from PyTorch's small random init it took many epochs on digits to become
  confident, and the final prediction sat near chance meanwhile.
* Inference is deterministic by default: each step moves z to the posterior mean
  a_t û_t + b_t z_{t-1}, without eq. 3's sqrt(c_t) eps_t (``inference_noise=True``
  adds it). With the noise, the T steps *sample* a class from the model's p(y | x)
  instead of taking its mode, which costs accuracy until the model is confident
  (mnist5k mlp:500,500, 10 epochs, seeds 0-2, same trained weights, best_val_accuracy
  mean 0.9492 without the noise, 0.9383 with it, never higher on a seed;
  docs/results/defaults.md).
  A public re-implementation reported the same (Sid3503/NoProp, issue 4).
  z_0 (and the noise, when on) comes from a private generator reseeded at every
  ``predict`` call: accuracy is reproducible, and evaluation leaves the global random
  stream that training draws from untouched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.rules import RULES
from locallearn.rules._noprop import INFERENCE_NOISE, NoPropRule
from locallearn.rules.base import ParamGroup, cross_entropy

ABAR_MIN, ABAR_MAX = 1e-3, 0.99


def cosine_schedule(steps: int) -> Tensor:
    """abar_t for t = 0..T: signal fraction, increasing from ~0 (noise) to ~1 (clean)."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    abar = torch.cos(math.pi / 2 * (1 - t)) ** 2
    return abar.clamp(ABAR_MIN, ABAR_MAX).float()


@RULES.register("noprop-dt", help="NoProp discrete time: T blocks denoise a label embedding")
class NoPropDT(NoPropRule):
    # T networks per step: fewer epochs than ct/fm. A time budget, not a plateau: best
    # validation accuracy from 10 to 20 epochs rises +0.006 on mnist5k mlp:500,500
    # (seeds 0-2) but +0.103 on mnist1d cnn (seeds 0-2), where --epochs 20 is needed
    # (docs/results/defaults.md).
    defaults = {**NoPropRule.defaults, "epochs": 10}
    streams_losses = True  # block t's graph is freed before block t+1 runs

    options = (INFERENCE_NOISE,)

    def __init__(self, network: Network, task: Task, inference_noise: bool = False,
                 **options) -> None:
        super().__init__(network, task, **options)
        self.inference_noise = bool(inference_noise)
        c = task.num_classes
        self.blocks = nn.ModuleList([self.make_denoiser(fresh=t > 0, out=c)
                                     for t in range(self.steps)])
        self.classifier = self.make_classifier()
        abar = cosine_schedule(self.steps)
        snr = abar / (1 - abar)
        self.register_buffer("abar", abar, persistent=False)
        # The paper's weight of block t's term: (T/2) eta (SNR(t) - SNR(t-1)), t = 1..T.
        self.register_buffer("weights", self.steps / 2 * self.eta * (snr[1:] - snr[:-1]),
                             persistent=False)

    def block_modules(self) -> list[nn.Module]:
        # Each denoising block reads the input through its own copy of the network's blocks.
        return [b.features for b in self.blocks]

    def param_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup(f"block{t}", [p for p in b.parameters() if p.requires_grad])
                  for t, b in enumerate(self.blocks)]
        return groups + self.head_group(self.classifier)

    def sample(self, u: Tensor, level: int) -> Tensor:
        """z ~ q(z_level | y) = N(sqrt(abar) u, (1 - abar) I)."""
        a = self.abar[level]
        return a.sqrt() * u + (1 - a).sqrt() * torch.randn_like(u)

    def iter_losses(self, x: Tensor, y: Tensor):
        u = self.embedding(y).detach()
        logits_seen = []
        for t, block in enumerate(self.blocks):  # block t is the paper's block t+1
            logits = block(x, self.sample(u, t))
            yield (self.clean_prediction(logits) - u).square().sum(1).mean()
            logits_seen.append(logits.detach())
        head = self.head_group(self.classifier)
        if not head:
            return
        u = self.embedding(y)  # not detached: the head's group may own W_Embed
        loss = cross_entropy(self.classifier(self.sample(u, self.steps)), y)
        if self.embedding.learned:
            loss = loss + 0.5 * self.abar[0] * u.square().sum(1).mean()  # KL(q(z_0|y) || p(z_0))
            for w, logits in zip(self.weights, logits_seen, strict=True):
                err = self.clean_prediction(logits, detach_embedding=False) - u
                loss = loss + w * err.square().sum(1).mean()
        yield loss

    def levels(self) -> list[int]:
        """Noise levels visited at inference: 0 = start, ..., T = end."""
        n = min(self.inference_steps, self.steps)
        return sorted({round(i * self.steps / n) for i in range(n + 1)})

    def trajectory(self, x: Tensor) -> list[Tensor]:
        z = self.noise((x.shape[0], self.embedding.dim), x)
        scores = []
        levels = self.levels()
        for r, s in zip(levels[:-1], levels[1:], strict=True):
            logits = self.blocks[r](x, z)
            z = self.denoise_step(z, logits, self.abar[r], self.abar[s])
            scores.append(logits)
        scores.append(self.classifier(z))
        return scores
