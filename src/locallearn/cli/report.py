"""``locallearn report DIR``: rebuild report.md and report.html from saved results."""

from __future__ import annotations

import argparse
from pathlib import Path

from locallearn.cli import COMMANDS
from locallearn.errors import UserError


class Report:
    """rebuild report.md and report.html in DIR (a bench folder or a folder of runs)"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("dir", help="folder with results.jsonl (from bench) or run folders")
        p.add_argument("--title", help="page title")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.report import write_report

        folder = Path(args.dir)
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; pass a bench --out folder or a run folder")
        md, page = write_report(folder, title=args.title)
        print(f"report: {page} and {md}")
        return 0


COMMANDS.register("report", help=Report.__doc__)(Report)
