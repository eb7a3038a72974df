"""The frozen control: blocks keep their random initialisation (``freeze_blocks``).

Many rules train a head or per-block readouts on detached features. A trained head
on *untrained* random blocks is already strong on small data sets, so a rule's
hidden update only counts if it beats the same run with its blocks frozen: same
rule, seed, optimiser, learning rate, batch size and epochs, with only what lies
outside the blocks (head, readouts, predictors) learning.
"""

from __future__ import annotations

from locallearn.rules.base import ParamGroup, Rule


def freeze_blocks(rule: Rule) -> int:
    """Stop every block of ``rule`` from learning; returns the number of frozen tensors.

    The blocks are :meth:`Rule.block_modules` (the network's blocks unless a rule
    keeps its own copies, as NoProp-DT does).
    """
    frozen = 0
    for module in rule.block_modules():
        for p in module.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += 1
    return frozen


def trainable_groups(rule: Rule) -> list[ParamGroup]:
    """The rule's parameter groups without frozen tensors; groups left empty are dropped."""
    groups = []
    for g in rule.param_groups():
        params = [p for p in g.params if p.requires_grad]
        if params:
            groups.append(ParamGroup(g.name, params, dict(g.options)))
    return groups
