"""Learning rules, one file each, behind the :class:`Rule` interface.

``create_rule("backprop", network, task, **options)``; ``RULES.names()`` lists them.
"""

from __future__ import annotations

import inspect
from typing import Any

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.registry import Registry, import_submodules
from locallearn.rules.base import ParamGroup, Rule

RULES: Registry = Registry("rule")


def create_rule(name: str, network: Network, task: Task, **options: Any) -> Rule:
    cls = RULES.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        known = [k for k in accepted if k not in ("self", "network", "task")]
        raise UserError(
            f"rule {name!r} has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}"
        )
    return cls(network, task, **options)


import_submodules(__name__)

__all__ = ["RULES", "ParamGroup", "Rule", "create_rule"]
