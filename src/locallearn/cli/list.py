"""``locallearn list``: registered rules, datasets and networks, and rules' options.

``locallearn list --options`` adds every rule's declared options (name, type,
default, allowed values, help) and the keyword options of each network and dataset
builder; ``locallearn list rules NAME`` shows one rule's.
"""

from __future__ import annotations

import argparse

from locallearn.cli import COMMANDS


class List:
    """list the registered rules, datasets and networks (--options: each rule's options)"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("what", nargs="?", choices=["rules", "datasets", "networks"])
        p.add_argument("name", nargs="?", help="with `rules`: one rule, with its options")
        p.add_argument("--options", action="store_true",
                       help="print each rule's options with type, default and help")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.data import DATASETS
        from locallearn.errors import UserError
        from locallearn.networks import NETWORKS
        from locallearn.options import declared_options, format_options
        from locallearn.rules import RULES

        if args.name is not None:
            if args.what != "rules":
                raise UserError("a name after `locallearn list` needs `rules` first "
                                "(locallearn list rules NAME)")
            RULES.get(args.name)  # one-line error for an unknown rule
        for title, registry in (("rules", RULES), ("datasets", DATASETS),
                                ("networks", NETWORKS)):
            if args.what and args.what != title:
                continue
            print(f"{title}:")
            for name in registry.names():
                if args.name is not None and name != args.name:
                    continue
                print(f"  {name:<16} {registry.help(name)}")
                if title == "rules" and (args.options or args.name is not None):
                    options = declared_options(registry.get(name))
                    print("\n".join(format_options(options)) if options
                          else "    (no options)")
                elif args.options:
                    keywords = builder_keywords(registry.get(name))
                    if keywords:
                        print(f"    options: {keywords}")
        return 0


def builder_keywords(builder) -> str:
    """A network or dataset builder's keyword options with their defaults (from its
    signature: ``--set data.X=...`` / ``--set net.X=...``)."""
    import inspect

    skip = ("argument", "input_shape", "num_classes", "seed", "data_dir")
    return ", ".join(f"{p.name}={p.default!r}"
                     for p in inspect.signature(builder).parameters.values()
                     if p.name not in skip and p.default is not p.empty)


COMMANDS.register("list", help=List.__doc__)(List)
