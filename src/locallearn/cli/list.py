"""``locallearn list``: registered rules, datasets and networks, and their options.

``locallearn list --options`` adds every entry's declared options (name, type,
default, allowed values, help: rules' ``--set rule.X``, datasets' ``data.X``,
networks' ``net.X``); ``locallearn list rules NAME`` (or ``datasets NAME``,
``networks NAME``) shows one entry's.
"""

from __future__ import annotations

import argparse

from locallearn.cli import COMMANDS

# Short spellings, matching the --set prefixes (data.X, net.X).
ALIASES = {"data": "datasets", "nets": "networks", "net": "networks", "rule": "rules"}


class List:
    """list the registered rules, datasets and networks (--options: with their options)"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("what", nargs="?",
                       choices=["rules", "datasets", "networks", *ALIASES])
        p.add_argument("name", nargs="?",
                       help="with `rules`, `datasets` or `networks`: one entry, with its options")
        p.add_argument("--options", action="store_true",
                       help="print each entry's options with type, default and help")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.data import DATASETS, dataset_options
        from locallearn.errors import UserError
        from locallearn.networks import NETWORKS, network_options
        from locallearn.options import format_options
        from locallearn.rules import RULES, rule_options

        what = ALIASES.get(args.what, args.what)
        sections = (("rules", RULES, lambda n: rule_options(RULES.get(n))),
                    ("datasets", DATASETS, dataset_options),
                    ("networks", NETWORKS, network_options))
        if args.name is not None:
            if what is None:
                raise UserError("a name after `locallearn list` needs rules, datasets or "
                                "networks first (locallearn list rules NAME)")
            dict((t, r) for t, r, _ in sections)[what].get(args.name)  # unknown: one line
        for title, registry, options_of in sections:
            if what and what != title:
                continue
            print(f"{title}:")
            for name in registry.names():
                if args.name is not None and name != args.name:
                    continue
                print(f"  {name:<16} {registry.help(name)}")
                if args.options or args.name is not None:
                    options = options_of(name)
                    print("\n".join(format_options(options)) if options
                          else "    (no options)")
        return 0


COMMANDS.register("list", help=List.__doc__)(List)
