import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

# One thread: on a shared 2-core machine, torch's 2-thread kernels wait on each other and
# ran a small MLP about 20x slower than one thread (measured under load). Subprocesses
# (CLI tests) inherit the setting through OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# `locallearn train` without --out keeps its run under runs/: in the tests, a temporary
# folder (subprocesses inherit it) instead of the checkout. Under pytest-xdist the workers
# inherit the controller's folder; each takes its own folder inside it, so two workers
# never pick the same timestamped run name.
if "LOCALLEARN_RUNS_DIR" not in os.environ:
    os.environ["LOCALLEARN_RUNS_DIR"] = tempfile.mkdtemp(prefix="locallearn-runs-")
    atexit.register(shutil.rmtree, os.environ["LOCALLEARN_RUNS_DIR"], ignore_errors=True)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["LOCALLEARN_RUNS_DIR"] = tempfile.mkdtemp(
        prefix=f"{os.environ['PYTEST_XDIST_WORKER']}-", dir=os.environ["LOCALLEARN_RUNS_DIR"])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """A test that trains in this process with ``threads=N`` leaves torch at N threads;
    the next test (on this xdist worker) gets 1 again."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from locallearn.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def mnist5k():
    from locallearn.data import load_dataset

    return load_dataset("mnist5k", seed=0)


def run_cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m locallearn ARGS`` and capture its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "locallearn", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.fixture
def cli():
    return run_cli


@pytest.hookimpl(tryfirst=True)  # before xdist's hook turns the marks into node-id groups
def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture (often a trained run) form one xdist group,
    so under ``--dist loadgroup`` one worker builds that fixture once; every other test is
    scheduled on its own wherever a worker is free."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)  # pytest's record of the test's fixtures
        if info is None:
            continue
        for name in info.names_closure:
            defs = info.name2fixturedefs.get(name)
            if defs and defs[-1].scope in ("module", "class", "package"):
                item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
                break
