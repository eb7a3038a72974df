"""``locallearn train``: train one rule on one dataset and network."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from locallearn.cli import COMMANDS
from locallearn.cli.config import merge, parse_set, read_config
from locallearn.errors import UserError


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that trains."""
    p.add_argument("--rule", help="learning rule (default backprop; see `locallearn list`)")
    p.add_argument("--data", help="dataset name, e.g. mnist5k, digits, csv:PATH")
    p.add_argument("--net", help="network spec, e.g. mlp:500,500 or cnn")
    p.add_argument("--data-dir", help="folder holding downloaded datasets (mnist, cifar10, ...)")
    p.add_argument("--label-column", help="csv data: name of the label column (default: last)")
    p.add_argument("--task", choices=["node", "link"],
                   help="graph data: node classification (default) or link prediction")
    p.add_argument("--epochs", type=int, help="epochs (default: the rule's own)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["none", "cosine", "step"])
    p.add_argument("--patience", type=int, help="early stopping patience in epochs (0 = off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's; 1 when runs share a machine)")
    p.add_argument("--config", help="YAML or TOML file of settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting; rule.X / data.X / net.X for their options")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


FLAG_KEYS = ("rule", "data", "net", "data_dir", "epochs", "batch_size", "lr", "optimizer",
             "weight_decay", "schedule", "patience", "seed", "device", "threads")
# What a resumed run may change; every other setting is the stored run's.
MAY_CHANGE_ON_RESUME = {"epochs", "patience", "device", "quiet", "eval_batch_size",
                        "measure_memory", "early_exit", "checkpoint", "data_dir", "threads"}
# Run-folder handling belongs to the flags, not to --set or a config file.
FLAG_ONLY = ("out", "overwrite", "resume")


def settings_from_args(args: argparse.Namespace, stored: dict | None = None) -> dict:
    file_cfg = read_config(args.config) if args.config else {}
    flags = {k: getattr(args, k, None) for k in FLAG_KEYS}
    if getattr(args, "label_column", None):
        flags["data_options"] = {"label_column": args.label_column}
    if getattr(args, "task", None):
        flags.setdefault("data_options", {})["task"] = args.task
    given = merge(file_cfg, flags, parse_set(args.set))
    for key in FLAG_ONLY:
        if key in given:
            raise UserError(f"{key!r} cannot be set in a config file or with --set; use the "
                            f"--{key} flag")
    if stored is not None:
        refuse_conflicts(stored, given)
    settings = merge(stored or {}, given)
    settings.setdefault("rule", "backprop")
    settings.setdefault("data", "mnist5k")
    settings.setdefault("net", "mlp:500,500")
    check_settings(settings)
    return settings


def check_settings(settings: dict) -> None:
    """The boundary for every value from flags, config files, ``--set`` and a run folder:
    names are strings, options mappings, and training settings TrainConfig's types."""
    from locallearn.training.run import TRAIN_KEYS, check_names, coerce_setting

    check_names(settings["rule"], settings["data"], settings["net"], settings.get("data_dir"),
                **{k: settings.get(k) for k in ("data_options", "net_options", "rule_options")})
    for key, value in settings.items():
        if key in TRAIN_KEYS:
            coerce_setting(key, value)


def refuse_conflicts(stored: dict, given: dict) -> None:
    """A resumed run keeps its stored settings: a different value for one of them is an
    error (not silently recorded as if it had been used), except the ones that may change."""
    from locallearn.training.run import coerce_setting

    changeable = ", ".join(sorted(MAY_CHANGE_ON_RESUME))
    for key, value in given.items():
        if key in MAY_CHANGE_ON_RESUME or value is None:
            continue
        if key.endswith("_options"):
            old = stored.get(key) or {}
            if not (isinstance(value, dict) and isinstance(old, dict)):
                continue  # a malformed mapping is refused by the settings check later
            for name, v in value.items():
                if old.get(name) != v:
                    raise UserError(f"--resume: {key.removesuffix('_options')}.{name}={v!r} "
                                    f"differs from the run's {old.get(name)!r}; resume without"
                                    f" it, or start a new run with --overwrite")
            continue
        old = stored.get(key)
        if old is None:
            continue
        try:
            same = coerce_setting(key, value) == coerce_setting(key, old)
        except (UserError, KeyError):  # not a training setting (rule, data, net)
            same = value == old
        if not same:
            raise UserError(f"--resume: {key}={value!r} differs from the run's {old!r}; resume "
                            f"without it (a resumed run may change only {changeable}), or "
                            f"start a new run with --overwrite")


def stored_settings(out: Path) -> dict:
    """Settings of the run being resumed, so ``--resume --out DIR`` alone continues it."""
    path = out / "config.json"
    if not path.exists():
        raise UserError(f"cannot resume: {path} not found; train without --resume first")
    try:
        cfg = json.loads(path.read_text())
        if not isinstance(cfg, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"cannot resume: {path} is damaged (not a JSON object); "
                        f"start again with --overwrite") from None
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    # Every stored training setting, so the resumed run trains with what was used.
    from locallearn.training.run import TRAIN_KEYS

    keep = {k: v for k, v in train.items()
            if k in TRAIN_KEYS and k not in ("device", "out", "resume", "overwrite", "quiet",
                                             "extra")}
    for k in ("rule", "data", "net", "data_dir", "rule_options", "data_options", "net_options"):
        if cfg.get(k) is not None:
            keep[k] = cfg[k]
    return keep


def default_out(settings: dict, root: str | Path | None = None) -> Path:
    """A fresh folder ``runs/<rule>-<data>-<time>`` for a run given no ``--out``
    (``$LOCALLEARN_RUNS_DIR`` replaces ``runs``)."""
    root = root or os.environ.get("LOCALLEARN_RUNS_DIR", "runs")
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(settings["data"])).name)[:40]
    stem = f"{settings['rule']}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = Path(root) / stem, 1
    while out.exists():
        n += 1
        out = Path(root) / f"{stem}-{n}"
    return out


