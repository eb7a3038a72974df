"""Each rule against its frozen control on mnist5k ``mlp:500,500`` (issue 15).

For every rule and seed, two ``locallearn train`` runs with the rule's own defaults: the
rule as it is, and ``--set freeze_blocks=true`` (same seed, optimiser, lr, batch size,
epochs; the blocks keep their random initialisation, only head / readouts / predictors
learn). One torch thread per process, ``--jobs`` processes at once. Prints the markdown
table of docs/results/frozen_controls.md: test accuracy mean ± std over seeds, the
difference (trained - frozen, per seed, then mean ± std) and best validation accuracy.

    PYTHONPATH=src python benchmarks/frozen_controls.py --out runs/frozen-controls
    PYTHONPATH=src python benchmarks/frozen_controls.py --rules tpsgd --set rule.loss=cosine

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
from pathlib import Path

RULES = ("mono-forward", "local", "dfa", "fa", "drtp", "tpsgd", "pepita", "ff")


def run(out: Path, rule: str, seed: int, frozen: bool, data: str, net: str,
        sets: list[str]) -> Path:
    folder = out / f"{rule}-{'frozen' if frozen else 'trained'}-s{seed}"
    if (folder / "summary.json").exists():
        return folder
    cmd = [sys.executable, "-m", "locallearn", "train", "--rule", rule, "--data", data,
           "--net", net, "--seed", str(seed), "--quiet", "--overwrite", "--out", str(folder),
           "--set", "measure_memory=false", "--set", "early_exit=false",
           "--set", "checkpoint=false"]
    for s in [*sets, *(["freeze_blocks=true"] if frozen else [])]:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return folder


def table(out: Path, rules: list[str], seeds: list[int]) -> str:
    def get(rule, kind, seed, key):
        return json.loads((out / f"{rule}-{kind}-s{seed}" / "summary.json").read_text())[key]

    def ms(v):
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"

    lines = ["| rule | trained (test) | frozen (test) | trained - frozen | "
             "trained (val) | frozen (val) | beats by >= 0.01 |", "|---|---|---|---|---|---|---|"]
    for r in rules:
        tr = [get(r, "trained", s, "test_accuracy") for s in seeds]
        fr = [get(r, "frozen", s, "test_accuracy") for s in seeds]
        vt = [get(r, "trained", s, "best_val_accuracy") for s in seeds]
        vf = [get(r, "frozen", s, "best_val_accuracy") for s in seeds]
        diff = [a - b for a, b in zip(tr, fr, strict=True)]
        ok = "yes" if statistics.mean(diff) >= 0.01 else "**no**"
        lines.append(f"| `{r}` | {ms(tr)} | {ms(fr)} | {ms(diff)} | {ms(vt)} | {ms(vf)} | {ok} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/frozen-controls")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--net", default="mlp:500,500")
    p.add_argument("--set", action="append", default=[], help="extra --set for every run")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    rules, seeds = args.rules.split(","), [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    jobs = [(r, s, f) for s in seeds for r in rules for f in (False, True)]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda j: run(out, *j, args.data, args.net, args.set), jobs))
    print(table(out, rules, seeds))


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
