"""Forward-Forward's training peak against backprop's, and its step time, per rule option.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ff_memory.py \
        --rules backprop,ff,symba,cff --net mlp:1024,1024,1024,1024 --batch-size 512 \
        --option label_pass_rows=0 --option label_pass_rows=1024

For every rule (and, for the FF family, every ``--option`` setting; none = the rule's
defaults) it prints the allocator-level peak of a training step and its activation
peak (``locallearn.measure.memory``, the memory suite's meter, on a copy of the rule)
and the median wall and process CPU time of ``--steps`` timed training steps (the
Trainer's own step, after two warm-up steps), in MiB and ms. One torch thread unless
``--threads``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from locallearn.bench import Cell
from locallearn.bench.cells import _setup, _sync
from locallearn.measure import measure_training_memory

FF_FAMILY = ("ff", "symba", "cff", "ff-recurrent")
MIB = 2**20


def parse_option(text: str) -> dict[str, object]:
    if not text:
        return {}
    key, value = text.split("=", 1)
    return {key: int(value)}


def measure(rule_name: str, net: str, batch_size: int, steps: int,
            rule_options: dict[str, object]) -> dict[str, float]:
    cell = Cell("memory", rule_name, "mnist5k", net, 0, {"batch_size": batch_size},
                rule_options)
    trainer, rule, optimizers, x, y = _setup(cell, "cpu", batch_size)
    memory = measure_training_memory(rule, optimizers, trainer.make_optimizers, trainer._step,
                                     x, y, trainer.device, steps=2)
    for _ in range(2):
        trainer._step(rule, optimizers, x, y)
    times, cpu = [], []
    for _ in range(steps):
        _sync(trainer.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer._step(rule, optimizers, x, y)
        _sync(trainer.device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"peak": memory["peak_memory_bytes"] / MIB,
            "act": memory["activation_peak_bytes"] / MIB,
            "saved": memory["saved_tensor_peak_bytes"] / MIB,
            "ms": 1000 * statistics.median(times), "cpu_ms": 1000 * statistics.median(cpu)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rules", default="backprop,ff,symba,cff")
    p.add_argument("--net", default="mlp:1024,1024,1024,1024")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--option", action="append", default=None,
                   help="KEY=INT rule option for the FF family (repeat to compare)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.net}, batch {args.batch_size}, mnist5k, Adam, {torch.get_num_threads()} "
          f"thread(s), torch {torch.__version__}; median of {args.steps} steps")
    print("| rule | option | peak MiB | act MiB | saved-tensor MiB | step ms | step CPU ms |")
    print("|---|---|---|---|---|---|---|")
    for name in args.rules.split(","):
        settings = (args.option or [""]) if name in FF_FAMILY else [""]
        for text in settings:
            r = measure(name, args.net, args.batch_size, args.steps, parse_option(text))
            print(f"| {name} | {text or 'default'} | {r['peak']:.1f} | {r['act']:.1f} | "
                  f"{r['saved']:.1f} | {r['ms']:.1f} | {r['cpu_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
