"""Dataset containers and the split / normalisation shared by every dataset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from locallearn.errors import UserError
from locallearn.options import Option

# Targets equal to IGNORE_INDEX are left out of losses and metrics (e.g. graph
# nodes outside the current split).
IGNORE_INDEX = -100

# Options most builders share (declared with locallearn.options.declare; the defaults
# are the builders' own).
VAL_FRACTION = Option("val_fraction", float, "share of the training data held out for "
                      "validation", low=0, below=1)
TEST_FRACTION = Option("test_fraction", float, "share held out for testing when the data "
                       "has no test part", low=0, below=1)


@dataclass
class Split:
    """Inputs and integer class targets of one split, held in memory."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Task:
    """What a rule or network needs to know about the data, not the data itself."""

    num_classes: int
    input_shape: tuple[int, ...]
    kind: str  # "image" (C,H,W), "signal" (C,L), "vector" (F,), "graph", "text"


@dataclass
class RawData:
    """What a dataset builder returns before splitting and normalising."""

    x: Tensor
    y: Tensor
    x_test: Tensor | None
    y_test: Tensor | None
    kind: str
    num_classes: int | None = None
    class_names: list[str] | None = None


class TaskView:
    """What every dataset (in memory, streamed, graph) answers from its :class:`Task`."""

    task: Task

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.task.input_shape


@dataclass
class Dataset(TaskView):
    name: str
    train: Split
    val: Split
    test: Split
    task: Task
    mean: Tensor | None = None
    std: Tensor | None = None
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def loader(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Mini-batches of one split. Shuffling depends only on ``seed``, so an
        epoch's order can be replayed exactly on resume."""
        return batches(self.split(split), batch_size, shuffle, seed)


def batches(
    split: Split, batch_size: int, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(split)
    if shuffle:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g)
        for idx in order.split(batch_size):
            yield split.x[idx], split.y[idx]
    else:
        for start in range(0, n, batch_size):
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]


def fixed_permutation(n: int, seed: int = 1234) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def check_raw(name: str, raw: RawData) -> None:
    """Reject data that would fail later deep inside torch."""
    for part, x, y in (("train", raw.x, raw.y), ("test", raw.x_test, raw.y_test)):
        if x is None:
            continue
        if x.shape[0] != y.shape[0]:
            raise UserError(
                f"dataset {name}: {part} has {x.shape[0]} inputs but {y.shape[0]} labels"
            )
        if x.shape[0] == 0:
            raise UserError(f"dataset {name}: {part} part is empty")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise UserError(f"dataset {name}: {part} inputs contain NaN or infinite values")
    if raw.y.unique().numel() < 2:
        raise UserError(f"dataset {name}: only one class in the labels; need at least two")


def split_and_normalise(
    name: str,
    raw: RawData,
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    normalise: bool = True,
) -> Dataset:
    """Cut train / val (and test, where the data has no fixed test part), then
    standardise with statistics of the training part only."""
    check_raw(name, raw)
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    x, y = raw.x.float(), raw.y.long()
    if raw.x_test is None:
        # No published test split: hold out a fixed part, the same for every seed,
        # so test accuracies of different seeds are comparable.
        order = fixed_permutation(len(y))
        n_test = max(1, int(round(test_fraction * len(y))))
        test_idx, rest = order[:n_test], order[n_test:]
        x_test, y_test = x[test_idx], y[test_idx]
        x, y = x[rest], y[rest]
    else:
        x_test, y_test = raw.x_test.float(), raw.y_test.long()

    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(y)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = Split(x[train_idx], y[train_idx])
    val = Split(x[val_idx], y[val_idx])
    test = Split(x_test, y_test)

    mean = std = None
    if normalise:
        # Per channel for images and signals (dim 1 after the batch), per feature otherwise.
        dims = [0] + list(range(2, train.x.dim())) if raw.kind in ("image", "signal") else [0]
        mean = train.x.mean(dim=dims, keepdim=True)
        std = train.x.std(dim=dims, keepdim=True).clamp_min(1e-6)
        for s in (train, val, test):
            s.x = (s.x - mean) / std
        mean, std = mean.squeeze(0), std.squeeze(0)

    num_classes = raw.num_classes or int(max(y.max(), y_test.max()).item()) + 1
    task = Task(num_classes=num_classes, input_shape=tuple(train.x.shape[1:]), kind=raw.kind)
    info = {"class_names": raw.class_names} if raw.class_names else {}
    return Dataset(name, train, val, test, task, mean, std, info)
