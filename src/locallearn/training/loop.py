"""The epoch loop of every training run, in one process or in pipeline stages.

Both :class:`~locallearn.training.Trainer` and the staged loop
(:class:`locallearn.parallel.worker.StageTrainer`) run :func:`run_epochs`: the
same batch order, schedules, epoch hooks and timing, and the same close of an
epoch (:func:`judge_epoch`: validate, log, pick the best epoch) on the process
that holds the whole network. What differs is passed in: how an epoch's batches
are trained (all blocks here, a stage's blocks there) and how an epoch is closed
around the judging (gathering the stages' parameters, writing checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from locallearn.measure.diagnostics import epoch_diagnostics
from locallearn.training.evaluation import evaluate_split, selection_score
from locallearn.training.runlog import RunLog

# train_epoch(batches) -> (mean of each loss over the epoch, rows trained)
TrainEpoch = Callable[[Iterable], tuple[list[float], int]]
# close_epoch(epoch, losses, seconds, rows) -> stop now (early stopping)
CloseEpoch = Callable[[int, list[float], float, int], bool]


def epoch_batches(dataset, cfg, epoch: int) -> Iterable:
    """An epoch's training batches: shuffled from the run's seed and the epoch, so every
    stage, every replica and a resumed run see the same order."""
    return dataset.loader("train", cfg.batch_size, shuffle=True,
                          seed=cfg.seed * 100_003 + epoch)


def run_epochs(epochs: Iterable[int], rule, dataset, cfg, schedules: list,
               train_epoch: TrainEpoch, close_epoch: CloseEpoch,
               sync: Callable[[], None] = lambda: None) -> bool:
    """Train the ``epochs``; True when ``close_epoch`` stopped the run early.

    ``sync`` brackets an epoch's timed work (stages: a barrier, so the time is the
    pipeline's; a GPU: waiting for its queue).
    """
    for epoch in epochs:
        rule.train()
        sync()
        t0 = time.perf_counter()
        losses, rows = train_epoch(epoch_batches(dataset, cfg, epoch))
        for schedule in schedules:
            if schedule is not None:
                schedule.step()
        rule.on_epoch_end(epoch)
        sync()
        if close_epoch(epoch, losses, time.perf_counter() - t0, rows):
            return True
    return False


def judge_epoch(log: RunLog, rule, dataset, epoch: int, losses: list[float], seconds: float,
                rows: int, device, eval_batch_size: int,
                probe: Any = None) -> tuple[dict[str, Any], bool]:
    """Validate the whole network after an epoch, tell the rule, add the epoch's record
    to ``log`` and update the best epoch: the record and whether the epoch improved."""
    val = evaluate_split(rule, dataset, "val", device, eval_batch_size)
    rule.on_validation(val)
    selection = selection_score(dataset, val)
    record = log.add(epoch, losses, val, seconds, rows, selection,
                     None if probe is None else epoch_diagnostics(rule, probe))
    return record, log.improve(rule, epoch, val["accuracy"], selection)
