"""One stage of a layer-parallel run: what each stage process executes.

The epochs run in the loop of one-process training
(:func:`locallearn.training.loop.run_epochs`); a stage passes its own epoch (its
blocks' steps, sending activations on) and its own close of an epoch. Rank 0 keeps
the run log (:class:`~locallearn.training.runlog.RunLog`): at each epoch end the
stages send it their parameters, it judges the whole network as one process does
(:func:`~locallearn.training.loop.judge_epoch`), writes ``metrics.jsonl``, the merged
``checkpoint.*`` / ``best.*``
(the same format as a one-process run, so ``inspect``/``prune`` read it) and
finally ``summary.json``. Every stage writes its own part, ``stageR-eEPOCH.safetensors``
(parameters, optimiser state, RNG, run id), from which ``--resume`` continues.

An epoch's checkpoint is committed as a set: every stage writes its part, all meet at
a barrier, and only then rank 0 writes the merged ``checkpoint.safetensors`` (one
atomic rename). A kill before that leaves the previous epoch's merged checkpoint, whose
stage parts are still on disk; parts of other epochs are removed after the commit.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from datetime import timedelta
from itertools import cycle, islice
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from locallearn.errors import UserError
from locallearn.measure import measure_step_memory
from locallearn.measure.diagnostics import probe_batch
from locallearn.parallel.replicas import (
    GradientAverager,
    Grid,
    Groups,
    ReplicaTrainer,
    ShardedData,
    broadcast_state,
    check_replicable,
    make_groups,
    resolve_grid,
)
from locallearn.parallel.stages import (
    ActivationChannel,
    StageContext,
    check_stageable,
    env_rank,
    make_stage,
    partition,
    stage_groups,
)
from locallearn.training.checkpoint import (
    check_meta,
    checkpoint_paths,
    has_checkpoint,
    load_checkpoint,
    load_training_state,
    read_meta,
    save_checkpoint,
    state_tensors,
    write_json_atomic,
)
from locallearn.training.loop import judge_epoch, run_epochs
from locallearn.training.optim import optimizers_for, schedules_for
from locallearn.training.runfolder import RunLock, new_run_id, prepare_run_dir
from locallearn.training.runlog import RunLog
from locallearn.training.trainer import TrainConfig, Trainer, check_same_run, resolve_device


def owned_state(rule, groups, ctx: StageContext) -> dict[str, torch.Tensor]:
    """The rule's tensors this stage trains: its groups' parameters and its blocks' buffers."""
    ids = {id(p) for g in groups for p in g.params}
    state = {n: p.detach().cpu() for n, p in rule.named_parameters() if id(p) in ids}
    prefixes = tuple(f"network.blocks.{k}." for k in ctx.blocks)
    state.update({n: b.detach().cpu() for n, b in rule.named_buffers() if n.startswith(prefixes)})
    return state


def with_upcoming(batches: Iterable[tuple[Any, Tensor]]) -> Iterator[tuple[tuple, Any]]:
    """Each batch with the next one's input (None for the last), so a stage can post the
    receive of the next activation before it computes this one."""
    it = iter(batches)
    current = next(it, None)
    while current is not None:
        following = next(it, None)
        yield current, None if following is None else following[0]
        current = following


