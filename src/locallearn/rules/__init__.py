"""Learning rules, one file each, behind the :class:`Rule` interface.

``create_rule("backprop", network, task, **options)``; ``RULES.names()`` lists them.
"""

from __future__ import annotations

import inspect
from typing import Any

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import declared_options, validate
from locallearn.registry import Registry, import_submodules
from locallearn.rules.base import ParamGroup, Rule


def _name_rule(name: str, cls: type[Rule]) -> None:
    cls.name = name  # the registry is the one place a rule's name is written


RULES: Registry = Registry("rule", on_register=_name_rule)


def create_rule(name: str, network: Network, task: Task, **options: Any) -> Rule:
    """Build a registered rule; options are checked against its declarations
    (:mod:`locallearn.options`): one-line UserErrors for unknown names and bad values."""
    cls = RULES.get(name)
    declared = declared_options(cls)
    if declared or not _signature_options(cls):
        return cls(network, task, **validate("rule", name, declared, options))
    # A rule that declares no options yet: check the names against its signature.
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        known = [k for k in accepted if k not in ("self", "network", "task")]
        raise UserError(
            f"rule {name!r} has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}"
        )
    return cls(network, task, **options)


def _signature_options(cls: type[Rule]) -> list[str]:
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in ("self", "network", "task") and p.kind != p.VAR_KEYWORD]


import_submodules(__name__)

__all__ = ["RULES", "ParamGroup", "Rule", "create_rule"]
