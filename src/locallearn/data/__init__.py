"""Datasets: a registry of builders, each giving deterministic splits from a seed.

``load_dataset("mnist5k", seed=0)`` returns a :class:`Dataset` with train / val /
test splits standardised with training statistics only. Names of the form
``family:argument`` (``csv:path/to/table.csv``) pass the argument to the builder.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

from locallearn.data.base import IGNORE_INDEX, Dataset, RawData, Split, Task, batches
from locallearn.errors import UserError
from locallearn.registry import Registry, import_submodules

DATASETS: Registry = Registry("dataset")


def load_dataset(
    name: str,
    seed: int = 0,
    data_dir: str | Path | None = None,
    **options: Any,
) -> Any:
    """Build a dataset by name. ``options`` go to the builder (e.g. ``val_fraction``)."""
    family, _, argument = name.partition(":")
    builder = DATASETS.get(family)
    if argument:
        options["argument"] = argument
    accepted = inspect.signature(builder).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        for key in options:
            if key not in accepted:
                known = [k for k in accepted if k not in ("seed", "data_dir", "argument")]
                what = "takes no argument after ':'" if key == "argument" else \
                    f"has no option {key!r}; its options: {', '.join(known) or 'none'}"
                raise UserError(f"dataset {family!r} {what}")
    options = {k: check_option(family, k, v, accepted.get(k)) for k, v in options.items()}
    fractions = {k: v for k, v in options.items()
                 if k.endswith("_fraction") and isinstance(v, (int, float))}
    for key, value in fractions.items():
        if not 0 <= value < 1:
            raise UserError(f"dataset {family!r}: {key} must be in [0, 1), got {value}")
    if sum(fractions.values()) >= 1:
        raise UserError(f"dataset {family!r}: {' + '.join(fractions)} = "
                        f"{sum(fractions.values()):g} leaves no training data; keep it below 1")
    return builder(seed=seed, data_dir=Path(data_dir) if data_dir else None, **options)


def check_option(family: str, key: str, value: Any, param: Any) -> Any:
    """A dataset option checked against the type of its default (``val_fraction=abc`` is
    one line, not a TypeError deep inside the loader)."""
    default = getattr(param, "default", None)
    kind = type(default) if isinstance(default, (bool, int, float, str)) else None
    if kind is None or value is None:
        return value
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value)
            if not math.isfinite(number) or (kind is int and not number.is_integer()):
                raise ValueError
            return int(number) if kind is int else number
        if not isinstance(value, str):
            raise ValueError
        return value
    except ValueError:
        raise UserError(f"dataset {family!r}: option {key} must be {kind.__name__}, got "
                        f"{value!r}") from None


import_submodules(__name__)

__all__ = ["DATASETS", "Dataset", "IGNORE_INDEX", "RawData", "Split", "Task", "batches",
           "load_dataset"]
