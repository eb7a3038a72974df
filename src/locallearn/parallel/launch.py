"""Start one process per stage and replica on this machine and watch them.

Under ``torchrun`` (RANK / WORLD_SIZE set) the current process *is* one stage
of one replica and runs it directly. Otherwise the launcher starts ``--stages``
x ``--replicas`` worker processes with gloo (CPU) or NCCL (GPU) rendezvous on
localhost, and if any of them dies it stops the others at once and reports the
dead one in one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from locallearn.errors import RunFailure, UserError
from locallearn.parallel.replicas import Grid, check_replicable
from locallearn.parallel.stages import check_stageable, env_rank, partition

STOP_GRACE_SECONDS = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def validate(settings: dict[str, Any], stages: int, staleness: int, replicas: int = 1,
             batch_size: int = 1) -> None:
    """Refuse impossible stagings and splits before any process starts."""
    from locallearn.training.run import coerce_setting
    from locallearn.training.spec import RunSpec

    if staleness < 0:  # before building anything
        raise UserError(f"--staleness must be >= 0, got {staleness}")
    if replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {replicas}")
    if coerce_setting("freeze_blocks", settings.get("freeze_blocks", False)):
        raise UserError("freeze_blocks (the frozen control) runs in one process; "
                        "drop --stages and --replicas")
    dataset, _, rule = RunSpec.from_settings(settings).build()
    if stages > 1 or staleness:
        check_stageable(rule, staleness)
    partition(len(rule.network.blocks), stages)
    check_replicable(dataset, batch_size, replicas)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _last_checkpoint(out: Path | None) -> str:
    from locallearn.training.checkpoint import checkpoint_paths, read_meta

    if out is None:
        return "no checkpoint (no --out)"
    paths = checkpoint_paths(out)
    if not paths:
        return "no checkpoint was written yet"
    try:
        epoch = int(read_meta(paths[0])["epoch"])
    except (UserError, KeyError, TypeError, ValueError):
        return f"{paths[0]} is unreadable"
    return f"last good checkpoint: epoch {epoch + 1} in {out}"


def _die_with_parent() -> None:
    """In a stage process before it starts: the kernel kills it when its launcher dies
    (Linux's parent-death signal), so a killed launcher leaves no stage training alone."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's own handlers stop them
        pass


def _state(pid: int) -> str | None:
    """A process's scheduler state letter from /proc (``T``: stopped), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0] if ")" in stat else None


def launch(settings: dict[str, Any], out: str | None, quiet: bool, resume: bool,
           overwrite: bool, stages: int, staleness: int = 0, threads: int = 1,
           timeout_s: float = 60.0, replicas: int | None = None) -> dict[str, Any]:
    """Train with ``stages`` x ``replicas`` processes; returns rank 0's summary.

    Under torchrun ``replicas`` defaults to the world size divided by ``stages``.
    """
    args = {"settings": settings, "out": out, "quiet": quiet, "resume": resume,
            "overwrite": overwrite, "stages": stages, "staleness": staleness,
            "timeout_s": timeout_s, "replicas": replicas}
    if env_rank() is not None:  # started by torchrun: this process is one stage
        from locallearn.parallel.worker import run_stage

        summary = run_stage(**args)
        return summary or {}

    from locallearn.training.run import make_config
    from locallearn.training.runfolder import RunLock, prepare_run_dir

    # Bad settings are caught here, before any stage starts.
    train_keys = {k: v for k, v in settings.items()
                  if k not in ("rule", "data", "net", "data_dir", "data_options",
                               "net_options", "rule_options")}
    config = make_config(settings["rule"], out=out, resume=resume, overwrite=overwrite,
                         **train_keys)
    replicas = replicas or 1
    validate(settings, stages, staleness, replicas, config.batch_size)
    grid = Grid(stages, replicas, 0)
    out_dir = Path(out) if out else None
    # The launcher holds the run folder's lock for the stages' whole lifetime.
    lock = RunLock(out_dir).acquire() if out_dir is not None else None
    try:
        if out_dir is not None:
            prepare_run_dir(out_dir, config.resume, config.overwrite)
        return _run_stages(args, out_dir, quiet, grid, threads)
    finally:
        if lock is not None:
            lock.release()


def _run_stages(args: dict[str, Any], out_dir: Path | None, quiet: bool, grid: Grid,
                threads: int) -> dict[str, Any]:
    log_dir = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="locallearn-"))
    port = _free_port()
    procs, logs = [], []
    for rank in range(grid.world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(grid.world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=str(threads), LOCALLEARN_STAGE_THREADS=str(threads),
                   LOCALLEARN_STAGE_ARGS=json.dumps(args, default=str))
        log = open(log_dir / log_name(grid, rank), "w")
        logs.append(log)
        # Rank 0 shows progress on the terminal; every stage's errors go to its log.
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "locallearn.parallel.worker"], env=env,
            stdout=log, stderr=log if rank or quiet else None, preexec_fn=_die_with_parent,
        ))
    try:
        dead = _watch(procs)
    except BaseException:  # Ctrl-C or SIGTERM (raised as KeyboardInterrupt): stop the stages
        _stop(procs)
        raise
    finally:
        for log in logs:
            log.close()
    if dead is not None:
        rank, code = dead
        log = log_dir / log_name(grid, rank)
        if code == -signal.SIGSTOP:
            raise RunFailure(
                f"{grid.describe(rank)} (pid {procs[rank].pid}) stopped answering (the process "
                f"is stopped, e.g. by SIGSTOP or Ctrl-Z); stopped all processes; "
                f"{_last_checkpoint(out_dir)}; see {log}")
        if code == 2:
            lines = log.read_text().strip().splitlines()
            message = lines[-1] if lines else "bad input"
            raise UserError(message.removeprefix("locallearn: error: "))
        raise RunFailure(
            f"{grid.describe(rank)} (pid {procs[rank].pid}) died ({_describe(code)}); stopped "
            f"the other processes; {_last_checkpoint(out_dir)}; see {log}"
        )
    if out_dir is not None and (out_dir / "summary.json").exists():
        return json.loads((out_dir / "summary.json").read_text())
    return {}


def log_name(grid: Grid, rank: int) -> str:
    """Each process's log: stageS.log, replicaR.log, or stageS-replicaR.log in a grid."""
    if grid.replicas == 1:
        return f"stage{rank}.log"
    if grid.stages == 1:
        return f"replica{rank}.log"
    return f"stage{rank % grid.stages}-replica{rank // grid.stages}.log"


def _watch(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait for all stages; on the first failure stop the rest. Returns (rank, code) or None."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            # A stopped stage (SIGSTOP) makes its healthy peers time out: blame it.
            stopped = [r for r, c in enumerate(codes) if c is None and _state(procs[r].pid) in
                       ("T", "t")]
            if stopped:
                _stop(procs)
                return stopped[0], -signal.SIGSTOP
            # A stage killed from outside explains the others' connection errors (code 3).
            failed.sort(key=lambda rc: (rc[1] == 3, rc[0]))
            _stop(procs)
            return failed[0]
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.send_signal(signal.SIGCONT)  # a stopped stage acts on SIGTERM only once resumed
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
