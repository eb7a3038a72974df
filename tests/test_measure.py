"""The memory meter is allocator-level, kept out of the timed steps, and changes nothing."""

from __future__ import annotations

import torch
from torch import nn

from locallearn.bench import Cell
from locallearn.bench.cells import memory_cell
from locallearn.measure import measure_step_memory, meter_active
from locallearn.rules import RULES
from locallearn.training import TrainConfig, Trainer, build

MIB = 2**20


def _model_and_step(extra_no_grad_bytes: int):
    model = nn.Linear(64, 64)
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(32, 64)

    def step():
        with torch.no_grad():  # no autograd involved: a saved-tensor meter cannot see it
            scratch = torch.empty(extra_no_grad_bytes // 4)
            scratch.fill_(1.0)
            del scratch
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    return model, opt, x, step


def test_no_grad_work_and_temporaries_count_towards_the_peak():
    model, opt, x, step = _model_and_step(8 * MIB)
    m = measure_step_memory(step, model, [opt], x, torch.device("cpu"), steps=2)
    assert m["activation_peak_bytes"] >= 8 * MIB
    assert m["saved_tensor_peak_bytes"] < 1 * MIB  # what the old meter reported
    assert m["peak_memory_bytes"] >= m["fixed_state_bytes"] + 8 * MIB
    # Without the no_grad scratch the peak drops by its size (to within allocator detail).
    model, opt, x, step = _model_and_step(4)
    small = measure_step_memory(step, model, [opt], x, torch.device("cpu"), steps=2)
    assert m["peak_memory_bytes"] - small["peak_memory_bytes"] >= 8 * MIB - 64 * 1024


def test_the_allocator_agrees_with_the_tensors_alive_between_steps():
    # What the profiler's allocation/free events leave alive between two steps is exactly
    # the state the tensors hold: parameters, optimiser state, gradients and the batch.
    for rule in ("backprop", "fa", "local"):
        r = memory_cell(Cell("memory", rule, "digits", "mlp:64,64", 0, {"batch_size": 16}),
                        {"steps": 3}, None, "cpu")["memory"]
        assert r["between_steps_bytes"] == (r["fixed_state_bytes"] + r["gradient_bytes"]
                                            + r["input_bytes"]), rule
        assert r["peak_memory_bytes"] >= r["between_steps_bytes"] + r["activation_peak_bytes"] \
            - r["gradient_bytes"], rule


def test_feedback_matrices_are_fixed_state_not_activations():
    def mem(rule):
        return memory_cell(Cell("memory", rule, "digits", "mlp:256,256", 0,
                                {"batch_size": 16}), {"steps": 2}, None, "cpu")["memory"]

    bp, fa = mem("backprop"), mem("fa")
    weights = 64 * 256 + 256 * 256 + 256 * 10
    assert fa["buffer_bytes"] == 4 * weights and bp["buffer_bytes"] == 0
    assert fa["fixed_state_bytes"] == bp["fixed_state_bytes"] + fa["buffer_bytes"]
    # FA's activations are backprop's to within a block's temporaries (16 x 256 floats),
    # not its feedback matrices (about 340 KB).
    assert abs(fa["activation_peak_bytes"] - bp["activation_peak_bytes"]) <= 2 * 16 * 256 * 4
    assert abs(fa["saved_tensor_peak_bytes"] - bp["saved_tensor_peak_bytes"]) <= 16 * 256 * 4


def test_ff_label_passes_count_even_under_no_grad():
    # FF's hard-negative pass runs the net on every label under no_grad; autograd saves
    # none of it, the allocator holds all of it.
    def mem(rule):
        return memory_cell(Cell("memory", rule, "digits", "mlp:256,256", 0,
                                {"batch_size": 64}), {"steps": 2}, None, "cpu")

    ff, bp = mem("ff"), mem("backprop")
    assert ff["activation_peak_bytes"] > 2 * ff["saved_tensor_peak_bytes"]
    assert ff["peak_memory_bytes"] >= bp["peak_memory_bytes"]


class _Probe(RULES.get("backprop")):
    """Backprop that notes, at each step, which object ran it and whether a meter ran."""

    calls: list[tuple[int, bool, bool, bool]] = []

    def losses(self, x, y):
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
        _Probe.calls.append((id(self), meter_active(),
                             torch.autograd.profiler._is_profiler_enabled, hooks))
        return super().losses(x, y)


def _train(digits, measure: bool):
    torch.manual_seed(0)
    _, base = build("backprop", "digits", "mlp:32", 0)
    rule = _Probe(base.network, base.task)
    _Probe.calls = []
    config = TrainConfig(epochs=2, batch_size=128, quiet=True, checkpoint=False,
                         measure_memory=measure, early_exit=False)
    summary = Trainer(config).fit(rule, digits)
    return rule, summary, list(_Probe.calls)


def test_timed_steps_never_run_under_the_meter_and_measuring_changes_nothing(digits):
    rule, summary, calls = _train(digits, measure=True)
    timed = [c for c in calls if c[0] == id(rule)]
    measured = [c for c in calls if c[0] != id(rule)]
    steps_per_epoch = sum(1 for _ in digits.loader("train", 128))
    assert timed and all(not active and not prof and not hooks
                         for _, active, prof, hooks in timed)
    assert len(timed) == 2 * steps_per_epoch
    # The meter's pass: its own steps, on a copy, under the profiler and saved-tensor hooks.
    assert len(measured) == 2 and all(active and prof and hooks
                                      for _, active, prof, hooks in measured)
    assert summary["peak_memory_bytes"] == summary["memory"]["peak_memory_bytes"] > 0
    # Same weights and accuracy with and without the meter (its pass restores the RNG).
    rule2, summary2, calls2 = _train(digits, measure=False)
    assert all(c[0] == id(rule2) for c in calls2) and summary2["peak_memory_bytes"] is None
    for a, b in zip(rule.parameters(), rule2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert summary["test_accuracy"] == summary2["test_accuracy"]


def test_ff_label_pass_in_chunks_holds_less():
    # All ten labels at once hold 10 x 64 rows per layer under no_grad; one label at a
    # time (label_pass_rows=64) holds 64, under the training pass's 128 rows.
    def peaks(rows):
        return memory_cell(Cell("memory", "ff", "digits", "mlp:256,256", 0, {"batch_size": 64},
                                {"label_pass_rows": rows}), {"steps": 2}, None, "cpu")

    whole, chunked = peaks(0), peaks(64)
    assert chunked["activation_peak_bytes"] < whole["activation_peak_bytes"] / 2
    assert chunked["peak_memory_bytes"] < whole["peak_memory_bytes"]
    assert chunked["fixed_state_bytes"] == whole["fixed_state_bytes"]