class StageTrainer:
    """One stage of a pipeline; in a grid (``replicas > 1``) one of its copies.

    ``rank``/``world`` below are the stage's index and the number of stages; the
    pipeline's collectives run in ``groups.pipeline`` and the stage's gradients are
    averaged over its copies in ``groups.replica``. Only replica 0 writes files.
    """

    def __init__(self, config: TrainConfig, run_info: dict[str, Any], stages: int,
                 staleness: int = 0, grid: Grid | None = None,
                 groups: Groups | None = None) -> None:
        self.config = config
        self.staleness = staleness
        self.grid, self.groups = grid, groups or Groups(None, None)
        replicas = grid.replicas if grid else 1
        self.run_info = dict(run_info, stages=stages, replicas=replicas, staleness=staleness)
        self.device = resolve_device(config.device)
        self.out = Path(config.out) if config.out else None

    def fit(self, rule, dataset) -> dict[str, Any] | None:
        # The locallearn launcher holds the run folder's lock; under torchrun, rank 0 does.
        own_lock = (self.out is not None and dist.get_rank() == 0
                    and "LOCALLEARN_STAGE_ARGS" not in os.environ)
        lock = RunLock(self.out).acquire() if own_lock else None
        try:
            return self._fit(rule, dataset)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, rule, dataset) -> dict[str, Any] | None:
        cfg = self.config
        grid = self.grid or Grid(dist.get_world_size(), 1, dist.get_rank())
        self.grid = grid
        rank, world, pipe = grid.stage, grid.stages, self.groups.pipeline
        head = grid.pipeline_ranks(grid.replica)[0]  # global rank of this pipeline's stage 0
        lead = grid.replica == 0  # replica 0 writes the run directory
        check_stageable(rule, self.staleness)
        ranges = partition(len(rule.network.blocks), world)
        if self.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", grid.rank))
            self.device = torch.device("cuda", local % torch.cuda.device_count())
        ctx = StageContext(rank, world, ranges[rank], self.device, offset=head)
        torch.manual_seed(cfg.seed)
        rule.to(self.device)
        groups = stage_groups(rule, ctx.blocks, ctx.last)
        optimizers = optimizers_for(groups, cfg)
        schedules = schedules_for(optimizers, cfg)
        averager = None
        if grid.replicas > 1:
            averager = GradientAverager(self.groups.replica, grid.replicas,
                                        compression=cfg.gradient_compression)
            broadcast_state(rule, self.groups.replica, src=grid.replica_ranks(rank)[0])
            averager.attach(optimizers)
            dataset = ShardedData(dataset, grid.replica, grid.replicas, averager)
        if not lead:  # the copies write nothing (on resume they read replica 0's parts)
            cfg = replace(cfg, quiet=True)
        book = None  # stage 0's bookkeeping: evaluation, and (replica 0) the run files
        if rank == 0:
            book = Trainer(cfg if lead else replace(cfg, out=None, resume=False),
                           self.run_info)
        writes = lead and self.out is not None and cfg.checkpoint
        if book is not None and lead and not cfg.resume:
            # The launcher prepared the folder, and clearing it again would delete the
            # stages' open logs; under torchrun rank 0 prepares it.
            if self.out is not None and "LOCALLEARN_STAGE_ARGS" not in os.environ:
                prepare_run_dir(self.out, resume=False, overwrite=cfg.overwrite)
            self.run_info["run_id"] = new_run_id()
            if self.out is not None:
                write_json_atomic(self.out / "config.json", {"train": asdict(cfg),
                                                             **self.run_info})
        dist.barrier()  # rank 0 has prepared the run directory
        if not cfg.resume:  # every stage writes the run id into its parts
            run_id = [self.run_info.get("run_id")]
            dist.broadcast_object_list(run_id, src=0)
            self.run_info["run_id"] = run_id[0]

        # Stage 0 keeps the run log (replica 0's writes metrics.jsonl); every stage times
        # its own epochs.
        log = RunLog(self.out if rank == 0 and lead else None, cfg.patience)
        start_epoch = 0
        if cfg.resume:
            start_epoch = self._resume(rule, optimizers, schedules, rank, world, log)
        if book is not None:
            book.log = log  # its finish restores the best epoch kept in memory
        probe = probe_batch(dataset, self.device) if rank == 0 and cfg.diagnostics else None
        channel = ActivationChannel(ctx, signals_in_flight=self.staleness + 1)
        stage = make_stage(rule, ctx, channel, optimizers, self.staleness)
        timed = {"seconds": log.train_seconds}

        def train_epoch(batches) -> tuple[list[float], int]:
            rows = 0
            for (x, y), upcoming in with_upcoming(batches):
                y = y.to(self.device)
                stage.step(x, y, upcoming)
                rows += int(y.shape[0])
            stage.flush()
            if averager is not None:  # the rows of the global batches, not this slice's
                rows = dataset.epoch_samples
            return stage.epoch_losses(), rows

        def close_epoch(epoch: int, losses: list[float], seconds: float, rows: int) -> bool:
            timed["seconds"] += seconds
            # Stage 0 gathers the stages' parameters and losses and judges the whole network.
            parts = [None] * world if rank == 0 else None
            dist.gather_object(owned_state(rule, groups, ctx), parts, dst=head, group=pipe)
            losses_all = [None] * world if rank == 0 else None
            dist.gather_object(losses, losses_all, dst=head, group=pipe)
            stop = [None]
            if rank == 0:
                rule.load_state_dict({k: v for part in parts for k, v in part.items()},
                                     strict=False)
                record, improved = judge_epoch(
                    log, rule, dataset, epoch, [v for part in losses_all for v in part],
                    seconds, rows, self.device, cfg.eval_batch_size, probe)
                log.write(record)
                if writes:
                    merged = self._merged_state(rule, epoch, log)
                if not cfg.quiet:
                    val = record["val_accuracy"]
                    print(f"epoch {epoch + 1}/{cfg.epochs}: val accuracy "
                          f"{'-' if val is None else f'{val:.4f}'} ({seconds:.1f} s)",
                          file=sys.stderr, flush=True)
                stop = [log.should_stop(epoch)]
            dist.broadcast_object_list(stop, src=head, group=pipe)
            if writes:
                self._save_stage(rule, groups, ctx, optimizers, schedules, epoch)
                dist.barrier(group=pipe)  # every stage's part of this epoch is on disk
                if rank == 0:
                    self._commit(*merged, improved)
            return stop[0]

        stopped_early = run_epochs(range(start_epoch, cfg.epochs), rule, dataset, cfg,
                                   schedules, train_epoch, close_epoch,
                                   sync=lambda: dist.barrier(group=pipe))
        train_seconds = timed["seconds"]

        parts = [None] * world if rank == 0 else None
        dist.gather_object(owned_state(rule, groups, ctx), parts, dst=head, group=pipe)
        busy = 1.0 - channel.wait_seconds / max(train_seconds, 1e-9)
        updates = max(stage.updates_total, 1)
        stage_info = {"blocks": list(ctx.blocks), "peak_memory_bytes": None,
                      "train_seconds": train_seconds, "busy_fraction": busy,
                      "activation_bytes_per_step": channel.bytes_sent / updates,
                      "gradient_bytes_per_step": (averager.bytes_reduced / updates
                                                  if averager is not None else 0.0)}
        if cfg.measure_memory:
            # After the final parameters are gathered: a few more stage steps, in lock-step
            # on every rank, measured outside the timed loop. Only this stage's own
            # parameters, buffers and optimiser state count as its fixed state.
            mem = self._measure_memory(rule, groups, ctx, stage, optimizers, dataset)
            stage_info.update(peak_memory_bytes=mem["peak_memory_bytes"], memory=mem)
        infos = [None] * world if rank == 0 else None
        dist.gather_object(stage_info, infos, dst=head, group=pipe)
        summary = None
        if rank == 0 and lead:
            summary = self._finish(book, rule, dataset, parts, infos, log, stopped_early)
        # Nobody tears the process group down while rank 0 still evaluates: a peer that
        # exits early can abort gloo's threads in the others ("terminate called ...").
        dist.barrier()
        return summary

    def _merged_state(self, rule, epoch: int, log: RunLog) -> tuple[dict, dict]:
        """Stage 0, with every stage's parameters loaded: the merged checkpoint's tensors
        and metadata (the one-process format, without optimiser state)."""
        meta = {"epoch": epoch, "best": log.best, "history": log.history, "optimizers": [],
                "schedules": [], "rule_extra": rule.extra_state(), "run": self.run_info}
        tensors = {f"rule.{k}": v for k, v in rule.state_dict().items()}
        tensors["rng.torch"] = torch.get_rng_state()
        return tensors, meta

    def _finish(self, book: Trainer, rule, dataset, parts, infos, log: RunLog,
                stopped_early: bool) -> dict[str, Any]:
        """Rank 0: merge the stages' parameters, test, and write ``summary.json``."""
        merged = {k: v for part in parts for k, v in part.items()}
        rule.load_state_dict(merged, strict=False)
        return book.finish(rule, dataset, history=log.history, best=log.best,
                           stopped_early=stopped_early, train_seconds=log.train_seconds,
                           samples_seen=log.samples_seen,
                           measured={"peak_memory_bytes": None if infos[0]["peak_memory_bytes"]
                                     is None else sum(i["peak_memory_bytes"] for i in infos),
                                     "stage_info": infos})

    def _measure_memory(self, rule, groups, ctx: StageContext, stage, optimizers, dataset,
                        steps: int = 2) -> dict[str, Any]:
        """Allocator-level peak of this stage's training steps (see
        :mod:`locallearn.measure.memory`), in a pass after training."""
        own = torch.nn.Module()
        own.params = torch.nn.ParameterList([p for g in groups for p in g.params])
        for k in ctx.blocks:
            for n, b in rule.network.blocks[k].named_buffers():
                own.register_buffer(f"b{k}_{n.replace('.', '_')}", b)
        # A graph's loader has one batch per epoch: repeat it so every stage takes
        # ``steps`` steps, with the last one posting no receive ahead.
        loader = dataset.loader("train", self.config.batch_size, shuffle=True,
                                seed=self.config.seed * 100_003)
        batches = iter(with_upcoming(list(islice(cycle(loader), steps))))
        state = {"n": 0}

        def step() -> None:
            (x, y), upcoming = next(batches)
            state["n"] += 1
            stage.step(x, y.to(self.device), upcoming if state["n"] < steps else None)
            if state["n"] == steps:
                stage.flush()

        return measure_step_memory(step, own, optimizers, None, self.device, steps=steps)

    # -- per-stage checkpoints ---------------------------------------------------
    def _commit(self, tensors, meta, improved: bool) -> None:
        """Rank 0, after every stage saved its part: the merged checkpoint commits the
        epoch; then stage parts of epochs no checkpoint names are removed."""
        if improved:
            save_checkpoint(self.out, tensors, meta, stem="best")
        save_checkpoint(self.out, tensors, meta)
        keep = {int(read_meta(p).get("epoch", -2)) for p in checkpoint_paths(self.out)}
        for part in self.out.glob("stage*-e*.safetensors"):
            epoch = part.stem.rpartition("-e")[2]
            if not epoch.isdigit() or int(epoch) not in keep:
                part.unlink(missing_ok=True)

    def _save_stage(self, rule, groups, ctx, optimizers, schedules, epoch: int) -> None:
        tensors, rests = state_tensors(owned_state(rule, groups, ctx), optimizers)
        meta = {"epoch": epoch, "stage": ctx.rank, "stages": ctx.world,
                "replicas": self.run_info["replicas"],
                "blocks": list(ctx.blocks), "optimizers": rests,
                "schedules": [s.state_dict() if s else None for s in schedules],
                "run_id": self.run_info.get("run_id")}
        save_checkpoint(self.out, tensors, meta, stem=f"stage{ctx.rank}-e{epoch}",
                        keep_previous=False, mirror=False)

    def _resume(self, rule, optimizers, schedules, rank: int, world: int,
                log: RunLog) -> int:
        """Load this stage's part of the last committed epoch; the first epoch to train."""
        # Rank 0 picks the newest good merged checkpoint; its epoch names the stage parts.
        chosen = [None]
        if rank == 0:
            _, main_meta = load_checkpoint(self.out)
            check_same_run(self.out, main_meta)
            try:
                check_meta(main_meta)
            except ValueError as exc:
                raise UserError(f"checkpoint in {self.out} is damaged ({exc}); start again "
                                f"with --overwrite") from None
            chosen = [main_meta]
        pipe, head = self.groups.pipeline, self.grid.pipeline_ranks(self.grid.replica)[0]
        dist.broadcast_object_list(chosen, src=head, group=pipe)
        main_meta = chosen[0]
        epoch, run_id = int(main_meta["epoch"]), (main_meta.get("run") or {}).get("run_id")
        self.run_info["run_id"] = run_id
        stem = f"stage{rank}-e{epoch}"
        tensors, meta = load_checkpoint(self.out, stem=stem, fallback=False)
        if (meta.get("stages"), meta.get("replicas", 1)) != (world, self.run_info["replicas"]):
            raise UserError(f"{self.out} was trained with --stages {meta.get('stages')} "
                            f"--replicas {meta.get('replicas', 1)}; resume with the same grid")
        if meta.get("run_id") != run_id or meta.get("epoch") != epoch:
            raise UserError(f"{self.out}: stage part {stem} belongs to another run or epoch "
                            f"than checkpoint.safetensors; start again with --overwrite")
        state = {k[len("rule."):]: v for k, v in tensors.items() if k.startswith("rule.")}
        try:
            rule.load_state_dict(state, strict=False)
            load_training_state(optimizers, schedules, meta, tensors, self.out)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UserError(f"stage part {stem} in {self.out} does not fit this run "
                            f"({type(exc).__name__}: {first}); start again with "
                            f"--overwrite") from None
        torch.set_rng_state(tensors["rng.torch"])
        if rank == 0:
            rule.load_extra_state(main_meta.get("rule_extra", {}))
        return log.resume(main_meta)  # rewrites metrics.jsonl where the log writes it


