"""Pieces shared by the Forward-Forward family (ff, cff, symba).

* :class:`LabelEmbedding` writes a label into the input: one-hot over the first
  entries of images (Hinton's "first 10 pixels", background on MNIST), appended to
  vectors and signals (extra positions for an mlp, extra channels for a cnn).
* :func:`goodness` is the mean (or sum) of squared activities of one layer.
* :func:`normalise` divides each sample's activity by its root mean square, so the
  next layer sees only its direction (Hinton's length normalisation, scaled by
  sqrt(width) so magnitudes do not depend on the layer's width).
* :class:`GoodnessRule` is the FF training step and both ways of predicting:
  goodness of every candidate label accumulated over layers (one pass per label),
  or a linear softmax readout on the normalised activities of a neutral-label
  pass (one pass). Subclasses only change the per-layer loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.data.base import Task
from locallearn.errors import UserError
from locallearn.networks.network import Network
from locallearn.options import Option
from locallearn.rules._norm import rms_normalise
from locallearn.rules.base import BlockwiseRule, StagePlan, Staging, cross_entropy, overrides

GOODNESS = ("mean", "sum")
NEGATIVES = ("random", "hardest", "readout")
PREDICT = ("goodness", "readout")
# Modules that act on each unit alone (block 0's shortcut for all labels needs these).
ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Identity)


class _SquaredGoodness(torch.autograd.Function):
    """Per-row mean (or sum) of squares, with autograd's own gradient
    ``(g / width) * (2 h)`` (``g * (2 h)`` for the sum) computed in one expression.

    The composed ``h.square().mean(1)`` backward materialises the expanded output
    gradient, ``h ** 1`` and two products at once: four activation-sized temporaries at
    the top of every FF layer's backward, against two here. The values are the same
    operations on the same operands, so gradients are bit-for-bit equal (tested).
    """

    @staticmethod
    def forward(ctx, h: Tensor, mean: bool) -> Tensor:
        ctx.save_for_backward(h)
        ctx.mean = mean
        sq = h.square()
        return sq.mean(1) if mean else sq.sum(1)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        (h,) = ctx.saved_tensors
        if ctx.mean:
            g = g / h.shape[1]
        return g.unsqueeze(1) * (2 * h), None


def goodness(h: Tensor, kind: str = "mean") -> Tensor:
    """Mean (or sum) of squared activities per sample: shape (batch,)."""
    return _SquaredGoodness.apply(h.flatten(1), kind == "mean")


NORM_EPS = 1e-8
# Rows of the every-label goodness pass at once (see label_chunks).
LABEL_PASS_ROWS = 1024


def label_chunks(batch: int, classes: int, rows: int, device: torch.device) -> list[Tensor]:
    """The labels 0..classes-1 in chunks of whole labels, each at most ``rows`` rows of
    ``batch`` samples (at least one label per chunk); ``rows=0``: one chunk of all."""
    if rows <= 0 or torch.compiler.is_exporting():
        # An exported predictor has a symbolic batch size, so the chunk count cannot
        # depend on it: one chunk of all labels (the scores are the same either way).
        return [torch.arange(classes, device=device)]
    per = max(1, min(classes, rows // max(batch, 1)))
    return list(torch.arange(classes, device=device).split(per))


def wrong_labels(y: Tensor, num_classes: int, scores: Tensor | None = None) -> Tensor:
    """A wrong label per sample: uniform at random, or the best-scoring wrong one."""
    if scores is None:
        shift = torch.randint(1, num_classes, y.shape, device=y.device)
        return (y + shift) % num_classes
    masked = scores.masked_fill(F.one_hot(y, num_classes).bool(), float("-inf"))
    return masked.argmax(1)


class LabelEmbedding(nn.Module):
    """Writes class labels into inputs.

    Images (C,H,W): the first ``num_classes`` entries of the flattened input become a
    one-hot vector times ``scale`` (Hinton's MNIST recipe; MNIST's first pixels are
    always background, as are digits' top-left ones). Vectors and signals, whose
    leading entries carry data (blanking them costs even backprop accuracy:
    docs/results/ff.md),
    get the one-hot *appended*: as ``num_classes`` more inputs of block 0's first
    ``nn.Linear`` (mode ``"append"``), or, when block 0 starts with a convolution, as
    ``num_classes`` more input channels, constant along the signal (mode ``"channel"``).
    A channel repeats the label at every position, so there each entry is ``scale`` over
    the root of the positions: the label carries the energy of one appended entry. At
    full ``scale`` per position (1000 times that on mnist1d's 40 positions) the label
    swamps the signal in the normalised input and FF's conv features fall below random
    ones (docs/results/ff.md).
    ``None`` as label gives the neutral label (every entry ``scale / num_classes``),
    used for the one-pass readout.
    """

    def __init__(self, network: Network, task: Task, scale: float) -> None:
        super().__init__()
        self.num_classes = task.num_classes
        self.mode = "overwrite"
        if task.kind in ("vector", "signal"):
            self.mode = "channel" if first_layer_is_conv(network) else "append"
        positions = math.prod(task.input_shape[1:]) if self.mode == "channel" else 1
        self.scale = scale / math.sqrt(positions)
        self.append = self.mode == "append"
        size = math.prod(task.input_shape)
        if self.mode == "append":
            widen_first_linear(network, task.num_classes)
        elif self.mode == "channel":
            widen_first_conv(network, task.num_classes)
        elif size < task.num_classes:
            raise UserError(f"inputs of {size} values cannot hold a one-hot label over "
                            f"{task.num_classes} classes; use an input with more values")

    def label_column(self, label: int, in_features: int) -> int:
        """Index of ``label``'s entry in the flattened embedded input of ``in_features``."""
        return in_features - self.num_classes + label if self.append else label

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        n, c = x.shape[0], self.num_classes
        if y is None:
            code = x.new_full((n, c), self.scale / c)
        else:
            code = F.one_hot(y, c).to(x.dtype) * self.scale
        if self.mode == "append":
            return torch.cat([x.flatten(1), code], 1)
        if self.mode == "channel":
            return torch.cat([x, code.view(n, c, *([1] * (x.dim() - 2))).expand(
                n, c, *x.shape[2:])], 1)
        flat = x.flatten(1).clone()
        flat[:, :c] = code
        return flat.view_as(x)


def first_layer_is_conv(network: Network) -> bool:
    """Whether block 0's first layer with weights is a convolution."""
    for m in network.blocks[0].modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return True
        if isinstance(m, nn.Linear):
            return False
    return False


def widen_first_conv(network: Network, extra: int) -> None:
    """Give the first convolution of block 0 ``extra`` more input channels (labels)."""
    block = network.blocks[0]
    for parent in block.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv1d, nn.Conv2d)):
                wide = type(child)(child.in_channels + extra, child.out_channels,
                                   child.kernel_size, child.stride, child.padding,
                                   child.dilation, child.groups, child.bias is not None,
                                   child.padding_mode)
                with torch.no_grad():
                    wide.weight[:, : child.in_channels] = child.weight
                    if child.bias is not None:
                        wide.bias.copy_(child.bias)
                setattr(parent, name, wide)
                block.in_shape = (child.in_channels + extra, *tuple(block.in_shape)[1:])
                return


