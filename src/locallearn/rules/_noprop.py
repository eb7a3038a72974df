"""Pieces shared by the NoProp rules (Li, Teh & Pascanu, 2025): noprop-dt, -ct, -fm.

* :class:`ClassEmbedding` is ``W_Embed``: fixed one-hot rows, or learned prototypes.
* :class:`Denoiser` is one NoProp block (the paper's Fig. 6): the input goes
  through its *own* feature extractor (a fresh copy of the network's blocks), the
  noised label embedding ``z`` (and, in continuous time, ``t``) through a small
  fully connected path, and both are fused into class logits; the prediction of the
  clean embedding is ``softmax(logits) @ W_Embed`` (noprop-fm with
  ``target="velocity"``: a velocity instead).
* :func:`posterior` gives the coefficients of q(z_s | z_r, u_y), the Gaussian
  step from noise level ``r`` to the cleaner level ``s`` used at inference.
* :class:`NoPropRule` holds what the three rules share: the embedding, the
  classifier, argument checks and deterministic inference noise.

Why the network's blocks are copied rather than chained: every NoProp block
sees the raw input and a noised label, never the previous block's output, so
the ``network.blocks`` chain of other rules does not fit. The network given on
the command line (``--net cnn``, ``--net mlp:256,256``) is used as the *input
embedding* of each denoising block; block 1 (or the single ct/fm denoiser) uses
the network's own block modules, the other blocks fresh re-initialised copies.
The network's head is not used and is frozen.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules.base import ParamGroup, Rule

EMBEDDINGS = ("onehot", "prototype")


class ClassEmbedding(nn.Module):
    """``W_Embed`` (classes x dim): one-hot rows (fixed), or learned prototypes.

    Prototypes start as random orthonormal rows (unit norm, like one-hot rows)
    so that the classes are separated from the first step.
    """

    def __init__(self, num_classes: int, kind: str = "onehot", dim: int | None = None) -> None:
        super().__init__()
        if kind not in EMBEDDINGS:
            raise UserError(f"noprop embedding must be one of {', '.join(EMBEDDINGS)}, "
                            f"got {kind!r}")
        self.kind = kind
        if kind == "onehot":
            if dim not in (None, num_classes):
                raise UserError(f"a one-hot embedding has dim = classes ({num_classes}); "
                                f"use embedding=prototype for embed_dim={dim}")
            self.register_buffer("weight", torch.eye(num_classes))
        else:
            dim = dim or num_classes
            if dim <= 0:
                raise UserError(f"noprop embed_dim must be positive, got {dim}")
            w = torch.empty(num_classes, dim)
            nn.init.orthogonal_(w)
            if dim < num_classes:  # rows cannot be orthonormal: just unit norm
                w = F.normalize(torch.randn(num_classes, dim), dim=1)
            self.weight = nn.Parameter(w)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def learned(self) -> bool:
        return isinstance(self.weight, nn.Parameter)

    def forward(self, y: Tensor) -> Tensor:
        return self.weight[y]


def sinusoidal(t: Tensor, dim: int = 32) -> Tensor:
    """Sinusoidal features of a time in [0, 1] (batch,) -> (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), half, device=t.device))
    angles = t[:, None] * freqs[None, :] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def fresh_copy(blocks: nn.ModuleList) -> nn.ModuleList:
    """Same architecture as ``blocks``, newly initialised weights."""
    clone = copy.deepcopy(blocks)
    for m in clone.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return clone


