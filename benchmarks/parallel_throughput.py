"""Throughput of layer-parallel training: N stages (one thread each) vs one process.

    python benchmarks/parallel_throughput.py [--stages 1 2] [--epochs 3] [--seeds 0]
        [--rule dfa --staleness 2] [--set rule.negatives=random]

Same rule, network and data for every row (mono-forward, mlp with 4 blocks of
width 1024, batch 256, mnist5k). Prints samples/s, the speed-up over one
process with one thread, and each stage's busy fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(stages: int, epochs: int, seed: int, rule: str, net: str, batch: int,
        staleness: int = 0, settings: tuple[str, ...] = ()) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"pp{stages}-")) / "run"
    cmd = [sys.executable, "-m", "locallearn", "train", "--rule", rule, "--data", "mnist5k",
           "--net", net, "--epochs", str(epochs), "--batch-size", str(batch), "--seed", str(seed),
           "--out", str(out), "--quiet"]
    for setting in settings:
        cmd += ["--set", setting]
    if stages > 1:
        cmd += ["--stages", str(stages), "--stage-threads", "1", "--staleness", str(staleness)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rule", default="mono-forward")
    p.add_argument("--net", default="mlp:1024,1024,1024,1024")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--staleness", type=int, default=0, help="for rules that send a signal back")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to `locallearn train --set`")
    args = p.parse_args()

    rows = []
    for n in args.stages:
        summaries = [run(n, args.epochs, s, args.rule, args.net, args.batch_size,
                         args.staleness, tuple(args.set)) for s in args.seeds]
        rows.append((n, summaries))
    base = statistics.mean(s["samples_per_second"] for s in rows[0][1])
    hw = rows[0][1][0]["hardware"]
    extra = "".join(f", {x}" for x in args.set) + (f", staleness {args.staleness}"
                                                    if args.staleness else "")
    print(f"{args.rule}{extra}, {args.net}, batch {args.batch_size}, {args.epochs} epochs, "
          f"mnist5k; {hw['cpu']} ({hw['cpu_count']} cores), torch {hw['torch_version']}")
    print(f"{'stages':>6} {'samples/s':>10} {'speed-up':>9} {'test acc':>9}  busy per stage")
    for n, summaries in rows:
        sps = statistics.mean(s["samples_per_second"] for s in summaries)
        acc = statistics.mean(s["test_accuracy"] for s in summaries)
        busy = summaries[0].get("stage_info") or []
        busy_text = " ".join(f"{b['busy_fraction']:.2f}" for b in busy) or "-"
        print(f"{n:>6} {sps:>10.0f} {sps / base:>8.2f}x {acc:>9.4f}  {busy_text}")


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
