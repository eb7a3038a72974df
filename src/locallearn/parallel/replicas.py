"""Data-parallel replicas on torch.distributed, alone or in a grid with stages.

``--replicas M`` runs M copies of the model, one process each. Every copy walks
the same seeded batch order and takes its own contiguous slice of each global
batch (``DistributedSampler``-style, but per batch, so the global batch is the
one a single process would see). Before any optimiser steps, the gradients of
its parameters are averaged over the replicas with bucketed ``all_reduce`` calls
started during backward (:class:`GradientAverager`), weighted by each slice's share
of the batch's labelled rows. So the replicas stay identical, and they take the step a
single process takes on the whole batch: for a loss that is a mean over rows,
``sum_r (n_r / n) * grad(mean over slice r) = grad(mean over the batch)``, also
for a ragged last batch.

Why not ``DistributedDataParallel``: local rules have several parameter groups,
each with its own optimiser, and many backward their losses one at a time
(``streams_losses``); DDP expects one backward per forward of one module. The
averager computes what DDP computes (an average of gradients before the step, in
buckets launched from gradient hooks) for every rule: parameter hooks start the
messages and an optimiser step pre-hook waits for them, so neither the trainer nor
the stages change their loop.

With ``--stages N --replicas M`` the N x M processes form a grid: global rank
``replica * N + stage``. A *pipeline* group (one per replica: its N stages)
carries activations and the stage bookkeeping; a *replica* group (one per
stage: its M copies) averages that stage's gradients. Only replica 0 writes
files; every replica evaluates and decides the same (their weights are equal).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from locallearn.data.base import IGNORE_INDEX
from locallearn.errors import UserError
from locallearn.training.trainer import TrainConfig, Trainer


@dataclass
class Grid:
    """Where this process sits among ``stages`` x ``replicas`` processes."""

    stages: int
    replicas: int
    rank: int

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        return self.rank // self.stages

    @property
    def world(self) -> int:
        return self.stages * self.replicas

    def pipeline_ranks(self, replica: int) -> list[int]:
        return [replica * self.stages + s for s in range(self.stages)]

    def replica_ranks(self, stage: int) -> list[int]:
        return [r * self.stages + stage for r in range(self.replicas)]

    def describe(self, rank: int) -> str:
        """How a process is named in messages."""
        stage, replica = rank % self.stages, rank // self.stages
        if self.replicas == 1:
            return f"stage {stage}"
        if self.stages == 1:
            return f"replica {replica}"
        return f"stage {stage} of replica {replica} (rank {rank})"


@dataclass
class Groups:
    """This process's pipeline group (its replica's stages) and replica group (its
    stage's copies); ``None`` means the default group (the whole world)."""

    pipeline: Any
    replica: Any


def make_groups(grid: Grid) -> Groups:
    """Create every pipeline and replica group (each process must create all of them,
    in the same order) and return this process's two."""
    if grid.replicas == 1:
        return Groups(pipeline=None, replica=None)
    if grid.stages == 1:
        return Groups(pipeline=None, replica=None)
    mine = Groups(pipeline=None, replica=None)
    for r in range(grid.replicas):
        g = dist.new_group(grid.pipeline_ranks(r))
        if r == grid.replica:
            mine.pipeline = g
    for s in range(grid.stages):
        g = dist.new_group(grid.replica_ranks(s))
        if s == grid.stage:
            mine.replica = g
    return mine


def resolve_grid(stages: int, replicas: int | None, world: int | None) -> tuple[int, int]:
    """(stages, replicas) from the flags and, under torchrun, the world size."""
    if stages < 1:
        raise UserError(f"--stages must be >= 1, got {stages}")
    if replicas is not None and replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {replicas}")
    if world is None:
        return stages, replicas or 1
    if world % stages:
        raise UserError(f"torchrun started {world} processes, which --stages {stages} does not "
                        f"divide; start stages x replicas processes")
    if replicas is not None and stages * replicas != world:
        raise UserError(f"--stages {stages} --replicas {replicas} needs {stages * replicas} "
                        f"processes but torchrun started {world}")
    return stages, world // stages


def check_replicable(dataset, batch_size: int, replicas: int) -> None:
    """Refuse data that cannot be split between replicas."""
    if replicas == 1:
        return
    if dataset.task.kind == "graph":
        raise UserError("--replicas splits each batch between copies, but graph data trains "
                        "on the whole graph as one batch; use --replicas 1 (or --stages)")
    if batch_size < replicas:
        raise UserError(f"--batch-size {batch_size} is smaller than --replicas {replicas}; "
                        f"each replica needs at least one row of every batch")


# -- splitting a batch -----------------------------------------------------------

def shard_bounds(rows: int, replicas: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, as equal as possible, earlier replicas taking the extra."""
    base, extra = divmod(rows, replicas)
    bounds, start = [], 0
    for r in range(replicas):
        size = base + (1 if r < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def _rows(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, Tensor):
        return x[start:stop]
    if isinstance(x, (tuple, list)):
        return type(x)(_rows(v, start, stop) for v in x)
    raise UserError(f"--replicas splits batches of tensors (or tuples of tensors); got a "
                    f"{type(x).__name__}")


def labelled(y: Tensor) -> int:
    """Rows (or tokens) that count in a loss: targets other than IGNORE_INDEX."""
    return int((y != IGNORE_INDEX).sum())


def shard(x: Any, y: Tensor, replica: int, replicas: int) -> tuple[Any, Tensor, float]:
    """Replica ``replica``'s slice of a global batch, and its weight in the average:
    its share of the batch's labelled rows. A batch with fewer rows than replicas
    gives the others its last row with weight 0 (they must still take part)."""
    rows = int(y.shape[0])
    start, stop = shard_bounds(rows, replicas)[replica]
    if stop == start:
        return _rows(x, rows - 1, rows), y[rows - 1:], 0.0
    total = labelled(y)
    x_r, y_r = _rows(x, start, stop), y[start:stop]
    weight = labelled(y_r) / total if total else 0.0
    return x_r, y_r, weight


class ShardedData:
    """A dataset whose training batches are this replica's slices of the global batches.

    Evaluation splits are not split (every replica evaluates the same weights on
    the same data and decides the same). Each slice's weight goes into the
    averager's queue in batch order, so a stage that learns from a batch later
    (staleness, posting receives ahead) still pairs each update with its batch.
    Each epoch the random stream is reseeded from the epoch's seed and the
    replica, so replicas draw different noise (negatives, dropout) and a resumed
    run draws what the uninterrupted one did.
    """

    def __init__(self, dataset, replica: int, replicas: int, averager: GradientAverager) -> None:
        self.dataset, self.replica, self.replicas = dataset, replica, replicas
        self.averager = averager
        self.epoch_samples = 0  # rows of the global batches of the current epoch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
               **kwargs: Any) -> Iterator:
        batches = self.dataset.loader(split, batch_size, shuffle=shuffle, seed=seed, **kwargs)
        if split != "train":
            return batches
        torch.manual_seed(hash((seed, self.replica)) & (2**63 - 1))
        return self._slices(batches)

    def _slices(self, batches) -> Iterator:
        self.epoch_samples = 0
        self.averager.weights.clear()
        for x, y in batches:
            x_r, y_r, weight = shard(x, y, self.replica, self.replicas)
            self.epoch_samples += int(y.shape[0])
            self.averager.weights.append(weight)
            yield x_r, y_r


# -- averaging gradients ------------------------------------------------------------

BUCKET_BYTES = 4 << 20  # gradients per all_reduce (one 1024x1024 float32 layer)

# ``gradient_compression``: the dtype the replicas' gradients travel in.
COMPRESSION = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Bucket:
    """Some of one optimiser's parameters, reduced together, and this step's state.

    ``flat`` holds the weighted gradients, then one flag per parameter (1 where this
    replica has a gradient), in the dtype they travel in; it is allocated once and
    reused every step. Without compression the averaged gradients are handed to the
    optimiser as views of it (no copy back); with compression they are widened into
    ``wide``, also reused.
    """

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.ready: set[int] = set()  # ids of parameters whose gradient is final
        self.work = None  # the all_reduce in flight, once launched
        self.late = False  # a gradient changed after the launch: reduce again
        self.flat: Tensor | None = None
        self.wide: Tensor | None = None
        self.slices: list[tuple[int, int]] = []
        start = 0
        for p in params:
            self.slices.append((start, start + p.numel()))
            start += p.numel()
        self.numel = start


class GradientAverager:
    """Averages each optimiser's gradients over the replica group before it steps.

    What is reduced: every parameter's gradient scaled by this replica's weight (its
    slice's share of the batch), and a flag per parameter, so a parameter that no
    replica gave a gradient stays without one (optimisers skip those).

    When: as in DDP, a bucket of parameters (at most :data:`BUCKET_BYTES`, within one
    optimiser) starts its ``all_reduce`` asynchronously as soon as autograd has
    accumulated the gradient of each of its parameters, so the messages travel while
    the backward of earlier layers (or, for a local rule, the next block) computes. The
    optimiser's step pre-hook waits for its buckets and writes the averages back. A
    bucket that did not fill (a parameter without a gradient this step) is reduced
    there; one whose gradient changed after its launch (a rule that backwards into a
    parameter twice in a step) is reduced again there. Every replica runs the same
    code on the same shapes, so all take the same path.

    ``compression`` (``"bf16"`` or ``"fp16"``, the ``gradient_compression`` setting)
    sends the weighted gradients in that dtype, half the bytes of float32, as DDP's
    ``bf16_compress_hook``/``fp16_compress_hook`` do: each replica's share is rounded
    before the sum and the sum is rounded again, so the replicas still end equal to
    each other but no longer equal to one process.

    The weight of the batch being learnt is the head of ``weights``; it is consumed
    after the last optimiser of the update has stepped.
    """

    def __init__(self, group: Any, replicas: int, bucket_bytes: int = BUCKET_BYTES,
                 compression: str = "none") -> None:
        self.group, self.replicas, self.bucket_bytes = group, replicas, bucket_bytes
        self.dtype = COMPRESSION[compression]
        self.weights: deque[float] = deque()
        self.bytes_reduced = 0  # payload handed to all_reduce by this process
        self.updates = 0
        self.buckets: list[_Bucket] = []

    def attach(self, optimizers: list[torch.optim.Optimizer]) -> None:
        for opt in optimizers:
            params = [p for group in opt.param_groups for p in group["params"]]
            buckets = self._buckets(params)
            self.buckets += buckets
            for bucket in buckets:
                for p in bucket.params:
                    if p.requires_grad:
                        p.register_post_accumulate_grad_hook(
                            lambda p, bucket=bucket: self._accumulated(bucket, p))
            opt.register_step_pre_hook(lambda opt, args, kwargs, buckets=buckets:
                                       self._finish(buckets))
        if optimizers:
            optimizers[-1].register_step_post_hook(self._done)

    def _buckets(self, params: list[torch.nn.Parameter]) -> list[_Bucket]:
        """Consecutive runs of parameters in reverse order (the order backward reaches
        them), each at most ``bucket_bytes`` unless one parameter is larger."""
        buckets, current, size = [], [], 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if current and size + nbytes > self.bucket_bytes:
                buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(_Bucket(current))
        return buckets

    def _weight(self) -> float:
        if not self.weights:
            raise RuntimeError("an optimiser stepped without a batch to pair it with")
        return self.weights[0]

    @torch.no_grad()
    def _accumulated(self, bucket: _Bucket, p: torch.nn.Parameter) -> None:
        if not self.weights:  # a backward outside training (no batch): not ours
            return
        if bucket.work is not None:
            bucket.late = True
            return
        bucket.ready.add(id(p))
        if len(bucket.ready) == len(bucket.params):
            bucket.work = self._start(bucket, async_op=True)

    def _start(self, bucket: _Bucket, async_op: bool):
        """Write this replica's weighted gradients and flags into the bucket's buffer
        (scaling and, with compression, rounding in the same pass) and reduce it."""
        params, n = bucket.params, bucket.numel
        if bucket.flat is None:
            first = params[0]
            bucket.flat = first.new_empty(n + len(params), dtype=self.dtype or first.dtype)
        flat, weight = bucket.flat, self._weight()
        for p, (a, b) in zip(params, bucket.slices, strict=True):
            if p.grad is None or not weight:  # weight 0: an all-unlabelled slice, whose
                flat[a:b].zero_()             # mean losses may be NaN; it adds nothing
            else:
                torch.mul(p.grad.reshape(-1), weight, out=flat[a:b])
        for i, p in enumerate(params):
            flat[n + i] = 1.0 if p.grad is not None else 0.0
        work = dist.all_reduce(flat, group=self.group, async_op=async_op)
        self.bytes_reduced += flat.numel() * flat.element_size()
        return work

    @torch.no_grad()
    def _finish(self, buckets: list[_Bucket]) -> None:
        for bucket in buckets:
            if bucket.work is not None:
                bucket.work.wait()
            if bucket.work is None or bucket.late:
                self._start(bucket, async_op=False)
            bucket.work, bucket.late = None, False
            bucket.ready.clear()
            self._write_back(bucket)

    def _write_back(self, bucket: _Bucket) -> None:
        flat, n = bucket.flat, bucket.numel
        if self.dtype is not None:  # widen the compressed sums to the parameters' dtype
            if bucket.wide is None:
                bucket.wide = bucket.params[0].new_empty(n)
            bucket.wide.copy_(flat[:n])
            values = bucket.wide
        else:
            values = flat
        flags = flat[n:].tolist()
        for p, (a, b), has_grad in zip(bucket.params, bucket.slices, flags, strict=True):
            if has_grad:
                p.grad = values[a:b].view_as(p).to(p.dtype)

    def _done(self, opt, args, kwargs) -> None:
        self.weights.popleft()
        self.updates += 1


def broadcast_state(module: torch.nn.Module, group: Any, src: int) -> None:
    """Every replica starts from ``src``'s parameters and buffers (as DDP does)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src, group=group)


def share_checkpoint(out: Path, group: Any, src: int, lead: bool) -> Path:
    """Replica 0's checkpoint (and the previous one, and ``config.json``), for every replica.

    Replica 0 reads the files and broadcasts their bytes; the other replicas write them
    to a private folder and resume from there, so replicas on other machines need no
    shared file system. Returns the folder to load from.
    """
    files = ["config.json", "checkpoint.safetensors", "checkpoint.prev.safetensors"]
    payload = [{f: (out / f).read_bytes() for f in files if (out / f).exists()}
               if lead else None]
    dist.broadcast_object_list(payload, src=src, group=group)
    if lead:
        return out
    folder = Path(tempfile.mkdtemp(prefix="locallearn-replica-"))
    for name, data in payload[0].items():
        (folder / name).write_bytes(data)
    return folder


# -- the one-stage replica trainer ---------------------------------------------------

class ReplicaTrainer(Trainer):
    """:class:`Trainer` for one of M data-parallel replicas (``--stages 1``).

    The loop is the Trainer's: the data are this replica's slices, and the
    optimisers average their gradients over the replicas before stepping. Only
    replica 0 writes the run directory; the others train, evaluate (to take the
    same decisions: early stopping, a rule's ``on_validation``) and write nothing.
    """

    def __init__(self, config: TrainConfig, run_info: dict[str, Any], grid: Grid,
                 averager: GradientAverager) -> None:
        super().__init__(config, run_info)
        self.grid, self.averager = grid, averager
        self.lead = grid.replica == 0
        self.data: ShardedData | None = None
        self._measuring = False
        if not self.lead:
            self.config = replace(config, quiet=True)
            self.out = None  # on resume, reads replica 0's checkpoint (see fit), never writes

    def fit(self, rule, dataset) -> dict[str, Any]:
        self.data = dataset
        if self.config.resume:
            self.out = share_checkpoint(Path(self.config.out), self.averager.group, 0,
                                        self.lead)
        # The locallearn launcher holds the run folder's lock; under torchrun replica 0.
        own_lock = self.lead and "LOCALLEARN_STAGE_ARGS" not in os.environ
        try:
            return super().fit(rule, dataset) if own_lock else self._fit(rule, dataset)
        finally:
            if not self.lead and self.out is not None:  # the received copy
                shutil.rmtree(self.out, ignore_errors=True)

    def make_optimizers(self, rule) -> list[torch.optim.Optimizer]:
        if self._measuring:  # the memory pass's copy trains alone
            return super().make_optimizers(rule)
        broadcast_state(rule, self.averager.group, src=0)
        optimizers = super().make_optimizers(rule)
        self.averager.attach(optimizers)
        return optimizers

    def measure_memory(self, rule, optimizers, dataset, steps: int = 2) -> dict[str, Any]:
        """One replica's memory: steps on its slice of the first batch, without the
        all_reduce (its buffers, one optimiser's gradients, come on top)."""
        self._measuring, rng = True, torch.get_rng_state()  # the loader reseeds
        try:
            return super().measure_memory(rule, optimizers, dataset, steps)
        finally:
            self._measuring = False
            self.averager.weights.clear()
            torch.set_rng_state(rng)

    def _prepare_out(self) -> None:
        if self.lead:
            super()._prepare_out()

    def _log(self, record: dict[str, Any]) -> None:
        # The loop counted this replica's rows; the run trained on the global batches.
        record["samples"] = self.data.epoch_samples
        if self.lead:
            super()._log(record)

    def _save(self, *args, **kwargs) -> None:
        if self.lead:
            super()._save(*args, **kwargs)

    def finish(self, rule, dataset, *, history, best, stopped_early, train_seconds,
               samples_seen, measured) -> dict[str, Any]:
        if not self.lead:
            return {}
        measured = dict(measured, gradient_bytes_per_step=(
            self.averager.bytes_reduced / max(self.averager.updates, 1)))
        return super().finish(rule, dataset, history=history, best=best,
                              stopped_early=stopped_early, train_seconds=train_seconds,
                              samples_seen=sum(h["samples"] for h in history),
                              measured=measured)


def local_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
