"""Error- and target-driven rules (issue 4) beside backprop: mono-forward, dfa, fa,
drtp, tpsgd, pepita, local, lls, ccl.

Every rule trains with its own ``defaults`` (epochs, lr, optimiser, batch size)
through the same loop, 3 seeds per setting, and the table gives held-out test
accuracy (mean ± std), training seconds (epochs only, no validation) and
training samples per second. Targets (issue 4): >= 0.92 on mnist5k mlp:500,500
within 60 s of training, >= 0.85 on mnist1d cnn.

    PYTHONPATH=src python benchmarks/feedback_rules.py
    PYTHONPATH=src python benchmarks/feedback_rules.py --rules dfa,fa --settings mnist5k-mlp \\
        --seeds 0 --epochs 5
    PYTHONPATH=src python benchmarks/feedback_rules.py --rules lls --set variant=mxm
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from locallearn.measure import hardware_info
from locallearn.training import train

RULES = ["backprop", "mono-forward", "dfa", "fa", "drtp", "tpsgd", "pepita", "local", "lls", "ccl"]
SETTINGS = {"mnist5k-mlp": ("mnist5k", "mlp:500,500"), "mnist1d-cnn": ("mnist1d", "cnn")}
# Issue 4 targets: (mean test accuracy, max mean training seconds or None).
TARGETS = {"mnist5k-mlp": (0.92, 60.0), "mnist1d-cnn": (0.85, None)}


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--settings", default=",".join(SETTINGS), help=", ".join(SETTINGS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="override every rule's default")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine more threads wait on each other)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a rule option for every rule run (e.g. variant=mxm for lls)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rule_options = dict(_option(o) for o in args.set)
    hw = hardware_info(torch.device(args.device))
    print(f"# {hw.get('cpu')} ({hw.get('cpu_count')} cores), device {args.device}, "
          f"torch {hw.get('torch_version')}, threads={args.threads}, seeds {args.seeds}")
    header = ("setting", "rule", "epochs", "test accuracy", "train s", "samples/s", "target")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for setting in args.settings.split(","):
        data, net = SETTINGS[setting]
        for rule in args.rules.split(","):
            accs, secs, rates, epochs = [], [], [], None
            for seed in seeds:
                t0 = time.perf_counter()
                s = train(rule=rule, data=data, net=net, seed=seed, epochs=args.epochs,
                          device=args.device, quiet=True, checkpoint=False,
                          measure_memory=False, rule_options=rule_options).summary
                accs.append(s["test_accuracy"])
                secs.append(s["train_seconds"])
                rates.append(s["samples_per_second"])
                epochs = s["epochs"]
                print(f"#   {setting} {rule} seed {seed}: {s['test_accuracy']:.4f} "
                      f"({s['train_seconds']:.1f} s train, {time.perf_counter() - t0:.1f} s wall)",
                      flush=True)
            floor, max_s = TARGETS[setting]
            met = statistics.mean(accs) >= floor and (max_s is None
                                                      or statistics.mean(secs) <= max_s)
            print(f"| {setting} | {rule} | {epochs} | {mean_std(accs)} | "
                  f"{statistics.mean(secs):.1f} | {statistics.mean(rates):.0f} | "
                  f"{'met' if met else 'MISSED'} |", flush=True)


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
