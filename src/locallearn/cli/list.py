"""``locallearn list``: registered rules, datasets and networks."""

from __future__ import annotations

import argparse

from locallearn.cli import COMMANDS


class List:
    """list the registered rules, datasets and networks"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("what", nargs="?", choices=["rules", "datasets", "networks"])

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.data import DATASETS
        from locallearn.networks import NETWORKS
        from locallearn.rules import RULES

        for title, registry in (("rules", RULES), ("datasets", DATASETS),
                                ("networks", NETWORKS)):
            if args.what and args.what != title:
                continue
            print(f"{title}:")
            for name in registry.names():
                print(f"  {name:<16} {registry.help(name)}")
        return 0


COMMANDS.register("list", help=List.__doc__)(List)
