"""The Rule interface: what every learning rule provides to the training loop.

A rule owns the maths of one training step and any state the paper adds
(readouts, fixed random feedback matrices, label embeddings). The loop
(:class:`locallearn.training.Trainer`) owns devices, optimisers, logging and
checkpoints.

One step of training is::

    losses = rule.losses(x, y)          # one scalar per parameter group
    sum(losses).backward()              # groups are disjoint: each loss reaches only its group
    for opt in optimisers: opt.step()   # one optimiser per group
    rule.after_step()

*Locality* is the contract that ``losses[k]`` yields gradients only for
``param_groups()[k]``; :func:`locallearn.testing.assert_local` checks it for
every rule. Rules whose update is not the gradient of a natural loss (DFA,
PEPITA, ...) return a surrogate whose gradient *is* the update, e.g.
``(h * delta.detach()).sum()`` for a projected error ``delta``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from locallearn.data.base import IGNORE_INDEX, Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option


@dataclass
class ParamGroup:
    """Parameters trained by one local objective, with their own optimiser."""

    name: str
    params: list[nn.Parameter]
    # Optimiser settings that override the run's (e.g. a readout's learning rate).
    options: dict[str, Any] = field(default_factory=dict)


class Staging(str, Enum):
    """How a rule splits into pipeline stages (:mod:`locallearn.parallel.stages`)."""

    NONE = "none"  # blocks are coupled beyond what a stage boundary carries
    BLOCKWISE = "blockwise"  # only the forward activation crosses a boundary
    ERROR_BROADCAST = "error-broadcast"  # plus one output signal sent back to every stage
    SHARED_SIGNAL = "shared-signal"  # plus a per-row sum over blocks, forward and back (cff)


@dataclass(frozen=True)
class StagePlan:
    """A rule's declared staging, with the reason when it cannot be staged."""

    kind: Staging
    reason: str = ""

    @property
    def stageable(self) -> bool:
        return self.kind is not Staging.NONE


# Block-by-block readout paths a rule may declare (see Rule.readout_paths).
READOUT_PATHS = ("goodness", "readout", "block-readout", "features")


