"""Transformers under local rules, beside backprop on the same network and steps.

    python benchmarks/transformers.py gpt [--epochs 2] [--seeds 0] [--rules backprop local ...]
    python benchmarks/transformers.py vit [--epochs 20] [--seeds 0 1 2]

gpt: ``gpt:4x128`` on ``stdlib-text`` (context 64), prints test perplexity,
next-character accuracy, tokens/s and peak memory per rule. vit: ``vit:4x64``
on ``mnist5k``, prints test accuracy, samples/s and peak memory per rule.
Every rule gets the same epochs, batch size and learning rate.
"""

from __future__ import annotations

import argparse
import statistics

from locallearn.rules import RULES
from locallearn.training import train

LOCAL_CANDIDATES = ("local", "mono-forward", "dfa")


def fmt(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", choices=["gpt", "vit"])
    p.add_argument("--net")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rules", nargs="+")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-chars", type=int, default=1_000_000)
    args = p.parse_args()

    rules = args.rules or ["backprop"] + [r for r in LOCAL_CANDIDATES if r in RULES]
    if args.model == "gpt":
        net, data, epochs = args.net or "gpt:4x128", "stdlib-text", args.epochs or 2
        data_options = {"context": 64, "max_chars": args.max_chars}
    else:
        net, data, epochs = args.net or "vit:4x64", "mnist5k", args.epochs or 20
        data_options = {}

    rows, hardware = [], None
    for rule in rules:
        results = []
        for seed in args.seeds:
            s = train(rule=rule, data=data, net=net, epochs=epochs, seed=seed, lr=args.lr,
                      batch_size=args.batch_size, data_options=data_options, quiet=True).summary
            results.append(s)
            hardware = s["hardware"]
        rows.append((rule, results))

    print(f"{net} on {data}, {epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
          f"seeds {args.seeds}; {hardware['cpu']} ({hardware['cpu_count']} cores, "
          f"{hardware['torch_threads']} threads), torch {hardware['torch_version']}")
    if args.model == "gpt":
        tokens = data_options["context"]
        print(f"{'rule':<14} {'test ppl':>16} {'next-char acc':>16} {'tokens/s':>9} "
              f"{'train s':>8} {'peak MiB':>9}")
        for rule, rs in rows:
            print(f"{rule:<14} {fmt([r['test_perplexity'] for r in rs]):>16} "
                  f"{fmt([r['test_accuracy'] for r in rs]):>16} "
                  f"{statistics.mean(r['samples_per_second'] for r in rs) * tokens:>9.0f} "
                  f"{statistics.mean(r['train_seconds'] for r in rs):>8.1f} "
                  f"{max(r['peak_memory_bytes'] for r in rs) / 2**20:>9.1f}")
    else:
        print(f"{'rule':<14} {'test acc':>16} {'samples/s':>9} {'train s':>8} {'peak MiB':>9}")
        for rule, rs in rows:
            print(f"{rule:<14} {fmt([r['test_accuracy'] for r in rs], 4):>16} "
                  f"{statistics.mean(r['samples_per_second'] for r in rs):>9.0f} "
                  f"{statistics.mean(r['train_seconds'] for r in rs):>8.1f} "
                  f"{max(r['peak_memory_bytes'] for r in rs) / 2**20:>9.1f}")


if __name__ == "__main__":
    main()
