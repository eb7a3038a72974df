"""NoProp (noprop-dt, noprop-ct, noprop-fm) beside backprop on the same CNN.

Every NoProp block embeds the input with its own copy of the CNN given here, so
noprop-dt has T (10) times the CNN's feature weights plus T small label/fusion
paths; noprop-ct and -fm have one. backprop trains that CNN (+ its linear head)
end to end. The table gives held-out test accuracy (mean ± std over seeds), the
parameter count, training seconds (epochs only), training samples per second and
peak memory of the training steps (as measured by the loop: see docs/bench.md),
and, for NoProp, test accuracy with 1 denoising step instead of T.
Targets (issue 5): noprop-dt >= 0.93 on mnist5k; within 5 points of backprop on mnist1d.

``--frozen`` also runs every rule and seed as its frozen control (``freeze_blocks``:
same seed, optimiser, lr, batch size and epochs; the blocks keep their random
initialisation, issue 15). For NoProp the frozen blocks are the input embedding of
each denoiser (the network's CNN; every copy for noprop-dt): the label path, the
fusion layers, the classifier, ct's schedule and learned prototypes still learn. For
backprop they are the CNN; only its linear head learns. The table then adds the
frozen run's test accuracy, its trainable parameters, and trained - frozen (per seed,
then mean ± std over seeds).

    PYTHONPATH=src python benchmarks/noprop.py
    PYTHONPATH=src python benchmarks/noprop.py --settings mnist1d-cnn --seeds 0 --rules noprop-dt
    PYTHONPATH=src python benchmarks/noprop.py --settings mnist5k-cnn --frozen

``--merge LOG ...`` prints the accuracy table (rule, frozen, trained - frozen over the
seeds both have) from the per-seed lines of earlier outputs, for a table whose seeds
ran in more than one command; it trains nothing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import torch

from locallearn.measure import hardware_info
from locallearn.training import train
from locallearn.training.trainer import evaluate

RULES = ["backprop", "noprop-dt", "noprop-ct", "noprop-fm"]
# (dataset, network, epochs per rule): noprop-dt trains 10 CNNs per step, so it gets
# fewer epochs on the 2-core machine these figures come from.
SETTINGS = {
    "mnist5k-cnn": ("mnist5k", "cnn:16,32",
                    {"backprop": 15, "noprop-dt": 5, "noprop-ct": 15, "noprop-fm": 15}),
    "mnist1d-cnn": ("mnist1d", "cnn",
                    {"backprop": 30, "noprop-dt": 15, "noprop-ct": 30, "noprop-fm": 30}),
}


def mean_std(values: list[float], signed: bool = False) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if signed else ''}.3f} ± {std:.3f}"


def trainable(rule: torch.nn.Module) -> int:
    """Parameters the run trained (a frozen control's blocks do not count)."""
    return sum(p.numel() for p in rule.parameters() if p.requires_grad)


def run_trained(rule: str, data: str, net: str, seed: int, epochs: int, options: dict,
                device: torch.device, memory: bool) -> dict:
    """One run of ``rule`` as it is: accuracy (T and 1 step), time, rate, peak, size."""
    r = train(rule=rule, data=data, net=net, seed=seed, epochs=epochs, device=str(device),
              quiet=True, checkpoint=False, rule_options=options, measure_memory=memory)
    s = r.summary
    out = {"acc": s["test_accuracy"], "secs": s["train_seconds"],
           "rate": s["samples_per_second"], "params": trainable(r.rule),
           "peak": (s["peak_memory_bytes"] or 0) / 2**20 if memory else None, "one_step": None}
    if hasattr(r.rule, "set_inference_steps"):
        r.rule.set_inference_steps(1)
        out["one_step"] = evaluate(r.rule, r.dataset.loader("test", 1024), device,
                                   per_block=False)["accuracy"]
    return out


def run_frozen(rule: str, data: str, net: str, seed: int, epochs: int, options: dict,
               device: torch.device) -> dict:
    """The same run with ``freeze_blocks`` (no memory pass: the table's is the rule's)."""
    r = train(rule=rule, data=data, net=net, seed=seed, epochs=epochs, device=str(device),
              quiet=True, checkpoint=False, rule_options=options, freeze_blocks=True,
              measure_memory=False)
    assert r.summary["freeze_blocks"] is True
    return {"acc": r.summary["test_accuracy"], "secs": r.summary["train_seconds"],
            "params": trainable(r.rule)}


# "#   mnist5k-cnn noprop-dt seed 1 frozen: 0.9120 (... s wall, 1-step 0.9100)"
SEED_LINE = re.compile(r"^#   (\S+) (\S+) seed (\d+)( frozen)?: ([0-9.]+) "
                       r"\(.*?(?:1-step ([0-9.]+))?\)$")


def merge(paths: list[str]) -> None:
    """Accuracy table from the per-seed lines of earlier outputs (a later line for the
    same setting, rule, seed and kind replaces an earlier one)."""
    runs: dict[tuple[str, str], dict[str, dict[int, tuple[float, float | None]]]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            m = SEED_LINE.match(line)
            if m:
                setting, rule, seed, frozen, acc, one = m.groups()
                kind = "frozen" if frozen else "trained"
                cell = runs.setdefault((setting, rule), {"trained": {}, "frozen": {}})
                cell[kind][int(seed)] = (float(acc), float(one) if one else None)
    header = ("setting", "rule", "seeds", "test accuracy", "1-step accuracy", "frozen seeds",
              "frozen", "trained - frozen")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (setting, rule), cell in runs.items():
        trained, frozen = cell["trained"], cell["frozen"]
        one = [v[1] for v in trained.values() if v[1] is not None]
        one_step = mean_std(one) if one else "-"
        if one and len(one) < len(trained):  # older outputs print no per-seed 1-step
            one_step += f" ({len(one)} of {len(trained)} seeds)"
        both = sorted(set(trained) & set(frozen))
        gap = "-"
        if both:
            gap = mean_std([trained[s][0] - frozen[s][0] for s in both], signed=True)
            gap += f" ({len(both)} seed{'s' if len(both) > 1 else ''})"
        print("| " + " | ".join((
            setting, rule, ",".join(map(str, sorted(trained))) or "-",
            mean_std([v[0] for v in trained.values()]) if trained else "-",
            one_step, ",".join(map(str, sorted(frozen))) or "-",
            mean_std([v[0] for v in frozen.values()]) if frozen else "-", gap)) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--settings", default=",".join(SETTINGS), help=", ".join(SETTINGS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="override every rule's epochs")
    p.add_argument("--embedding", default="onehot", help="NoProp label embedding: onehot, "
                   "prototype")
    p.add_argument("--frozen", action="store_true",
                   help="also run each rule and seed with freeze_blocks (random blocks)")
    p.add_argument("--frozen-only", action="store_true",
                   help="run only the frozen controls (no trained runs)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the memory pass of the trained runs (peak MiB shows -)")
    p.add_argument("--merge", nargs="+", metavar="LOG",
                   help="print the accuracy table from earlier outputs' per-seed lines")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.merge:
        merge(args.merge)
        return
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    device = torch.device(args.device)
    trained, frozen = not args.frozen_only, args.frozen or args.frozen_only
    hw = hardware_info(device)
    print(f"# {hw.get('cpu')} ({hw.get('cpu_count')} cores), device {args.device}, "
          f"torch {hw.get('torch_version')}, threads={args.threads}, seeds {args.seeds}, "
          f"noprop embedding {args.embedding}"
          + (", frozen controls only" if args.frozen_only
             else ", with frozen controls" if frozen else ""))
    header = ("setting", "rule", "epochs")
    if trained:
        header += ("params", "test accuracy", "1-step accuracy", "train s", "samples/s",
                   "peak MiB")
    if frozen:
        header += (("frozen", "trained - frozen", "frozen params") if trained
                   else ("frozen", "frozen params"))
    rows = []
    for setting in args.settings.split(","):
        data, net, epochs_by_rule = SETTINGS[setting]
        for rule in args.rules.split(","):
            epochs = args.epochs or epochs_by_rule[rule]
            options = {"embedding": args.embedding} if rule.startswith("noprop") else {}
            runs, controls = [], []
            for seed in seeds:
                for control in ([False] if trained else []) + ([True] if frozen else []):
                    t0 = time.perf_counter()
                    if control:
                        r = run_frozen(rule, data, net, seed, epochs, options, device)
                        controls.append(r)
                    else:
                        r = run_trained(rule, data, net, seed, epochs, options, device,
                                        memory=not args.no_memory)
                        runs.append(r)
                    one = f", 1-step {r['one_step']:.4f}" if r.get("one_step") is not None else ""
                    print(f"#   {setting} {rule} seed {seed}{' frozen' if control else ''}: "
                          f"{r['acc']:.4f} ({r['secs']:.1f} s train, "
                          f"{time.perf_counter() - t0:.1f} s wall{one})", flush=True)
            row = (setting, rule, str(epochs))
            if trained:
                one_step = [r["one_step"] for r in runs if r["one_step"] is not None]
                peaks = [r["peak"] for r in runs if r["peak"] is not None]
                row += (f"{runs[0]['params'] / 1e6:.2f}M", mean_std([r["acc"] for r in runs]),
                        mean_std(one_step) if one_step else "-",
                        f"{statistics.mean(r['secs'] for r in runs):.1f}",
                        f"{statistics.mean(r['rate'] for r in runs):.0f}",
                        f"{statistics.mean(peaks):.1f}" if peaks else "-")
            if frozen:
                row += (mean_std([c["acc"] for c in controls]),)
                if trained:
                    row += (mean_std([r["acc"] - c["acc"] for r, c in zip(runs, controls,
                                                                          strict=True)],
                                     signed=True),)
                row += (f"{controls[0]['params'] / 1e6:.2f}M",)
            print("#   row: | " + " | ".join(row) + " |", flush=True)  # kept if cut short
            rows.append(row)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
