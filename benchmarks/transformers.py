"""Transformers under local rules, beside backprop on the same network and steps.

    python benchmarks/transformers.py gpt [--epochs 2] [--seeds 0] [--rules backprop local ...]
    python benchmarks/transformers.py vit [--epochs 20] [--seeds 0 1 2]
    python benchmarks/transformers.py gpt --override dfa:optimizer=sgd,lr=0.05
    python benchmarks/transformers.py vit --epochs 10 --seeds 0 1 2 --frozen

gpt: ``gpt:4x128`` on ``stdlib-text`` (context 64, ``--max-chars`` of training
text), prints test perplexity, next-character accuracy, tokens/s and peak memory
per rule. vit: ``vit:4x64`` on ``mnist5k``, prints test accuracy, samples/s and
peak memory per rule. Every rule gets the same epochs, batch size and learning
rate (so the same number of steps) unless ``--override RULE:key=value,...`` says
otherwise (printed with the table). ``--frozen`` also runs each rule and seed as its
frozen control (``freeze_blocks=True``: the blocks keep their random initialisation,
only head / readouts learn; issue 15) and adds its figure and the per-seed difference
(trained - frozen, mean ± std over seeds). Targets (issue 10): the best local rule's test
perplexity within 15 % of backprop's (gpt), its test accuracy within 3 points of
backprop's (vit); the last lines say whether they are met.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from locallearn.rules import RULES
from locallearn.training import train

LOCAL_CANDIDATES = {"gpt": ("local", "mono-forward", "dfa", "ff-seq"),
                    "vit": ("local", "mono-forward", "dfa")}


def fmt(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """``["dfa:optimizer=sgd,lr=0.05"]`` -> ``{"dfa": {"optimizer": "sgd", "lr": 0.05}}``."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        rule, _, settings = item.partition(":")
        for pair in settings.split(","):
            key, _, value = pair.partition("=")
            try:
                parsed: object = float(value) if key in ("lr", "weight_decay") else value
            except ValueError:
                raise SystemExit(f"--override {item!r}: {key} must be a number") from None
            out.setdefault(rule, {})[key] = parsed
    return out


def frozen_header(what: str, on: bool) -> str:
    """The frozen control's two column titles (empty when it did not run)."""
    return f"frozen {what} | trained - frozen | " if on else ""


def frozen_cells(rs: list[dict], fs: list[dict] | None, key: str, digits: int) -> str:
    """The control's figure and the per-seed difference trained - frozen (same seed);
    empty when the controls did not run (``fs`` is None)."""
    if fs is None:
        return ""
    if not fs:
        return "- | - | "
    diff = [r[key] - f[key] for r, f in zip(rs, fs, strict=True)]
    return f"{fmt([f[key] for f in fs], digits)} | {fmt_signed(diff, digits)} | "


