"""``locallearn demo``: a short comparison of backprop with local rules, and a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from locallearn.cli import COMMANDS
from locallearn.errors import UserError

# Rules shown by the demo when registered, in this order.
DEMO_RULES = ("backprop", "ff", "mono-forward", "local")


class Demo:
    """train backprop and local rules on mnist5k, print a table, write report.html"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default="runs/demo", help="folder for the runs and the report")
        p.add_argument("--data", default="mnist5k")
        p.add_argument("--net", default="mlp:500,500")
        p.add_argument("--rules", help="comma-separated rules (default: backprop and local rules)")
        p.add_argument("--overwrite", action="store_true")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1: faster than 2 on a shared 2-core "
                            "machine)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.report import load_runs, write_report
        from locallearn.rules import RULES
        from locallearn.training import train

        out = Path(args.out)
        rules = args.rules.split(",") if args.rules else [r for r in DEMO_RULES if r in RULES]
        for r in rules:
            RULES.get(r)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace the demo runs")
        print(f"demo: {', '.join(rules)} on {args.data} with {args.net}")
        for rule in rules:
            s = train(rule=rule, data=args.data, net=args.net, out=str(out / rule),
                      overwrite=True, quiet=args.quiet, threads=args.threads).summary
            print(f"  {rule:<14} test accuracy {s['test_accuracy']:.4f}  "
                  f"{s['train_seconds']:6.1f} s  {s['samples_per_second']:8.0f} samples/s  "
                  f"peak {s['peak_memory_bytes'] / 2**20:6.1f} MiB")
        md, page = write_report(out, load_runs(out), title="locallearn demo")
        print(f"report: {page} and {md}")
        return 0


COMMANDS.register("demo", help=Demo.__doc__)(Demo)
