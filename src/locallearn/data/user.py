"""Your own data: a torch ``Dataset``, a ``DataLoader`` or ``(X, y)`` arrays / tensors.

:func:`user_data` turns train / val / test given in any of these forms into an object
with the interface the :class:`~locallearn.training.Trainer` reads (``task``,
``train`` / ``val`` / ``test`` with ``len``, ``loader(split, batch_size, shuffle,
seed)``):

* ``(X, y)`` pairs stay in memory and keep the fast path of the registered datasets
  (:class:`~locallearn.data.base.Dataset`: slicing one permutation per epoch).
* A ``Dataset`` or ``DataLoader`` is streamed batch by batch: nothing is stacked or
  held beyond one batch, and the dataset's own transforms (augmentation) run per
  sample as it is read. A map-style dataset (or a loader over one with a plain
  random or sequential sampler) is re-read each epoch through a ``DataLoader`` whose
  shuffling generator is seeded from (seed, epoch), exactly like the in-memory path,
  so ``resume`` replays the same order. A loader with its own sampler, or over an
  iterable dataset, is used as given: its order is its own, and the run says once
  that a resume cannot replay it exactly.

Normalisation is explicit (``normalise``): True (the default) standardises with
statistics of the training data (per channel for images and signals, per feature for
vectors), applied to every batch and stored with the model (:mod:`locallearn.export`
puts them in front of the exported network, so prediction takes raw inputs); False
leaves the data exactly as given. ``summary.json`` records which (``normalisation``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data import Dataset as TorchDataset

from locallearn.data.base import Split, Task, TaskView, batches, fixed_permutation
from locallearn.errors import UserError

KINDS = {2: "vector", 3: "signal", 4: "image"}
# Training samples read (in order) to estimate the normalisation statistics of streamed data.
STATS_SAMPLES = 20_000


@dataclass
class Normaliser:
    """``(x - mean) / std`` with statistics of the training data (broadcast over the batch)."""

    mean: Tensor | None = None
    std: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: Tensor) -> Tensor:
        if self.mean is None:
            return x
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)


def _is_pair(obj: Any) -> bool:
    return (isinstance(obj, (tuple, list)) and len(obj) == 2
            and all(isinstance(o, (Tensor, np.ndarray)) for o in obj))


def _as_tensor(a: Any) -> Tensor:
    t = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
    return t


def _stat_dims(x: Tensor) -> list[int]:
    # Per channel for images and signals (dim 1), per feature for vectors.
    return [0] + list(range(2, x.dim())) if x.dim() >= 3 else [0]


class StreamSplit:
    """One split read from a torch Dataset or DataLoader, batch by batch."""

    def __init__(self, name: str, source: Any, normaliser: Normaliser, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.name = name
        self.loader_given = source if isinstance(source, DataLoader) else None
        self.dataset = source.dataset if isinstance(source, DataLoader) else source
        self.normaliser = normaliser
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        loader = self.loader_given
        # A loader we can re-make with a seeded generator: map-style data with a plain
        # random or sequential sampler and automatic batching.
        self.remakeable = not isinstance(self.dataset, IterableDataset) and (
            loader is None or (loader.batch_size is not None and isinstance(
                loader.sampler, (RandomSampler, SequentialSampler))
                and not (isinstance(loader.sampler, RandomSampler)
                         and loader.sampler.replacement)))
        self.shuffles = loader is None or isinstance(loader.sampler, RandomSampler)
        self.warned = False

    def __len__(self) -> int:
        try:
            return len(self.dataset)
        except TypeError:
            return 0

    def describe(self) -> str:
        kind = "DataLoader" if self.loader_given is not None else "Dataset"
        return f"{kind} of {type(self.dataset).__name__} ({len(self)} samples, streamed)"

    def loader(self, batch_size: int, shuffle: bool, seed: int):
        given = self.loader_given
        if given is not None and not self.remakeable:
            if shuffle and not self.warned:
                warnings.warn(f"{self.name} loader has its own sampler or is iterable: its "
                              f"order is not seeded by locallearn, so a resumed run cannot "
                              f"replay it exactly", stacklevel=2)
                self.warned = True
            source = given
        else:
            # The user's loader keeps its batch size, collate function and workers;
            # only the order is seeded (one generator per epoch, as in the in-memory path).
            bs = given.batch_size if given is not None else batch_size
            shuffle = shuffle and self.shuffles
            source = DataLoader(
                self.dataset, batch_size=bs, shuffle=shuffle,
                generator=torch.Generator().manual_seed(seed),
                num_workers=given.num_workers if given is not None else self.num_workers,
                collate_fn=given.collate_fn if given is not None else None,
                pin_memory=given.pin_memory if given is not None else self.pin_memory,
                drop_last=given.drop_last if given is not None else False,
                worker_init_fn=given.worker_init_fn if given is not None else None,
            )
        for item in source:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise UserError(f"{self.name} data must give (input, label) pairs; got "
                                f"{type(item).__name__}")
            x, y = item[0], item[1]
            yield self.normaliser(torch.as_tensor(x)), torch.as_tensor(y).long()


class UserData(TaskView):
    """Train / val / test from the user (see the module docstring), Trainer-ready."""

    def __init__(self, train, val, test, task: Task, normaliser: Normaliser,
                 sources: dict[str, str]) -> None:
        self.name = "user"
        self.train, self.val, self.test = train, val, test
        self.task = task
        self.normaliser = normaliser
        self.mean, self.std = normaliser.mean, normaliser.std
        self.info = {"sources": sources, "normalisation": normaliser.info}

    def split(self, name: str):
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0):
        part = self.split(split)
        if isinstance(part, Split):
            return batches(part, batch_size, shuffle, seed)
        return part.loader(batch_size, shuffle, seed)


def _first_batch(source: Any) -> tuple[Tensor, Tensor]:
    if _is_pair(source):
        return _as_tensor(source[0])[:2], _as_tensor(source[1])[:2]
    if isinstance(source, DataLoader):
        item = next(iter(source))
    else:
        try:
            item = next(iter(DataLoader(source, batch_size=2)))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot read a batch from the training data "
                            f"({type(source).__name__}): {first}") from None
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise UserError("training data must give (input, label) pairs")
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])


def _num_classes(sources: list[Any], given: int | None) -> int | None:
    if given is not None:
        return int(given)
    best = None
    for src in sources:
        if src is None:
            continue
        ds = src.dataset if isinstance(src, DataLoader) else src
        labels = None
        if _is_pair(src):
            labels = _as_tensor(src[1])
        elif hasattr(ds, "classes"):
            try:
                return len(ds.classes)
            except TypeError:
                pass
        if labels is None and hasattr(ds, "targets"):
            labels = torch.as_tensor(np.asarray(ds.targets))
        if labels is None and hasattr(ds, "tensors") and len(ds.tensors) >= 2:
            labels = ds.tensors[1]
        if labels is not None and labels.numel():
            n = int(labels.max()) + 1
            best = n if best is None else max(best, n)
    return best


def _split_off(source: Any, seed: int, val_fraction: float, test_fraction: float,
               need_test: bool):
    """Hold out val (and test) parts of the training data when the user gave none."""
    if isinstance(source, DataLoader):
        if isinstance(source.dataset, IterableDataset):
            raise UserError("give val= (and test=) data: an iterable dataset cannot be split")
        source = source.dataset
    n = len(source[1]) if _is_pair(source) else len(source)
    order = fixed_permutation(n)
    n_test = max(1, int(round(test_fraction * n))) if need_test else 0
    test_idx, rest = order[:n_test], order[n_test:]
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    n_val = max(1, int(round(val_fraction * len(rest))))
    val_idx, train_idx = rest[:n_val], rest[n_val:]

    def take(idx: Tensor):
        if _is_pair(source):
            return _as_tensor(source[0])[idx], _as_tensor(source[1])[idx]
        return torch.utils.data.Subset(source, idx.tolist())

    return take(train_idx), take(val_idx), (take(test_idx) if need_test else None)


def _streamed_statistics(split: StreamSplit, dims: list[int]) -> tuple[Tensor, Tensor, int]:
    """Mean and std over the first STATS_SAMPLES training samples, one batch at a time."""
    total = sq = None
    values = samples = 0
    for x, _ in split.loader(256, shuffle=False, seed=0):
        x = x.double()
        s, s2 = x.sum(dim=dims, keepdim=True), (x * x).sum(dim=dims, keepdim=True)
        total = s if total is None else total + s
        sq = s2 if sq is None else sq + s2
        values += x.numel() // s.numel()
        samples += x.shape[0]
        if samples >= STATS_SAMPLES:
            break
    mean = total / values
    var = (sq / values - mean * mean).clamp_min(0) * values / max(values - 1, 1)
    return mean.squeeze(0).float(), var.sqrt().squeeze(0).float().clamp_min(1e-6), samples


def user_data(train: Any, val: Any = None, test: Any = None, *, seed: int = 0,
              num_classes: int | None = None, normalise: bool = True,
              val_fraction: float = 0.1, test_fraction: float = 0.2,
              num_workers: int = 0, pin_memory: bool = False) -> UserData:
    """Wrap the user's splits (any of the accepted forms, see the module docstring)."""
    if train is None:
        raise UserError("give training data: train=(X, y), a torch Dataset or a DataLoader")
    for name, src in (("train", train), ("val", val), ("test", test)):
        if src is not None and not (_is_pair(src) or isinstance(src, (TorchDataset, DataLoader))):
            raise UserError(f"{name} data must be (X, y) arrays or tensors, a torch Dataset or "
                            f"a DataLoader; got {type(src).__name__}")
    sources = {}
    if val is None:
        train, val, held = _split_off(train, seed, val_fraction, test_fraction, test is None)
        sources["split"] = (f"val{' and test' if test is None else ''} held out of the "
                            f"training data ({val_fraction:g} val"
                            f"{f', {test_fraction:g} test' if test is None else ''})")
        test = held if test is None else test
    elif test is None:
        raise UserError("test data missing: give test= too (or neither val= nor test= to "
                        "hold both out of the training data)")
    x0, _ = _first_batch(train)
    if x0.dim() not in KINDS:
        raise UserError(f"inputs of shape {tuple(x0.shape[1:])} per sample: give vectors "
                        f"(features,), signals (channels, length) or images (channels, h, w)")
    kind = KINDS[x0.dim()]
    classes = _num_classes([train, val, test], num_classes)
    if classes is None or classes < 2:
        raise UserError("cannot tell the number of classes from the data; pass num_classes=")

    normaliser = Normaliser(info={"applied": bool(normalise)})
    splits = {}
    for name, src in (("train", train), ("val", val), ("test", test)):
        if _is_pair(src):
            x, y = _as_tensor(src[0]), _as_tensor(src[1]).long()
            if x.shape[0] != y.shape[0]:
                raise UserError(f"{name} data has {x.shape[0]} inputs but {y.shape[0]} labels")
            splits[name] = Split(x.float(), y)
            sources[name] = f"(X, y) in memory ({len(y)} samples)"
        else:
            splits[name] = StreamSplit(name, src, normaliser, num_workers, pin_memory)
            sources[name] = splits[name].describe()
    if normalise:
        tr = splits["train"]
        dims = _stat_dims(x0)
        if isinstance(tr, Split):
            mean = tr.x.mean(dim=dims, keepdim=True).squeeze(0)
            std = tr.x.std(dim=dims, keepdim=True).squeeze(0).clamp_min(1e-6)
            counted = len(tr)
        else:
            mean, std, counted = _streamed_statistics(tr, dims)
        normaliser.mean, normaliser.std = mean, std
        normaliser.info.update({
            "by": "locallearn", "per": "channel" if x0.dim() >= 3 else "feature",
            "statistics_from": f"first {counted} training samples",
            "stored_with_model": True})
        # In-memory splits are standardised once, as the registered datasets are.
        for s in splits.values():
            if isinstance(s, Split):
                s.x = normaliser(s.x)
    else:
        normaliser.info["by"] = "none: data used as given"
    task = Task(num_classes=classes, input_shape=tuple(x0.shape[1:]), kind=kind)
    return UserData(splits["train"], splits["val"], splits["test"], task, normaliser, sources)


__all__ = ["Normaliser", "StreamSplit", "UserData", "user_data"]