def run_stage(settings: dict[str, Any], out: str | None, quiet: bool, resume: bool,
              overwrite: bool, stages: int, staleness: int = 0,
              timeout_s: float = 60.0, teardown: bool = True,
              replicas: int | None = None) -> dict[str, Any] | None:
    """Run this process's part of a ``stages`` x ``replicas`` grid (rank and world size
    from the environment); replica 0's stage 0 returns the summary, the others None.

    Under ``torchrun --max-restarts`` a restarted process resumes from the run's last
    checkpoint by itself. ``teardown=False`` leaves the process group alive for a
    process that exits at once.
    """
    from locallearn.training.run import make_config
    from locallearn.training.spec import SPEC_KEYS, RunSpec

    ranks = env_rank()
    if ranks is None:
        raise UserError("run_stage needs RANK and WORLD_SIZE (started by torchrun or the "
                        "locallearn launcher)")
    rank, world = ranks
    stages, replicas = resolve_grid(stages, replicas, world)
    grid = Grid(stages, replicas, rank)
    s = {k: v for k, v in settings.items() if k not in SPEC_KEYS}
    config = make_config(settings["rule"], out=out, quiet=quiet, resume=resume,
                         overwrite=overwrite, **s)
    spec = RunSpec.from_settings(settings, seed=config.seed)
    run_info = spec.info()
    device = resolve_device(config.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # one process per GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank))
                              % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s), store=attempt_store(
                                rank, world, timedelta(seconds=timeout_s)))
    try:
        if restarted():  # continue from the last checkpoint, or start again if none was written
            found = [out is not None and has_checkpoint(Path(out))]
            dist.broadcast_object_list(found, src=0)  # rank 0's folder decides
            resume, overwrite = found[0], not found[0]
            config = replace(config, resume=resume, overwrite=overwrite)
        groups = make_groups(grid)
        dataset, _, rule = spec.build()
        check_replicable(dataset, config.batch_size, replicas)
        if stages > 1:
            summary = StageTrainer(config, run_info, stages, staleness, grid,
                                   groups).fit(rule, dataset)
        else:
            averager = GradientAverager(groups.replica, replicas,
                                        compression=config.gradient_compression)
            trainer = ReplicaTrainer(config, dict(run_info, stages=1, replicas=replicas),
                                     grid, averager)
            data = ShardedData(dataset, grid.replica, replicas, averager)
            summary = trainer.fit(rule, data)
            # Nobody tears the group down while replica 0 still tests and writes.
            dist.barrier()
        return summary or None
    finally:
        if teardown:
            dist.destroy_process_group()


