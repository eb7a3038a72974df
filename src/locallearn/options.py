"""Declared, typed options: one declaration per option, one validator, one error format.

A rule declares its options once, as a class attribute::

    options = (
        Option("gamma", float, "weight of the other layers' goodness", low=0),
        Option("negatives", str, "how wrong labels are picked", choices=("random", "hardest")),
    )

and a network or dataset builder (a function) with :func:`declare`::

    @NETWORKS.register("cnn", help="...")
    @declare(Option("kernel_size", int, "side of the convolution kernels", low=1))
    def cnn(argument, input_shape, num_classes, kernel_size: int = 3): ...

The default is the one in the signature (so it is written once, where the code uses
it). :func:`validate` checks a dict of values against the declarations and raises a
one-line :class:`~locallearn.errors.UserError`; ``locallearn list --options`` prints
the declarations.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from locallearn.errors import UserError

NO_DEFAULT = inspect.Parameter.empty
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Option:
    """One option: its name, type, allowed values and a one-line help.

    ``type`` is ``int``, ``float``, ``bool`` or ``str``, or a tuple of them (e.g.
    ``(bool, str)`` with ``choices=(True, False, "auto")``). An int is accepted for a
    float, and a float with an integer value for an int. ``low``/``high`` bound a number
    (inclusive), ``above`` from below and ``below`` from above (exclusive). NaN is never
    accepted for a number. ``nullable`` allows None. ``parse``
    maps an accepted spelling to the canonical value before the checks (e.g. case).
    """

    name: str
    type: type | tuple[type, ...]
    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    nullable: bool = False
    parse: Callable[[Any], Any] | None = None
    default: Any = NO_DEFAULT  # from the constructor's signature (see declared_options)

    @property
    def kinds(self) -> tuple[type, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def type_name(self) -> str:
        name = " | ".join(k.__name__ for k in self.kinds)
        return f"{name} | None" if self.nullable else name

    def describe(self) -> str:
        """The allowed values in words (choices, or the type and its bounds)."""
        if self.choices is not None:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        words = " or ".join(_article(k) for k in self.kinds)
        if self.kinds == (int,) and self.low == 1 and self.high is None:
            return "a positive integer"
        if self.above == 0 and len(self.kinds) == 1:
            words = f"a positive {self.kinds[0].__name__}"
        elif self.above is not None:
            words += f" > {_show(self.above)}"
        if self.low is not None and self.high is not None:
            words += f" between {_show(self.low)} and {_show(self.high)}"
        elif self.low is not None:
            words += f" >= {_show(self.low)}"
        elif self.high is not None:
            words += f" <= {_show(self.high)}"
        if self.below is not None:
            words += f"{' and' if self.low is not None else ''} < {_show(self.below)}"
        return words

    def check(self, owner: str, value: Any) -> Any:
        """The value, converted to the declared type; a one-line UserError if not allowed."""
        if value is None and (self.nullable or self.default is None):
            return None
        if self.parse is not None and value is not None:
            value = self.parse(value)
        if self.choices is not None:
            for c in self.choices:  # type-exact: True is not 1, "1" is not 1
                if value == c and type(value) is type(c):
                    return c
            raise UserError(f"{owner} {self.name} must be {self.describe()}; got {value!r}")
        for kind in self.kinds:
            converted = _convert(value, kind)
            if converted is not _REJECT:
                break
        else:
            raise UserError(f"{owner} {self.name} must be "
                            f"{' or '.join(_article(k) for k in self.kinds)}, got {value!r}")
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            if (math.isnan(converted)
                    or (self.low is not None and converted < self.low)
                    or (self.high is not None and converted > self.high)
                    or (self.above is not None and not converted > self.above)
                    or (self.below is not None and not converted < self.below)):
                raise UserError(f"{owner} {self.name} must be {self.describe()}, got {value!r}")
        return converted


_ARTICLE = {int: "an int", float: "a float", bool: "true or false", str: "a string"}
_REJECT = object()


def _article(kind: type) -> str:
    return _ARTICLE.get(kind, f"a {kind.__name__}" if kind is not object else "any value")


def _convert(value: Any, kind: type) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool:
        return value if isinstance(value, bool) else _REJECT
    if kind is int:
        return int(value) if number and float(value).is_integer() else _REJECT
    if kind is float:
        return float(value) if number else _REJECT
    if kind is str:
        return value if isinstance(value, str) else _REJECT
    return value if isinstance(value, kind) else _REJECT


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def signature_defaults(cls: type) -> dict[str, Any]:
    """Keyword defaults of ``cls``'s constructor chain (a subclass's win)."""
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty:
                defaults[p.name] = p.default
    return defaults


def declared_options(cls: type) -> tuple[Option, ...]:
    """The options ``cls`` and its bases declare (``options`` class attributes, a
    subclass's declaration replacing a base's of the same name), with their defaults."""
    found: dict[str, Option] = {}
    for klass in reversed(cls.__mro__):
        for opt in klass.__dict__.get("options", ()) or ():
            if isinstance(opt, Option):
                found[opt.name] = opt
    defaults = signature_defaults(cls)
    return tuple(replace(o, default=defaults.get(o.name, NO_DEFAULT)) for o in found.values())


def declare(*declared: Option) -> Callable[[F], F]:
    """Attach option declarations to a builder function (see the module docstring)."""
    def decorator(fn: F) -> F:
        fn.options = declared  # type: ignore[attr-defined]
        return fn

    return decorator


def builder_options(builder: Callable[..., Any], skip: Iterable[str] = ()) -> tuple[Option, ...]:
    """A builder function's options: the ones it declares (:func:`declare`), then an undeclared
    keyword parameter (a builder from outside the package) typed by its default, all
    with the signature's defaults. ``skip``: parameters that are not options (``seed``)."""
    params = {p.name: p for p in inspect.signature(builder).parameters.values()
              if p.name not in set(skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    found = {o.name: o for o in getattr(builder, "options", ())}
    for name, p in params.items():
        if name not in found and p.default is not p.empty:
            kind = type(p.default) if isinstance(p.default, (bool, int, float, str)) else object
            found[name] = Option(name, kind, "", nullable=p.default is None)
    return tuple(replace(o, default=params[o.name].default if o.name in params else NO_DEFAULT)
                 for o in found.values())


def validate(kind: str, name: str, declared: Iterable[Option],
             values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked and converted against ``declared``; a one-line UserError on the
    first unknown name or bad value (``kind`` and ``name`` say whose: ``"rule", "ff"``)."""
    by_name = {o.name: o for o in declared}
    out = {}
    for key, value in values.items():
        if key not in by_name:
            raise UserError(f"{kind} {name!r} has no option {key!r}; its options: "
                            f"{', '.join(by_name) or 'none'}")
        out[key] = by_name[key].check(name, value)
    return out


def format_options(declared: Iterable[Option], indent: str = "    ") -> list[str]:
    """One line per option: name, type, default, allowed values, help."""
    lines = []
    for o in declared:
        default = "required" if o.default is NO_DEFAULT else _show(o.default)
        bounded = any(b is not None for b in (o.low, o.high, o.above, o.below))
        allowed = (f" [{', '.join(_show(c) for c in o.choices)}]" if o.choices
                   else f" [{o.describe()}]" if bounded else "")
        lines.append(f"{indent}{o.name:<16} {o.type_name():<12} default {default:<9}"
                     f"{allowed} {o.help}")
    return lines