def stored_grid(out: Path) -> dict:
    """Stages and replicas of the run in ``out`` (1 and 1 for a one-process run)."""
    cfg = json.loads((out / "config.json").read_text())
    return {"stages": int(cfg.get("stages") or 1), "replicas": int(cfg.get("replicas") or 1)}


def run_settings(settings: dict, out: str | None, quiet: bool, resume: bool = False,
                 overwrite: bool = False):
    from locallearn.training import train

    s = dict(settings)
    return train(
        rule=s.pop("rule"), data=s.pop("data"), net=s.pop("net"),
        data_dir=s.pop("data_dir", None), data_options=s.pop("data_options", None),
        net_options=s.pop("net_options", None), rule_options=s.pop("rule_options", None),
        out=out, quiet=quiet, resume=resume, overwrite=overwrite, **s,
    )


class Train:
    """train one rule on one dataset and network; writes OUT/summary.json"""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_run_arguments(p)
        p.add_argument("--out", help="run directory (summary.json, metrics.jsonl, checkpoints)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
        p.add_argument("--stages", type=int,
                       help="split the blocks into N pipeline stages, one process each "
                            "(default 1; on --resume, the run's own)")
        p.add_argument("--replicas", type=int,
                       help="M data-parallel copies, each on 1/M of every batch, gradients "
                            "averaged (default 1, under torchrun world size / stages; on "
                            "--resume, the run's own)")
        p.add_argument("--staleness", type=int, default=0,
                       help="staged rules with backward signals: how many micro-batches old "
                            "a signal may be (0 = exact)")
        p.add_argument("--stage-threads", type=int, default=1, help="torch threads per stage")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        stored = stored_settings(Path(args.out)) if args.resume and args.out else None
        settings = settings_from_args(args, stored)
        from locallearn.parallel.stages import env_rank

        if not args.out and not args.resume and env_rank() is None:
            # Results are kept: a fresh folder under runs/, named from rule, data and time.
            args.out = str(default_out(settings))
            print(f"run folder: {args.out} (set --out to choose)")

        stages, replicas = args.stages, args.replicas
        for flag, value in (("--stages", stages), ("--replicas", replicas)):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if args.resume and args.out:  # the grid the run was trained with, unless given
            grid = stored_grid(Path(args.out))
            stages = stages or grid["stages"]
            replicas = replicas or (grid["replicas"] if env_rank() is None else None)
        stages = stages or 1
        if stages != 1 or (replicas or 1) != 1 or env_rank() is not None:
            from locallearn.parallel.launch import launch

            s = launch(settings, args.out, args.quiet, args.resume, args.overwrite, stages,
                       args.staleness, args.stage_threads, replicas=replicas)
            if not s:  # a non-zero rank under torchrun: rank 0 reports
                return 0
        else:
            if args.staleness:
                raise UserError("--staleness only applies with --stages > 1")
            s = run_settings(settings, args.out, args.quiet, args.resume,
                             args.overwrite).summary
        line = (f"{s['rule']} on {s['data']} ({s['net']}): test accuracy {s['test_accuracy']:.4f} "
                f"after {s['epochs']} epochs, {s['train_seconds']:.1f} s training, "
                f"{s['samples_per_second'] or 0:.0f} samples/s, "
                + (f"peak memory {s['peak_memory_bytes'] / 2**20:.1f} MiB "
                   if s.get("peak_memory_bytes") is not None else "memory not measured ")
                + f"({s['device']})")
        print(line)
        if s.get("test_auc") is not None:
            print(f"link prediction: test AUC {s['test_auc']:.4f}")
        if s.get("test_perplexity") is not None:
            print(f"test perplexity {s['test_perplexity']:.3f}")
        if s.get("per_block_test_accuracy"):
            print("per-block test accuracy: "
                  + ", ".join(f"{a:.4f}" for a in s["per_block_test_accuracy"]))
        if args.out:
            print(f"wrote {Path(args.out) / 'summary.json'}")
        return 0


COMMANDS.register("train", help=Train.__doc__)(Train)
