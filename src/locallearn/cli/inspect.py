"""``locallearn inspect RUN_DIR``: per-block readout accuracy, layer importance, early exit."""

from __future__ import annotations

import argparse
import json

from locallearn.cli import COMMANDS


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

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import torch

        from locallearn.anytime.exits import Anytime, block_table, sweep
        from locallearn.anytime.importance import layer_importance
        from locallearn.anytime.runs import load_run

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
        base, rows = layer_importance(rule, data, args.split, args.device)
        curve, per_block = None, None
        if has_readouts:
            anytime = Anytime(rule, probe=x_probe)
            conf, correct = block_table(anytime, data.loader(args.split, 1024), args.device)
            per_block = correct.float().mean(0).tolist()
            curve = sweep(conf, correct)
        if args.json:
            print(json.dumps({"accuracy": base, "blocks": rows, "readout_accuracy": per_block,
                              "early_exit": curve}, indent=1))
            return 0
        params = sum(p.numel() for p in rule.parameters())
        transforms = run.config.get("transforms") or []
        print(f"{run.config['rule']} on {run.config['data']} ({run.config['net']}"
              f"{', ' + ', '.join(json.dumps(t) for t in transforms) if transforms else ''}): "
              f"{args.split} accuracy {base:.4f}, {len(rows)} blocks, {params:,} parameters")
        print(f"{'block':>5}  {'shape':<18} {'params':>9}  {'exit acc':>11}  "
              f"{'acc skipped':>11}  {'drop':>7}  {'cos(in,out)':>11}")
        for r in rows:
            k = r["block"]
            shape = f"{_shape(r['in_shape'])}->{_shape(r['out_shape'])}"
            print(f"{k:>5}  {shape:<18} {r['parameters']:>9,}  "
                  f"{_num(per_block[k] if per_block else None):>11}  "
                  f"{_num(r['skip_accuracy']):>11}  {_num(r['accuracy_drop'], '+.4f'):>7}  "
                  f"{_num(r['cosine']):>11}")
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
        return 0


COMMANDS.register("inspect", help=Inspect.__doc__)(Inspect)
