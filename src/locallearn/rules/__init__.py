"""Learning rules, one file each, behind the :class:`Rule` interface.

``create_rule("backprop", network, task, **options)``; ``RULES.names()`` lists them.
"""

from __future__ import annotations

from typing import Any

from locallearn.data.base import Task
from locallearn.networks.network import Network
from locallearn.options import Option, builder_options, declared_options, validate
from locallearn.registry import Registry, import_submodules
from locallearn.rules.base import ParamGroup, Rule


def _name_rule(name: str, cls: type[Rule]) -> None:
    cls.name = name  # the registry is the one place a rule's name is written


RULES: Registry = Registry("rule", on_register=_name_rule)


def create_rule(name: str, network: Network, task: Task, **options: Any) -> Rule:
    """Build a registered rule; options are checked against its declarations
    (:mod:`locallearn.options`): one-line UserErrors for unknown names and bad values."""
    cls = RULES.get(name)
    return cls(network, task, **validate("rule", name, rule_options(cls), options))


def rule_options(cls: type[Rule]) -> tuple[Option, ...]:
    """A rule's declared options, then any constructor option it does not declare (a rule
    from outside the package), typed by its default."""
    declared = declared_options(cls)
    names = {o.name for o in declared}
    signature = builder_options(cls.__init__, skip=("self", "network", "task"))
    return declared + tuple(o for o in signature if o.name not in names)


import_submodules(__name__)

__all__ = ["RULES", "ParamGroup", "Rule", "create_rule"]
