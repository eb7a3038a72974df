"""White-box adversarial accuracy of a trained model, whatever rule trained it.

The attacks use the true gradient of the trained model's prediction with respect to
its input: ``rule.predict`` differentiated end to end, through the detaches that keep
training local (:class:`locallearn.measure.diagnostics.ThroughDetach`). For the
Forward-Forward family with goodness prediction that is the gradient of the
accumulated goodness of every candidate label, which is differentiable.

* FGSM (Goodfellow, Shlens & Szegedy 2015): ``x + eps * sign(grad_x CE(predict(x), y))``.
* PGD (Madry et al. 2018): a uniform random start in the eps-ball, then ``steps`` steps
  of size ``2.5 eps / steps`` along the gradient's sign, each projected back onto the
  ball (L-infinity).

``eps`` is in the dataset's raw input units. The model reads standardised inputs
(each feature or channel minus the training mean, divided by the training standard
deviation), so in the model's units the bound is ``eps / std`` per feature; datasets
without stored statistics use ``eps`` as given. Perturbed inputs are not clipped to a
data range (the data kinds differ; a raw range is not stored).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from locallearn.errors import UserError
from locallearn.measure.diagnostics import ThroughDetach
from locallearn.rules.base import cross_entropy

ATTACKS = ("fgsm", "pgd")


def input_gradient(rule: Any, x: Tensor, y: Tensor) -> Tensor:
    """d CE(rule.predict(x), y) / dx, through the rule's detaches."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), ThroughDetach():
        scores = rule.predict(x)
        if not scores.requires_grad:
            raise UserError(f"rule {rule.name!r}: its prediction is not differentiable with "
                            f"respect to the input, so it cannot be attacked white-box")
        (grad,) = torch.autograd.grad(cross_entropy(scores, y), x, allow_unused=True)
    if grad is None:
        raise UserError(f"rule {rule.name!r}: its prediction does not depend differentiably "
                        f"on the input, so it cannot be attacked white-box")
    return grad


def attack(rule: Any, x: Tensor, y: Tensor, kind: str, bound: Tensor | float,
           steps: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Adversarial version of ``x`` within ``|delta| <= bound`` (per entry)."""
    if kind == "fgsm":
        return (x + bound * input_gradient(rule, x, y).sign()).detach()
    bound = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    step = 2.5 * bound / steps
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    adv = x + (2 * noise - 1) * bound
    for _ in range(steps):
        adv = adv + step * input_gradient(rule, adv, y).sign()
        adv = torch.maximum(torch.minimum(adv, x + bound), x - bound).detach()
    return adv


def model_bound(dataset: Any, eps: float, device: torch.device | str) -> Tensor | float:
    """``eps`` in raw input units as a per-feature bound on the standardised input."""
    std = getattr(dataset, "std", None)
    if not isinstance(std, Tensor):
        return float(eps)
    return (eps / std).to(device)


@torch.no_grad()
def robust_accuracy(rule: Any, dataset: Any, split: str, kind: str, eps: float,
                    steps: int = 10, batch_size: int = 256,
                    device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Clean and attacked accuracy of ``rule.predict`` on a split."""
    if kind not in ATTACKS:
        raise UserError(f"--attack must be one of {', '.join(ATTACKS)}, got {kind!r}")
    if not eps >= 0:
        raise UserError(f"--eps must be a number >= 0, got {eps!r}")
    if kind == "pgd" and steps < 1:
        raise UserError(f"--steps must be a positive integer, got {steps!r}")
    was = rule.training
    rule.eval()
    bound = model_bound(dataset, eps, device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    clean = attacked = total = 0
    try:
        for x, y in dataset.loader(split, batch_size):
            x, y = x.to(device), y.to(device)
            clean += int((rule.predict(x).argmax(1) == y).sum())
            adv = attack(rule, x, y, kind, bound, steps, generator)
            attacked += int((rule.predict(adv).argmax(1) == y).sum())
            total += int(y.shape[0])
    finally:
        rule.train(was)
    total = max(total, 1)
    return {"attack": kind, "eps": eps, "steps": steps if kind == "pgd" else 1,
            "eps_units": "raw input" if isinstance(bound, Tensor) else "model input",
            "clean_accuracy": clean / total, "attacked_accuracy": attacked / total,
            "samples": total}
