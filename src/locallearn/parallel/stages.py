"""Layer-parallel training: contiguous stages of blocks, one process each.

With a :class:`~locallearn.rules.base.BlockwiseRule` nothing but the forward
activation crosses a block boundary, so stage ``s`` can update its blocks as
soon as micro-batch ``t`` arrives from stage ``s-1`` — no stage waits for a
backward pass (no backward locking). Each stage runs::

    for each micro-batch t (same order on every stage, from the shared seed):
        h = prepare(x, y)            if first stage   else   h = recv(stage s-1)
        for k in my blocks:  h = block_k(block_input(k, h));  loss_k = block_loss(k, h, y)
        isend(h, stage s+1)          unless last stage (last stage: head loss)
        backward(sum of my losses);  step my optimisers

Every stage loads the dataset itself (deterministic from the seed), so labels
reach every stage without messages. Because each block's update depends only
on its own input, the weights after training equal those of one process
(``--stages 1``) for the same seed: the pipeline changes when work happens,
not what is computed.

Rules built on :class:`~locallearn.rules.base.ErrorBroadcastRule` (dfa) send
one signal backward: the output error. The last stage sends it to every other
stage in one message per micro-batch; with ``staleness=0`` a stage waits for the
error of micro-batch ``t`` before it goes on (exact: the same weights as one
process), with ``staleness=k`` it may run up to ``k`` micro-batches ahead and
apply each error when it arrives (the update then uses the stored input and the
stage's current weights: the error is up to ``k`` micro-batches old). Rules that
couple blocks in other ways (cff's other-layer goodness, pepita's second pass,
backprop) are refused with a one-line error.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from locallearn.errors import UserError
from locallearn.rules.base import BlockwiseRule, ErrorBroadcastRule, ParamGroup, Rule

HEADER_DIMS = 8  # shape header sent before every activation: ndim, then sizes


def partition(n_blocks: int, n_stages: int) -> list[range]:
    """Contiguous, as-equal-as-possible block ranges, earlier stages taking the extra."""
    if n_stages < 1:
        raise UserError(f"--stages must be >= 1, got {n_stages}")
    if n_stages > n_blocks:
        raise UserError(f"--stages {n_stages} is more than the network's {n_blocks} blocks; "
                        f"use at most {n_blocks} stages or a deeper --net")
    base, extra = divmod(n_blocks, n_stages)
    ranges, start = [], 0
    for s in range(n_stages):
        size = base + (1 if s < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def check_stageable(rule: Rule, staleness: int = 0) -> None:
    """Refuse rules that cannot be staged, and a staleness that means nothing for the rule."""
    if staleness < 0:
        raise UserError(f"--staleness must be >= 0, got {staleness}")
    if isinstance(rule, ErrorBroadcastRule):
        return
    if not isinstance(rule, BlockwiseRule) or not getattr(rule, "stageable", True):
        raise UserError(
            f"rule {rule.name!r} cannot be split into stages (it couples blocks beyond a "
            f"forward activation and one output error); stageable rules: blockwise ones "
            f"such as mono-forward, local, ff, and dfa"
        )
    if staleness > 0:
        raise UserError(f"--staleness applies to rules that send an error backward (dfa); "
                        f"{rule.name!r} sends nothing backward, so use --staleness 0")


def stage_groups(rule: Rule, blocks: range, last: bool) -> list[ParamGroup]:
    """The parameter groups trained on a stage: its blocks' groups, and the head's if last."""
    names = {f"block{k}" for k in blocks}
    if last:
        names.add("head")
    return [g for g in rule.param_groups() if g.name in names]


@dataclass
class StageContext:
    rank: int
    world: int
    blocks: range
    device: torch.device

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1


class ActivationChannel:
    """Point-to-point messages between stages: activations forward, output signals back.

    Activation sends are asynchronous with one message in flight, so a stage can
    compute the next micro-batch while the previous activation travels. The last
    stage keeps up to ``signals_in_flight`` output signals in flight, so earlier
    stages running that many micro-batches ahead (staleness) never block it.
    """

    def __init__(self, ctx: StageContext, signals_in_flight: int = 1) -> None:
        self.ctx = ctx
        self.signals_in_flight = signals_in_flight
        self._pending: list = []
        self._signals: deque = deque()  # (works, buffer) per signal in flight
        self.wait_seconds = 0.0  # time blocked on neighbours (for the busy fraction)

    def _wait(self, works) -> None:
        t0 = time.perf_counter()
        for work in works:
            work.wait()
        self.wait_seconds += time.perf_counter() - t0

    def send(self, h: Tensor) -> None:
        self._wait(self._pending)
        h = h.detach().contiguous()
        header = torch.zeros(HEADER_DIMS, dtype=torch.long, device=h.device)
        header[0] = h.dim()
        header[1 : 1 + h.dim()] = torch.tensor(h.shape)
        dst = self.ctx.rank + 1
        self._pending = [dist.isend(header, dst), dist.isend(h, dst)]
        self._keep = (header, h)  # buffers must live until the sends complete

    def recv(self) -> Tensor:
        t0 = time.perf_counter()
        src = self.ctx.rank - 1
        header = torch.zeros(HEADER_DIMS, dtype=torch.long, device=self.ctx.device)
        dist.recv(header, src)
        shape = header[1 : 1 + int(header[0])].tolist()
        h = torch.empty(shape, device=self.ctx.device)
        dist.recv(h, src)
        self.wait_seconds += time.perf_counter() - t0
        return h

    def send_signal(self, signal: Tensor) -> None:
        """Last stage: the output signal of one micro-batch to every earlier stage."""
        while len(self._signals) >= self.signals_in_flight:
            self._wait(self._signals.popleft()[0])
        signal = signal.detach().contiguous()
        self._signals.append(([dist.isend(signal, r) for r in range(self.ctx.rank)], signal))

    def recv_signal(self, rows: int, size: int) -> Tensor:
        """Earlier stage: the last stage's output signal for the oldest pending micro-batch."""
        t0 = time.perf_counter()
        signal = torch.empty(rows, size, device=self.ctx.device)
        dist.recv(signal, self.ctx.world - 1)
        self.wait_seconds += time.perf_counter() - t0
        return signal

    def flush(self) -> None:
        """Wait for every send in flight."""
        self._wait(self._pending)
        self._pending = []
        while self._signals:
            self._wait(self._signals.popleft()[0])


