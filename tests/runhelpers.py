"""Helpers for tests that run ``locallearn`` in subprocesses (stages, replicas) or in-process,
and benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from locallearn.cli.main import main
from locallearn.training.checkpoint import load_checkpoint

# digits: 1294 training rows -> batches of 64 and a ragged last one of 14.
ARGS = ["--rule", "mono-forward", "--data", "digits", "--net", "mlp:32,32,32", "--lr", "3e-3",
        "--batch-size", "64", "--seed", "3", "--quiet"]


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` imported as a module (the folder is not a package)."""
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def cli_env(*args, env=None, timeout=120):
    """``python -m locallearn ARGS`` with ``env`` added to the environment."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "locallearn", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults")


def kill_env(rank: int, after: int, env=None) -> dict:
    """Environment in which process ``rank`` of a run SIGKILLs itself at training batch
    ``after`` (the test-only plugin in tests/faults; see its docstring)."""
    env = dict(os.environ if env is None else env)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = FAULTS if not path else f"{FAULTS}{os.pathsep}{path}"
    env.update(LOCALLEARN_TEST_KILL_RANK=str(rank), LOCALLEARN_TEST_KILL_AFTER=str(after))
    return env


def killed_run_line(out, *grid: str) -> str:
    """Train ARGS for 5 epochs on ``grid`` (e.g. ``--stages 2``) while process 1 SIGKILLs
    itself at batch 30 (21 steps per epoch at batch 64: in epoch 2, after epoch 1's
    checkpoint). The run must end with exit 1 and one stderr line, keep epoch 1's intact
    checkpoint and write no summary; returns that line for the caller's own checks.

    No wall-clock bound (it fails on a loaded machine): the caller checks that the line
    names the SIGKILL the launcher saw, which rules out a collective timeout, and
    ``timeout`` catches a hang."""
    r = cli_env("train", *ARGS, "--epochs", "5", *grid, "--out", str(out),
                env=kill_env(rank=1, after=30), timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    _, meta = load_checkpoint(out)  # verifies the checksum: the checkpoint is intact
    assert meta["epoch"] == 0 and not (out / "summary.json").exists()
    return lines[0]


def train_ok(*args, out, timeout=120) -> dict:
    """``locallearn train ARGS --out OUT`` must succeed; its summary."""
    r = cli_env("train", *args, "--out", str(out), timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "summary.json").read_text())


def rule_tensors(run_dir):
    return {k: v for k, v in load_file(str(run_dir / "checkpoint.safetensors")).items()
            if k.startswith("rule.")}


def assert_same_weights(a: dict, b: dict) -> None:
    """Two runs' rule tensors are equal up to float rounding."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def run_cli(capsys, *argv: str):
    """``locallearn ARGV`` in this process: exit code, stdout, stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
