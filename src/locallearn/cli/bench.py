"""``locallearn bench``: run a benchmark suite (resumable) and write its report."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from locallearn.cli import COMMANDS
from locallearn.errors import UserError


class Bench:
    """run a benchmark suite (smoke, rules, memory, efficiency or a YAML file); resumable"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--suite", required=True,
                       help="built-in suite name (smoke, rules, memory, efficiency) or a YAML path")
        p.add_argument("--out", required=True,
                       help="folder for results.jsonl, runs/ and report.{md,html}; "
                            "cells already in its results.jsonl are skipped")
        p.add_argument("--rules", help="comma-separated subset of the suite's rules")
        p.add_argument("--seeds", help="comma-separated seeds in place of the suite's "
                                       "(e.g. --seeds 0 for a quick pass; resumable later)")
        p.add_argument("--data", help="comma-separated subset of the suite's data sets (its "
                                      "tasks on other data are left for a later run)")
        p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
        p.add_argument("--threads", type=int,
                       help="torch CPU threads (default: the suite's setting, else 1)")
        p.add_argument("--list", action="store_true", help="print the cells and exit")
        p.add_argument("--overwrite", action="store_true",
                       help="delete earlier results in --out instead of resuming")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.bench import load_suite, read_results, run_suite
        from locallearn.report import write_report

        suite = load_suite(args.suite)
        if args.seeds:
            try:
                seeds = [int(v) for v in args.seeds.split(",")]
            except ValueError:
                raise UserError(f"--seeds takes whole numbers separated by commas, "
                                f"got {args.seeds!r}") from None
            suite = dataclasses.replace(suite, seeds=seeds)
        if args.data:
            wanted = [d.strip() for d in args.data.split(",")]
            unknown = sorted(set(wanted) - {t["data"] for t in suite.tasks})
            if unknown:
                raise UserError(f"data {unknown[0]!r} is not in suite {suite.name} (its data: "
                                f"{', '.join(sorted({t['data'] for t in suite.tasks}))})")
            suite = dataclasses.replace(suite, tasks=[t for t in suite.tasks
                                                      if t["data"] in wanted])
        only = [r.strip() for r in args.rules.split(",")] if args.rules else None
        cells = suite.cells()
        if only:
            unknown = sorted(set(only) - {c.rule for c in cells})
            if unknown:
                raise UserError(f"rule {unknown[0]!r} is not in suite {suite.name} "
                                f"(its rules: {', '.join(sorted({c.rule for c in cells}))})")
            cells = [c for c in cells if c.rule in only]
        if args.list:
            for c in cells:
                print(c.key)
            return 0
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder")
        earlier = read_results(out)
        if earlier and {r.get("suite") for r in earlier} != {suite.name}:
            if not args.overwrite:
                raise UserError(f"{out} holds results of suite(s) "
                                f"{', '.join(sorted({str(r.get('suite')) for r in earlier}))}; "
                                f"use another --out or --overwrite")
        if args.overwrite and out.exists():
            for name in ("results.jsonl", "report.md", "report.html", "suite.yaml"):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "runs", ignore_errors=True)
        print(f"suite {suite.name} ({suite.kind}): {len(cells)} cells -> {out}")
        counts = run_suite(suite, out, device=args.device, quiet=args.quiet, only_rules=only,
                           threads=args.threads)
        print(f"done: {counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} errors, "
              f"{counts['already_done']} already done")
        md, page = write_report(out, title=f"locallearn bench: {suite.name}",
                                description=suite.description)
        for row in read_results(out):
            if row.get("status") == "error":
                print(f"  error in {row['key']}: {row.get('reason')}")
        print(f"report: {page} and {md}")
        return 1 if counts["error"] else 0


COMMANDS.register("bench", help=Bench.__doc__)(Bench)
