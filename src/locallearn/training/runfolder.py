"""The run folder: what the project writes there, who may write it, and metrics lines.

- :func:`project_files`: every file a run writes (``--overwrite`` removes exactly these,
  and never the user's own files).
- :func:`holds_run`: a folder is "a run" only once it holds a completed epoch (a
  checkpoint or a summary); a run killed or refused before that blocks nothing.
- :class:`RunLock`: one writer per run folder for a run's lifetime. An exclusive
  ``flock`` on ``locallearn.lock``, which names its owner (pid and host). The kernel
  drops the lock when its owner dies, so a lock file left by a dead process is taken
  over (with a line saying so), and a second live writer gets one line naming the owner.
- :func:`read_metrics` / :func:`rewrite_metrics`: ``metrics.jsonl`` readers skip a torn
  last line with a warning; a resumed run rewrites it from its checkpoint's history so
  the two agree.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from locallearn.errors import UserError

LOCK_NAME = "locallearn.lock"
RUN_FILES = ("summary.json", "metrics.jsonl", "config.json", "checkpoint.safetensors",
             "checkpoint.json", "checkpoint.prev.safetensors", "best.safetensors", "best.json",
             "best.prev.safetensors")
# Not stage*.log: the launcher opens (and truncates) them before rank 0 prepares the folder.
RUN_PATTERNS = ("stage*.safetensors", "stage*.json", "*.tmp")


def project_files(out: Path) -> list[Path]:
    """Every file in ``out`` that a run writes (not the lock, not the user's files)."""
    found = [out / f for f in RUN_FILES if (out / f).is_file()]
    for pattern in RUN_PATTERNS:
        found += [p for p in sorted(out.glob(pattern)) if p.is_file() and p not in found]
    return found


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run with at least one completed epoch."""
    return any((out / f).is_file() for f in ("checkpoint.safetensors",
                                             "checkpoint.prev.safetensors", "summary.json",
                                             "checkpoint.json"))


def ensure_dir(out: Path) -> None:
    """Create ``out``, or say in one line why it cannot be."""
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror or exc}; choose another "
                        f"folder") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in --out {out}: permission denied; choose another folder")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready for a run: kept as it is to resume, else emptied of a previous
    run's files, refusing to replace a run without ``overwrite``.

    A folder without a completed epoch (a run killed or refused early) is no run: it
    blocks nothing, and its leftovers are cleared as ``overwrite`` would."""
    ensure_dir(out)
    if resume:
        return
    if holds_run(out) and not overwrite:
        raise UserError(f"{out} already holds a run; pass --overwrite to replace it "
                        f"or --resume to continue it")
    for f in project_files(out):
        f.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        ensure_dir(self.out)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"cannot create the lock file {self.path}: "
                                f"{exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise UserError(f"{self.out} is in use by another run ({owner}); wait for it "
                                f"to finish or choose another --out") from None
            # The file may have been unlinked by its previous owner between our open and
            # our lock: then we hold a lock on a file nobody else sees; open it again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_owner(fd, parsed=True)
        if isinstance(previous, dict) and previous.get("pid") is not None:
            host = previous.get("host")
            alive = host == socket.gethostname() and _pid_alive(int(previous["pid"]))
            note = "" if alive else " (no longer running)"
            print(f"locallearn: note: took over the stale lock of pid {previous['pid']} on "
                  f"{host}{note} in {self.out}", file=sys.stderr)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_owner(fd: int, parsed: bool = False) -> Any:
    try:
        raw = os.pread(fd, 4096, 0)
        owner = json.loads(raw) if raw else None
    except (OSError, ValueError):
        owner = None
    if parsed:
        return owner
    if not isinstance(owner, dict):
        return "owner unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn (unparseable) line is skipped with a
    warning, as a kill during an append leaves one."""
    records = []
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        print(f"locallearn: warning: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return records
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            print(f"locallearn: warning: {path}:{number} is not a complete record (torn "
                  f"write?); skipped", file=sys.stderr)
            continue
        records.append(record)
    return records


def rewrite_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Make ``metrics.jsonl`` hold exactly the epochs of ``history`` (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for record in history:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_run_id() -> str:
    """An id written into every file of a run, so parts of two runs are never mixed."""
    import uuid

    return uuid.uuid4().hex[:16]
