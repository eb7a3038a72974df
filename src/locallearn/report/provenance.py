"""Where a figure came from: the command, the code's commit, the machine and its load.

Every results table in ``docs/results/`` is pasted from the output of one command; its
page heads it with these lines so the figure can be re-made and judged (timings on a
shared machine move with the load average, so the load is part of the measurement).
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages now (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def source_commit() -> str | None:
    """Short commit of the git checkout the running ``locallearn`` was imported from,
    with ``+dirty`` when tracked files differ from it; None outside a checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "src" / "locallearn").is_dir():  # installed, not a checkout
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no", "--", "src"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}+dirty" if commit and dirty.stdout.strip() else (commit or None)


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, with ``python -m locallearn`` shown as ``locallearn``."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("locallearn/__main__.py", "locallearn")):
        argv[0] = "locallearn"
    return shlex.join(argv)


def hardware_line(hw: dict[str, Any]) -> str:
    gpu = f"GPU {hw['gpu']}" if hw.get("gpu") else "no GPU"
    return (f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores, {gpu}, "
            f"torch {hw.get('torch_version', '?')}, Python {hw.get('python', '?')}, "
            f"{hw.get('torch_threads', '?')} torch thread(s)")


def load_summary(loads: Iterable[list[float] | None]) -> str:
    """'min-max (median M)' of the 1-minute load averages recorded, or 'not recorded'."""
    ones = [v[0] for v in loads if v]
    if not ones:
        return "not recorded"
    if len(ones) == 1:
        return f"{ones[0]:.1f}"
    return f"{min(ones):.1f}-{max(ones):.1f} (median {statistics.median(ones):.1f})"


def provenance_lines(command: str | None = None, device: str | None = None,
                     loads: Iterable[list[float] | None] | None = None,
                     commit: str | None = None) -> list[str]:
    """Markdown lines naming the command, commit, hardware and load average, for a
    benchmark script to print above its table (``loads``: the load averages it sampled;
    default: now)."""
    from locallearn.measure import hardware_info

    loads = [load_average()] if loads is None else list(loads)
    return [f"- Command: `{command or command_line()}`",
            f"- Commit: `{commit or source_commit() or 'unknown'}`",
            f"- Hardware: {hardware_line(hardware_info(device))}",
            f"- Load average (1 min) while it ran: {load_summary(loads)} "
            f"on {os.cpu_count()} cores"]


def run_with_provenance(main: Callable[[], Any], every_s: float = 30.0,
                        device: str | None = None) -> Any:
    """Run a benchmark script's ``main`` and print, after its table, the lines of
    :func:`provenance_lines`, the load average sampled every ``every_s`` seconds
    meanwhile (a daemon thread; sampling costs nothing measurable)."""
    loads = [load_average()]
    commit = source_commit()  # the code imported now, not what the checkout holds at the end
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            loads.append(load_average())

    threading.Thread(target=sample, daemon=True).start()
    command = "python " + shlex.join(sys.argv)
    try:
        result = main()
    finally:
        done.set()
    loads.append(load_average())
    print()
    print("\n".join(provenance_lines(command=command, device=device, loads=loads,
                                     commit=commit)))
    return result
