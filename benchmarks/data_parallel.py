"""Throughput and message volume of data-parallel replicas, stages, and the grid.

    python benchmarks/data_parallel.py [--epochs 3] [--seed 0] [--runs bp1 bp2 mf1 mf2 ...]

Every run: mnist5k, mlp:1024,1024,1024,1024, batch 256 (the global batch: each of
M replicas takes 256/M rows), one torch thread per process. Runs:

    bp1 / bp2   backprop, 1 process / 2 replicas
    mf1 / mf2   mono-forward, 1 process / 2 replicas
    mfs2        mono-forward, 2 stages (layer parallel)
    grid        mono-forward, 2 stages x 2 replicas (4 processes)

Prints samples/s (training loop only, as in summary.json), the speed-up over the
same rule in one process, test accuracy, and the bytes each process hands to
torch.distributed per training step: the payload of the gradient all_reduce
(replicas; gloo's ring then sends 2(M-1)/M of it from each process) and of the
activations sent to the next stage (stages). Beside them, the bytes that crossed
the loopback interface per step during the whole run (every process, TCP
headers and rendezvous included; any other loopback traffic on the machine too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "bp1": ("backprop", 1, 1), "bp2": ("backprop", 1, 2),
    "mf1": ("mono-forward", 1, 1), "mf2": ("mono-forward", 1, 2),
    "mfs2": ("mono-forward", 2, 1), "grid": ("mono-forward", 2, 2),
}


def loopback_bytes() -> int | None:
    """Bytes sent over the loopback interface since boot (Linux), else None."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    except OSError:
        pass
    return None


def run(rule: str, stages: int, replicas: int, epochs: int, seed: int, net: str,
        batch: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"dp{stages}x{replicas}-")) / "run"
    cmd = [sys.executable, "-m", "locallearn", "train", "--rule", rule, "--data", "mnist5k",
           "--net", net, "--epochs", str(epochs), "--batch-size", str(batch), "--seed", str(seed),
           "--out", str(out), "--quiet", "--stages", str(stages), "--replicas", str(replicas),
           "--stage-threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    before = loopback_bytes()
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    after = loopback_bytes()
    summary = json.loads((out / "summary.json").read_text())
    steps = epochs * -(-_train_rows(out) // batch)  # ceil: the last batch is ragged
    summary["_loopback_per_step"] = (after - before) / steps if before is not None else None
    return summary


def _train_rows(out: Path) -> int:
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return int(first["samples"])


def volumes(summary: dict) -> tuple[float, float]:
    """(gradient all_reduce payload, activation payload) per step and process."""
    infos = summary.get("stage_info") or []
    if infos:
        grad = sum(i["gradient_bytes_per_step"] for i in infos) / len(infos)
        act = sum(i["activation_bytes_per_step"] for i in infos) / len(infos)
        return grad, act
    return summary.get("gradient_bytes_per_step") or 0.0, 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--net", default="mlp:1024,1024,1024,1024")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()

    results = {name: run(*RUNS[name], args.epochs, args.seed, args.net, args.batch_size)
               for name in args.runs}
    hw = next(iter(results.values()))["hardware"]
    print(f"{args.net}, batch {args.batch_size} (global), {args.epochs} epochs, mnist5k, "
          f"seed {args.seed}; {hw['cpu']} ({hw['cpu_count']} cores), torch "
          f"{hw['torch_version']}, one thread per process; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'run':>5} {'rule':>13} {'stages x replicas':>17} {'samples/s':>10} "
          f"{'speed-up':>9} {'test acc':>9} {'grad MiB/step':>14} {'act MiB/step':>13} "
          f"{'loopback MiB/step':>18}")
    base = {}
    for name, s in results.items():
        rule, stages, replicas = RUNS[name]
        if stages * replicas == 1:
            base[rule] = s["samples_per_second"]
    for name, s in results.items():
        rule, stages, replicas = RUNS[name]
        sps = s["samples_per_second"]
        speed = f"{sps / base[rule]:.2f}x" if rule in base else "-"
        grad, act = volumes(s)
        loop = s["_loopback_per_step"]
        loop_text = f"{loop / 2**20:.2f}" if loop is not None else "-"
        print(f"{name:>5} {rule:>13} {f'{stages} x {replicas}':>17} {sps:>10.0f} {speed:>9} "
              f"{s['test_accuracy']:>9.4f} {grad / 2**20:>14.2f} {act / 2**20:>13.2f} "
              f"{loop_text:>18}")


if __name__ == "__main__":
    main()
