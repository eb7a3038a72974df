"""``locallearn`` entry point: dispatches to the registered subcommands.

Bad input of any kind ends with exit code 2 and one line on stderr that names
the problem and the fix; no traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

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


def _terminate_like_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop as cleanly as Ctrl-C (stages, locks, files)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:
        # Output piped into a reader that quit (``locallearn inspect RUN | head``): stop
        # quietly; point stdout at /dev/null so the interpreter's final flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
