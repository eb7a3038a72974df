"""NoProp-FM (Li, Teh & Pascanu, 2025): flow matching from noise to the label embedding.

Algorithm (per mini-batch):
    u_y = W_Embed[y];  z_0 ~ N(0, I);  t ~ U(0, 1) per sample
    z_t = t u_y + (1 - t) z_0                        # straight path, sampled
    v = net(x, z_t, t)                               # one network, conditioned on x and t
    L_denoise = || v - (u_y - z_0) ||^2              # updates the network only
    [prototypes: L_head = || v.detach() - (u_y - z_0) ||^2
                        + CE(-|| z~_1 - W_Embed ||^2, y),  z~_1 = z_t + (1 - t) v.detach()]
Inference: Euler steps z <- z + v(x, z, t) / n from z_0 ~ N(0, I) at t = 0 to t = 1
(``inference_steps`` = n); prediction: the class whose embedding is nearest to z_1,
scores -|| z_1 - W_Embed[c] ||^2 (for one-hot embeddings: the argmax of z_1).

Locality: one network, local in time as for noprop-ct (each t an independent
regression, nothing runs through the ODE solve). Groups: ``denoiser``, plus ``head``
= W_Embed when the embedding is learned (the shared piece the paper trains jointly).

Deviations from the paper:
* Learned prototypes get a cross-entropy on the distances between the extrapolated
  clean estimate z~_1 and the embeddings, which keeps them apart (the flow-matching
  term alone is minimised by collapsing all prototypes onto each other), and no
  gradient through the network's input z_t.
* No classifier: the prediction is the nearest embedding to z_1.
* Architecture as in noprop-ct (the network from ``--net`` embeds x; two FC layers
  embed [z, sin/cos features of t]; two FC layers fuse them into v).
"""

from __future__ import annotations

import torch
from torch import Tensor

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.rules import RULES
from locallearn.rules._noprop import NoPropRule
from locallearn.rules.base import ParamGroup, cross_entropy


@RULES.register("noprop-fm", help="NoProp flow matching: one network, Euler steps at inference")
class NoPropFM(NoPropRule):
    name = "noprop-fm"

    def __init__(self, network: Network, task: Task, **options) -> None:
        super().__init__(network, task, **options)
        self.denoiser = self.make_denoiser(fresh=False, out=self.embedding.dim, time_dim=32)

    def param_groups(self) -> list[ParamGroup]:
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        return [ParamGroup("denoiser", params)] + self.head_group()

    def scores(self, z: Tensor) -> Tensor:
        """Class scores of a clean-embedding estimate: minus squared distance."""
        return -torch.cdist(z, self.embedding.weight).square()

    def iter_losses(self, x: Tensor, y: Tensor):
        u = self.embedding(y).detach()
        t = torch.rand(x.shape[0], device=x.device)[:, None]
        z0 = torch.randn_like(u)
        zt = t * u + (1 - t) * z0
        v = self.denoiser(x, zt, t[:, 0])
        yield (v - (u - z0)).square().sum(1).mean()
        if not self.embedding.learned:
            return
        u = self.embedding(y)
        v = v.detach()
        z1 = t * u + (1 - t) * z0 + (1 - t) * v
        yield (v - (u - z0)).square().sum(1).mean() + cross_entropy(self.scores(z1), y)

    def trajectory(self, x: Tensor) -> list[Tensor]:
        n = self.inference_steps
        z = self.noise((x.shape[0], self.embedding.dim), x)
        feats = self.denoiser.embed_input(x)
        scores = []
        for i in range(n):
            t = torch.full((x.shape[0],), i / n, device=x.device)
            v = self.denoiser(x, z, t, feats=feats)
            # Per-step readout: the clean end point this velocity points at.
            scores.append(self.scores(z + (1 - i / n) * v))
            z = z + v / n
        scores.append(self.scores(z))
        return scores
