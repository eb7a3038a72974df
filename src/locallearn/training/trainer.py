"""The one-process trainer: devices, its step, checkpoints and the summary.

The rule owns the maths (:meth:`Rule.losses`); the :class:`Trainer` owns
everything around it, the same for every rule so that comparisons are fair.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from locallearn.errors import UserError
from locallearn.measure import hardware_info, measure_training_memory
from locallearn.measure.diagnostics import probe_batch
from locallearn.options import Option
from locallearn.rules.base import Rule
from locallearn.training.checkpoint import (
    check_meta,
    load_checkpoint,
    load_rule_tensors,
    load_training_state,
    save_checkpoint,
    state_tensors,
    write_json_atomic,
)
from locallearn.training.evaluation import (  # noqa: F401  (re-exported)
    count_correct,
    evaluate,
    evaluate_split,
    selection_score,
    to_device,
)
from locallearn.training.freeze import freeze_blocks, trainable_groups
from locallearn.training.loop import judge_epoch, run_epochs
from locallearn.training.optim import optimizers_for, plan_schedule, schedules_for
from locallearn.training.runfolder import (
    RUN_FILES,  # noqa: F401  (re-exported: the files a run writes)
    RunLock,
    new_run_id,
    prepare_run_dir,
)
from locallearn.training.runlog import RunLog, restore, snapshot  # noqa: F401

GRADIENT_COMPRESSION = Option(
    "gradient_compression", str, "--replicas: the dtype the gradient all_reduce sends "
    "(bf16/fp16 halve the bytes and break equality with one process)",
    choices=("none", "bf16", "fp16"), default="none")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    patience: int = 0  # early stopping: epochs without val improvement; 0 = off
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    checkpoint: bool = True
    measure_memory: bool = True
    threads: int = 0  # torch CPU threads for this run (torch.set_num_threads); 0 = torch's
    # Mixed precision: the training step's forward under torch.autocast (bfloat16, which
    # needs no loss scaling); evaluation stays in float32.
    amp: bool = False
    eval_batch_size: int = 1024
    early_exit: bool = True  # rules with readouts: early-exit sweep + timing in summary.json
    # The frozen control: blocks keep their random init; only head/readouts learn.
    freeze_blocks: bool = False
    # Per-epoch activity / alignment figures on a fixed training batch (metrics.jsonl).
    diagnostics: bool = True
    gradient_compression: str = "none"  # GRADIENT_COMPRESSION; docs/parallel.md
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in summary as given

    def validate(self) -> None:
        if self.epochs < 0:
            raise UserError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size <= 0:
            raise UserError(f"batch size must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"learning rate must be positive, got {self.lr}; e.g. --lr 1e-3")
        if self.threads < 0:
            raise UserError(f"threads must be >= 1 (or 0 for torch's default), got {self.threads}")
        if self.patience < 0:
            raise UserError(f"patience must be >= 0, got {self.patience}")
        if self.eval_batch_size <= 0:
            raise UserError(f"eval_batch_size must be positive, got {self.eval_batch_size}")
        for name in ("weight_decay", "momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"seed must be in 0..2**63-1, got {self.seed}")
        GRADIENT_COMPRESSION.check("training setting", self.gradient_compression)
        if self.resume and not self.out:
            raise UserError("--resume needs --out pointing at the run directory to continue")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; use cpu, cuda or auto")
    return torch.device(name)


def split_size(dataset, split: str) -> int | None:
    """Rows in a split held in memory, or None where the dataset cannot say (streamed)."""
    try:
        return len(dataset.split(split))
    except (AttributeError, TypeError, NotImplementedError):
        return None


class Trainer:
    """Trains a rule on a dataset and writes the run directory.

    Files in ``out``: ``config.json``, ``metrics.jsonl`` (one line per epoch),
    ``checkpoint.*`` (latest epoch, for ``resume``), ``best.*`` (best
    validation accuracy) and ``summary.json``. The epochs run in the loop shared
    with staged training (:mod:`locallearn.training.loop`); this class adds the
    one-process step, checkpoints and the summary.
    """

    def __init__(self, config: TrainConfig, run_info: dict[str, Any] | None = None) -> None:
        config.validate()
        self.config = config
        self.run_info = dict(run_info or {})
        self.device = resolve_device(config.device)
        self.out = Path(config.out) if config.out else None
        self.log: RunLog | None = None  # the run log of the last fit (or a staged run's)

    # -- run directory -------------------------------------------------------
    def _prepare_out(self) -> None:
        if self.out is not None:
            prepare_run_dir(self.out, self.config.resume, self.config.overwrite)

    def _log(self, record: dict[str, Any]) -> None:
        self.log.write(record)

    # -- state ---------------------------------------------------------------
    def _save(self, rule, optimizers, schedules, epoch, best, history, stem="checkpoint"):
        tensors, optim_rest = state_tensors(rule.state_dict(), optimizers)
        meta = {
            "epoch": epoch,
            "best": best,
            "history": history,
            "optimizers": optim_rest,
            "schedules": [s.state_dict() if s else None for s in schedules],
            "rule_extra": rule.extra_state(),
            "run": self.run_info,
        }
        save_checkpoint(self.out, tensors, meta, stem=stem)

    def _load_rule_tensors(self, rule: Rule, tensors: dict[str, Tensor]) -> None:
        load_rule_tensors(rule, tensors, f"checkpoint in {self.out} does not fit this "
                          f"rule/network", "resume with the same --rule/--net/--data")

    def _resume(self, rule: Rule, optimizers, schedules, log: RunLog) -> int:
        """Load the latest checkpoint into the rule, optimisers, schedules and ``log``;
        the first epoch still to train."""
        tensors, meta = load_checkpoint(self.out)
        self._load_rule_tensors(rule, tensors)
        try:
            self.run_info["run_id"] = check_same_run(self.out, meta)
            for sch in load_training_state(optimizers, schedules, meta, tensors, self.out):
                # A resume may extend the run (--epochs): the schedule keeps going
                # from where it is towards the new end instead of restarting.
                plan_schedule(sch, self.config.epochs)
            rule.load_extra_state(meta.get("rule_extra", {}))
            torch.set_rng_state(tensors["rng.torch"])
            check_meta(meta)
            return log.resume(meta)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise UserError(f"checkpoint in {self.out} is incomplete or does not fit this "
                            f"run ({type(exc).__name__}: {exc}); resume with the same "
                            f"settings or start again with --overwrite") from None

    # -- the loop ------------------------------------------------------------
    def fit(self, rule: Rule, dataset) -> dict[str, Any]:
        """Train ``rule`` on ``dataset``, holding the run folder's lock throughout."""
        lock = RunLock(self.out).acquire() if self.out is not None else None
        try:
            return self._fit(rule, dataset)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, rule: Rule, dataset) -> dict[str, Any]:
        cfg = self.config
        if cfg.patience and split_size(dataset, "val") == 0:
            raise UserError("patience (early stopping) needs a validation split, and this "
                            "dataset's is empty; set data.val_fraction > 0 or patience=0")
        self._prepare_out()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        rule.to(self.device)
        optimizers = self.make_optimizers(rule)
        schedules = schedules_for(optimizers, cfg)
        log = self.log = RunLog(self.out, cfg.patience)
        start_epoch = 0
        if cfg.resume:
            start_epoch = self._resume(rule, optimizers, schedules, log)
        elif self.out is not None:
            self.run_info.setdefault("run_id", new_run_id())
            write_json_atomic(self.out / "config.json", {"train": asdict(cfg), **self.run_info})

        probe = probe_batch(dataset, self.device) if cfg.diagnostics else None
        progress = _progress(range(start_epoch, cfg.epochs), cfg.quiet, rule.name)

        def train_epoch(batches) -> tuple[list[float], int]:
            loss_sum, n_batches, n_samples = None, 0, 0
            for x, y in batches:
                x, y = to_device(x, self.device), to_device(y, self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    losses = self._step(rule, optimizers, x, y)
                losses = losses.float()  # under amp, some losses may be bfloat16
                loss_sum = losses if loss_sum is None else loss_sum + losses
                n_batches += 1
                n_samples += int(y.shape[0]) if hasattr(y, "shape") else 1
            mean = [] if loss_sum is None else (loss_sum / max(n_batches, 1)).tolist()
            return mean, n_samples

        def close_epoch(epoch: int, losses: list[float], seconds: float, rows: int) -> bool:
            check_finite_loss(losses, epoch, cfg, self.out)
            record, improved = judge_epoch(log, rule, dataset, epoch, losses, seconds, rows,
                                           self.device, cfg.eval_batch_size, probe)
            self._log(record)
            if record["val_accuracy"] is None and cfg.patience:
                raise UserError("patience (early stopping) needs a validation split, and "
                                "this dataset's is empty; set patience=0")
            if self.out is not None and cfg.checkpoint:
                state = (rule, optimizers, schedules, epoch, log.best, log.history)
                if improved:
                    self._save(*state, stem="best")
                self._save(*state)
            if hasattr(progress, "set_postfix"):
                val = record["val_accuracy"]
                progress.set_postfix(loss=f"{sum(losses):.4f}" if losses else "-",
                                     val="-" if val is None else f"{val:.4f}")
            return log.should_stop(epoch)

        def sync() -> None:  # the epoch's time includes the GPU's queued work
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        stopped_early = run_epochs(progress, rule, dataset, cfg, schedules, train_epoch,
                                   close_epoch, sync)
        self.optimizers = optimizers
        measured: dict[str, Any] = {"peak_memory_bytes": None, "memory": None}
        if cfg.measure_memory:
            memory = self.measure_memory(rule, optimizers, dataset)
            measured = {"peak_memory_bytes": memory["peak_memory_bytes"], "memory": memory}
        return self.finish(rule, dataset, history=log.history, best=log.best,
                           stopped_early=stopped_early, train_seconds=log.train_seconds,
                           samples_seen=log.samples_seen, measured=measured)

    def measure_memory(self, rule: Rule, optimizers, dataset, steps: int = 2) -> dict[str, Any]:
        """Allocator-level peak of training steps, in a pass of its own.

        ``steps`` steps on a copy of the rule and optimisers, on the first training
        batch, after the timed loop: no timed step runs under the meter, and the
        trained rule, its optimisers and the random state are left as they were.
        See :mod:`locallearn.measure.memory`.
        """
        loader = dataset.loader("train", self.config.batch_size, shuffle=True,
                                seed=self.config.seed * 100_003)
        x, y = next(iter(loader))
        x, y = to_device(x, self.device), to_device(y, self.device)
        return measure_training_memory(rule, optimizers, self.make_optimizers, self._step,
                                       x, y, self.device, steps=steps)

    def finish(self, rule: Rule, dataset, *, history: list[dict[str, Any]],
               best: dict[str, Any], stopped_early: bool, train_seconds: float,
               samples_seen: int, measured: dict[str, Any]) -> dict[str, Any]:
        """Test the trained rule and write ``summary.json`` (shared with staged runs).

        ``measured`` holds the memory figures, which the caller measured its own way.
        """
        cfg = self.config
        # Early stopping keeps the best validation epoch: its weights and the rule's extra
        # state (e.g. mono-forward's chosen block), from memory, else from best.* files
        # (a resumed or staged run).
        best_state = self.log.best_state if self.log is not None else None
        if cfg.patience and best["epoch"] >= 0 and best_state is not None:
            restore(rule, best_state)
        elif cfg.patience and self.out is not None and cfg.checkpoint and best["epoch"] >= 0:
            tensors, meta = load_checkpoint(self.out, stem="best")
            self._load_rule_tensors(rule, tensors)
            rule.load_extra_state(meta.get("rule_extra", {}))

        test = self._evaluate(rule, dataset, "test")
        summary = {
            **self.run_info,
            "epochs": len(history),
            "epochs_requested": cfg.epochs,
            "seed": cfg.seed,
            "test_accuracy": test["accuracy"],
            "best_val_accuracy": best["val_accuracy"] if best["epoch"] >= 0 else None,
            "best_epoch": best["epoch"],
            "selected_on": f"val_{best.get('metric', 'accuracy')}",
            **({f"best_val_{best['metric']}": best["value"]}
               if best.get("metric", "accuracy") != "accuracy" else {}),
            "per_block_test_accuracy": test["per_block_accuracy"],
            # Old name of per_block_test_accuracy, kept for one release (deprecated).
            "per_layer_test_accuracy": test["per_block_accuracy"],
            **{f"test_{k}": v for k, v in test.items()
               if k not in ("accuracy", "per_block_accuracy")},
            "train_seconds": train_seconds,
            "samples_per_second": samples_seen / train_seconds if train_seconds > 0 else None,
            **measured,
            "stopped_early": stopped_early,
            "freeze_blocks": cfg.freeze_blocks,
            "num_parameters": sum(p.numel() for p in rule.parameters()),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "hardware": hardware_info(self.device),
            "train_config": asdict(cfg),
        }
        if cfg.early_exit and test.get("per_block_accuracy"):
            from locallearn.anytime.exits import early_exit_summary

            summary.update(early_exit_summary(rule, dataset, self.device,
                                              cfg.eval_batch_size))
        if self.out is not None:
            write_json_atomic(self.out / "summary.json", summary)
        return summary

    def _evaluate(self, rule: Rule, dataset, split: str) -> dict[str, Any]:
        return evaluate_split(rule, dataset, split, self.device, self.config.eval_batch_size)

    def make_optimizers(self, rule: Rule) -> list[torch.optim.Optimizer]:
        """One optimiser per parameter group, group options over the run's settings.

        With ``freeze_blocks`` the blocks are frozen first and groups left empty get none.
        """
        cfg = self.config
        if cfg.freeze_blocks:
            freeze_blocks(rule)
        return optimizers_for(trainable_groups(rule), cfg)

    def _step(self, rule: Rule, optimizers, x, y) -> Tensor:
        if rule.streams_losses:
            # Backward on each loss as soon as it exists: block k's graph (its saved
            # activations) is freed before block k+1 runs, so activation memory stays
            # flat in depth. Same gradients as one summed backward, as losses are local.
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            streamed = []
            for loss in rule.iter_losses(x, y):
                if loss.requires_grad:
                    loss.backward()
                streamed.append(loss.detach())
            for opt in optimizers:
                opt.step()
            rule.after_step()
            return torch.stack(streamed) if streamed else torch.zeros(0)
        losses = rule.losses(x, y)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if not losses:  # nothing left to learn (e.g. cff with its blocks frozen)
            rule.after_step()
            return torch.zeros(0)
        total = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        if total.requires_grad:
            total.backward()
        for opt in optimizers:
            opt.step()
        rule.after_step()
        return torch.stack([loss.detach() for loss in losses])


def check_same_run(out: Path, meta: dict[str, Any]) -> str | None:
    """The run id of a checkpoint, after checking that ``config.json`` names the same run."""
    run_id = (meta.get("run") or {}).get("run_id")
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        config = {}
    stored = config.get("run_id") if isinstance(config, dict) else None
    if run_id != stored:
        raise UserError(f"{out}: config.json (run {stored}) and the checkpoint (run {run_id}) "
                        f"belong to different runs; start again with --overwrite")
    return run_id


def check_finite_loss(losses: list[float], epoch: int, cfg: TrainConfig,
                      out: Path | None) -> None:
    """Stop a run whose loss became NaN or infinite, before it overwrites a good checkpoint."""
    if all(math.isfinite(v) for v in losses):
        return
    kind = "NaN" if any(math.isnan(v) for v in losses) else "infinite"
    kept = (f"the last good checkpoint (epoch {epoch}) is kept in {out}"
            if out is not None and cfg.checkpoint and epoch > 0 else "no checkpoint was saved")
    raise UserError(f"the loss became {kind} in epoch {epoch + 1}; the learning rate "
                    f"({cfg.lr:g}) is likely too high, try a smaller --lr; {kept}")


def _progress(iterable, quiet: bool, desc: str):
    if quiet:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="epoch", dynamic_ncols=True, leave=False)
