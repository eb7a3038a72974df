"""Validation sweeps of rule defaults (docs/results/defaults.md; issue 15, part 2).

Each sweep trains one rule on one task once per candidate setting and seed, with
``locallearn train`` (one torch thread per process, ``--jobs`` processes at once), and
prints the markdown table of docs/results/defaults.md: ``best_val_accuracy`` from each
run's ``summary.json`` per seed, and its mean ± standard deviation over seeds. The
test split chooses nothing and is not printed. A sweep with ``curve`` epochs trains each
candidate once for the largest budget and prints the best validation accuracy within
the first E epochs (read from ``metrics.jsonl``; valid because these rules run without a
learning-rate schedule, so a longer run's first E epochs are the E-epoch run).

    PYTHONPATH=src python benchmarks/defaults.py --list
    PYTHONPATH=src python benchmarks/defaults.py cff-predict --seeds 0,1,2 \\
        --out /work/runs/r-defaults

Finished runs (``summary.json`` present) are reused, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

# Every run: no memory meter, no early-exit calibration, no checkpoints (time only).
COMMON = ("--set", "measure_memory=false", "--set", "early_exit=false",
          "--set", "checkpoint=false")


@dataclass(frozen=True)
class Sweep:
    """One option of one rule: ``candidates`` maps a label to its extra CLI arguments
    (the default's first); ``base`` goes to every run."""

    rule: str
    data: str
    net: str
    candidates: dict[str, tuple[str, ...]]
    base: tuple[str, ...] = ()
    curve: tuple[int, ...] = ()  # epoch budgets read off one run per candidate


MNIST5K, MLP = "mnist5k", "mlp:500,500"


def options(name: str, default: str, *others: str) -> dict[str, tuple[str, ...]]:
    """Candidates of one rule option: its default (no flag), then each other value."""
    return {f"`{name}={default}` (default)": (),
            **{f"`rule.{name}={v}`": ("--set", f"rule.{name}={v}") for v in others}}


SWEEPS: dict[str, Sweep] = {
    "ccl-rms-norm-mnist5k": Sweep("ccl", MNIST5K, MLP, options("rms_norm", "true", "false")),
    "ccl-rms-norm-mnist1d": Sweep("ccl", "mnist1d", "cnn", options("rms_norm", "true", "false")),
    "noprop-ct-weighting": Sweep("noprop-ct", MNIST5K, MLP,
                                 options("weighting", "logsnr", "snr")),
    "noprop-ct-weighting-mnist1d": Sweep("noprop-ct", "mnist1d", "cnn",
                                         options("weighting", "logsnr", "snr")),
    "noprop-fm-target": Sweep("noprop-fm", MNIST5K, MLP, options("target", "clean", "velocity")),
    "noprop-fm-target-mnist1d": Sweep("noprop-fm", "mnist1d", "cnn",
                                      options("target", "clean", "velocity")),
    "noprop-dt-epochs": Sweep("noprop-dt", MNIST5K, MLP, {"defaults": ("--epochs", "20")},
                              curve=(5, 10, 15, 20)),
    "noprop-dt-epochs-mnist1d": Sweep("noprop-dt", "mnist1d", "cnn",
                                      {"defaults": ("--epochs", "20")}, curve=(5, 10, 15, 20)),
    **{f"{r}-inference-noise": Sweep(r, MNIST5K, MLP, options("inference_noise", "false", "true"))
       for r in ("noprop-dt", "noprop-ct")},  # noprop-fm has no inference noise
    # The setting ff-seq's docstring names (gpt:2x32, 40,000 characters, 8 epochs) and
    # the rule's default 20 epochs, read off one 20-epoch run.
    "ff-seq-negatives": Sweep("ff-seq", "stdlib-text", "gpt:2x32",
                              options("negatives", "random", "hardest"),
                              base=("--epochs", "20", "--set", "data.max_chars=40000"),
                              curve=(8, 20)),
    "cff-predict": Sweep("cff", MNIST5K, MLP, options("predict", "goodness", "readout")),
}


def folder(out: Path, name: str, index: int, seed: int) -> Path:
    return out / name / f"c{index}-s{seed}"


def run(out: Path, name: str, index: int, seed: int) -> Path:
    sweep = SWEEPS[name]
    path = folder(out, name, index, seed)
    if (path / "summary.json").exists():
        return path
    extra = list(sweep.candidates.values())[index]
    cmd = [sys.executable, "-m", "locallearn", "train", "--rule", sweep.rule,
           "--data", sweep.data, "--net", sweep.net, "--seed", str(seed), "--threads", "1",
           "--quiet", "--overwrite", "--out", str(path), *COMMON, *sweep.base, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return path


def ms(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def table(out: Path, name: str, seeds: list[int]) -> str:
    sweep = SWEEPS[name]
    if sweep.curve:
        lines = ["| candidate, seed | " + " | ".join(f"E = {e}" for e in sweep.curve) + " |",
                 "|---" * (len(sweep.curve) + 1) + "|"]
        for i, label in enumerate(sweep.candidates):
            per_e: list[list[float]] = [[] for _ in sweep.curve]
            for s in seeds:
                history = [json.loads(line) for line in
                           (folder(out, name, i, s) / "metrics.jsonl").read_text().splitlines()
                           if line.strip()]
                vals = [h["val_accuracy"] for h in history]
                row = [max(vals[:e]) for e in sweep.curve]
                for acc, r in zip(per_e, row, strict=True):
                    acc.append(r)
                lines.append(f"| {label}, {s} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
            lines.append(f"| {label}, mean ± std | " + " | ".join(ms(v) for v in per_e) + " |")
        return "\n".join(lines)
    lines = ["| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---" * (len(seeds) + 2) + "|"]
    for i, label in enumerate(sweep.candidates):
        vals = [json.loads((folder(out, name, i, s) / "summary.json").read_text())
                ["best_val_accuracy"] for s in seeds]
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {ms(vals)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", nargs="*", help="sweep names (see --list)")
    p.add_argument("--list", action="store_true", help="print the sweeps and exit")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", default="runs/defaults")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)  # as every run (the provenance lines print this process's)
    if args.list or not args.sweeps:
        for name, s in SWEEPS.items():
            print(f"{name}: {s.rule} on {s.data} {s.net} {' '.join(s.base)}; "
                  f"{', '.join(s.candidates)}" + (f"; epochs {s.curve}" if s.curve else ""))
        return
    unknown = [n for n in args.sweeps if n not in SWEEPS]
    if unknown:
        raise SystemExit(f"unknown sweep(s) {unknown}; see --list")
    seeds, out = [int(s) for s in args.seeds.split(",")], Path(args.out)
    jobs = [(n, i, s) for n in args.sweeps for s in seeds
            for i in range(len(SWEEPS[n].candidates))]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda j: run(out, *j), jobs))
    for name in args.sweeps:
        s = SWEEPS[name]
        print(f"\n{name}: {s.rule}, {s.data} `{s.net}` {' '.join(s.base)} "
              f"(best_val_accuracy)\n")
        print(table(out, name, seeds))


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
