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
    return builder(seed=seed, data_dir=Path(data_dir) if data_dir else None, **options)


import_submodules(__name__)

__all__ = ["DATASETS", "Dataset", "IGNORE_INDEX", "RawData", "Split", "Task", "batches",
           "load_dataset"]
