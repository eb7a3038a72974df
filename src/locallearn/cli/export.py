"""``locallearn export RUN --out DIR``: the trained model as a ``torch.export`` program."""

from __future__ import annotations

import argparse

from locallearn.cli import COMMANDS


class Export:
    """write DIR/model.pt2 (torch.export, raw inputs -> class scores) and its state dict"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN", help="run directory (train, prune or grow --out)")
        p.add_argument("--out", required=True, metavar="DIR")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.export import export

        path = export(args.run_dir, args.out)
        print(f"wrote {path} (load with torch.export.load(path).module(); raw inputs -> "
              f"class scores whose argmax is the rule's prediction)")
        return 0


COMMANDS.register("export", help=Export.__doc__)(Export)
