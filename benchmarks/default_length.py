"""The default-length sweep behind ``MIN_STEPS`` (docs/results/default_length.md).

Every row trains with no epoch count (``locallearn.train(rule=..., data=..., seed=s)``),
``locallearn.training.length.MIN_STEPS`` set to the candidate (0 = the rule's own
default epochs, as before the rule existed), and gives the mean over seeds of the
epochs chosen, the best validation accuracy (what ``MIN_STEPS`` was chosen on), the
test accuracy (shown, never used) and the training seconds. wine and iris are written
from scikit-learn to CSV (``csv:`` data, ``mlp:500,500``); karate is the networkx graph
(``gcn:32,32``).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/default_length.py
    PYTHONPATH=src python benchmarks/default_length.py --data karate --seeds 0
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import torch

import locallearn
import locallearn.training.length as length

# data -> (network, rules, MIN_STEPS candidates)
GRID = {
    "karate": ("gcn:32,32", ["backprop", "mono-forward", "sf"], [0, 100, 250, 500]),
    "wine": ("mlp:500,500", ["backprop", "mono-forward", "ff"], [0, 250, 500, 1000]),
    "iris": ("mlp:500,500", ["backprop", "mono-forward"], [0, 250, 500]),
}


def table_csv(name: str, folder: Path) -> str:
    """A scikit-learn table written as CSV (features, then the label column)."""
    from sklearn import datasets

    loaded = {"wine": datasets.load_wine, "iris": datasets.load_iris}[name]()
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(loaded.data.shape[1])] + ["label"])
        for x, y in zip(loaded.data, loaded.target, strict=True):
            w.writerow([*map(float, x), int(y)])
    return f"csv:{path}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=",".join(GRID), help=", ".join(GRID))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rules", help="only these rules (default: each data set's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="default-length-"))
    print(f"# mean over seeds {seeds}")
    print("| data | rule | MIN_STEPS | epochs | best val accuracy | test accuracy | train s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.data.split(","):
        net, rules, candidates = GRID[name]
        data = table_csv(name, folder) if name in ("wine", "iris") else name
        for rule in [r for r in rules if not args.rules or r in args.rules.split(",")]:
            for candidate in candidates:
                length.MIN_STEPS = candidate
                runs = [locallearn.train(rule=rule, data=data, net=net, seed=s, quiet=True,
                                         checkpoint=False, overwrite=True,
                                         out=str(folder / f"{name}-{rule}-{candidate}-{s}"),
                                         ).summary for s in seeds]
                epochs = sorted({r["epochs"] for r in runs})
                print(f"| {name} | {rule} | {candidate} | "
                      f"{'/'.join(map(str, epochs))} | "
                      f"{statistics.mean(r['best_val_accuracy'] for r in runs):.3f} | "
                      f"{statistics.mean(r['test_accuracy'] for r in runs):.3f} | "
                      f"{statistics.mean(r['train_seconds'] for r in runs):.1f} |", flush=True)


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
