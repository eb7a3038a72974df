"""Checks shared by the test suite and by users who write their own rules."""

from __future__ import annotations

import torch
from torch import Tensor

from locallearn.rules.base import Rule


def gradient_reach(rule: Rule, x: Tensor, y: Tensor) -> list[list[bool]]:
    """``reach[k][j]`` is True when loss ``k`` gives a non-zero gradient to group ``j``.

    Each loss is differentiated on its own (fresh forward pass each time), so
    a loss that leaks into another block's parameters shows up here even when
    the summed loss hides it.
    """
    groups = rule.param_groups()
    n = len(rule.losses(x, y))
    reach = []
    for k in range(n):
        rule.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        losses = rule.losses(x, y)
        if losses[k].requires_grad:
            losses[k].backward()
        row = []
        for g in groups:
            row.append(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in g.params))
        reach.append(row)
    rule.zero_grad(set_to_none=True)
    return reach


def assert_local(rule: Rule, x: Tensor, y: Tensor) -> None:
    """Assert that loss ``k`` reaches parameter group ``k`` and no other.

    Also asserts the groups are disjoint and cover every trainable parameter of
    the rule (so no parameter is trained by an unchecked path).
    """
    groups = rule.param_groups()
    seen: set[int] = set()
    for g in groups:
        for p in g.params:
            assert id(p) not in seen, f"parameter in two groups ({g.name})"
            seen.add(id(p))
    trainable = {id(p) for p in rule.parameters() if p.requires_grad}
    missing = trainable - seen
    assert not missing, f"{len(missing)} trainable parameters are in no group"
    reach = gradient_reach(rule, x, y)
    assert len(reach) == len(groups), f"{len(reach)} losses for {len(groups)} groups"
    for k, row in enumerate(reach):
        others = [groups[j].name for j, hit in enumerate(row) if hit and j != k]
        assert not others, f"loss of {groups[k].name} reaches {others}"
        assert row[k], f"loss of {groups[k].name} does not reach its own parameters"


def assert_backward_ignores_forward_weights(rule: Rule, x: Tensor, y: Tensor) -> None:
    """Feedback-alignment-style rules: the backward pass must never read the forward
    weights ``W`` of ``rule.layers``. Every ``W`` is overwritten with NaN between the
    forward and the backward pass; the gradients must stay finite and unchanged."""

    def grads(poison: bool) -> list[Tensor]:
        rule.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # rules that draw feedback per batch draw the same one twice
        loss = rule.losses(x, y)[0]
        params = list(rule.network.parameters())
        saved = [p.detach().clone() for p in params]
        if poison:
            with torch.no_grad():
                for layer in rule.layers:
                    layer.weight.fill_(float("nan"))
        loss.backward()
        out = [p.grad.clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        return out

    for clean, poisoned in zip(grads(False), grads(True), strict=True):
        assert torch.isfinite(poisoned).all(), "the backward pass read a forward weight (NaN)"
        torch.testing.assert_close(clean, poisoned)
