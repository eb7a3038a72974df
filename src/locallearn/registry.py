"""Name -> factory registries, so specs and config files need no if-chains.

Each family (rules, datasets, networks) has one :class:`Registry`. Modules
register themselves with a decorator; the package imports every module of
its folder so that adding a file is all it takes to add an entry.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from locallearn.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str,
                 on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self.on_register = on_register  # e.g. the rule registry writes the rule's name
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            if self.on_register is not None:
                self.on_register(name, obj)
            doc = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._help[name] = doc
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))} "
                f"(see `locallearn list`)"
            )
        return self._entries[name]

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_submodules(package_name: str) -> None:
    """Import every module of a package so their registrations run."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