def fmt_signed(values: list[float], digits: int) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", choices=["gpt", "vit"])
    p.add_argument("--net")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rules", nargs="+")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-chars", type=int, default=1_000_000)
    p.add_argument("--override", nargs="*", default=[], metavar="RULE:KEY=VALUE,...")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frozen", action="store_true",
                   help="also run each rule and seed with freeze_blocks=True (its control)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.override)

    rules = args.rules or ["backprop"] + [r for r in LOCAL_CANDIDATES[args.model] if r in RULES]
    if args.model == "gpt":
        net, data, epochs = args.net or "gpt:4x128", "stdlib-text", args.epochs or 2
        data_options = {"context": 64, "max_chars": args.max_chars}
    else:
        net, data, epochs = args.net or "vit:4x64", "mnist5k", args.epochs or 20
        data_options = {}

    rows, controls, hardware = [], {}, None
    for rule in rules:
        results = []
        for seed in args.seeds:
            settings = {"lr": args.lr, "batch_size": args.batch_size, **overrides.get(rule, {})}
            s = train(rule=rule, data=data, net=net, epochs=epochs, seed=seed, quiet=True,
                      data_options=data_options, checkpoint=False, **settings).summary
            results.append(s)
            hardware = s["hardware"]
            print(f"{rule} seed {seed}: test accuracy {s['test_accuracy']:.4f}"
                  + (f", perplexity {s['test_perplexity']:.3f}" if "test_perplexity" in s
                     else "") + f", {s['train_seconds']:.0f} s", flush=True)
            if args.frozen:  # same rule, seed and settings; only head / readouts learn
                f = train(rule=rule, data=data, net=net, epochs=epochs, seed=seed, quiet=True,
                          data_options=data_options, checkpoint=False, freeze_blocks=True,
                          measure_memory=False, early_exit=False, **settings).summary
                controls.setdefault(rule, []).append(f)
                print(f"{rule} seed {seed} frozen: test accuracy {f['test_accuracy']:.4f}"
                      + (f", perplexity {f['test_perplexity']:.3f}" if "test_perplexity" in f
                         else "") + f", {f['train_seconds']:.0f} s", flush=True)
        rows.append((rule, results))

    print(f"\n{net} on {data} {data_options or ''}, {epochs} epochs, batch {args.batch_size}, "
          f"lr {args.lr}, seeds {args.seeds}; {hardware['cpu']} ({hardware['cpu_count']} cores, "
          f"{hardware['torch_threads']} threads), torch {hardware['torch_version']}")
    for rule, settings in overrides.items():
        print(f"override for {rule}: {settings}")
    print()
    ctl = {rule: controls.get(rule, []) if args.frozen else None for rule, _ in rows}
    if args.model == "gpt":
        tokens = data_options["context"]
        print("| rule | test perplexity | " + frozen_header("perplexity", args.frozen)
              + "next-char accuracy | tokens/s | train s | peak MiB |")
        print("|---|---|---|---|---|---|" + "---|---|" * args.frozen)
        for rule, rs in rows:
            print(f"| {rule} | {fmt([r['test_perplexity'] for r in rs])} | "
                  + frozen_cells(rs, ctl[rule], "test_perplexity", 3)
                  + f"{fmt([r['test_accuracy'] for r in rs])} | "
                  f"{statistics.mean(r['samples_per_second'] for r in rs) * tokens:.0f} | "
                  f"{statistics.mean(r['train_seconds'] for r in rs):.1f} | "
                  f"{max(r['peak_memory_bytes'] for r in rs) / 2**20:.1f} |")
        score = {rule: statistics.mean(r["test_perplexity"] for r in rs) for rule, rs in rows}
        local = {r: v for r, v in score.items() if r != "backprop"}
        if "backprop" in score and local:
            best = min(local, key=local.get)
            ratio = local[best] / score["backprop"]
            print(f"\nbest local rule {best}: perplexity {local[best]:.3f} vs backprop "
                  f"{score['backprop']:.3f} ({ratio - 1:+.1%}) -> "
                  f"{'within' if ratio <= 1.15 else 'MISSES'} the 15 % target")
    else:
        print("| rule | test accuracy | " + frozen_header("test accuracy", args.frozen)
              + "samples/s | train s | peak MiB |")
        print("|---|---|---|---|---|" + "---|---|" * args.frozen)
        for rule, rs in rows:
            print(f"| {rule} | {fmt([r['test_accuracy'] for r in rs], 4)} | "
                  + frozen_cells(rs, ctl[rule], "test_accuracy", 4)
                  + f"{statistics.mean(r['samples_per_second'] for r in rs):.0f} | "
                  f"{statistics.mean(r['train_seconds'] for r in rs):.1f} | "
                  f"{max(r['peak_memory_bytes'] for r in rs) / 2**20:.1f} |")
        score = {rule: statistics.mean(r["test_accuracy"] for r in rs) for rule, rs in rows}
        local = {r: v for r, v in score.items() if r != "backprop"}
        if "backprop" in score and local:
            best = max(local, key=local.get)
            gap = score["backprop"] - local[best]
            print(f"\nbest local rule {best}: accuracy {local[best]:.4f} vs backprop "
                  f"{score['backprop']:.4f} ({-gap * 100:+.2f} points) -> "
                  f"{'within' if gap <= 0.03 else 'MISSES'} the 3-point target")


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
