"""Datasets read from their standard files on disk: MNIST, Fashion-MNIST, CIFAR-10/100.

Nothing is downloaded here. Point ``--data-dir`` (``data_dir=``) at the folder that
holds the files; each dataset looks in ``DIR``, ``DIR/<name>`` and ``DIR/<name>/raw``
(the torchvision layout) for:

- ``mnist``, ``fashion-mnist``: the four IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
  each plain or gzipped (``.gz``).
- ``cifar10``: the python pickle batches ``cifar-10-batches-py/data_batch_1..5`` and
  ``test_batch``.
- ``cifar100``: ``cifar-100-python/train`` and ``test`` (the 100 fine labels).

Every dataset keeps its published test set; the validation part is cut from the
training files by the seed, and inputs are scaled to [0, 1] and then standardised
per channel with training statistics only.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from locallearn.data import DATASETS
from locallearn.data.augment import crop_flip
from locallearn.data.base import VAL_FRACTION, Dataset, RawData, split_and_normalise
from locallearn.data.safe_pickle import NUMPY, safe_load
from locallearn.errors import UserError
from locallearn.options import Option, declare

AUGMENT = Option("augment", bool, "random crop and horizontal flip of training images")

DEFAULT_DATA_DIR = "data"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir``, else ``$LOCALLEARN_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get("LOCALLEARN_DATA_DIR") or DEFAULT_DATA_DIR)


def candidate_dirs(root: Path, names: tuple[str, ...]) -> list[Path]:
    # The dataset's own folders first: names like cifar-100-python's ``train`` are generic.
    dirs = []
    for name in names:
        dirs += [root / name, root / name / "raw"]
    return dirs + [root]


def find_file(root: Path, names: tuple[str, ...], filenames: tuple[str, ...],
              dataset: str) -> Path:
    """The first of ``filenames`` (plain or ``.gz``) in the candidate folders."""
    if not root.is_dir():
        raise UserError(f"{dataset}: data directory {root} does not exist; pass --data-dir "
                        f"pointing at the folder that holds the {dataset} files")
    for folder in candidate_dirs(root, names):
        for filename in filenames:
            for suffix in ("", ".gz"):
                path = folder / (filename + suffix)
                if path.is_file():
                    return path
    looked = f"{root} and {root / names[0]}"
    raise UserError(f"{dataset}: file {filenames[0]}[.gz] not found in {looked}; "
                    f"put the official files there (see docs/data.md) or fix --data-dir")


# -- IDX (MNIST, Fashion-MNIST) -----------------------------------------------

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # unsigned bytes, 3 / 1 dimensions


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (magic number, dimension sizes, then the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}; the file is damaged, fetch it again"
                        ) from None
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is too short to be an IDX file; fetch it again")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGES else "labels"
        raise UserError(f"{path} is not an IDX {kind} file (magic number {magic:#010x}, "
                        f"expected {expected_magic:#010x}); check the file names")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise UserError(f"{path} holds {len(data) - header} bytes of data but its header "
                        f"says {size} (shape {shape}); the file is truncated, fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


IDX_FILES = {
    "train_x": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_y": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_x": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_y": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def load_idx_dataset(dataset: str, names: tuple[str, ...], data_dir, seed: int,
                     val_fraction: float) -> Dataset:
    root = resolve_data_dir(data_dir)
    arrays = {}
    for key, filenames in IDX_FILES.items():
        path = find_file(root, names, filenames, dataset)
        arrays[key] = read_idx(path, IDX_IMAGES if key.endswith("x") else IDX_LABELS)
    for part in ("train", "test"):
        n_x, n_y = len(arrays[f"{part}_x"]), len(arrays[f"{part}_y"])
        if n_x != n_y:
            raise UserError(f"{dataset}: {part} has {n_x} images but {n_y} labels; "
                            f"the files do not belong together")
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise UserError(f"{dataset}: train images are {arrays['train_x'].shape[1:]} but test "
                        f"images {arrays['test_x'].shape[1:]}")
    labels = np.concatenate([arrays["train_y"], arrays["test_y"]])
    if labels.max() > 9:
        raise UserError(f"{dataset}: label {labels.max()} found; expected classes 0..9")

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)

    raw = RawData(images(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64)),
                  images(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64)),
                  kind="image", num_classes=10)
    return split_and_normalise(dataset, raw, seed, val_fraction)


@DATASETS.register("mnist", help="MNIST 60,000 / 10,000 from the IDX files in --data-dir")
@declare(VAL_FRACTION)
def mnist(seed: int = 0, data_dir=None, val_fraction: float = 0.1) -> Dataset:
    return load_idx_dataset("mnist", ("mnist", "MNIST"), data_dir, seed, val_fraction)


@DATASETS.register("fashion-mnist",
                   help="Fashion-MNIST 60,000 / 10,000 from the IDX files in --data-dir")
@declare(VAL_FRACTION)
def fashion_mnist(seed: int = 0, data_dir=None, val_fraction: float = 0.1) -> Dataset:
    names = ("fashion-mnist", "fashion_mnist", "FashionMNIST")
    return load_idx_dataset("fashion-mnist", names, data_dir, seed, val_fraction)


# -- CIFAR python pickles -----------------------------------------------------

def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = safe_load(f, NUMPY, encoding="bytes")
    except Exception as exc:  # pickle raises many error types for a damaged file
        raise UserError(f"cannot read {path} as a CIFAR python batch ({type(exc).__name__}: "
                        f"{exc}); fetch the python version of the dataset again") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR python batch (no dict inside)")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or label_key not in batch:
        raise UserError(f"{path} lacks the keys 'data' and {label_key.decode()!r}; "
                        f"is it the right CIFAR variant?")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    if len(data) != len(labels):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


CIFAR = {
    "cifar10": (("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py"),
                tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10),
    "cifar100": (("cifar-100-python", "cifar100", "cifar100/cifar-100-python"),
                 ("train",), "test", b"fine_labels", 100),
}


def cifar_arrays(dataset: str, data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray, int]:
    """uint8 images (N, 3, 32, 32) and labels of the training and test files, and the
    number of classes, as in the standard python batches."""
    names, train_files, test_file, label_key, num_classes = CIFAR[dataset]
    root = resolve_data_dir(data_dir)
    train = [read_cifar_batch(find_file(root, names, (f,), dataset), label_key)
             for f in train_files]
    x_test, y_test = read_cifar_batch(find_file(root, names, (test_file,), dataset), label_key)
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    top = max(y.max(), y_test.max())
    if min(y.min(), y_test.min()) < 0 or top >= num_classes:
        raise UserError(f"{dataset}: label {top} out of range 0..{num_classes - 1}")
    return x, y, x_test, y_test, num_classes


@dataclass
class AugmentedDataset(Dataset):
    """An in-memory image dataset whose training batches are randomly cropped (zero
    padding of ``padding`` pixels, black in raw pixels) and flipped left-right; val and
    test are left as they are. Crops and flips of an epoch depend only on its seed."""

    padding: int = 4

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0):
        batches = super().loader(split, batch_size, shuffle, seed)
        if split != "train" or not shuffle:
            return batches
        g = torch.Generator().manual_seed(seed + 7919)
        black = -self.mean.flatten() / self.std.flatten() if self.mean is not None else None
        return ((crop_flip(x, g, self.padding, black), y) for x, y in batches)


def load_cifar(dataset: str, data_dir, seed: int, val_fraction: float,
               augment: bool = False) -> Dataset:
    x, y, x_test, y_test, num_classes = cifar_arrays(dataset, data_dir)

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0)

    raw = RawData(images(x), torch.from_numpy(y), images(x_test), torch.from_numpy(y_test),
                  kind="image", num_classes=num_classes)
    data = split_and_normalise(dataset, raw, seed, val_fraction)
    if not augment:
        return data
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(Dataset)}
    data = AugmentedDataset(**fields)
    data.info["augment"] = "random crop (padding 4) + horizontal flip, training batches"
    return data


@DATASETS.register("cifar10", help="CIFAR-10 50,000 / 10,000 from the python batches in --data-dir "
                                   "(augment=true: random crop + flip)")
@declare(VAL_FRACTION, AUGMENT)
def cifar10(seed: int = 0, data_dir=None, val_fraction: float = 0.1,
            augment: bool = False) -> Dataset:
    return load_cifar("cifar10", data_dir, seed, val_fraction, augment)


@DATASETS.register("cifar100",
                   help="CIFAR-100 (fine labels) 50,000 / 10,000 from python files in --data-dir")
@declare(VAL_FRACTION, AUGMENT)
def cifar100(seed: int = 0, data_dir=None, val_fraction: float = 0.1,
             augment: bool = False) -> Dataset:
    return load_cifar("cifar100", data_dir, seed, val_fraction, augment)
