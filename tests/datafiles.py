"""Writers of tiny dataset files in the exact on-disk formats the loaders read."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An IDX file of unsigned bytes: magic 0x0000080N, N big-endian sizes, the data."""
    array = np.asarray(array, dtype=np.uint8)
    data = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = False,
                seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST IDX files with random pixels and labels; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, gz=gz)
    return arrays


def _batch(rng: np.random.Generator, n: int, label_key: bytes, classes: int) -> dict:
    return {b"batch_label": b"synthetic", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, classes, n)]}


def write_cifar10(root: Path, per_batch: int = 8, n_test: int = 10, seed: int = 0) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(_batch(rng, per_batch, b"labels", 10), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_batch(rng, n_test, b"labels", 10), f)
    return folder


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 10, seed: int = 0) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = _batch(rng, n, b"fine_labels", 100)
        batch[b"coarse_labels"] = [v // 5 for v in batch[b"fine_labels"]]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def write_csv(path: Path, n: int = 60, label: str = "species", seed: int = 0) -> Path:
    """Two informative numeric features, one noise feature, a string label in the middle."""
    rng = np.random.default_rng(seed)
    lines = [f"x1,{label},x2,noise"]
    for i in range(n):
        cls = i % 3
        lines.append(f"{cls + rng.normal(0, 0.1):.4f},{['ant', 'bee', 'cat'][cls]},"
                     f"{-cls + rng.normal(0, 0.1):.4f},{rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path