def attempt_store(rank: int, world: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun, the rendezvous store with a prefix per restart attempt; else None
    (``init_process_group`` reads MASTER_ADDR/MASTER_PORT itself).

    torchrun's agent store outlives a restart (``--max-restarts``), so without a prefix
    the new round's gloo reads the dead round's peer addresses and cannot connect.
    """
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    return dist.PrefixStore(f"attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


def restarted() -> bool:
    """Whether torchrun restarted this process after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def main() -> NoReturn:
    """Entry point of a launched stage process (``python -m locallearn.parallel.worker``)."""
    args = json.loads(os.environ["LOCALLEARN_STAGE_ARGS"])
    torch.set_num_threads(int(os.environ.get("LOCALLEARN_STAGE_THREADS", "1")))
    try:
        run_stage(**args, teardown=False)
        code = 0
    except UserError as exc:
        print(f"locallearn: error: {exc}", file=sys.stderr)
        code = 2
    except Exception:  # reported by the launcher in one line; details go to the stage log
        traceback.print_exc()
        code = 3
    # Every file is written and every stage has passed the final barrier. Exit without
    # running gloo's C++ destructors: tearing down while a peer closes its sockets
    # occasionally aborted a finished stage ("terminate called without an active
    # exception", SIGABRT), about once in ten test-suite runs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
