"""Early-exit ("anytime") prediction from the per-block readouts of a locally trained net.

A rule with readouts (``Rule.block_scores``) can answer after any block. Early exit
runs the blocks one at a time and stops, per sample, at the first block whose readout
is confident enough::

    h = start(x)
    for k in blocks:
        h = advance(k, h)                 # block k on the samples still running
        s = scores(k, h)                  # block k's readout
        exit samples with confidence(s) >= threshold (the last block answers the rest)

Confidence is the largest softmax probability of the readout's class scores. For the
Forward-Forward family, block k's score for each candidate label is its goodness
averaged over the rule's used blocks up to k (``used_layers``; Hinton's
accumulated-goodness prediction cut at block k, so full depth is the rule's own goodness
predictor;
``block_scores`` gives each layer's own goodness instead), and confidence is the
goodness margin in probability units, ``sigmoid(G_best - theta) - sigmoid(G_second -
theta)``. Both lie in [0, 1], so a
threshold of 0 always exits after the first block and a threshold above 1 never exits
early.

:class:`Anytime` needs block-by-block readouts to save any compute. It finds them for
the FF family (label goodness), for block-wise rules whose ``readouts()`` are the
modules ``block_scores`` applies, for block-wise rules with ``block_readout(k, h)``
(the readout hook every such rule in the library has), and for rules whose ``block_scores`` maps
``network.features(x)`` block by block (then fed one block's output at a time), and
checks them against ``Rule.block_scores`` on a probe batch; any other rule with
readouts falls back to computing every block's scores at once (same answers, no
saving; ``Anytime.incremental`` is then False).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.errors import UserError
from locallearn.rules.base import Rule

# Thresholds of the sweep: dense near 1 because softmax readouts saturate.
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995,
              0.998, 0.999, 0.9995, 0.9999, 0.99999, 1.01)
# "Within 1 point of full depth": the tolerance used to pick the operating threshold.
TOLERANCE = 0.01


class Anytime:
    """Block-by-block readouts of a trained rule, and early-exit prediction.

    ``probe`` is a small input batch used to check the block-by-block readouts
    against ``rule.block_scores``; without it the incremental path is trusted.
    """

    def __init__(self, rule: Rule, probe: Tensor | None = None) -> None:
        self.rule = rule
        self.num_blocks = len(rule.network.blocks)
        self.readout_modules: list[nn.Module] | None = None
        self._used = set(rule.predicting_blocks())
        own = rule.cut_readout  # set on pruned models (see prune.py)
        if own is not None:
            self.mode, self.readout_modules = own.mode, own.readout_modules
            self.confidence_kind = own.confidence_kind
            return
        self.confidence_kind = rule.exit_confidence
        candidates = rule.readout_paths()
        modules = rule.readout_modules() if "readout" in candidates else None
        # The first block-by-block path that reproduces block_scores on the probe wins;
        # without a probe the first is trusted. None matching: every block at once.
        for mode in candidates:
            self.mode = mode
            self.readout_modules = modules if mode == "readout" else None
            if probe is None or self._check(probe):
                break
        else:
            self.mode, self.readout_modules = "full", None

    @torch.no_grad()
    def _check(self, probe: Tensor) -> bool:
        """Whether the current mode's block-by-block scores equal ``block_scores``."""
        was = self.rule.training
        self.rule.eval()
        try:
            reference = self.rule.block_scores(probe)
            if reference is None:
                raise UserError(f"rule {self.rule.name!r} has no per-block readouts; early exit, "
                                f"truncation and growing need a rule with readouts "
                                f"(e.g. mono-forward, ff)")
            try:
                mine = self.all_scores(probe)
                if self.mode == "goodness":
                    # Mean goodness over blocks 0..k: only block 0 is the layer's own.
                    mine, reference = mine[:1], reference[:1]
                return len(mine) == len(reference) and all(
                    a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                    for a, b in zip(mine, reference, strict=False))
            except Exception:  # any failure of a guessed path: try the next, never crash a run
                return False
        finally:
            self.rule.train(was)

    @property
    def incremental(self) -> bool:
        """True when stopping early skips the later blocks' compute."""
        return self.mode != "full"

    # -- one block at a time -----------------------------------------------------
    def start(self, x: Tensor) -> Any:
        rule = self.rule
        if self.mode == "goodness":
            # One row per (candidate label, sample), label-major as in label_goodness.
            n, c = x.shape[0], rule.task.num_classes
            labels = torch.arange(c, device=x.device).repeat_interleave(n)
            h = rule.embed(x.repeat(c, *([1] * (x.dim() - 1))), labels)
            # rows, goodness summed over the used blocks so far, the last block's goodness
            return h, h.new_zeros(h.shape[0]), h.new_zeros(h.shape[0])
        if self.mode in ("readout", "block-readout"):
            return rule.prepare(x, None)
        if self.mode == "features":
            return x
        scores = rule.block_scores(x)
        if scores is None:
            raise UserError(f"rule {rule.name!r} has no per-block readouts; early exit needs a "
                            f"rule with readouts (e.g. mono-forward, ff)")
        return scores

    def advance(self, k: int, state: Any) -> Any:
        """Run block k on the state (a no-op when every score was computed up front)."""
        if self.mode == "full":
            return state
        if self.mode == "goodness":
            h, total, _ = state
            h = self.rule.network.blocks[k](self.rule.block_input(k, h))
            g = self.rule.layer_goodness(k, h)
            return h, total + g if k in self._used else total, g
        if self.mode == "features":  # a plain forward pass, as Network.features runs it
            return self.rule.network.blocks[k](state)
        return self.rule.network.blocks[k](self.rule.block_input(k, state))

    def scores(self, k: int, state: Any) -> Tensor:
        """Block k's class scores (batch, classes) from the state after block k."""
        if self.mode == "goodness":
            # Mean goodness over the rule's used blocks up to k (``used_layers``: FF skips
            # block 0 when it has more): its own prediction rule cut at block k, so full
            # depth is the rule's predictor, on the scale of one layer's goodness so the
            # threshold theta still applies. Before the first used block: that block's own.
            c = self.rule.task.num_classes
            n_used = sum(1 for j in self._used if j <= k)
            mean = state[1] / n_used if n_used else state[2]
            return mean.view(c, -1).t()
        if self.mode == "readout":
            return self.readout_modules[k](state)
        if self.mode == "block-readout":
            return self.rule.block_readout(k, state)
        if self.mode == "features":
            return self._scores_from_features(k, state)
        return state[k]

    def _scores_from_features(self, k: int, h: Tensor) -> Tensor:
        """Block k's scores from rule.block_scores, fed block k's output alone.

        Most rules write ``block_scores`` as ``[f(k, h) for k, h in
        enumerate(self.network.features(x))]``; with ``features`` briefly returning
        empty batches for blocks 0..k-1 and ``h`` for block k, only f(k, h) costs
        anything. Checked against the real ``block_scores`` on the probe batch.
        """
        net = self.rule.network
        fake = [h.new_empty((0, *net.blocks[j].out_shape)) for j in range(k)] + [h]
        net.features = lambda _x: fake
        try:
            return self.rule.block_scores(h)[k]
        finally:
            del net.features

    def select(self, state: Any, keep: Tensor) -> Any:
        """The state of the samples where ``keep`` (bool, per sample) is True."""
        if self.mode == "goodness":
            c = self.rule.task.num_classes
            h, total, last = state
            rows = h.view(c, -1, *h.shape[1:])[:, keep].reshape(-1, *h.shape[1:])
            return (rows, total.view(c, -1)[:, keep].reshape(-1),
                    last.view(c, -1)[:, keep].reshape(-1))
        if self.mode in ("readout", "block-readout", "features"):
            return state[keep]
        return [s[keep] for s in state]

    def confidence(self, scores: Tensor) -> Tensor:
        """Per-sample confidence in [0, 1] of a readout's class scores."""
        if self.confidence_kind == "goodness-margin":
            top = scores.topk(2, dim=1).values
            p = torch.sigmoid(top - float(self.rule.threshold))
            return p[:, 0] - p[:, 1]
        return F.softmax(scores.float(), dim=1).amax(1)

    def all_scores(self, x: Tensor, upto: int | None = None) -> list[Tensor]:
        """Scores of blocks 0..upto (default: all), computed incrementally."""
        last = self.num_blocks - 1 if upto is None else upto
        state, out = self.start(x), []
        for k in range(last + 1):
            state = self.advance(k, state)
            out.append(self.scores(k, state))
        return out

    # -- prediction -------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
        """Early-exit class scores (batch, classes) and the blocks each sample used."""
        n, last = x.shape[0], self.num_blocks - 1
        if n == 1:
            return self._predict_one(x, threshold)
        used = torch.full((n,), self.num_blocks, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        out: Tensor | None = None
        state = self.start(x)
        for k in range(last + 1):
            state = self.advance(k, state)
            s = self.scores(k, state)
            if out is None:
                out = s.new_zeros(n, s.shape[-1])
            done = (torch.ones_like(active, dtype=torch.bool) if k == last
                    else self.confidence(s) >= threshold)
            out[active[done]] = s[done]
            used[active[done]] = k + 1
            if bool(done.all()):
                break
            keep = ~done
            active, state = active[keep], self.select(state, keep)
        return out, used

    def _predict_one(self, x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
        # One sample: no per-sample bookkeeping, which would cost as much as a small block.
        state, last = self.start(x), self.num_blocks - 1
        for k in range(last + 1):
            state = self.advance(k, state)
            s = self.scores(k, state)
            if k == last or float(self.confidence(s)) >= threshold:
                return s, torch.full((1,), k + 1, dtype=torch.long, device=x.device)
        raise AssertionError("unreachable")

    @torch.no_grad()
    def predict_full(self, x: Tensor) -> Tensor:
        """Every block, then only the last readout: the full-depth baseline for timing."""
        state = self.start(x)
        for k in range(self.num_blocks):
            state = self.advance(k, state)
        return self.scores(self.num_blocks - 1, state)


def early_exit_predict(rule: Rule, x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Early-exit prediction: class scores and blocks used per sample (Python API).

    Stops each sample at the first block whose readout confidence (max softmax
    probability; goodness margin for the FF family) is >= ``threshold``.
    """
    was = rule.training
    rule.eval()
    try:
        return Anytime(rule, probe=x[:8]).predict(x, threshold)
    finally:
        rule.train(was)


# -- the sweep -----------------------------------------------------------------------

@torch.no_grad()
def block_table(anytime: Anytime, loader, device: torch.device | str = "cpu"
                ) -> tuple[Tensor, Tensor]:
    """Per sample and block: readout confidence and correctness, (n, blocks) each."""
    was = anytime.rule.training
    anytime.rule.eval()
    confs, hits = [], []
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            scores = anytime.all_scores(x)
            confs.append(torch.stack([anytime.confidence(s) for s in scores], 1).cpu())
            hits.append(torch.stack([s.argmax(1) == y for s in scores], 1).cpu())
    finally:
        anytime.rule.train(was)
    return torch.cat(confs), torch.cat(hits)


def sweep(confidence: Tensor, correct: Tensor,
          thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, float]]:
    """Accuracy and mean number of blocks used for each threshold (exact, no re-run)."""
    rows = []
    for t in thresholds:
        confident = confidence >= t
        confident[:, -1] = True  # the last block answers whoever is left
        exit_at = confident.float().argmax(1)  # first confident block
        acc = correct.gather(1, exit_at[:, None]).float().mean().item()
        rows.append({"threshold": float(t), "accuracy": acc,
                     "mean_blocks": (exit_at + 1).float().mean().item()})
    return rows


def operating_point(rows: list[dict[str, float]], tolerance: float = TOLERANCE
                    ) -> dict[str, float]:
    """The row with the fewest blocks whose accuracy is within ``tolerance`` of full depth.

    Full depth is the row with the largest threshold (no early exit).
    """
    full = max(rows, key=lambda r: r["threshold"])
    ok = [r for r in rows if r["accuracy"] >= full["accuracy"] - tolerance]
    return min(ok, key=lambda r: (r["mean_blocks"], -r["accuracy"]))


# -- timing --------------------------------------------------------------------------

def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()
def measure_speedup(anytime: Anytime, x: Tensor, threshold: float, batch_size: int,
                    repeats: int = 5) -> dict[str, Any]:
    """Wall-clock time to predict ``x`` in batches, early exit against full depth.

    ``repeats`` interleaved pairs (full, early) after a warm-up; each pair gives one
    speed-up (full / early). ``speedup`` is their median, ``speedup_range`` their min and
    max; when half that range exceeds the effect (|median - 1|), timing noise is as large
    as the effect and ``speedup`` is None (``speedup_note`` says so).
    """
    was = anytime.rule.training
    anytime.rule.eval()
    batches = [x[i:i + batch_size] for i in range(0, x.shape[0], batch_size)]
    sync = (torch.cuda.synchronize if x.is_cuda else (lambda: None))

    def run(fn: Callable[[Tensor], Any]) -> Callable[[], None]:
        def go() -> None:
            for b in batches:
                fn(b)
            sync()
        return go

    full_fn, early_fn = run(anytime.predict_full), run(lambda b: anytime.predict(b, threshold))
    try:
        full_fn(), early_fn()  # warm-up
        pairs = [(_seconds(full_fn), _seconds(early_fn)) for _ in range(max(1, repeats))]
    finally:
        anytime.rule.train(was)
    ratios = sorted(f / e for f, e in pairs if e > 0)
    out: dict[str, Any] = {"batch_size": batch_size, "samples": int(x.shape[0]),
                           "repeats": len(pairs),
                           "full_seconds": statistics.median(f for f, _ in pairs),
                           "early_exit_seconds": statistics.median(e for _, e in pairs),
                           "speedup": None, "speedup_range": None}
    if ratios:
        median = statistics.median(ratios)
        out["speedup_range"] = [ratios[0], ratios[-1]]
        if (ratios[-1] - ratios[0]) / 2 <= abs(median - 1):
            out["speedup"] = median
        else:
            out["speedup_note"] = (f"left out: x{ratios[0]:.2f}-x{ratios[-1]:.2f} over "
                                   f"{len(ratios)} repetitions, spread larger than the effect")
    return out


def early_exit_summary(rule: Rule, dataset, device: torch.device | str = "cpu",
                       batch_size: int = 1024, time_samples_batch1: int = 128,
                       time_samples_batch256: int = 1024, repeats: int = 5) -> dict[str, Any]:
    """``early_exit`` (test sweep), the operating point picked on validation, speed-ups.

    Empty for rules without readouts, for datasets with their own evaluation
    (graphs, text), where samples are not independent rows, and for streamed data.
    """
    if getattr(dataset, "evaluate", None) is not None or not hasattr(dataset.test, "x"):
        return {}  # graphs and text; or a streamed test split (no tensor to time on)
    x_probe = dataset.test.x[:8].to(device)
    with torch.no_grad():
        was = rule.training
        rule.eval()
        probe_scores = rule.block_scores(x_probe)
        rule.train(was)
    if probe_scores is None or any(s.dim() != 2 for s in probe_scores):
        return {}
    anytime = Anytime(rule, probe=x_probe)
    test = sweep(*block_table(anytime, dataset.loader("test", batch_size), device))
    if not len(dataset.val):
        # The threshold is chosen on validation only, never on the test split it is
        # reported on: without a validation split there is the test curve and no choice.
        return {"early_exit": test, "early_exit_operating_point": None}
    val = sweep(*block_table(anytime, dataset.loader("val", batch_size), device))
    chosen, picked_on = operating_point(val)["threshold"], "val"
    at = next(r for r in test if r["threshold"] == chosen)
    full = max(test, key=lambda r: r["threshold"])
    speed = {}
    for bs, n in ((1, time_samples_batch1), (256, time_samples_batch256)):
        speed[f"batch_{bs}"] = measure_speedup(anytime, dataset.test.x[:n].to(device), chosen,
                                               bs, repeats)
    return {
        "early_exit": test,
        "early_exit_operating_point": {
            **at, "picked_on": picked_on, "full_depth_accuracy": full["accuracy"],
            "blocks": anytime.num_blocks, "confidence": anytime.confidence_kind,
            "incremental": anytime.incremental,
            "speedup_batch_1": speed["batch_1"]["speedup"],
            "speedup_batch_256": speed["batch_256"]["speedup"],
        },
        "early_exit_speedup": {"threshold": chosen, "batch_1": speed["batch_1"]["speedup"],
                               "batch_256": speed["batch_256"]["speedup"]},
        "early_exit_timing": speed,
    }
