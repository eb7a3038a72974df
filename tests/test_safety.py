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


# -- checkpoints atomic as a set; metrics agree; one writer -------------------------------

FAST = ("--rule", "backprop", "--data", "digits", "--net", "mlp:16", "--batch-size", "128",
        "--quiet", "--seed", "3")


def final_tensors(out):
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoint.safetensors"))


def test_a_kill_between_any_two_checkpoint_writes_resumes_exactly(tmp_path, monkeypatch,
                                                                  capsys):
    """Interrupt the run at every file replacement of a 2-epoch run in turn (the writes of
    best.*, checkpoint.* and their .prev/.json), resume, and get the uninterrupted result."""
    import torch

    from locallearn.training import checkpoint
    from locallearn.training.runfolder import holds_run

    full = tmp_path / "full"
    assert main(["train", *FAST, "--epochs", "2", "--out", str(full)]) == 0
    expected = final_tensors(full)
    real_replace, calls = os.replace, []

    def counting(src, dst):
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", counting)
    assert main(["train", *FAST, "--epochs", "2", "--out", str(tmp_path / "count")]) == 0
    n_writes = len(calls)
    assert n_writes >= 9
    for k in range(n_writes):
        out = tmp_path / f"kill{k}"
        seen = []

        def dying(src, dst, k=k, seen=seen):
            seen.append(dst)
            if len(seen) == k + 1:
                raise KeyboardInterrupt  # the process dies just before this write
            real_replace(src, dst)

        monkeypatch.setattr(checkpoint.os, "replace", dying)
        assert main(["train", *FAST, "--epochs", "2", "--out", str(out)]) == 130
        monkeypatch.setattr(checkpoint.os, "replace", real_replace)
        capsys.readouterr()
        # Before the first checkpoint's commit no epoch is complete: train afresh.
        first = not holds_run(out)
        argv = ["train", *FAST, "--epochs", "2", "--out", str(out)] if first else \
            ["train", "--resume", "--out", str(out), "--quiet"]
        assert main(argv) == 0, (k, capsys.readouterr().err)
        got = final_tensors(out)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), (k, name)
        epochs = [json.loads(line)["epoch"] for line in
                  (out / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [0, 1], (k, epochs)
        assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_a_damaged_newest_checkpoint_resumes_from_the_previous(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "2", "--out", str(out)]) == 0
    data = bytearray((out / "checkpoint.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (out / "checkpoint.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "previous checkpoint" in err and "epoch 1" in err
    epochs = [json.loads(line)["epoch"] for line in
              (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_report_skips_a_torn_metrics_line(trained_run, capsys):
    with open(trained_run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "loss": [0.')
    assert main(["report", str(trained_run.parent)]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl:2" in err and "skipped" in err


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(trained_run, capsys):
    from locallearn.training.runfolder import LOCK_NAME, RunLock

    with RunLock(trained_run):
        line = cli_error(capsys, "train", *FAST, "--epochs", "2", "--out", str(trained_run),
                         "--overwrite")
        assert f"pid {os.getpid()}" in line and "in use" in line
        line = cli_error(capsys, "train", "--resume", "--epochs", "2", "--out",
                         str(trained_run), "--quiet")
        assert "in use" in line
    assert not (trained_run / LOCK_NAME).exists()
    # A lock file left by a dead process (kill -9) is taken over, with a note.
    (trained_run / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 7, "host": "gone"}))
    assert main(["train", "--resume", "--epochs", "2", "--out", str(trained_run),
                 "--quiet"]) == 0
    assert "took over the stale lock" in capsys.readouterr().err


@pytest.mark.slow  # two real processes: ~25 s on the shared 2-core machine
def test_two_processes_on_one_folder(tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, "-m", "locallearn", "train", *FAST, "--epochs",
                              "500", "--out", str(out)], env=env, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "locallearn.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "locallearn", "train", *FAST,
                                 "--epochs", "1", "--out", str(out), "--overwrite"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and f"pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_wrong_optimizer_state_in_a_checkpoint_is_refused(trained_run, capsys):
    import torch

    from locallearn.training.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(trained_run)
    name = next(k for k in tensors if k.endswith(".exp_avg"))
    tensors[name] = torch.zeros(1)  # checksum recomputed by save_checkpoint
    save_checkpoint(trained_run, tensors, meta, keep_previous=False)
    line = cli_error(capsys, "train", "--resume", "--epochs", "2", "--out", str(trained_run),
                     "--quiet")
    assert "exp_avg" in line and "shape" in line
    tensors[name] = torch.zeros(3, 3)
    tensors["rng.torch"] = torch.zeros(3, dtype=torch.uint8)
    save_checkpoint(trained_run, tensors, meta, keep_previous=False)
    assert "does not fit" in cli_error(capsys, "train", "--resume", "--epochs", "2", "--out",
                                       str(trained_run), "--quiet")


@pytest.mark.parametrize("flag", [("--rule", "fa"), ("--lr", "0.5"), ("--optimizer", "sgd"),
                                  ("--set", "momentum=0.5"), ("--net", "mlp:32")])
def test_resume_refuses_conflicting_settings(trained_run, capsys, flag):
    line = cli_error(capsys, "train", "--resume", "--epochs", "2", "--out", str(trained_run),
                     "--quiet", *flag)
    assert "--resume" in line and "differs" in line


def test_resume_keeps_stored_settings_and_may_extend(trained_run, capsys):
    assert main(["train", "--resume", "--epochs", "2", "--out", str(trained_run), "--quiet",
                 "--lr", "1e-3"]) == 0
    s = json.loads((trained_run / "summary.json").read_text())
    assert s["epochs"] == 2 and s["train_config"]["lr"] == 1e-3


def test_overwrite_removes_every_project_file_and_a_dead_run_blocks_nothing(trained_run,
                                                                            capsys):
    (trained_run / "stage0-e3.safetensors").write_bytes(b"old")
    (trained_run / "checkpoint.safetensors.tmp").write_bytes(b"half")
    (trained_run / "mine.txt").write_text("keep")
    assert main(["train", *FAST, "--epochs", "1", "--out", str(trained_run),
                 "--overwrite"]) == 0
    names = {p.name for p in trained_run.iterdir()}
    assert "stage0-e3.safetensors" not in names and "checkpoint.safetensors.tmp" not in names
    assert "mine.txt" in names
    # A run killed before its first epoch (config.json, nothing else) is no run.
    dead = trained_run.parent / "dead"
    dead.mkdir()
    (dead / "config.json").write_text("{}")
    (dead / "metrics.jsonl").write_text("")
    assert main(["train", *FAST, "--epochs", "1", "--out", str(dead)]) == 0


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(trained_run, capsys):
    line = cli_error(capsys, "train", "--rule", "backprop", "--data", "digits", "--net",
                     "mlp:16", "--quiet", "--epochs", "3", "--lr", "1e30", "--optimizer", "sgd",
                     "--out", str(trained_run.parent / "nan"))
    assert "epoch" in line and "learning rate" in line and ("NaN" in line or "infinite" in line)


# -- bad input: one validated boundary, exit 2, one line, no traceback ---------------------

BASE = ("train", "--rule", "backprop", "--data", "digits", "--net", "mlp:16", "--epochs", "1",
        "--quiet")


@pytest.mark.parametrize("config,extra,needle", [
    ("net: 5\n", (), "net"),
    ("rule: [1, 2]\n", (), "rule"),
    ("data_options: 5\n", (), "data_options"),
    ("", ("--set", "device=5"), "device"),
    ("", ("--set", "data.val_fraction=abc"), "val_fraction"),
    ("", ("--set", "out=/tmp/x"), "--out"),
    ("", ("--set", "overwrite=true"), "--overwrite"),
    ("", ("--set", "resume=true"), "--resume"),
    ("", ("--set", "eval_batch_size=0"), "eval_batch_size"),
    ("", ("--set", "eval_batch_size=-3"), "eval_batch_size"),
    ("", ("--seed", str(2**64)), "64 bits"),
    ("", ("--batch-size", str(2**70)), "64 bits"),
    ("", ("--weight-decay", "-1"), "weight_decay"),
    ("", ("--weight-decay", "nan"), "weight_decay"),
    ("", ("--set", "momentum=-0.5"), "momentum"),
    ("", ("--set", "momentum=.nan"), "momentum"),
    ("", ("--net", "mlp:"), "nothing after ':'"),
    ("", ("--net", "mlp:1000000,1000000,1000000"), "parameters"),
    ("", ("--set", "data.val_fraction=0.99", "--set", "data.test_fraction=0.5"), "fraction"),
    ("", ("--set", "data.val_fraction=1.5"), "val_fraction"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, config, extra, needle):
    argv = [*BASE, "--out", str(tmp_path / "run"), *extra]
    if config:  # the file's value, not the flags', is the one under test
        argv = ["train", "--data", "digits", "--epochs", "1", "--quiet", "--out",
                str(tmp_path / "run")]
        (tmp_path / "c.yaml").write_text(config)
        argv += ["--config", str(tmp_path / "c.yaml")]
    line = cli_error(capsys, *argv)
    assert needle in line, line


def test_bad_files_and_places_are_one_line(tmp_path, capsys, trained_run, monkeypatch):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    assert "config" in cli_error(capsys, *BASE, "--config", str(tmp_path / "bin.yaml"))
    (tmp_path / "bin.csv").write_bytes(b"a,b\n\xff\xfe,1\n")
    cli_error(capsys, "train", "--data", f"csv:{tmp_path / 'bin.csv'}", "--net", "mlp:4",
              "--quiet", "--epochs", "1")
    (tmp_path / "file").write_text("x")
    assert "--out" in cli_error(capsys, *BASE, "--out", str(tmp_path / "file" / "sub"))
    assert "--out" in cli_error(capsys, *BASE, "--out", str(tmp_path / ("n" * 300)))
    import torch

    if not torch.cuda.is_available():
        assert "CUDA" in cli_error(capsys, "inspect", str(trained_run), "--device", "cuda")
    monkeypatch.setenv("RANK", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "RANK" in cli_error(capsys, *BASE)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    # Damaged fields in a run folder's files.
    cfg = json.loads((trained_run / "config.json").read_text())
    (trained_run / "config.json").write_text(json.dumps({**cfg, "net_options": 7}))
    cli_error(capsys, "inspect", str(trained_run))
    (trained_run / "config.json").write_text(json.dumps({**cfg, "train": {**cfg["train"],
                                                                          "lr": "fast"}}))
    cli_error(capsys, "train", "--resume", "--epochs", "2", "--out", str(trained_run),
              "--quiet")
    (trained_run / "config.json").write_text(json.dumps(cfg))
    (trained_run / "summary.json").write_text("[1, 2")
    cli_error(capsys, "inspect", str(trained_run))
    from locallearn.training.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(trained_run)
    for damaged in ({"epoch": "x"}, {"best": 3}, {"history": [{"epoch": 0}]}):
        save_checkpoint(trained_run, tensors, {**meta, **damaged}, keep_previous=False)
        line = cli_error(capsys, "train", "--resume", "--epochs", "2", "--out",
                         str(trained_run), "--quiet")
        assert "checkpoint" in line, line


def test_inspect_into_a_closed_pipe_is_quiet(trained_run):
    import subprocess
    import sys

    cmd = (f"{sys.executable} -m locallearn inspect {trained_run} | head -c 10 >/dev/null")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