class Rule(nn.Module):
    """Base class of learning rules. Subclasses register with ``@RULES.register(name)``.

    Class attributes:
        defaults: training settings the rule works best with (epochs, lr, optimizer,
            batch_size, ...); the CLI and config files override them.
        needs_gradient_through_blocks: True when the rule differentiates through
            blocks other than the one being trained (backprop, fa); such rules
            refuse networks with black-box blocks.
        supports_kinds: data kinds the rule handles ("image", "signal", "vector",
            "graph", "text").
        options: the constructor's options (:class:`locallearn.options.Option`).

    Capabilities the rest of the library asks about, each declared here with a default
    (subclasses override the declaration, never the library's probing):
        :attr:`staging` (how it splits into pipeline stages), :attr:`streams_losses`
        (which loss loop the trainer runs), :meth:`readout_paths`,
        :meth:`readout_modules`, :attr:`exit_confidence` and :attr:`cut_readout`
        (how :mod:`locallearn.anytime` reads class scores block by block).
    """

    name: ClassVar[str] = "rule"  # set by the registry (RULES.register)
    # The constructor's keyword options, declared once (type, allowed values, help; the
    # default is the signature's): create_rule validates them, `locallearn list` shows them.
    options: ClassVar[tuple[Option, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 128,
    }
    needs_gradient_through_blocks: ClassVar[bool] = False
    # Training rows per row of a batch (Forward-Forward: positive and negative data).
    rows_per_example: ClassVar[int] = 1
    supports_kinds: ClassVar[tuple[str, ...]] = ("image", "signal", "vector")

    def __init__(self, network: Network, task: Task) -> None:
        super().__init__()
        self.network = network
        self.task = task
        if task.kind not in self.supports_kinds:
            raise UserError(
                f"rule {self.name!r} does not support {task.kind} data "
                f"(supports: {', '.join(self.supports_kinds)})"
            )
        if self.needs_gradient_through_blocks and network.has_black_box:
            raise UserError(
                f"rule {self.name!r} needs gradients through every block, but the network has a "
                f"black-box block; use a local rule (e.g. mono-forward, local, ff)"
            )

    # -- training ---------------------------------------------------------
    def param_groups(self) -> list[ParamGroup]:
        """Disjoint groups of trainable parameters, one per local objective."""
        raise NotImplementedError

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """One scalar per parameter group; ``losses[k]`` may only reach group ``k``."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after the optimisers stepped (e.g. to renormalise weights)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called by the loop at the end of each epoch, before validation."""

    def on_validation(self, result: dict[str, Any]) -> None:
        """Called with each validation result (``accuracy``, ``per_block_accuracy``)."""

    def epoch_diagnostics(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """JSON-ready figures measured once per epoch on a fixed training batch and
        logged in ``metrics.jsonl`` (e.g. alignment angles); see
        :mod:`locallearn.measure.diagnostics`. The RNG state is restored afterwards."""
        return {}

    # True when the loop may call backward on each loss as iter_losses() yields it
    # (graph of loss k freed before loss k+1 is built: activation memory flat in depth).
    # Only safe when no two losses share graph nodes. A subclass declares it (a class
    # attribute, or a property when it depends on options).
    streams_losses: bool = False

    # -- capabilities -------------------------------------------------------
    @property
    def staging(self) -> StagePlan:
        """How the rule splits into pipeline stages; the stage factory only looks this up."""
        return StagePlan(Staging.NONE, "it couples blocks beyond a forward activation "
                                       "and one signal sent back")

    @property
    def stageable(self) -> bool:
        return self.staging.stageable

    def readout_paths(self) -> tuple[str, ...]:
        """Ways to read class scores block by block, most direct first (tried in order by
        :class:`locallearn.anytime.exits.Anytime`, each checked against :meth:`block_scores`
        on a probe batch): ``"goodness"`` (FF's label goodness summed over blocks),
        ``"readout"`` (a module per block, :meth:`readout_modules`), ``"block-readout"``
        (:meth:`BlockwiseRule.block_readout`), ``"features"`` (:meth:`block_scores` fed one
        block's output). None fitting: every block at once."""
        return ("features",)

    def readout_modules(self) -> list[nn.Module] | None:
        """Block k's readout module for every block k, or None if some block has none."""
        return None

    def predicting_blocks(self) -> list[int]:
        """The blocks whose scores the rule's prediction sums (FF's ``skip_first`` leaves
        block 0 out); early exit at block k averages those up to k. Default: every block."""
        return list(range(len(self.network.blocks)))

    # How early exit turns a block's scores into a confidence: "softmax" (max probability)
    # or "goodness-margin" (difference of the top two sigmoid(goodness - threshold)).
    exit_confidence: ClassVar[str] = "softmax"
    # Why locallearn.export refuses the rule (None: exportable); checked before tracing.
    export_refusal: ClassVar[str | None] = None
    # The block-by-block readout a cut model keeps (set by locallearn.anytime.prune on
    # a network cut after a block); None: Anytime works it out from the declarations.
    cut_readout: Any = None

    def iter_losses(self, x: Tensor, y: Tensor) -> Iterator[Tensor]:
        """The losses one at a time, in group order (default: from :meth:`losses`)."""
        yield from self.losses(x, y)

    # -- inference --------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        """Class scores (batch, classes); larger is more likely."""
        return self.network(x)

    def block_scores(self, x: Tensor) -> list[Tensor] | None:
        """Class scores from each block's own readout, or None if the rule has none."""
        return None

    def features(self, x: Tensor) -> list[Tensor]:
        """Every block's output at inference (default: the network's plain forward pass;
        a rule that transforms what a block reads overrides it)."""
        return self.network.features(x)

    def predict_with_blocks(self, x: Tensor) -> tuple[Tensor, list[Tensor] | None]:
        """``(predict(x), block_scores(x))`` of one batch. Rules whose two answers share
        work (FF's per-label passes, NoProp's trajectory) override this to compute it
        once; nothing is cached across calls, so a reused input buffer is always read."""
        return self.predict(x), self.block_scores(x)

    # -- helpers for subclasses -------------------------------------------
    def block_groups(self, extra: dict[int, list[nn.Module]] | None = None) -> list[ParamGroup]:
        """One group per block (plus modules in ``extra[k]``), then the head."""
        extra = extra or {}
        groups = []
        for k, block in enumerate(self.network.blocks):
            params = [p for p in block.parameters() if p.requires_grad]
            for m in extra.get(k, []):
                params += [p for p in m.parameters() if p.requires_grad]
            if params:
                groups.append(ParamGroup(f"block{k}", params))
        if self.network.head is not None:
            params = [p for p in self.network.head.parameters() if p.requires_grad]
            for m in extra.get(len(self.network.blocks), []):
                params += [p for p in m.parameters() if p.requires_grad]
            if params:
                groups.append(ParamGroup("head", params))
        return groups

    def block_modules(self) -> list[nn.Module]:
        """The modules ``freeze_blocks`` keeps at their random initialisation."""
        return list(self.network.blocks)

    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable state beyond tensors (saved in checkpoints)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def overrides(obj: object, base: type, *names: str) -> bool:
    """Whether ``obj``'s class replaces any of ``base``'s methods ``names``.

    The one place that compares methods: for a fast path that is only valid for the
    base's own arithmetic. Capabilities are declared on :class:`Rule`, never inferred.
    """
    return any(getattr(type(obj), n) is not getattr(base, n) for n in names)


def cross_entropy(scores: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy that skips targets equal to IGNORE_INDEX (-100).

    Scores may carry extra positions before the class dim (batch, length, classes)
    with targets (batch, length), as for next-token prediction.
    """
    if scores.dim() > 2:
        scores, y = scores.reshape(-1, scores.shape[-1]), y.reshape(-1)
    return torch.nn.functional.cross_entropy(scores, y, ignore_index=IGNORE_INDEX)


class BlockwiseRule(Rule):
    """A rule whose block ``k`` learns from its own output, its input and the labels only.

    Subclasses describe one block's step; :meth:`block_range` strings blocks together::

        h = prepare(x, y)                       # e.g. write labels into the input
        for k in blocks:                        # block_range(blocks, h, y)
            out = block_k(block_input(k, h))    # block_input detaches (and may normalise)
            loss_k = block_loss(k, out, y)      # the block's own objective
            h = out
        loss_head = head_loss(h, y)             # the head learns on detached features

    Because nothing but ``h`` crosses a block boundary, such rules can also be
    split into pipeline stages (:mod:`locallearn.parallel`) with no signal
    sent backwards: a stage runs :meth:`block_range` on its own blocks, the
    one-process loop (:meth:`iter_losses`) on all of them.
    """

    # True when the network's head is the last block's own readout (trained by the
    # last block's loss) rather than a separate classifier on detached features.
    head_in_last_block: ClassVar[bool] = False
    # True when the rule overrides block_readout (a readout at every block).
    has_block_readout: ClassVar[bool] = False
    # The block loop below frees block k's graph before block k+1 runs; a subclass
    # whose losses couple blocks (cff) declares False.
    streams_losses = True

    @property
    def staging(self) -> StagePlan:
        return StagePlan(Staging.BLOCKWISE)

    def readout_paths(self) -> tuple[str, ...]:
        paths = ("readout",) if self.readout_modules() is not None else ()
        if self.has_block_readout:
            paths += ("block-readout",)
        return (*paths, "features")

    def readout_modules(self) -> list[nn.Module] | None:
        readouts, last = self.readouts(), len(self.network.blocks) - 1
        modules = []
        for k in range(last + 1):
            mods = list(readouts.get(k, []))
            if k == last and self.head_in_last_block and self.network.head is not None:
                mods.append(self.network.head)
            # Parameter-free entries (e.g. an unused similarity branch) are not readouts;
            # of several, the first is taken (and checked on the probe batch).
            mods = [m for m in mods if any(True for _ in m.parameters())]
            if not mods:
                return None
            modules.append(mods[0])
        return modules

    def block_learns(self, k: int) -> bool:
        """Whether block ``k`` has a loss (a black box without a readout has none)."""
        return (self.network.blocks[k].trainable or bool(self.readouts().get(k))
                or (self.head_in_last_block and k == len(self.network.blocks) - 1))

    @property
    def head_learns(self) -> bool:
        """Whether the head has its own loss on the last block's detached output."""
        return (self.network.head is not None and not self.head_in_last_block
                and any(p.requires_grad for p in self.network.head.parameters()))

    def readouts(self) -> dict[int, list[nn.Module]]:
        """Modules trained together with block ``k`` (its readout), by block index.

        The key ``len(blocks)`` adds modules to the head's group.
        """
        return {}

    def param_groups(self) -> list[ParamGroup]:
        extra = {k: list(v) for k, v in self.readouts().items()}
        if self.head_in_last_block and self.network.head is not None:
            extra.setdefault(len(self.network.blocks) - 1, []).append(self.network.head)
            groups = self.block_groups(extra)
            return [g for g in groups if g.name != "head"]
        return self.block_groups(extra)

    def prepare(self, x: Tensor, y: Tensor | None) -> Tensor:
        return x

    def block_input(self, k: int, h: Tensor) -> Tensor:
        return h.detach()

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def head_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(self.network.head(h.detach()), y)

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        return list(self.iter_losses(x, y))

    def block_range(self, blocks: range, h: Tensor, y: Tensor) -> Generator[Tensor, None, Tensor]:
        """Blocks ``blocks`` on ``h`` (``prepare``'s output or the block before's): yields
        each learning block's loss as soon as it exists (so its graph can be freed before
        the next block runs) and returns the last block's output."""
        for k in blocks:
            h = self.network.blocks[k](self.block_input(k, h))
            if self.block_learns(k):
                yield self.block_loss(k, h, y)
        return h

    def iter_losses(self, x: Tensor, y: Tensor) -> Iterator[Tensor]:
        blocks = range(len(self.network.blocks))
        h = yield from self.block_range(blocks, self.prepare(x, y), y)
        if self.head_learns:
            yield self.head_loss(h, y)

    def block_readout(self, k: int, h: Tensor) -> Tensor | None:
        """Class scores of block k from its output ``h`` (as :meth:`features` gives it).

        Rules with a readout at every block override this and declare
        :attr:`has_block_readout`; :meth:`block_scores` and early exit
        (:mod:`locallearn.anytime`, which stops after block k) are built on it.
        """
        return None

    def block_scores(self, x: Tensor) -> list[Tensor] | None:
        if not self.has_block_readout:
            return None
        return [self.block_readout(k, h) for k, h in enumerate(self.features(x))]

    def features(self, x: Tensor) -> list[Tensor]:
        """Every block's output at inference (no labels)."""
        h = self.prepare(x, None)
        outs = []
        for k, block in enumerate(self.network.blocks):
            h = block(self.block_input(k, h))
            outs.append(h)
        return outs


class ErrorBroadcastRule(Rule):
    """A rule whose blocks learn from their own output and one signal made at the output.

    The signal (DFA's output error) is computed once from the head's scores and sent
    to every block; nothing else crosses a block boundary backwards::

        for k in blocks:                        # forward_range(blocks, h)
            h_k = block_k(h_{k-1}.detach())
        scores = head(h_L.detach())
        e = output_signal(scores, y)            # a constant for the blocks
        loss_k = signal_loss(k, h_k, e, y)      # signal_losses(outputs, e, y)
        loss_head = head_loss(scores, y)

    Because block k needs only ``e``, such rules can be split into pipeline stages
    (:mod:`locallearn.parallel`): the last stage sends ``e`` back to the others in one
    message per micro-batch, and a stage may apply it up to ``--staleness`` micro-batches
    late. A stage runs :meth:`forward_range` and :meth:`signal_losses` on its own
    blocks, the one-process loop (:meth:`iter_losses`) on all of them.
    """

    def param_groups(self) -> list[ParamGroup]:
        return self.block_groups()

    @property
    def staging(self) -> StagePlan:
        return StagePlan(Staging.ERROR_BROADCAST)

    def output_signal(self, scores: Tensor, y: Tensor) -> Tensor:
        """The signal broadcast to every block, one row per row of the batch; no gradient."""
        raise NotImplementedError

    def error_signal(self, h: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The head's scores on the last block's output ``h``, and the signal made there."""
        scores = self.network.head(h.detach())
        with torch.no_grad():
            signal = self.output_signal(scores, y)
        return scores, signal

    def signal_loss(self, k: int, h_k: Tensor, signal: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def head_loss(self, scores: Tensor, y: Tensor) -> Tensor:
        return cross_entropy(scores, y)

    @property
    def head_learns(self) -> bool:
        """Whether the head has parameters to learn (a link head scoring pairs has none)."""
        return any(p.requires_grad for p in self.network.head.parameters())

    # Block losses share no graph nodes (inputs are detached), so the loop may backward
    # each as it is yielded: block k's graph and its projected error are freed before
    # block k+1's error is made. All block outputs still live until the error exists.
    streams_losses = True

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        return list(self.iter_losses(x, y))

    def forward_range(self, blocks: range, h: Tensor) -> list[tuple[int, Tensor]]:
        """Blocks ``blocks`` on ``h``, each on its input detached: ``(k, output)`` of every
        block, kept (with their graphs) until the signal exists."""
        outputs = []
        for k in blocks:
            h = self.network.blocks[k](h.detach())
            outputs.append((k, h))
        return outputs

    def signal_losses(self, outputs: list[tuple[int, Tensor]], signal: Tensor,
                      y: Tensor) -> Iterator[Tensor]:
        """Each trainable block's loss from its output and the signal. Outputs leave the
        list as their loss is made, so a block's graph is freed once it is backwarded."""
        while outputs:
            k, h_k = outputs.pop(0)
            if self.network.blocks[k].trainable:
                yield self.signal_loss(k, h_k, signal, y)

    def iter_losses(self, x: Tensor, y: Tensor) -> Iterator[Tensor]:
        outputs = self.forward_range(range(len(self.network.blocks)), x)
        scores, signal = self.error_signal(outputs[-1][1] if outputs else x, y)
        yield from self.signal_losses(outputs, signal, y)
        if self.head_learns:
            yield self.head_loss(scores, y)
