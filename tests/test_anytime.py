"""What locality buys: early exit, layer importance, depth pruning and growing.

Small mono-forward and ff networks trained once on digits (a few seconds) serve every
test; the checks are exact properties, not tuned figures.
"""

import json

import pytest
import torch

from locallearn import train
from locallearn.anytime import (
    Anytime,
    apply_prune,
    early_exit_predict,
    grow,
    layer_importance,
    load_run,
    sweep,
)
from locallearn.anytime.exits import block_table
from locallearn.anytime.importance import skipped
from locallearn.anytime.runs import held_out_metrics, save_model
from locallearn.errors import UserError
from locallearn.rules import RULES as RULES_REGISTRY
from runhelpers import run_cli

NET = "mlp:48,48,48"
RULES = ("mono-forward", "ff")




@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One trained run per rule (with checkpoint and summary.json)."""
    root = tmp_path_factory.mktemp("anytime")
    out = {}
    for rule in RULES:
        train(rule=rule, data="digits", net=NET, epochs=6, quiet=True, seed=0,
              out=str(root / rule))
        out[rule] = root / rule
    return out


@pytest.mark.parametrize("rule", RULES)
def test_summary_has_early_exit_sweep_and_speedups(runs, rule):
    s = json.loads((runs[rule] / "summary.json").read_text())
    curve = s["early_exit"]
    assert curve[0]["threshold"] == 0.0 and curve[0]["mean_blocks"] == 1.0
    assert curve[-1]["threshold"] > 1 and curve[-1]["mean_blocks"] == 3.0
    means = [c["mean_blocks"] for c in curve]
    assert means == sorted(means)  # a higher threshold never exits earlier
    assert min(c["accuracy"] for c in curve) > 0.6  # well above chance (0.1)
    point = s["early_exit_operating_point"]
    assert point["incremental"] and point["picked_on"] == "val"
    assert s["early_exit_speedup"]["threshold"] == point["threshold"]
    for bs in (1, 256):
        t = s["early_exit_timing"][f"batch_{bs}"]
        assert t["batch_size"] == bs and t["full_seconds"] > 0 and t["early_exit_seconds"] > 0
        low, high = t["speedup_range"]
        assert t["repeats"] == 5 and 0 < low <= high
        # A speed-up is reported only when the spread of the repetitions is below the effect.
        speedup = s["early_exit_speedup"][f"batch_{bs}"]
        if speedup is None:
            assert "spread larger than the effect" in t["speedup_note"]
        else:
            assert low <= speedup <= high and (high - low) / 2 <= abs(speedup - 1)


@pytest.mark.parametrize("rule", RULES)
def test_early_exit_threshold_zero_uses_one_block_above_one_uses_all(runs, rule):
    run = load_run(runs[rule])
    x, y = run.dataset.test.x, run.dataset.test.y
    anytime = Anytime(run.rule, probe=x[:8])
    assert anytime.incremental  # block-by-block readouts found and checked
    _, used = early_exit_predict(run.rule, x, 0.0)
    assert (used == 1).all()
    scores, used = early_exit_predict(run.rule, x, 1.5)
    assert (used == 3).all()
    full = anytime.all_scores(x)[-1]
    assert torch.equal(scores.argmax(1), full.argmax(1))
    if rule == "mono-forward":  # its last readout is the network's own prediction
        assert torch.equal(scores.argmax(1), run.rule.predict(x).argmax(1))
    # One sample at a time (the batch-1 fast path) gives the same answers as a batch.
    batch_scores, batch_used = anytime.predict(x[:20], 0.9)
    for i in range(20):
        s1, u1 = anytime.predict(x[i:i + 1], 0.9)
        assert u1.item() == batch_used[i].item()
        assert torch.allclose(s1[0], batch_scores[i], atol=1e-5)
    # The sweep (from per-block scores) and real early exit agree at every threshold.
    conf, correct = block_table(anytime, run.dataset.loader("test", 1024))
    for row in sweep(conf, correct, thresholds=(0.3, 0.9, 0.99)):
        scores, used = early_exit_predict(run.rule, x, row["threshold"])
        acc = (scores.argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(row["accuracy"], abs=1e-6)
        assert used.float().mean().item() == pytest.approx(row["mean_blocks"], abs=1e-6)


OTHER_READOUT_RULES = [r for r in ("local", "lls", "ccl", "cafo") if r in RULES_REGISTRY]


@pytest.mark.parametrize("rule", OTHER_READOUT_RULES)
def test_other_readout_rules_exit_block_by_block(rule, digits):
    trained = train(rule=rule, data="digits", net=NET, epochs=2, quiet=True, checkpoint=False,
                    early_exit=False).rule.eval()
    x = digits.test.x
    anytime = Anytime(trained, probe=x[:8])
    assert anytime.incremental, anytime.mode
    with torch.no_grad():
        for mine, ref in zip(anytime.all_scores(x), trained.block_scores(x), strict=True):
            assert torch.allclose(mine, ref, atol=1e-5)
    assert (early_exit_predict(trained, x, 0.0)[1] == 1).all()
    assert (early_exit_predict(trained, x, 1.5)[1] == 3).all()


def test_layer_importance_skips_and_restores(runs):
    run = load_run(runs["mono-forward"])
    x = run.dataset.test.x[:64]
    before = run.rule.predict(x)
    base, rows = layer_importance(run.rule, run.dataset)
    assert torch.equal(run.rule.predict(x), before)  # every skipped block was put back
    assert rows[0]["accuracy_drop"] is None and rows[0]["cosine"] is None  # 64 -> 48 values
    for r in rows[1:]:
        assert r["skip_accuracy"] is not None and -1 <= r["cosine"] <= 1
        assert r["accuracy_drop"] == pytest.approx(base - r["skip_accuracy"])
    with skipped(run.rule, [1]):
        _, rows_skipped = layer_importance(run.rule, run.dataset)
    assert rows_skipped[1]["cosine"] == pytest.approx(1.0)  # identity: output == input


@pytest.mark.parametrize("rule", RULES)
def test_pruned_model_loads_and_predicts(runs, rule, tmp_path, capsys):
    out = tmp_path / "k2"
    code, text, err = run_cli(capsys, "prune", str(runs[rule]), "--keep", "2", "--out", str(out))
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    pruned = load_run(out)
    # Two blocks with weights remain (cut after block 1, or the others skipped).
    assert sum(b.trainable for b in pruned.rule.network.blocks) == 2
    assert pruned.rule.predict(pruned.dataset.test.x[:5]).shape == (5, 10)
    assert s["num_parameters"] < s["original_num_parameters"]
    again = held_out_metrics(pruned.rule, pruned.dataset)
    assert again["test_accuracy"] == pytest.approx(s["test_accuracy"])
    assert again["test_accuracy"] > 0.6
    code, text, err = run_cli(capsys, "inspect", str(out), "--threshold", "0.9")
    assert code == 0, err
    assert "early exit at threshold 0.9" in text


def test_skip_pruning_round_trips(runs, tmp_path):
    run = load_run(runs["mono-forward"])
    x = run.dataset.test.x[:64]
    apply_prune(run.rule, [1], None)
    expected = run.rule.predict(x)
    transforms = [{"kind": "prune", "skip": [1], "exit": None}]
    save_model(tmp_path, run.rule, run.config, transforms,
               held_out_metrics(run.rule, run.dataset))
    loaded = load_run(tmp_path)
    assert sum(p.numel() for p in loaded.rule.network.blocks[1].parameters()) == 0
    assert torch.allclose(loaded.rule.predict(x), expected)


@pytest.mark.parametrize("rule", RULES)
def test_grow_never_changes_frozen_weights(runs, rule):
    run = load_run(runs[rule])
    old = {k: v.clone() for k, v in run.rule.state_dict().items()
           if k.startswith("network.blocks.")}
    result = grow(run, max_blocks=1, epochs=10)
    steps = result["steps"]
    assert [s["added"] for s in steps] == [0, 1] and steps[1]["blocks"] == 4
    assert steps[1]["test_accuracy"] > 0.6  # the new block learned (chance: 0.1)
    tried = result["last_tried"]
    assert len(tried.network.blocks) == 4
    state = tried.state_dict()
    for k, v in old.items():
        assert torch.equal(state[k], v), k  # old blocks bit-for-bit unchanged
    assert all(not p.requires_grad for p in tried.network.blocks[:3].parameters())
    assert all(p.requires_grad for p in tried.network.blocks[3].parameters())


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    cases = [
        (["inspect", str(tmp_path / "absent")], "does not exist"),
        (["prune", str(runs["ff"]), "--keep", "0", "--out", str(tmp_path / "p")], "--keep"),
        (["prune", str(runs["ff"]), "--keep", "4", "--out", str(tmp_path / "p")], "--keep"),
        (["grow", str(tmp_path), "--out", str(tmp_path / "g")], "not a run directory"),
        (["grow", str(runs["ff"]), "--out", str(tmp_path / "g"), "--max-blocks", "0"],
         "--max-blocks"),
    ]
    for argv, words in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and words in err, (argv, err)


def test_early_exit_needs_readouts(tmp_path, capsys):
    out = tmp_path / "bp"
    s = train(rule="backprop", data="digits", net="mlp:16,16", epochs=1, quiet=True,
              out=str(out)).summary
    assert "early_exit" not in s
    run = load_run(out)
    with pytest.raises(UserError, match="no per-block readouts"):
        Anytime(run.rule, probe=run.dataset.test.x[:4])
    code, _, err = run_cli(capsys, "inspect", str(out), "--threshold", "0.5")
    assert code == 2 and err.count("\n") == 1 and "no per-block readouts" in err


def test_report_plots_early_exit(runs, tmp_path):
    from locallearn.report import load_runs, write_report

    _, page = write_report(tmp_path, load_runs(runs["ff"].parent))
    assert "Early exit: accuracy vs mean depth" in page.read_text()
