"""Layer-parallel training: contiguous stages of blocks, one process each.

With a :class:`~locallearn.rules.base.BlockwiseRule` nothing but the forward
activation crosses a block boundary, so stage ``s`` can update its blocks as
soon as micro-batch ``t`` arrives from stage ``s-1`` — no stage waits for a
backward pass (no backward locking). Each stage runs::

    for each micro-batch t (same order on every stage, from the shared seed):
        h = prepare(x, y)            if first stage   else   h = recv(stage s-1)
        losses, h = rule.block_range(my blocks, h, y)    # the rule's own block step
        isend(h, stage s+1)          unless last stage (last stage: head loss)
        backward(sum of my losses);  step my optimisers

The block step is the one the rule's one-process loop runs on all blocks
(:meth:`BlockwiseRule.block_range`; for the other stagings
:meth:`ErrorBroadcastRule.forward_range` / :meth:`~ErrorBroadcastRule.signal_losses`
and the FF family's ``goodness_range``), so a rule's algorithm is written once; this
module adds only what crosses stage boundaries.

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
stage's current weights: the error is up to ``k`` micro-batches old). cff (its
``staging`` is ``shared-signal``) passes the goodness summed over earlier layers
forward and gets the total back the same way. Which loop a rule gets is its declared
:attr:`~locallearn.rules.base.Rule.staging`; rules that couple blocks in other ways
(pepita's second pass, backprop, ccl's feedback network) declare ``none`` with the
reason, and are refused with a one-line error.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from locallearn.errors import UserError
from locallearn.rules.base import BlockwiseRule, ParamGroup, Rule, Staging
from locallearn.training.trainer import to_device

HEADER_DIMS = 8  # header sent before a boundary's first activation: dtype, ndim, sizes


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
    plan = rule.staging
    if not plan.stageable:
        raise UserError(
            f"rule {rule.name!r} cannot be split into stages ({plan.reason}); stageable rules: "
            f"blockwise ones such as mono-forward, local, lls, dfa and cff "
            f"(see docs/parallel.md)")
    if staleness > 0 and plan.kind is Staging.BLOCKWISE:
        raise UserError(f"--staleness applies to rules that send a signal backward (dfa, "
                        f"cff); {rule.name!r} sends nothing backward, so use --staleness 0")


def stage_groups(rule: Rule, blocks: range, last: bool) -> list[ParamGroup]:
    """The parameter groups trained on a stage: its blocks' groups, and the head's if last."""
    names = {f"block{k}" for k in blocks}
    if last:
        names.add("head")
    return [g for g in rule.param_groups() if g.name in names]


@dataclass
class StageContext:
    rank: int  # the stage's index in its pipeline
    world: int  # stages in the pipeline
    blocks: range
    device: torch.device
    offset: int = 0  # global rank of the pipeline's stage 0 (replica * stages in a grid)

    def peer(self, stage: int) -> int:
        """Global rank of another stage of this pipeline."""
        return self.offset + stage

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1


class Outbox:
    """Tensors to one peer: the first carries a header (dtype and per-row shape), later
    ones are bare, so the peer can post their receives ahead (see :class:`Inbox`)."""

    def __init__(self, peer: int, tag: int = 0) -> None:
        self.peer, self.tag = peer, tag
        self.format: tuple | None = None  # (dtype, row shape) announced to the peer
        self.bytes_sent = 0  # payload handed to isend, headers included

    def send(self, t: Tensor, rows: int, what: str) -> tuple[list, tuple]:
        """Start sending ``t`` (``rows`` rows); the works, and the buffers to keep alive."""
        t = t.detach().contiguous()
        fmt = (t.dtype, tuple(t.shape[1:]))
        works, keep = [], (t,)
        if self.format is None:
            header = encode_format(*fmt, device=t.device)
            works.append(dist.isend(header, self.peer, tag=self.tag))
            keep, self.format = (header, t), fmt
        if fmt != self.format or t.shape[0] != rows:
            raise RuntimeError(
                f"{what} of shape {tuple(t.shape)} {t.dtype}: a stage boundary carries {rows} "
                f"rows of {self.format[1]} {self.format[0]} (one row per row of the batch, "
                f"one shape per run)")
        works.append(dist.isend(t, self.peer, tag=self.tag))
        self.bytes_sent += sum(k.numel() * k.element_size() for k in keep)
        return works, keep


class Inbox:
    """Tensors from one peer, each of a known number of rows (from this stage's own copy
    of the batch) and the per-row shape of the first message's header.

    Knowing the shape ahead lets a stage post the next receive as soon as it takes the
    current one: gloo moves a message only once its receive is posted, so the transfer
    overlaps the stage's compute instead of adding to it (the wait this removed:
    docs/results/efficiency.md, layer-parallel throughput).
    """

    def __init__(self, peer: int, device: torch.device, tag: int = 0) -> None:
        self.peer, self.device, self.tag = peer, device, tag
        self.format: tuple | None = None
        self._next: tuple | None = None  # (work, buffer) of the receive posted ahead

    def recv(self, rows: int, next_rows: int | None = None) -> Tensor:
        if self.format is None:
            header = torch.zeros(HEADER_DIMS, dtype=torch.long, device=self.device)
            dist.recv(header, self.peer, tag=self.tag)
            self.format = decode_format(header)
        work, t = self._next if self._next is not None else self._post(rows)
        work.wait()
        self._next = self._post(next_rows) if next_rows is not None else None
        return t

    def _post(self, rows: int) -> tuple:
        dtype, shape = self.format
        buffer = torch.empty((rows, *shape), dtype=dtype, device=self.device)
        return dist.irecv(buffer, self.peer, tag=self.tag), buffer


class ActivationChannel:
    """A stage's messages: activations forward to the next stage, output signals back.

    Activation sends are asynchronous with one in flight, so a stage computes the next
    micro-batch while the last activation travels. The last stage keeps up to
    ``signals_in_flight`` output signals in flight, so earlier stages running that many
    micro-batches ahead (staleness) never block it.
    """

    def __init__(self, ctx: StageContext, signals_in_flight: int = 1) -> None:
        self.ctx = ctx
        self.signals_in_flight = signals_in_flight
        # Forward streams by tag: 0 the activation, others what a rule sends along.
        self._down: dict[int, Outbox] = {}
        self._up: dict[int, Inbox] = {}
        self._signals_out = [Outbox(ctx.peer(r)) for r in range(ctx.rank)] if ctx.last else []
        self._signals_in = Inbox(ctx.peer(ctx.world - 1), ctx.device)
        self._pending: dict[int, tuple[list, tuple]] = {}  # per tag: the send in flight
        self._signals: deque = deque()  # (works, buffers) per signal in flight
        self.wait_seconds = 0.0  # time blocked on neighbours (for the busy fraction)

    @property
    def bytes_sent(self) -> int:
        """Payload this stage handed to isend (activations, signals, headers)."""
        return sum(b.bytes_sent for b in [*self._down.values(), *self._signals_out])

    def _wait(self, works) -> None:
        t0 = time.perf_counter()
        for work in works:
            work.wait()
        self.wait_seconds += time.perf_counter() - t0

    def send(self, h: Tensor, rows: int, tag: int = 0) -> None:
        """The activation of a micro-batch with ``rows`` rows (or, with another ``tag``,
        something sent along with it) to the next stage."""
        if tag in self._pending:
            self._wait(self._pending[tag][0])
        box = self._down.setdefault(tag, Outbox(self.ctx.peer(self.ctx.rank + 1), tag))
        self._pending[tag] = box.send(h, rows, f"stage {self.ctx.rank}'s output (tag {tag})")

    def recv(self, rows: int, next_rows: int | None = None, tag: int = 0) -> Tensor:
        """The previous stage's activation of this micro-batch (or what came along with
        it, by ``tag``); with ``next_rows``, the next micro-batch's receive is posted."""
        t0 = time.perf_counter()
        box = self._up.setdefault(tag, Inbox(self.ctx.peer(self.ctx.rank - 1), self.ctx.device,
                                               tag))
        h = box.recv(rows, next_rows)
        self.wait_seconds += time.perf_counter() - t0
        return h

    def send_signal(self, signal: Tensor, rows: int) -> None:
        """Last stage: the output signal of one micro-batch to every earlier stage."""
        while len(self._signals) >= self.signals_in_flight:
            self._wait(self._signals.popleft()[0])
        works, keep = [], []
        for box in self._signals_out:
            w, k = box.send(signal, rows, "the output signal")
            works += w
            keep.append(k)
        self._signals.append((works, keep))

    def recv_signal(self, rows: int) -> Tensor:
        """Earlier stage: the last stage's output signal for the oldest pending micro-batch."""
        t0 = time.perf_counter()
        signal = self._signals_in.recv(rows)
        self.wait_seconds += time.perf_counter() - t0
        return signal

    def flush(self) -> None:
        """Wait for every send in flight."""
        for works, _ in self._pending.values():
            self._wait(works)
        self._pending = {}
        while self._signals:
            self._wait(self._signals.popleft()[0])


