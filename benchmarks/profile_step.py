"""Profile training steps of one rule with torch.profiler: where does a step's time go?

    PYTHONPATH=src python benchmarks/profile_step.py --rule mono-forward \
        --net mlp:2048,2048,2048 --batch-size 1024 --steps 3

Prints the top operators by self CPU time (CUDA time on a GPU). Uses the Trainer's
own step, as the efficiency suite does.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from locallearn.bench import Cell
from locallearn.bench.cells import _setup, _sync


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rule", default="backprop")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--net", default="mlp:2048,2048,2048")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    cell = Cell("efficiency", args.rule, args.data, args.net, 0, {"batch_size": args.batch_size})
    trainer, rule, optimizers, x, y = _setup(cell, args.device, args.batch_size)
    for _ in range(2):
        trainer._step(rule, optimizers, x, y)
    _sync(trainer.device)
    activities = [ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            trainer._step(rule, optimizers, x, y)
        _sync(trainer.device)
    key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    print(f"{args.rule} {args.net} batch {args.batch_size}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
