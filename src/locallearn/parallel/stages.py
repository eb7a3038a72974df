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

Rules that send a signal backward (dfa's output error, cff's other-layer
goodness, top-down signals) are not stageable yet: they are refused with a
one-line error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from locallearn.errors import UserError
from locallearn.rules.base import BlockwiseRule, ParamGroup, Rule

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


def check_stageable(rule: Rule) -> None:
    if not isinstance(rule, BlockwiseRule) or not getattr(rule, "stageable", True):
        raise UserError(
            f"rule {rule.name!r} cannot be split into stages (it sends signals backward "
            f"between blocks); stageable rules: blockwise ones such as mono-forward, local"
        )


def stage_groups(rule: BlockwiseRule, blocks: range, last: bool) -> list[ParamGroup]:
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
    """Point-to-point activations between neighbouring stages (shape header + data).

    Sends are asynchronous with one message in flight, so a stage can compute
    the next micro-batch while the previous activation travels.
    """

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self._pending: list = []
        self.wait_seconds = 0.0  # time blocked on neighbours (for the busy fraction)

    def send(self, h: Tensor) -> None:
        self.flush()
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

    def flush(self) -> None:
        t0 = time.perf_counter()
        for work in self._pending:
            work.wait()
        self._pending = []
        self.wait_seconds += time.perf_counter() - t0


def stage_step(rule: BlockwiseRule, ctx: StageContext, channel: ActivationChannel,
               optimizers, x, y) -> Tensor:
    """One micro-batch on one stage; returns the stage's losses (detached)."""
    h = rule.prepare(x, y) if ctx.first else channel.recv()
    readouts = rule.readouts()
    n_blocks = len(rule.network.blocks)
    losses = []
    for k in ctx.blocks:
        block = rule.network.blocks[k]
        h = block(rule.block_input(k, h))
        if block.trainable or readouts.get(k) or (rule.head_in_last_block and k == n_blocks - 1):
            losses.append(rule.block_loss(k, h, y))
    if not ctx.last:
        channel.send(h)
    elif rule.network.head is not None and not rule.head_in_last_block and any(
            p.requires_grad for p in rule.network.head.parameters()):
        losses.append(rule.head_loss(h, y))
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


def env_rank() -> tuple[int, int] | None:
    """(rank, world size) when started by torchrun or our launcher, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