# Tensor dtypes a header can name (index into this tuple).
HEADER_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def encode_format(dtype: torch.dtype, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Header of a stream between two stages: dtype index, row dimensions, row shape."""
    if dtype not in HEADER_DTYPES or len(shape) > HEADER_DIMS - 2:
        raise RuntimeError(f"a stage boundary carries floating tensors of at most "
                           f"{HEADER_DIMS - 2} dimensions per row, got {dtype} {shape}")
    header = torch.zeros(HEADER_DIMS, dtype=torch.long)
    header[0], header[1] = HEADER_DTYPES.index(dtype), len(shape)
    header[2 : 2 + len(shape)] = torch.tensor(shape, dtype=torch.long)
    return header.to(device)


def decode_format(header: Tensor) -> tuple[torch.dtype, tuple[int, ...]]:
    values = header.tolist()
    return HEADER_DTYPES[values[0]], tuple(values[2 : 2 + values[1]])


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
        self.updates_total = 0  # updates over the run (for per-step message volumes)

    def learn(self, losses: list[Tensor]) -> None:
        """One update of the stage's groups; its losses are kept for the epoch's mean."""
        detached = _apply(losses, self.optimizers, self.rule)
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._updates += 1
        self.updates_total += 1

    def epoch_losses(self) -> list[float]:
        """Mean of each of the stage's losses over the epoch's updates; resets them."""
        mean = [] if self._loss_sum is None else (self._loss_sum / self._updates).tolist()
        self._loss_sum, self._updates = None, 0
        return mean

    def rows(self, x) -> int | None:
        """Rows that cross a stage boundary for batch ``x`` (None for no batch)."""
        return None if x is None else self.rule.network.rows(x) * self.rule.rows_per_example

    def first_input(self, x, y: Tensor) -> Tensor:
        return self.rule.prepare(to_device(x, self.ctx.device), y)

    def stage_input(self, x, y: Tensor, upcoming) -> Tensor:
        """The first stage prepares the batch; a later one receives the previous stage's
        activation, posting the receive of the ``upcoming`` batch (None: epoch's last)."""
        if self.ctx.first:
            return self.first_input(x, y)
        self.rule.network.bind(x)
        return self.channel.recv(self.rows(x), self.rows(upcoming))

    def step(self, x, y: Tensor, upcoming=None) -> None:
        """One micro-batch. Every stage has its own copy of the batch ``x`` (on the CPU)
        and the labels ``y``; ``upcoming`` is the next batch of the epoch, if any."""
        rule, ctx = self.rule, self.ctx
        losses, h = drain(rule.block_range(ctx.blocks, self.stage_input(x, y, upcoming), y))
        if not ctx.last:
            self.channel.send(h, self.rows(x))
        elif rule.head_learns:
            losses.append(rule.head_loss(h, y))
        self.learn(losses)

    def flush(self) -> None:
        """End of epoch: finish what is in flight."""
        self.channel.flush()


def drain(steps: Generator[Tensor, None, Tensor]) -> tuple[list[Tensor], Tensor]:
    """Everything a block-range step yields (its losses) and what it returns (the output)."""
    losses = []
    while True:
        try:
            losses.append(next(steps))
        except StopIteration as done:
            return losses, done.value


@contextmanager
def stashed_weights(active: bool = True) -> Iterator[None]:
    """Forward graphs built inside keep a copy of every parameter they save for backward.

    A stage that updates its weights while older micro-batches' graphs wait for their
    signal (staleness > 0) would otherwise find those saved weights changed in place
    (autograd refuses). Only weights that a backward needs are copied: none for a single
    linear layer on a detached input, the inner layers' for deeper blocks.
    """
    if not active:
        yield
        return

    def pack(t: Tensor) -> Tensor:
        base = t._base if t._base is not None else t
        if base.is_leaf and base.requires_grad:
            return t.detach().clone()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


class SignalStage(BlockwiseStage):
    """A stage that learns only when a signal from the last stage arrives.

    Every stage but the last keeps its micro-batches' forward graphs until their signal
    comes back, at most ``staleness`` of them beyond the one in hand. With staleness > 0
    its weights change while graphs wait, so those graphs are built with
    :func:`stashed_weights`. Subclasses say what a pending entry holds and how it learns
    (:meth:`_learn_oldest`).
    """

    def __init__(self, rule: Rule, ctx: StageContext, channel: ActivationChannel,
                 optimizers, staleness: int = 0) -> None:
        super().__init__(rule, ctx, channel, optimizers)
        self.staleness = staleness
        self.pending: deque = deque()

    def stash(self):
        """Context for this stage's forward pass (see :func:`stashed_weights`)."""
        return stashed_weights(self.staleness > 0 and not self.ctx.last)

    def defer(self, entry: tuple) -> None:
        """Keep a micro-batch until its signal arrives; learn from the oldest past the bound."""
        self.pending.append(entry)
        while len(self.pending) > self.staleness:
            self._learn_oldest()

    def _learn_oldest(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        while self.pending:
            self._learn_oldest()
        self.channel.flush()


class ErrorBroadcastStage(SignalStage):
    """A stage of an error-broadcast rule (dfa): forward now, learn when the error arrives.

    Earlier stages keep up to ``staleness`` micro-batches whose error has not arrived
    yet; with ``staleness=0`` they wait for it, so no weight changes between a block's
    forward and its update (exact). With ``staleness>0`` a stage keeps each pending
    micro-batch's forward graph, with the weights it ran with (:func:`stashed_weights`),
    and when the error arrives applies that gradient to its current weights: the
    gradient is up to ``staleness`` updates old, as in asynchronous pipelines.
    """

    # A pending entry: (labels, rows, block outputs).

    def _forward(self, h: Tensor) -> list[tuple[int, Tensor]]:
        with self.stash():
            return self.rule.forward_range(self.ctx.blocks, h)

    def _losses(self, outputs, signal: Tensor, y: Tensor) -> list[Tensor]:
        return list(self.rule.signal_losses(outputs, signal, y))

    def first_input(self, x, y: Tensor) -> Tensor:
        return to_device(x, self.ctx.device)

    def step(self, x, y: Tensor, upcoming=None) -> None:
        rule, ctx = self.rule, self.ctx
        h_in = self.stage_input(x, y, upcoming)
        outputs = self._forward(h_in)
        h = outputs[-1][1] if outputs else h_in
        rows = self.rows(x)
        if ctx.last:
            scores, signal = rule.error_signal(h, y)
            self.channel.send_signal(signal, rows)
            losses = self._losses(outputs, signal, y)
            if rule.head_learns:
                losses.append(rule.head_loss(scores, y))
            self.learn(losses)
            return
        self.channel.send(h, rows)
        self.defer((y, rows, outputs))

    def _learn_oldest(self) -> None:
        y, rows, outputs = self.pending.popleft()
        signal = self.channel.recv_signal(rows)
        self.learn(self._losses(outputs, signal, y))


GOODNESS_TAG = 1  # the forward stream of goodness summed over earlier layers


class SharedGoodnessStage(SignalStage):
    """A stage of cff, whose layer losses need the goodness of every layer.

    The goodness summed over earlier layers travels forward beside the activation; the
    last stage completes the sum and sends the total back to every earlier stage, which
    learns from it as an error-broadcast stage does: layer k's loss uses its own goodness
    with gradient and ``total - G_k`` (the others', a constant). With ``staleness=0`` a
    stage waits for the total of micro-batch ``t`` (exact); with ``k`` it may run up to
    k micro-batches ahead, keeping their forward graphs as an error-broadcast stage does.
    """

    def __init__(self, rule: BlockwiseRule, ctx: StageContext, channel: ActivationChannel,
                 optimizers, staleness: int = 0) -> None:
        super().__init__(rule, ctx, channel, optimizers, staleness)
        self.layers = sum(b.trainable for b in rule.network.blocks)
        # A pending entry: (rows, own layers' goodness).

    def _forward(self, h: Tensor) -> tuple[Tensor, list[Tensor]]:
        with self.stash():
            return self.rule.goodness_range(self.ctx.blocks, h)

    def _losses(self, goodness: list[Tensor], total: Tensor) -> list[Tensor]:
        return [self.rule.shared_loss(g, total - g.detach(), self.layers) for g in goodness]

    def step(self, x, y: Tensor, upcoming=None) -> None:
        ctx = self.ctx
        h_in = self.stage_input(x, y, upcoming)
        rows = self.rows(x)
        if ctx.first:
            partial = torch.zeros(rows, device=ctx.device)
        else:
            partial = self.channel.recv(rows, self.rows(upcoming), tag=GOODNESS_TAG)
        h, goodness = self._forward(h_in)
        for g in goodness:
            partial = partial + g.detach()
        if ctx.last:
            self.channel.send_signal(partial, rows)
            self.learn(self._losses(goodness, partial))
            return
        self.channel.send(h, rows)
        self.channel.send(partial, rows, tag=GOODNESS_TAG)
        self.defer((rows, goodness))

    def _learn_oldest(self) -> None:
        rows, goodness = self.pending.popleft()
        self.learn(self._losses(goodness, self.channel.recv_signal(rows)))


def make_stage(rule: Rule, ctx: StageContext, channel: ActivationChannel, optimizers,
               staleness: int = 0) -> BlockwiseStage:
    """The stage loop the rule declares (:attr:`Rule.staging`; see :func:`check_stageable`)."""
    kind = rule.staging.kind
    if kind is Staging.ERROR_BROADCAST:
        return ErrorBroadcastStage(rule, ctx, channel, optimizers, staleness)
    if kind is Staging.SHARED_SIGNAL:
        return SharedGoodnessStage(rule, ctx, channel, optimizers, staleness)
    return BlockwiseStage(rule, ctx, channel, optimizers)


def env_rank() -> tuple[int, int] | None:
    """(rank, world size) when started by torchrun or our launcher, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except ValueError:
            raise UserError(f"RANK={os.environ['RANK']!r} and WORLD_SIZE="
                            f"{os.environ['WORLD_SIZE']!r} must be integers (set by torchrun); "
                            f"unset them to train in one process") from None
        if not 0 <= rank < world:
            raise UserError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world})")
        return rank, world
    return None
