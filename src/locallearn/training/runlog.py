"""What a run has done so far, epoch by epoch: the run log both loops keep.

One record per epoch (the lines of ``metrics.jsonl``), the best validation epoch and
the early-stopping decision. The one-process :class:`~locallearn.training.Trainer`
and the staged loop (:mod:`locallearn.parallel.worker`, on stage 0) keep the same
log, so both write the same records and stop at the same epoch; only the process
that writes the run folder is given ``out``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from locallearn.training.runfolder import rewrite_metrics

RuleState = tuple[dict[str, Tensor], dict[str, Any]]


def snapshot(rule) -> RuleState:
    """A copy of the rule's tensors and extra state (for restoring the best epoch)."""
    return ({k: v.detach().clone() for k, v in rule.state_dict().items()},
            copy.deepcopy(rule.extra_state()))


def restore(rule, state: RuleState) -> None:
    tensors, extra = state
    rule.load_state_dict(tensors)
    rule.load_extra_state(extra)


class RunLog:
    """The epochs' records, the best epoch so far and early stopping (``patience``)."""

    def __init__(self, out: Path | None, patience: int) -> None:
        self.out, self.patience = out, patience
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_accuracy": -1.0, "epoch": -1}
        # With patience, the best epoch's weights, kept in memory: restoring them at the
        # end needs no checkpoint files (a run may save none).
        self.best_state: RuleState | None = None

    def resume(self, meta: dict[str, Any]) -> int:
        """Continue from a checkpoint's ``meta``; the first epoch still to train.

        ``metrics.jsonl`` keeps exactly the epochs the checkpoint holds: an epoch logged
        but not checkpointed before a kill is trained (and logged) again."""
        self.best, self.history = meta["best"], meta["history"]
        if self.out is not None:
            rewrite_metrics(self.out / "metrics.jsonl", self.history)
        return meta["epoch"] + 1

    @property
    def train_seconds(self) -> float:
        return sum(h["train_seconds"] for h in self.history)

    @property
    def samples_seen(self) -> int:
        return sum(h["samples"] for h in self.history)

    def add(self, epoch: int, losses: list[float], val: dict[str, Any], seconds: float,
            samples: int, selection: tuple[str, float | None],
            diagnostics: dict[str, Any] | None = None) -> dict[str, Any]:
        """The epoch's record (appended to the history; :meth:`write` puts it on disk)."""
        record = {"epoch": epoch, "loss": losses, "val_accuracy": val["accuracy"],
                  "val_per_block_accuracy": val["per_block_accuracy"],
                  "train_seconds": seconds, "samples": samples,
                  "elapsed_train_seconds": self.train_seconds + seconds}
        metric, value = selection
        if metric != "accuracy":
            record[f"val_{metric}"] = value
        if diagnostics is not None:
            record["diagnostics"] = diagnostics
        self.history.append(record)
        return record

    def write(self, record: dict[str, Any]) -> None:
        if self.out is not None:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def improve(self, rule, epoch: int, accuracy: float | None,
                selection: tuple[str, float | None]) -> bool:
        """Whether the epoch beats the best so far on the selection figure (an empty
        validation split, None, never does); if so it becomes the best."""
        metric, value = selection
        improved = value is not None and value > self.best.get("value",
                                                               self.best["val_accuracy"])
        if improved:
            self.best = {"val_accuracy": accuracy, "epoch": epoch, "metric": metric,
                         "value": value}
            if self.patience:
                self.best_state = snapshot(rule)
        return improved

    def should_stop(self, epoch: int) -> bool:
        """Early stopping: ``patience`` epochs without improvement."""
        return bool(self.patience and epoch - self.best["epoch"] >= self.patience)