def widen_first_linear(network: Network, extra: int) -> None:
    """Give the first ``nn.Linear`` of block 0 ``extra`` more inputs (for appended labels)."""
    block = network.blocks[0]
    for parent in block.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                wide = nn.Linear(child.in_features + extra, child.out_features,
                                 bias=child.bias is not None)
                with torch.no_grad():
                    wide.weight[:, : child.in_features] = child.weight
                    if child.bias is not None:
                        wide.bias.copy_(child.bias)
                setattr(parent, name, wide)
                block.in_shape = (child.in_features + extra,)
                return
    raise UserError("forward-forward on vector data appends the label to the input and needs "
                    "block 0 to contain an nn.Linear; use an mlp network")


class GoodnessRule(BlockwiseRule):
    """One training step of the FF family (the algorithm box of Hinton, 2022)::

        y_neg = wrong label (random, or hardest by goodness / by the readout)
        h = [embed(x, y); embed(x, y_neg)]             # positive and negative data
        for each layer k:
            h = layer_k(normalise(h.detach()))          # nothing flows between layers
            g_pos, g_neg = goodness(h) split in halves
        loss_k = layer_losses(g)[k]                     # subclass: FF, SymBa, CFF
        loss_head = CE(readout(normalised activities of a neutral-label pass), y)

    ``block_scores`` gives each layer's goodness for every candidate label;
    ``predict="goodness"`` sums them over layers (the first left out with
    ``skip_first``), ``predict="readout"`` uses the readout (one pass).
    """

    options = (
        Option("threshold", float, "goodness threshold theta of the logistic loss"),
        Option("goodness", str, "mean or sum of squared activities", choices=GOODNESS),
        Option("negatives", str, "wrong labels: random, hardest by goodness, or by readout",
               choices=NEGATIVES),
        Option("predict", str, "predict by label goodness or by the linear readout",
               choices=PREDICT),
        Option("skip_first", bool, "leave the first layer out of prediction"),
        Option("label_scale", float, "size of the label written into the input"),
        Option("label_pass_rows", int, "most rows the every-label goodness pass (hard "
               "negatives, goodness prediction) runs at once, in whole labels; 0: all at once",
               low=0),
    )

    def __init__(
        self,
        network: Network,
        task: Task,
        threshold: float = 2.0,
        goodness: str = "mean",
        negatives: str = "hardest",
        predict: str = "readout",
        skip_first: bool = False,
        label_scale: float = 5.0,
        label_pass_rows: int = LABEL_PASS_ROWS,
    ) -> None:
        super().__init__(network, task)
        self.threshold = threshold
        self.label_pass_rows = label_pass_rows
        self.goodness_kind = goodness
        self.negatives = negatives
        self.predict_with = predict
        self.skip_first = skip_first
        self.embed = LabelEmbedding(network, task, label_scale)
        layers = len(network.blocks)
        self.used_layers = list(range(1 if skip_first and layers > 1 else 0, layers))
        # The readout is a linear map on the concatenated normalised activities,
        # written as a sum of one linear map per layer; the network's head is the
        # last layer's part, so the head is still the network's output layer.
        # Nothing uses the readout under goodness prediction with non-readout negatives:
        # then it is not built, and the head (its last part) stays fixed.
        own = self.used_layers if network.head is None else self.used_layers[:-1]
        self.projections = nn.ModuleDict({str(k): network.make_readout(k) for k in own
                                          if self.trains_readout})
        if not self.trains_readout and network.head is not None:
            network.head.requires_grad_(False)

    # -- training ------------------------------------------------------------
    def readouts(self) -> dict[int, list[nn.Module]]:
        return {len(self.network.blocks): list(self.projections.values())}

    def prepare(self, x: Tensor, y: Tensor | None, y_neg: Tensor | None = None) -> Tensor:
        """Positive then negative data when labels are given, else the neutral label."""
        if y is None:
            return self.embed(x, None)
        if y_neg is None:
            y_neg = wrong_labels(y, self.task.num_classes)
        return torch.cat([self.embed(x, y), self.embed(x, y_neg)])

    def block_input(self, k: int, h: Tensor) -> Tensor:
        return rms_normalise(h.detach(), NORM_EPS)

    def layer_goodness(self, k: int, out: Tensor) -> Tensor:
        return goodness(out, self.goodness_kind)

    def goodness_range(self, blocks: range, h: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Blocks ``blocks`` on ``h``: the last output and each trainable block's goodness
        (positive rows, then negative). A rule whose losses need every layer's goodness
        (cff) runs it on all blocks; its pipeline stages on their own."""
        found = []
        for k in blocks:
            block = self.network.blocks[k]
            h = block(self.block_input(k, h))
            if block.trainable:
                found.append(self.layer_goodness(k, h))
        return h, found

    def pair_loss(self, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        """Hinton's logistic loss: p(positive) = sigmoid(goodness - threshold)."""
        return (F.softplus(self.threshold - g_pos) + F.softplus(g_neg - self.threshold)).mean()

    def layer_losses(self, g_pos: list[Tensor], g_neg: list[Tensor]) -> list[Tensor]:
        """One loss per trainable layer from that layer's goodness (FF: no sharing)."""
        return [self.pair_loss(p, n) for p, n in zip(g_pos, g_neg, strict=True)]

    def block_loss(self, k: int, out: Tensor, y: Tensor) -> Tensor:
        g_pos, g_neg = self.layer_goodness(k, out).chunk(2)
        return self.pair_loss(g_pos, g_neg)

    rows_per_example = 2  # positive then negative data
    # The head is the last layer's part of the readout and learns with it, if at all.
    head_learns = False
    # Declared by a rule whose layer losses need every layer's goodness (cff): its losses
    # come in one backward, and its stages pass the goodness summed over layers along.
    shares_goodness: ClassVar[bool] = False
    exit_confidence = "goodness-margin"

    @property
    def trains_readout(self) -> bool:
        """The readout learns only when something uses it: prediction or negatives."""
        return self.predict_with == "readout" or self.negatives == "readout"

    @property
    def staging(self) -> StagePlan:
        # Hard negatives are picked by every layer's goodness for every label (or by the
        # all-layer readout), and the readout spans every layer: a pipeline stage could
        # compute neither alone.
        if self.negatives != "random" or self.trains_readout:
            return StagePlan(Staging.NONE, "hard negatives and the readout need every layer; "
                             "stage it with --set rule.negatives=random "
                             "--set rule.predict=goodness")
        return StagePlan(Staging.SHARED_SIGNAL if self.shares_goodness else Staging.BLOCKWISE)

    @property
    def streams_losses(self) -> bool:
        # Layers that learn from their own goodness only (ff, symba) hand their losses
        # over one at a time, so layer k's graph is freed before layer k+1 runs; a rule
        # that couples layers in layer_losses (cff) keeps one backward.
        return not self.shares_goodness

    def readout_paths(self) -> tuple[str, ...]:
        return ("goodness",)

    def predicting_blocks(self) -> list[int]:
        return list(self.used_layers)

    def _negatives(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """The neutral-label activities (for the readout, if it learns) and a wrong label
        per sample."""
        with torch.no_grad():
            acts = self.normalised_features(x) if self.trains_readout else []
            if self.negatives == "random":
                y_neg = wrong_labels(y, self.task.num_classes)
            elif self.negatives == "readout":
                y_neg = wrong_labels(y, self.task.num_classes, self.readout(acts))
            else:
                y_neg = wrong_labels(y, self.task.num_classes,
                                     self.accumulate(self.label_goodness(x)))
        return acts, y_neg

    def iter_losses(self, x: Tensor, y: Tensor) -> Iterator[Tensor]:
        if not self.streams_losses:
            yield from self.losses(x, y)
            return
        acts, y_neg = self._negatives(x, y)
        yield from self.block_range(range(len(self.network.blocks)),
                                    self.prepare(x, y, y_neg), y)
        if self.trains_readout:  # on detached activities of the neutral-label pass
            yield cross_entropy(self.readout(acts), y)

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        if self.streams_losses:
            return list(self.iter_losses(x, y))
        acts, y_neg = self._negatives(x, y)
        _, goodness = self.goodness_range(range(len(self.network.blocks)),
                                          self.prepare(x, y, y_neg))
        halves = [g.chunk(2) for g in goodness]
        out = self.layer_losses([p for p, _ in halves], [n for _, n in halves])
        if self.trains_readout:  # on detached activities of the neutral-label pass
            out.append(cross_entropy(self.readout(acts), y))
        return out

    def epoch_diagnostics(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """Mean goodness per layer of positive data (true label) and of negative data
        (a random wrong label), in one pass as training makes them."""
        pos, neg = [], []
        with torch.no_grad():
            h = self.prepare(x, y)
            for k, block in enumerate(self.network.blocks):
                h = block(self.block_input(k, h))
                p, n = self.layer_goodness(k, h).chunk(2)
                pos.append(float(p.mean()))
                neg.append(float(n.mean()))
        return {"goodness_positive": pos, "goodness_negative": neg}

    # -- inference -----------------------------------------------------------
    def normalised_features(self, x: Tensor) -> list[Tensor]:
        """Normalised activity of every layer for the neutral label."""
        return [rms_normalise(h, NORM_EPS) for h in self.features(x)]

    def readout(self, acts: list[Tensor]) -> Tensor:
        scores = None
        for k in self.used_layers:
            a = acts[k].detach()
            s = self.projections[str(k)](a) if str(k) in self.projections else \
                self.network.head(a)
            scores = s if scores is None else scores + s
        return scores

    def label_goodness(self, x: Tensor) -> list[Tensor]:
        """Goodness of every layer for every candidate label: list of (batch, classes).

        The labels go through the network in chunks of whole labels, at most
        ``label_pass_rows`` rows (``classes * batch`` rows would hold ten times a training
        pass's activations at once); every row is computed alone, so the scores are the
        same with any chunk size.
        """
        first = self._first_layer_for_labels(x)
        parts = [self._label_goodness_chunk(x, labels, first)
                 for labels in label_chunks(x.shape[0], self.task.num_classes,
                                            self.label_pass_rows, x.device)]
        return [torch.cat(per_layer, 1) for per_layer in zip(*parts, strict=True)]

    def _label_goodness_chunk(self, x: Tensor, labels: Tensor,
                              first: Callable[[Tensor], Tensor] | None) -> list[Tensor]:
        """Per layer, (batch, len(labels)) goodness of ``labels``; rows label-major."""
        n, c = x.shape[0], len(labels)
        if first is not None:
            h = first(labels)
        else:  # general block 0: the batch once per label
            h = self.network.blocks[0](self.block_input(
                0, self.embed(x.repeat(c, *([1] * (x.dim() - 1))),
                              labels.repeat_interleave(n))))
        # Mean goodness is the mean square that RMS normalisation divides by: compute it
        # once per layer (this pass runs on classes x batch rows, so it is worth it).
        shared = (self.goodness_kind == "mean"
                  and not overrides(self, GoodnessRule, "block_input", "layer_goodness"))
        g = self.layer_goodness(0, h)
        scores = [g.view(c, n).t()]
        for k, block in enumerate(self.network.blocks[1:], start=1):
            if shared:
                inp = (h.flatten(1) / g.add(NORM_EPS).sqrt().unsqueeze(1)).view_as(h)
            else:
                inp = self.block_input(k, h)
            del h  # one layer's rows fewer alive while the next block runs
            h = block(inp.detach())
            del inp
            g = self.layer_goodness(k, h)
            scores.append(g.view(c, n).t())
        return scores

    def _first_layer_for_labels(self, x: Tensor) -> Callable[[Tensor], Tensor] | None:
        """A map from labels to block 0's output for each of them, rows label-major, with
        one matmul for all labels instead of one per label.

        When block 0 is (Flatten,) Linear, then elementwise activations, the label only
        changes ``label_scale`` in one input column, and the normalised input's length is
        the same for every label (a one-hot of fixed scale), so
            W normalise(x + s e_j) + b = W normalise(x + s e_0) + b + (s / r) (W_j - W_0)
        with r the input's root mean square. Exact; None when block 0 has another form.
        """
        body = self.network.blocks[0].body
        if not isinstance(body, nn.Sequential):
            return None
        mods = list(body)
        i = 0
        while i < len(mods) and isinstance(mods[i], nn.Flatten):
            i += 1
        if i == len(mods) or not isinstance(mods[i], nn.Linear) or not all(
                isinstance(m, ELEMENTWISE) for m in mods[i + 1:]):
            return None
        linear, n, c = mods[i], x.shape[0], self.task.num_classes
        xe = self.embed(x, torch.zeros(n, dtype=torch.long, device=x.device)).flatten(1)
        r = xe.square().mean(1, keepdim=True).add(NORM_EPS).sqrt()  # as in rms_normalise
        base = linear(xe / r)                                    # (n, out), label 0
        first = self.embed.label_column(0, linear.in_features)
        w = linear.weight[:, first:first + c]                    # (out, c)
        shift = (w - w[:, :1]).t()                               # (c, out)
        step = (self.embed.scale / r).unsqueeze(0)               # (1, n, 1)

        def output(labels: Tensor) -> Tensor:
            h = (base.unsqueeze(0) + step * shift[labels].unsqueeze(1)).reshape(
                len(labels) * n, -1)
            for m in mods[i + 1:]:
                h = m(h)
            return h

        return output

    def accumulate(self, per_layer: list[Tensor]) -> Tensor:
        """Goodness summed over the layers used for prediction."""
        return torch.stack([per_layer[k] for k in self.used_layers]).sum(0)

    def block_scores(self, x: Tensor) -> list[Tensor]:
        return self.label_goodness(x)

    def predict(self, x: Tensor) -> Tensor:
        if self.predict_with == "readout":
            return self.readout(self.normalised_features(x))
        return self.accumulate(self.label_goodness(x))

    def predict_with_blocks(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        # Evaluation wants both on the same batch: run the per-label passes once. No
        # cache across calls (one keyed on the input tensor's identity answered a
        # reused, refilled input buffer with the previous batch's predictions).
        per_layer = self.label_goodness(x)
        if self.predict_with == "readout":
            return self.readout(self.normalised_features(x)), per_layer
        return self.accumulate(per_layer), per_layer
