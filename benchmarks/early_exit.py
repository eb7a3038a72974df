"""Early exit on a locally trained network: accuracy against depth, and wall-clock speed-up.

Trains each rule (its own ``defaults``) on the target setting, then sweeps the
confidence threshold of early-exit prediction on the test set (accuracy and mean
number of blocks used per sample), picks the operating threshold on the validation
set (fewest blocks within 1 point of full depth), and times early exit against the
full-depth forward pass at batch size 1 and 256 (best of several runs, same
readouts, same process). Target (issue 8): the sweep reaches within 1 point of
full-depth accuracy at a mean depth <= 60% of the blocks.

    PYTHONPATH=src python benchmarks/early_exit.py                 # ff, mono-forward, local
    PYTHONPATH=src python benchmarks/early_exit.py --rules mono-forward --epochs 5
    PYTHONPATH=src python benchmarks/early_exit.py --reuse        # re-measure trained runs

Writes ``OUT/<rule>/`` run folders (with ``early_exit`` in summary.json),
``OUT/early_exit.json`` and ``OUT/report.html`` (with the accuracy-vs-depth plot).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from locallearn.anytime.exits import TOLERANCE, early_exit_summary
from locallearn.anytime.runs import load_run
from locallearn.measure import hardware_info
from locallearn.rules import RULES
from locallearn.training import train

TARGET_DEPTH = 0.6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rules", default="ff,mono-forward,local",
                   help="rules to run (those not registered are left out with a note)")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--net", default="mlp:500,500,500,500")
    p.add_argument("--epochs", type=int, default=None, help="override every rule's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/early-exit")
    p.add_argument("--reuse", action="store_true", help="re-measure runs already in --out")
    p.add_argument("--repeats", type=int, default=5, help="timing: best of this many runs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    hw = hardware_info(torch.device("cpu"))
    print(f"# {hw.get('cpu')} ({hw.get('cpu_count')} cores), torch {hw.get('torch_version')}, "
          f"threads={args.threads}; {args.data} {args.net}, seed {args.seed}")
    results = {}
    for rule in args.rules.split(","):
        if rule not in RULES:
            print(f"\n## {rule}: not registered on this branch, left out")
            continue
        run_dir = out / rule
        if not (args.reuse and (run_dir / "summary.json").exists()):
            train(rule=rule, data=args.data, net=args.net, epochs=args.epochs, seed=args.seed,
                  out=str(run_dir), overwrite=True, quiet=True, early_exit=False)
        run = load_run(run_dir)
        # Timing on the whole test set at both batch sizes, more repeats than in training.
        n = len(run.dataset.test)
        ee = early_exit_summary(run.rule, run.dataset, time_samples_batch1=n,
                                time_samples_batch256=n, repeats=args.repeats)
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.update(ee)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        results[rule] = report(rule, summary, ee)
    (out / "early_exit.json").write_text(json.dumps({"hardware": hw, "results": results},
                                                    indent=1))
    from locallearn.report import load_runs, write_report

    runs = [r for r in load_runs(out) if Path(r["dir"]).name in results]
    _, page = write_report(out, runs, title=f"Early exit: {args.data}, {args.net}")
    print(f"\nreport: {page}")
    print("\n| rule | full-depth acc | sweep: best depth within 1 pt | target | val-picked "
          "threshold | its test acc | its mean blocks | speed-up b=1 | speed-up b=256 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rule, r in results.items():
        print(f"| {rule} | {r['full']:.4f} | {r['best_depth']:.2f} of {r['blocks']} "
              f"({r['best_fraction']:.0%}) | {'met' if r['target_met'] else 'missed'} | "
              f"{r['threshold']:g} | {r['accuracy']:.4f} | {r['mean_blocks']:.2f} | "
              f"{_x(r['speedup_1'])} | {_x(r['speedup_256'])} |")


def _x(speedup: float | None) -> str:
    """A speed-up, or '-' where its timing spread exceeded the effect (left out)."""
    return "-" if speedup is None else f"{speedup:.2f}x"


def report(rule: str, summary: dict, ee: dict) -> dict:
    curve, point, timing = ee["early_exit"], ee["early_exit_operating_point"], \
        ee["early_exit_timing"]
    blocks, full = point["blocks"], point["full_depth_accuracy"]
    print(f"\n## {rule}: test accuracy {summary['test_accuracy']:.4f} (rule.predict), "
          f"per-block readouts {', '.join(f'{a:.3f}' for a in summary['per_layer_test_accuracy'])}"
          f"; confidence: {point['confidence']}")
    print("| threshold | accuracy | mean blocks | depth |")
    print("|---|---|---|---|")
    for c in curve:
        print(f"| {c['threshold']:g} | {c['accuracy']:.4f} | {c['mean_blocks']:.3f} | "
              f"{c['mean_blocks'] / blocks:.0%} |")
    ok = [c for c in curve if c["accuracy"] >= full - TOLERANCE]
    best = min(ok, key=lambda c: c["mean_blocks"])
    met = best["mean_blocks"] <= TARGET_DEPTH * blocks
    print(f"full depth {full:.4f}; fewest blocks within 1 point on the test sweep: "
          f"{best['mean_blocks']:.2f} of {blocks} at threshold {best['threshold']:g} "
          f"({best['accuracy']:.4f}): target (<= {TARGET_DEPTH:.0%}) "
          f"{'met' if met else 'missed'}")
    print(f"operating threshold picked on validation: {point['threshold']:g} -> test accuracy "
          f"{point['accuracy']:.4f}, mean blocks {point['mean_blocks']:.2f}")
    for key, t in timing.items():
        print(f"  {key.replace('_', ' ')}: full depth {t['full_seconds'] * 1e3:.1f} ms, early "
              f"exit {t['early_exit_seconds'] * 1e3:.1f} ms for {t['samples']} samples -> "
              f"speed-up {_x(t['speedup'])} (range x{t['speedup_range'][0]:.2f}-"
              f"x{t['speedup_range'][1]:.2f} over {t['repeats']} repetitions)")
    return {"full": full, "blocks": blocks, "best_depth": best["mean_blocks"],
            "best_fraction": best["mean_blocks"] / blocks, "target_met": met,
            "threshold": point["threshold"], "accuracy": point["accuracy"],
            "mean_blocks": point["mean_blocks"], "speedup_1": timing["batch_1"]["speedup"],
            "speedup_256": timing["batch_256"]["speedup"], "curve": curve}


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
