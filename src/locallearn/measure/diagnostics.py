"""Per-epoch diagnostics of a training run, on one fixed batch of training data.

Written to ``metrics.jsonl`` under ``"diagnostics"`` (one dict per epoch):

* activity, for any rule (:func:`activity`): per block, the fraction of zero
  activations (``sparsity``) and the fraction of units that are zero on every
  sample of the batch (``dead_units``; a unit is a feature of a vector output, a
  channel of a conv / signal output).
* whatever the rule adds through ``Rule.epoch_diagnostics(x, y)``: the feedback-based
  rules add the alignment angles of the feedback-alignment literature
  (:func:`weight_alignment_angles` in the rule, :func:`gradient_alignment`), the
  Forward-Forward family the mean goodness of positive and negative data per layer.

Angles are in degrees between flattened tensors: 90 means orthogonal (what two
independent random tensors give), 0 means the same direction.

The batch is the first ``PROBE_ROWS`` rows of the training split in their stored
order, the same every epoch. The measurement runs outside the timed part of the epoch,
in eval mode, with the random number generator's state put back afterwards, so a run
trains exactly as it would without it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

PROBE_ROWS = 256
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def angle(a: Tensor | None, b: Tensor | None) -> float | None:
    """Angle in degrees between two tensors seen as flat vectors (None if either is
    missing or zero)."""
    if a is None or b is None:
        return None
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return None
    cos = float((a @ b) / (na * nb))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def weight_layers(network: nn.Module) -> list[nn.Module]:
    """The linear and convolution layers of a network, in ``modules()`` order."""
    return [m for m in network.modules() if isinstance(m, WEIGHT_LAYERS)]


class ThroughDetach(TorchFunctionMode):
    """Makes ``Tensor.detach`` keep the graph, so that a rule's prediction, written
    with detached block inputs (nothing crosses a block boundary in training), can be
    differentiated end to end: the true backprop gradient of the same computation, or
    the gradient with respect to the input (robustness)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is Tensor.detach:
            return args[0].view_as(args[0])
        return func(*args, **(kwargs or {}))


def gradient_alignment(rule: Any, x: Tensor, y: Tensor) -> list[float | None]:
    """Per weight layer: the angle between the rule's update (the gradient its losses
    give the layer's weight) and the true gradient, backprop's gradient of the
    cross-entropy of ``rule.predict`` (differentiated through its detaches, see
    :class:`ThroughDetach`) on the same batch. None for a layer the rule does not
    train. Gradients already held by the parameters are put back afterwards."""
    from locallearn.rules.base import cross_entropy

    layers = weight_layers(rule.network)
    params = list(rule.parameters())
    held = [p.grad for p in params]

    def weight_grads(loss_fn) -> list[Tensor | None]:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = loss_fn()
            if loss.requires_grad:
                loss.backward()
        return [None if m.weight.grad is None else m.weight.grad.clone() for m in layers]

    try:
        mine = weight_grads(lambda: sum(rule.losses(x, y)))
        with ThroughDetach():
            true = weight_grads(lambda: cross_entropy(rule.predict(x), y))
    finally:
        for p, g in zip(params, held, strict=True):
            p.grad = g
    return [angle(a, b) for a, b in zip(mine, true, strict=True)]


def _units_dim(h: Tensor) -> Tensor:
    """(batch, units): features of a vector output, channels (any entry non-zero) of a
    conv or signal output."""
    return h.flatten(1) if h.dim() <= 2 else h.flatten(2).abs().amax(2)


@torch.no_grad()
def activity(rule: Any, x: Tensor) -> dict[str, list[float]]:
    """Per block: fraction of zero activations and fraction of units never active."""
    features = rule.features
    sparsity, dead = [], []
    for h in features(x):
        if not isinstance(h, Tensor) or not h.is_floating_point():
            return {}
        sparsity.append(float((h == 0).float().mean()))
        dead.append(float((_units_dim(h) == 0).all(0).float().mean()))
    return {"sparsity": sparsity, "dead_units": dead}


def probe_batch(dataset: Any, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """The fixed batch, or None for datasets of dependent samples (graphs, text: they
    have their own evaluation) and for datasets without a stored training split."""
    if getattr(dataset, "evaluate", None) is not None:
        return None
    split = getattr(dataset, "train", None)
    x, y = getattr(split, "x", None), getattr(split, "y", None)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) == 0:
        return None
    return x[:PROBE_ROWS].to(device), y[:PROBE_ROWS].to(device)


def epoch_diagnostics(rule: Any, probe: tuple[Tensor, Tensor] | None) -> dict[str, Any]:
    """Activity plus the rule's own diagnostics on the fixed batch; {} without a batch."""
    if probe is None:
        return {}
    x, y = probe
    # Eval mode: dropout off, and batch-norm running statistics (in a model of your own)
    # are read, not updated, so the measurement leaves training as it was.
    was = rule.training
    rule.eval()
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            out: dict[str, Any] = dict(activity(rule, x))
            out.update(rule.epoch_diagnostics(x, y))
    finally:
        rule.train(was)
    return out


def forward_path(network: Any, k: int) -> Tensor | None:
    """``W_head W_{L-1} ... W_{k+1}`` (classes x width of block k): the matrix backprop
    sends the output error through to block k, activation derivatives left out, as DFA's
    alignment is measured (Nøkland 2016). None unless every block above k and the head
    is one ``nn.Linear`` among elementwise layers (an mlp)."""
    path = None
    for module in [*list(network.blocks)[k + 1:], network.head]:
        layers = weight_layers(module) if module is not None else []
        if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
            return None
        w = layers[0].weight.detach()
        path = w if path is None else w @ path
    return path
