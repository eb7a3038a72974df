"""Datasets: a registry of builders, each giving deterministic splits from a seed.

``load_dataset("mnist5k", seed=0)`` returns a :class:`Dataset` with train / val /
test splits standardised with training statistics only. Names of the form
``family:argument`` (``csv:path/to/table.csv``) pass the argument to the builder.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from locallearn.data.base import IGNORE_INDEX, Dataset, RawData, Split, Task, batches
from locallearn.errors import UserError
from locallearn.options import Option, builder_options, validate
from locallearn.registry import Registry, import_submodules

DATASETS: Registry = Registry("dataset")
# A builder's parameters that are not options: the seed, --data-dir, the part after ':'.
BUILDER_ARGUMENTS = ("seed", "data_dir", "argument")


def dataset_options(family: str) -> tuple[Option, ...]:
    """The options a dataset family's builder declares, with their defaults."""
    return builder_options(DATASETS.get(family), skip=BUILDER_ARGUMENTS)


def load_dataset(
    name: str,
    seed: int = 0,
    data_dir: str | Path | None = None,
    **options: Any,
) -> Any:
    """Build a dataset by name. ``options`` go to the builder (e.g. ``val_fraction``),
    checked against its declarations (:mod:`locallearn.options`)."""
    family, _, argument = name.partition(":")
    builder = DATASETS.get(family)
    declared = dataset_options(family)
    options = validate("dataset", family, declared, options)
    # Each fraction is checked by its Option; together (with the defaults) they must
    # leave training data.
    fractions = {o.name: o.default for o in declared
                 if o.name.endswith("_fraction") and isinstance(o.default, float)}
    fractions.update((k, v) for k, v in options.items() if k in fractions and v is not None)
    if sum(fractions.values()) >= 1:
        raise UserError(f"dataset {family!r}: {' + '.join(fractions)} = "
                        f"{sum(fractions.values()):g} leaves no training data; keep it below 1")
    if argument:
        if "argument" not in inspect.signature(builder).parameters:
            raise UserError(f"dataset {family!r} takes no argument after ':'")
        options["argument"] = argument
    return builder(seed=seed, data_dir=Path(data_dir) if data_dir else None, **options)


import_submodules(__name__)

__all__ = ["DATASETS", "Dataset", "IGNORE_INDEX", "RawData", "Split", "Task", "batches",
           "dataset_options", "load_dataset"]
