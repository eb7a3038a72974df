"""Issue 20: no code runs from a data file or a run folder; checkpoints atomic as a set;
one writer per run folder; every bad input one line and exit 2."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from datafiles import write_cifar10
from locallearn.cli.main import main
from locallearn.errors import UserError
from test_graphs import write_planetoid


class Evil:
    """Unpickling this calls os.system: the file would create ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path, marker) -> None:
    path.write_bytes(pickle.dumps(Evil(marker), protocol=2))


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit 2 with one stderr line (no traceback)."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("part", ["data_batch_1", "test_batch"])
def test_crafted_cifar_batch_runs_nothing(tmp_path, part):
    from locallearn.data import load_dataset

    folder = write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    plant(folder / part, marker)
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset("cifar10", data_dir=tmp_path / "data")
    assert not marker.exists()


@pytest.mark.parametrize("part", ["x", "y", "tx", "ty", "allx", "ally", "graph"])
def test_crafted_planetoid_file_runs_nothing(tmp_path, part):
    from locallearn.data import load_dataset

    write_planetoid(tmp_path)
    marker = tmp_path / "pwned"
    plant(tmp_path / f"ind.cora.{part}", marker)
    if part in ("x", "y"):  # present but never read: loading still works
        load_dataset("planetoid:cora", data_dir=tmp_path)
    else:
        with pytest.raises(UserError, match="refusing to load posix.system|refusing to load"):
            load_dataset("planetoid:cora", data_dir=tmp_path)
    assert not marker.exists()


def test_planetoid_reads_python2_style_pickles(tmp_path):
    """Protocol 0 names copy_reg/__builtin__ as Python 2 did; the allow-list knows both."""
    import io

    import numpy as np
    import scipy.sparse as sp

    from locallearn.data.safe_pickle import PLANETOID, safe_load

    for proto in (0, 2, 5):
        m = safe_load(io.BytesIO(pickle.dumps(sp.csr_matrix(np.eye(3)), protocol=proto)),
                      PLANETOID, encoding="latin1")
        assert (m.toarray() == np.eye(3)).all()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_load(io.BytesIO(pickle.dumps(sp.coo_matrix(np.eye(2)))), PLANETOID)


@pytest.fixture
def trained_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--rule", "backprop", "--data", "digits", "--net", "mlp:16",
                 "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("command", ["inspect", "prune", "grow", "resume"])
def test_crafted_run_folder_runs_nothing(tmp_path, trained_run, capsys, command):
    """A run folder whose config.json names planetoid data inside the folder itself."""
    data = trained_run / "data"
    data.mkdir()
    write_planetoid(data)
    marker = tmp_path / "pwned"
    plant(data / "ind.cora.allx", marker)
    cfg = json.loads((trained_run / "config.json").read_text())
    cfg.update(data="planetoid:cora", data_dir=str(data), net="gcn:16")
    (trained_run / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    argv = {"inspect": ["inspect", str(trained_run)],
            "prune": ["prune", str(trained_run), "--keep", "1", "--out", str(tmp_path / "p")],
            "grow": ["grow", str(trained_run), "--out", str(tmp_path / "g"), "--quiet"],
            "resume": ["train", "--resume", "--out", str(trained_run), "--quiet"]}[command]
    line = cli_error(capsys, *argv)
    assert "refusing to load" in line
    assert not marker.exists()
