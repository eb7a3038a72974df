"""``locallearn`` entry point: dispatches to the registered subcommands.

Bad input of any kind ends with exit code 2 and one line on stderr that names
the problem and the fix; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from locallearn.cli import COMMANDS
from locallearn.errors import RunFailure, UserError
from locallearn.registry import import_submodules


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints the whole usage first
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import_submodules("locallearn.cli")
    from locallearn import __version__

    parser = OneLineParser(prog="locallearn", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"locallearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS.names():
        command = COMMANDS.get(name)
        p = sub.add_parser(name, help=COMMANDS.help(name), description=COMMANDS.help(name))
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"locallearn: error: {exc}", file=sys.stderr)
        return 2
    except RunFailure as exc:
        print(f"locallearn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("locallearn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
