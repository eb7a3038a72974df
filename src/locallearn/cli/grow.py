"""``locallearn grow RUN_DIR --out NEW_DIR``: add blocks on top while validation improves."""

from __future__ import annotations

import argparse

from locallearn.cli import COMMANDS


class Grow:
    """add blocks on top of a trained run (earlier blocks frozen) while validation improves"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR")
        p.add_argument("--out", required=True, metavar="NEW_DIR")
        p.add_argument("--max-blocks", type=int, default=3, help="most blocks to add (3)")
        p.add_argument("--epochs", type=int, help="epochs per added block (default: the run's)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--overwrite", action="store_true")
        p.add_argument("--quiet", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.anytime.grow import grow
        from locallearn.anytime.runs import held_out_metrics, load_run, prepare_out, save_model
        from locallearn.errors import UserError

        if args.epochs is not None and args.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {args.epochs}")
        if args.max_blocks < 1:
            raise UserError(f"--max-blocks must be >= 1, got {args.max_blocks}")
        run = load_run(args.run_dir, device=args.device)
        if getattr(run.dataset, "evaluate", None) is not None:
            raise UserError(f"grow works on datasets of independent samples; "
                            f"{run.config['data']} has its own evaluation (graphs, text)")
        from locallearn.training.runfolder import RunLock

        with RunLock(args.out):  # one writer per output folder while it is written
            out = prepare_out(args.out, args.overwrite)
            print(f"growing {args.run_dir} ({run.config['rule']}, {run.config['net']}):")
            result = grow(run, args.max_blocks, args.epochs, args.device, quiet=args.quiet,
                          log=print)
            rule = result["rule"]
            metrics = held_out_metrics(rule, run.dataset, args.device)
            save_model(out, rule, run.config, result["transforms"], {
                **metrics, "grown_from": str(args.run_dir), "grow_steps": result["steps"],
                "grow_split": result["split"]})
        added = len(rule.network.blocks) - result["steps"][0]["blocks"]
        print(f"added {added} block(s): {len(rule.network.blocks)} blocks, test accuracy "
              f"{metrics['test_accuracy']:.4f}; wrote {out}")
        return 0


COMMANDS.register("grow", help=Grow.__doc__)(Grow)
