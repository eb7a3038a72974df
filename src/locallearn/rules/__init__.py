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
    for key, value in options.items():
        if key in accepted:
            options[key] = coerce_option(name, key, value, accepted[key].annotation)
    return cls(network, task, **options)


def coerce_option(rule: str, key: str, value: Any, annotation: Any) -> Any:
    """Check a rule option against a plain int/float/bool annotation (``--set rule.x=abc``
    must be a one-line error, not a TypeError deep in the rule)."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if kind not in ("int", "float", "bool"):
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {"int": number and float(value).is_integer(),
          "float": number,
          "bool": isinstance(value, bool)}[kind]
    if not ok:
        raise UserError(f"rule {rule!r} option {key} must be {'an' if kind == 'int' else 'a'} "
                        f"{kind}, got {value!r}")
    return {"int": int, "float": float, "bool": bool}[kind](value)


import_submodules(__name__)

__all__ = ["RULES", "ParamGroup", "Rule", "create_rule"]
