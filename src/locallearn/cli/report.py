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
        p.add_argument("--with", dest="also", action="append", default=[], metavar="DIR2",
                       help="also read the results of this folder (repeatable), e.g. a rules "
                            "suite's train rows beside an efficiency suite's, for its "
                            "time-to-accuracy column; the report is written in DIR only")
        p.add_argument("--title", help="page title")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.report import write_report
        from locallearn.report.html import collect_rows

        folders = [Path(args.dir), *map(Path, args.also)]
        for folder in folders:
            if not folder.is_dir():
                raise UserError(f"{folder} is not a folder; pass a bench --out folder or a "
                                f"run folder")
        rows = [row for folder in folders for row in collect_rows(folder)]
        md, page = write_report(folders[0], title=args.title, rows=rows)
        print(f"report: {page} and {md}")
        return 0


COMMANDS.register("report", help=Report.__doc__)(Report)
