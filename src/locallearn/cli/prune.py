"""``locallearn prune RUN_DIR --keep K --out NEW_DIR``: write a K-block model of a run."""

from __future__ import annotations

import argparse

from locallearn.cli import COMMANDS


class Prune:
    """keep the K most useful blocks of a trained run and write the smaller model"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR")
        p.add_argument("--keep", type=int, required=True, metavar="K", help="blocks to keep")
        p.add_argument("--out", required=True, metavar="NEW_DIR")
        p.add_argument("--device", default="cpu")
        p.add_argument("--overwrite", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from locallearn.anytime.prune import apply_prune, choose_prune
        from locallearn.anytime.runs import held_out_metrics, load_run, prepare_out, save_model
        from locallearn.errors import UserError

        run = load_run(args.run_dir, device=args.device)
        if any(t.get("kind") == "prune" for t in run.transforms):
            raise UserError(f"{args.run_dir} is already pruned; prune the original run")
        if getattr(run.dataset, "evaluate", None) is not None:
            raise UserError(f"prune works on datasets of independent samples; "
                            f"{run.config['data']} has its own evaluation (graphs, text)")
        before = held_out_metrics(run.rule, run.dataset, args.device)
        choice = choose_prune(run.rule, run.dataset, args.keep, args.device)
        from locallearn.training.runfolder import RunLock

        with RunLock(args.out):  # one writer per output folder while it is written
            out = prepare_out(args.out, args.overwrite)
            c = choice["chosen"]
            apply_prune(run.rule, c["skip"], c["exit"])
            after = held_out_metrics(run.rule, run.dataset, args.device)
            transforms = run.transforms + [{"kind": "prune", "skip": c["skip"], "exit": c["exit"]}]
            save_model(out, run.rule, run.config, transforms, {
                **after, "kept_blocks": args.keep, "pruned_from": str(args.run_dir),
                "original_test_accuracy": before["test_accuracy"],
                "original_num_parameters": before["num_parameters"],
                "prune_candidates": choice["candidates"], "prune_split": choice["split"]})
        for cand in choice["candidates"]:
            what = (f"skip blocks {cand['skip']}" if cand["kind"] == "skip"
                    else f"cut after block {cand['exit']}, predict from its readout")
            mark = "*" if cand is c else " "
            print(f" {mark} {cand['kind']:<8} {what:<45} {choice['split']} accuracy "
                  f"{cand['val_accuracy']:.4f}")
        print(f"kept {args.keep} of {before['blocks']} blocks: test accuracy "
              f"{before['test_accuracy']:.4f} -> {after['test_accuracy']:.4f}, parameters "
              f"{before['num_parameters']:,} -> {after['num_parameters']:,}; wrote {out}")
        return 0


COMMANDS.register("prune", help=Prune.__doc__)(Prune)
