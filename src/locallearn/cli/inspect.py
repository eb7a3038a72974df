"""``locallearn inspect RUN_DIR``: per-block readout accuracy, layer importance, early exit,
activity and alignment on a fixed training batch, and accuracy under white-box attack."""

from __future__ import annotations

import argparse
import json

from locallearn.cli import COMMANDS
from locallearn.measure.diagnostics import PROBE_ROWS


def _shape(s: list[int]) -> str:
    return "x".join(map(str, s)) or "-"


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


class Inspect:
    """print what each block of a trained run adds: exit accuracy, skip drop, cosine"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (train/prune/grow --out)")
        p.add_argument("--split", default="test", choices=("val", "test"))
        p.add_argument("--device", default="cpu")
        p.add_argument("--json", action="store_true", help="print the figures as JSON")
        p.add_argument("--threshold", type=float, metavar="T",
                       help="also run early-exit prediction at confidence threshold T")
        p.add_argument("--attack", choices=("fgsm", "pgd"),
                       help="also report accuracy under this white-box attack (needs --eps)")
        p.add_argument("--eps", type=float, metavar="E",
                       help="attack size (L-inf) in raw input units; inputs are standardised, "
                            "so the model sees E / std per feature")
        p.add_argument("--steps", type=int, default=10, metavar="N",
                       help="PGD steps (default 10)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import torch

        from locallearn.anytime.exits import Anytime, block_table, sweep
        from locallearn.anytime.importance import layer_importance
        from locallearn.anytime.runs import load_run
        from locallearn.measure.diagnostics import epoch_diagnostics, probe_batch
        from locallearn.measure.robustness import robust_accuracy

        run = load_run(args.run_dir, device=args.device)
        rule, data = run.rule, run.dataset
        if getattr(data, "evaluate", None) is not None:
            from locallearn.errors import UserError

            raise UserError(f"inspect works on datasets of independent samples; "
                            f"{run.config['data']} has its own evaluation (graphs, text)")
        x_probe = data.split(args.split).x[:8].to(args.device)
        with torch.no_grad():
            has_readouts = rule.block_scores(x_probe) is not None
        if args.threshold is not None and not has_readouts:
            from locallearn.errors import UserError

            raise UserError(f"--threshold: rule {run.config['rule']!r} has no per-block readouts,"
                            f" so it cannot exit early; use a rule with readouts (e.g. "
                            f"mono-forward, ff)")
        if (args.attack is None) != (args.eps is None):
            from locallearn.errors import UserError

            raise UserError("--attack and --eps go together: e.g. --attack fgsm --eps 0.1")
        base, rows = layer_importance(rule, data, args.split, args.device)
        diag = epoch_diagnostics(rule, probe_batch(data, torch.device(args.device)))
        robust = None
        if args.attack is not None:
            robust = robust_accuracy(rule, data, args.split, args.attack, args.eps, args.steps,
                                     device=args.device)
        curve, per_block = None, None
        if has_readouts:
            anytime = Anytime(rule, probe=x_probe)
            conf, correct = block_table(anytime, data.loader(args.split, 1024), args.device)
            per_block = correct.float().mean(0).tolist()
            curve = sweep(conf, correct)
        if args.json:
            print(json.dumps({"accuracy": base, "blocks": rows, "readout_accuracy": per_block,
                              "early_exit": curve, "diagnostics": diag, "robustness": robust},
                             indent=1))
            return 0
        params = sum(p.numel() for p in rule.parameters())
        transforms = run.config.get("transforms") or []
        print(f"{run.config['rule']} on {run.config['data']} ({run.config['net']}"
              f"{', ' + ', '.join(json.dumps(t) for t in transforms) if transforms else ''}): "
              f"{args.split} accuracy {base:.4f}, {len(rows)} blocks, {params:,} parameters")
        print(f"{'block':>5}  {'shape':<18} {'params':>9}  {'exit acc':>11}  "
              f"{'acc skipped':>11}  {'drop':>7}  {'cos(in,out)':>11}  {'zeros':>5}  "
              f"{'dead':>5}")
        zeros, dead = diag.get("sparsity") or [], diag.get("dead_units") or []
        for r in rows:
            k = r["block"]
            shape = f"{_shape(r['in_shape'])}->{_shape(r['out_shape'])}"
            print(f"{k:>5}  {shape:<18} {r['parameters']:>9,}  "
                  f"{_num(per_block[k] if per_block else None):>11}  "
                  f"{_num(r['skip_accuracy']):>11}  {_num(r['accuracy_drop'], '+.4f'):>7}  "
                  f"{_num(r['cosine']):>11}  {_num(_at(zeros, k), '.2f'):>5}  "
                  f"{_num(_at(dead, k), '.2f'):>5}")
        if diag:
            print(f"zeros, dead: fraction of zero activations, of units never active, on the "
                  f"first {PROBE_ROWS} training rows")
        for line in diagnostic_lines(diag):
            print(line)
        if curve:
            what = ("goodness margin of the mean goodness so far"
                    if anytime.confidence_kind == "goodness-margin" else "max softmax")
            print(f"early exit ({what} >= threshold; block by block: {anytime.incremental}):")
            print(f"{'threshold':>10}  {'accuracy':>8}  {'mean blocks':>11}")
            for c in curve:
                print(f"{c['threshold']:>10g}  {c['accuracy']:>8.4f}  {c['mean_blocks']:>11.3f}")
        else:
            print("early exit: the rule has no per-block readouts")
        if args.threshold is not None:
            correct = blocks = total = 0
            for x, y in data.loader(args.split, 256):
                scores, used = anytime.predict(x.to(args.device), args.threshold)
                correct += int((scores.argmax(1).cpu() == y).sum())
                blocks += int(used.sum())
                total += int(y.shape[0])
            print(f"early exit at threshold {args.threshold:g}: accuracy {correct / total:.4f}, "
                  f"mean blocks {blocks / total:.3f} of {anytime.num_blocks}")
        if robust is not None:
            units = ("raw input units; inputs are standardised, so the model sees eps / std "
                     "per feature" if robust["eps_units"] == "raw input" else "model input units")
            steps = f", {robust['steps']} steps" if args.attack == "pgd" else ""
            print(f"{args.attack} attack (white-box, eps {args.eps:g} in {units}{steps}): "
                  f"{args.split} accuracy clean {robust['clean_accuracy']:.4f}, attacked "
                  f"{robust['attacked_accuracy']:.4f}")
        return 0


def _at(values: list, k: int):
    return values[k] if k < len(values) else None


def diagnostic_lines(diag: dict) -> list[str]:
    """Alignment angles and goodness, one line each (per layer, as logged in training)."""
    out = []
    for label, keys, fmt in (
            ("alignment (degrees)", (("weight_alignment", "weight"),
                                     ("gradient_alignment", "gradient")), ".1f"),
            ("goodness", (("goodness_positive", "positive"),
                          ("goodness_negative", "negative")), ".3f")):
        parts = [f"{name} " + " ".join(_num(v, fmt) for v in diag[key])
                 for key, name in keys if diag.get(key)]
        if parts:
            out.append(f"{label}, per layer: " + "; ".join(parts))
    return out


COMMANDS.register("inspect", help=Inspect.__doc__)(Inspect)