class Denoiser(nn.Module):
    """One NoProp block: (x, z[, t]) -> logits over classes, or a velocity.

    ``features`` embeds the input (the network's blocks, flattened), ``label``
    embeds z (and t), ``fuse`` maps both to ``out`` numbers.
    """

    def __init__(self, features: nn.ModuleList, feature_dim: int, embed_dim: int, out: int,
                 hidden: int = 256, time_dim: int = 0) -> None:
        super().__init__()
        self.features = features
        self.time_dim = time_dim
        self.label = nn.Sequential(nn.Linear(embed_dim + time_dim, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(feature_dim + hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, out))

    def embed_input(self, x: Tensor) -> Tensor:
        for block in self.features:
            x = block(x)
        return x.flatten(1)

    def forward(self, x: Tensor, z: Tensor, t: Tensor | None = None,
                feats: Tensor | None = None) -> Tensor:
        if feats is None:
            feats = self.embed_input(x)
        if self.time_dim:
            z = torch.cat([z, sinusoidal(t, self.time_dim)], dim=1)
        return self.fuse(torch.cat([feats, self.label(z)], dim=1))


def posterior(abar_r: Tensor, abar_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients (a, b, c) of q(z_s | z_r, u) = N(a u + b z_r, c I) for levels r < s.

    The forward (noising) process runs from the clean end: z_r = sqrt(abar_r / abar_s) z_s
    + noise, with q(z_t | y) = N(sqrt(abar_t) u_y, (1 - abar_t) I). This is the paper's
    eq. (3) step, written for any pair of levels so inference may skip levels.
    """
    ratio = abar_r / abar_s  # the alpha of the step s -> r
    a = abar_s.sqrt() * (1 - ratio) / (1 - abar_r)
    b = ratio.sqrt() * (1 - abar_s) / (1 - abar_r)
    c = (1 - abar_s) * (1 - ratio) / (1 - abar_r)
    return a, b, c


INFERENCE_NOISE = Option("inference_noise", bool,
                         "sample noise at prediction (else the mean path)")


class NoPropRule(Rule):
    """Shared state of the NoProp rules: embedding, classifier, inference noise.

    Subclasses build their denoiser(s) with :meth:`make_denoiser`, and implement
    ``param_groups``, ``iter_losses`` and ``trajectory`` (class scores after each
    inference step; the last one is the prediction).
    """

    defaults = {"epochs": 20, "lr": 1e-3, "optimizer": "adamw", "batch_size": 128,
                "weight_decay": 1e-3}
    # Why locallearn.export refuses these rules (None elsewhere): checked before tracing.
    export_refusal = ("its prediction starts from noise drawn per batch from a private "
                      "generator, which torch.export cannot trace with a dynamic batch size")
    options = (
        Option("steps", int, "denoising steps T (blocks for noprop-dt)", low=1),
        Option("inference_steps", int, "denoising steps at prediction (None: steps)", low=1,
               nullable=True),
        Option("embedding", str, "label embedding W_Embed: fixed one-hot or learned",
               choices=EMBEDDINGS),
        Option("embed_dim", int, "prototype embedding width (None: classes)", low=1,
               nullable=True),
        Option("hidden", int, "width of the denoiser's label/time branch", low=1),
        Option("eta", float, "weight of the denoising terms", above=0),
        Option("inference_seed", int, "seed of the prediction noise"),
    )

    def __init__(self, network: Network, task: Task, steps: int = 10,
                 inference_steps: int | None = None, embedding: str = "onehot",
                 embed_dim: int | None = None, hidden: int = 256, eta: float = 0.1,
                 inference_seed: int = 0, **unknown) -> None:
        super().__init__(network, task)
        if unknown:  # create_rule checks names against the declarations; direct calls here
            raise UserError(f"rule {self.name!r} has no option {next(iter(unknown))!r}")
        if network.has_black_box:
            raise UserError(f"rule {self.name!r} backpropagates inside each denoising block, "
                            f"which needs gradients through every layer; the network has a "
                            f"black-box block")
        self.steps = steps
        self.inference_steps = steps
        self.set_inference_steps(steps if inference_steps is None else inference_steps)
        self.eta = float(eta)
        self.hidden = hidden
        # Only noprop-dt and noprop-ct have a noise term at inference: they declare
        # INFERENCE_NOISE and set this; noprop-fm's Euler solve has none.
        self.inference_noise = False
        self.inference_seed = int(inference_seed)
        self.embedding = ClassEmbedding(task.num_classes, embedding, embed_dim)
        # The head of the given network has no role in NoProp (see module docstring).
        if network.head is not None:
            network.head.requires_grad_(False)
        self._draws = 0

    def set_inference_steps(self, n: int) -> None:
        """Number of denoising steps :meth:`predict` runs (``rule.inference_steps``)."""
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise UserError(f"{self.name} inference_steps must be a positive integer, got {n!r}")
        self.inference_steps = n

    def make_denoiser(self, fresh: bool, out: int, time_dim: int = 0) -> Denoiser:
        blocks = fresh_copy(self.network.blocks) if fresh else self.network.blocks
        feature_dim = self.network.blocks[-1].out_features
        return Denoiser(blocks, feature_dim, self.embedding.dim, out, self.hidden, time_dim)

    def make_classifier(self, scale: float = 5.0) -> nn.Linear:
        """p(y | z_T): a linear layer started at ``scale * W_Embed`` (nearest embedding).

        From PyTorch's small random init, a linear softmax on O(1) inputs needs ~1000
        Adam steps at lr 1e-3 to grow confident weights, i.e. many epochs on small data.
        """
        clf = nn.Linear(self.embedding.dim, self.task.num_classes)
        with torch.no_grad():
            clf.weight.copy_(scale * self.embedding.weight)
            clf.bias.zero_()
        return clf

    def embedding_params(self) -> list[nn.Parameter]:
        return [self.embedding.weight] if self.embedding.learned else []

    def clean_prediction(self, logits: Tensor, detach_embedding: bool = True) -> Tensor:
        """û = softmax(logits) @ W_Embed (a convex mix of class embeddings)."""
        w = self.embedding.weight
        return logits.softmax(-1) @ (w.detach() if detach_embedding else w)

    def denoise_step(self, z: Tensor, logits: Tensor, abar_r: Tensor, abar_s: Tensor) -> Tensor:
        """One inference step from noise level r to s: the posterior mean of z_s given z_r
        and the block's clean prediction (plus eq. 3's noise if ``inference_noise``)."""
        a, b, c = posterior(abar_r, abar_s)
        z = a * self.clean_prediction(logits) + b * z
        if self.inference_noise:
            z = z + c.sqrt() * self.noise(z.shape, z)
        return z

    def noise(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Inference noise from a private generator: predict(x) is deterministic, and
        evaluation does not move the global random stream that training draws from."""
        g = torch.Generator(device=like.device)
        g.manual_seed(self.inference_seed + self._draws)
        self._draws += 1
        return torch.randn(shape, generator=g, device=like.device, dtype=like.dtype)

    def trajectory(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def _run(self, x: Tensor) -> list[Tensor]:
        self._draws = 0
        return self.trajectory(x)

    def predict(self, x: Tensor) -> Tensor:
        return self._run(x)[-1]

    def block_scores(self, x: Tensor) -> list[Tensor]:
        """Class scores after each inference step (per-step accuracy in the summary)."""
        return self._run(x)

    def predict_with_blocks(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        # One trajectory for both answers; nothing is cached across calls.
        scores = self._run(x)
        return scores[-1], scores

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        return list(self.iter_losses(x, y))

    def head_group(self, *modules: nn.Module) -> list[ParamGroup]:
        """The shared pieces: classifier (if any) and learned embedding, one group."""
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        params += self.embedding_params()
        return [ParamGroup("head", params)] if params else []
