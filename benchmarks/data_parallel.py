"""Throughput and message volume of data-parallel replicas, stages, and the grid.

    python benchmarks/data_parallel.py [--epochs 3] [--seed 0] [--runs bp1 bp2 mf1 mf2 ...]
        [--batch-sizes 256 512 1024] [--repeat 3]

Every run: mnist5k, mlp:1024,1024,1024,1024, one torch thread per process, at each
global batch size of ``--batch-sizes`` (each of M replicas takes 1/M of every
batch). Runs:

    bp1 / bp2 / bp2-bf16   backprop, 1 process / 2 replicas / 2 replicas sending bf16
    mf1 / mf2 / mf2-bf16   mono-forward, the same three
    mfs2                   mono-forward, 2 stages (layer parallel)
    grid                   mono-forward, 2 stages x 2 replicas (4 processes)

``--repeat K`` runs the whole list K times, interleaved, and keeps each run's
fastest (the machine may be shared: a loaded machine understates what parallel
runs gain, since a descheduled process holds up its peers at every message);
the load average (1 minute) before each repetition is printed beside it.

Prints samples/s (training loop only, as in summary.json), the speed-up over the
same rule in one process at the same batch size, test accuracy, and message
volume per training step: the payload each process hands to torch.distributed
(the gradient all_reduce of replicas, the activations a stage sends on); what
that should put on the wire for all processes together (gloo's ring all_reduce
sends 2(M-1)/M of the payload from each of the M processes; a stage's activation
crosses once); and the bytes that did cross the loopback interface per step
during the whole run (every process, TCP headers, rendezvous, evaluation and
checkpoint messages included; any other loopback traffic on the machine too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# name: (rule, stages, replicas, gradient_compression)
RUNS = {
    "bp1": ("backprop", 1, 1, "none"), "bp2": ("backprop", 1, 2, "none"),
    "bp2-bf16": ("backprop", 1, 2, "bf16"),
    "mf1": ("mono-forward", 1, 1, "none"), "mf2": ("mono-forward", 1, 2, "none"),
    "mf2-bf16": ("mono-forward", 1, 2, "bf16"),
    "mfs2": ("mono-forward", 2, 1, "none"), "grid": ("mono-forward", 2, 2, "none"),
}
DEFAULT_RUNS = ["bp1", "bp2", "bp2-bf16", "mf1", "mf2", "mf2-bf16"]


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


def run(rule: str, stages: int, replicas: int, compression: str, epochs: int, seed: int,
        net: str, batch: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"dp{stages}x{replicas}-")) / "run"
    cmd = [sys.executable, "-m", "locallearn", "train", "--rule", rule, "--data", "mnist5k",
           "--net", net, "--epochs", str(epochs), "--batch-size", str(batch), "--seed", str(seed),
           "--out", str(out), "--quiet", "--stages", str(stages), "--replicas", str(replicas),
           "--stage-threads", "1", "--set", f"gradient_compression={compression}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    load = os.getloadavg()[0]
    before = loopback_bytes()
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    after = loopback_bytes()
    summary = json.loads((out / "summary.json").read_text())
    steps = epochs * -(-_train_rows(out) // batch)  # ceil: the last batch is ragged
    summary["_loopback_per_step"] = (after - before) / steps if before is not None else None
    summary["_load"] = load
    return summary


def _train_rows(out: Path) -> int:
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return int(first["samples"])


def volumes(summary: dict, stages: int, replicas: int) -> tuple[float, float, float]:
    """(gradient all_reduce payload, activation payload) per step and process, and the
    bytes these should put on the wire per step, all processes together."""
    infos = summary.get("stage_info") or []
    if infos:
        grads = [i["gradient_bytes_per_step"] for i in infos]
        acts = [i["activation_bytes_per_step"] for i in infos]
    else:
        grads, acts = [summary.get("gradient_bytes_per_step") or 0.0], [0.0]
    # Each stage's M copies: M x 2(M-1)/M x its payload; each replica's activations.
    wire = sum(2 * (replicas - 1) * g for g in grads) + replicas * sum(acts)
    return sum(grads) / len(grads), sum(acts) / len(acts), wire


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--net", default="mlp:1024,1024,1024,1024")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()

    best: dict[tuple[int, str], dict] = {}
    loads: dict[tuple[int, str], list[float]] = {}
    for rep in range(args.repeat):
        for batch in args.batch_sizes:
            for name in args.runs:
                s = run(*RUNS[name], args.epochs, args.seed, args.net, batch)
                key = (batch, name)
                loads.setdefault(key, []).append(s["_load"])
                if key not in best or s["samples_per_second"] > best[key]["samples_per_second"]:
                    best[key] = s
                print(f"  [{rep + 1}/{args.repeat}] batch {batch} {name}: "
                      f"{s['samples_per_second']:.0f} samples/s, load {s['_load']:.2f}",
                      file=sys.stderr, flush=True)
    hw = next(iter(best.values()))["hardware"]
    print(f"{args.net}, {args.epochs} epochs, mnist5k, seed {args.seed}; {hw['cpu']} "
          f"({hw['cpu_count']} cores), torch {hw['torch_version']}, one thread per process; "
          f"best of {args.repeat}")
    print(f"{'batch':>5} {'run':>8} {'rule':>13} {'N x M':>5} {'samples/s':>10} "
          f"{'speed-up':>8} {'test acc':>8} {'grad MiB':>8} {'act MiB':>7} {'wire MiB':>8} "
          f"{'loopback MiB':>12}  load (1 min) before each try")
    for batch in args.batch_sizes:
        base = {}
        for name in args.runs:
            rule, stages, replicas, _ = RUNS[name]
            if stages * replicas == 1:
                base[rule] = best[(batch, name)]["samples_per_second"]
        for name in args.runs:
            s = best[(batch, name)]
            rule, stages, replicas, _ = RUNS[name]
            sps = s["samples_per_second"]
            speed = f"{sps / base[rule]:.2f}x" if rule in base else "-"
            grad, act, wire = volumes(s, stages, replicas)
            loop = s["_loopback_per_step"]
            loop_text = f"{loop / 2**20:.2f}" if loop is not None else "-"
            load_text = ", ".join(f"{x:.1f}" for x in loads[(batch, name)])
            print(f"{batch:>5} {name:>8} {rule:>13} {f'{stages} x {replicas}':>5} {sps:>10.0f} "
                  f"{speed:>8} {s['test_accuracy']:>8.4f} {grad / 2**20:>8.2f} "
                  f"{act / 2**20:>7.2f} {wire / 2**20:>8.2f} {loop_text:>12}  {load_text}")
    print("MiB per training step: grad = all_reduce payload per process, act = activations "
          "sent per stage boundary, wire = what these put on the wire (all processes), "
          "loopback = measured on the loopback interface (all traffic)")


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