def _apply(losses: list[Tensor], optimizers, rule: Rule) -> Tensor:
    """Backward the stage's losses (disjoint groups), step its optimisers; detached losses."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if losses:
        total = torch.stack(losses).sum()
        if total.requires_grad:
            total.backward()
    for opt in optimizers:
        opt.step()
    rule.after_step()
    return torch.stack([loss.detach() for loss in losses]) if losses else torch.zeros(0)


class BlockwiseStage:
    """A stage of a blockwise rule: every micro-batch is forwarded and learnt from at once."""

    def __init__(self, rule: BlockwiseRule, ctx: StageContext, channel: ActivationChannel,
                 optimizers) -> None:
        self.rule, self.ctx, self.channel, self.optimizers = rule, ctx, channel, optimizers
        self._loss_sum: Tensor | None = None
        self._updates = 0

    def learn(self, losses: list[Tensor]) -> None:
        """One update of the stage's groups; its losses are kept for the epoch's mean."""
        detached = _apply(losses, self.optimizers, self.rule)
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._updates += 1

    def epoch_losses(self) -> list[float]:
        """Mean of each of the stage's losses over the epoch's updates; resets them."""
        mean = [] if self._loss_sum is None else (self._loss_sum / self._updates).tolist()
        self._loss_sum, self._updates = None, 0
        return mean

    def step(self, x, y) -> None:
        """One micro-batch (``x`` only on the first stage; labels on every stage)."""
        rule, ctx = self.rule, self.ctx
        h = rule.prepare(x, y) if ctx.first else self.channel.recv()
        readouts = rule.readouts()
        n_blocks = len(rule.network.blocks)
        losses = []
        for k in ctx.blocks:
            block = rule.network.blocks[k]
            h = block(rule.block_input(k, h))
            if block.trainable or readouts.get(k) or (rule.head_in_last_block
                                                      and k == n_blocks - 1):
                losses.append(rule.block_loss(k, h, y))
        if not ctx.last:
            self.channel.send(h)
        elif rule.network.head is not None and not rule.head_in_last_block and any(
                p.requires_grad for p in rule.network.head.parameters()):
            losses.append(rule.head_loss(h, y))
        self.learn(losses)

    def flush(self) -> None:
        """End of epoch: finish what is in flight."""
        self.channel.flush()


class ErrorBroadcastStage(BlockwiseStage):
    """A stage of an error-broadcast rule (dfa): forward now, learn when the error arrives.

    Earlier stages keep up to ``staleness`` micro-batches whose error has not arrived
    yet; with ``staleness=0`` they wait for it, so no weight changes between a block's
    forward and its update (exact). With ``staleness>0`` the stored input is forwarded
    again with the current weights when the error arrives.
    """

    def __init__(self, rule: ErrorBroadcastRule, ctx: StageContext, channel: ActivationChannel,
                 optimizers, staleness: int = 0) -> None:
        super().__init__(rule, ctx, channel, optimizers)
        self.staleness = staleness
        self.pending: deque = deque()  # (stage input, labels, block outputs or None)

    def _forward(self, h: Tensor) -> list[tuple[int, Tensor]]:
        outputs = []
        for k in self.ctx.blocks:
            h = self.rule.network.blocks[k](h.detach())
            outputs.append((k, h))
        return outputs

    def _losses(self, outputs, signal: Tensor, y: Tensor) -> list[Tensor]:
        blocks = self.rule.network.blocks
        return [self.rule.signal_loss(k, h_k, signal, y) for k, h_k in outputs
                if blocks[k].trainable]

    def step(self, x, y) -> None:
        rule, ctx = self.rule, self.ctx
        h_in = x if ctx.first else self.channel.recv()
        outputs = self._forward(h_in)
        h = outputs[-1][1] if outputs else h_in
        if ctx.last:
            scores = rule.network.head(h.detach())
            with torch.no_grad():
                signal = rule.output_signal(scores, y)
            self.channel.send_signal(signal)
            losses = self._losses(outputs, signal, y)
            if any(p.requires_grad for p in rule.network.head.parameters()):
                losses.append(rule.head_loss(scores, y))
            self.learn(losses)
            return
        self.channel.send(h)
        # Keep the graph only when no update can happen before the error arrives.
        self.pending.append((h_in, y, outputs if self.staleness == 0 else None))
        while len(self.pending) > self.staleness:
            self._learn_oldest()

    def _learn_oldest(self) -> None:
        h_in, y, outputs = self.pending.popleft()
        signal = self.channel.recv_signal(int(y.shape[0]), self.rule.task.num_classes)
        if outputs is None:
            outputs = self._forward(h_in)
        self.learn(self._losses(outputs, signal, y))

    def flush(self) -> None:
        while self.pending:
            self._learn_oldest()
        self.channel.flush()


def make_stage(rule: Rule, ctx: StageContext, channel: ActivationChannel, optimizers,
               staleness: int = 0) -> BlockwiseStage:
    """The stage loop that fits the rule (see :func:`check_stageable`)."""
    if isinstance(rule, ErrorBroadcastRule):
        return ErrorBroadcastStage(rule, ctx, channel, optimizers, staleness)
    return BlockwiseStage(rule, ctx, channel, optimizers)


def env_rank() -> tuple[int, int] | None:
    """(rank, world size) when started by torchrun or our launcher, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
