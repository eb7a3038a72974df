"""`locallearn bench`: suites, resume, rows with hardware, memory and FLOP measurements."""

import json

import pytest
import torch

from locallearn.bench import Cell, load_suite, read_results, run_suite
from locallearn.bench.cells import efficiency_cell, memory_cell
from locallearn.bench.efficiency import (
    FRACTION_NOISE,
    relative_flops,
    time_to_accuracy,
    times_to_accuracy,
)
from locallearn.errors import UserError
from locallearn.rules import RULES

HARDWARE_KEYS = {"cpu", "cpu_count", "torch_threads", "torch_version", "gpu"}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny cells: a second OpenMP thread only waits for a core on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_smoke_suite_covers_every_registered_rule():
    cells = load_suite("smoke").cells()
    assert sorted(c.rule for c in cells) == RULES.names()
    assert len({c.key for c in cells}) == len(cells)


def test_smoke_suite_runs_resumes_and_writes_hardware(tmp_path, cli):
    out = tmp_path / "bench"
    # First only backprop, in process; then the whole suite through the CLI must skip it.
    counts = run_suite(load_suite("smoke"), out, quiet=True, only_rules=["backprop"])
    assert counts["ok"] == 1
    first = read_results(out)
    assert len(first) == 1 and first[0]["rule"] == "backprop"
    backprop_summary = out / first[0]["run_dir"] / "summary.json"
    stamp = backprop_summary.stat().st_mtime_ns

    r = cli("bench", "--suite", "smoke", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 already done" in r.stdout
    rows = read_results(out)
    assert backprop_summary.stat().st_mtime_ns == stamp  # the done cell was not rerun
    assert sorted(row["rule"] for row in rows) == RULES.names()  # each cell exactly once
    for row in rows:
        assert row["status"] in ("ok", "skipped"), (row["key"], row.get("reason"))
        assert HARDWARE_KEYS <= set(row["hardware"]), row["hardware"]
        if row["status"] == "ok":
            assert 0.0 <= row["test_accuracy"] <= 1.0
            assert len(row["history"]) == 2 and row["train_seconds"] > 0
        else:
            assert row["reason"]
    assert (out / "report.html").exists() and (out / "report.md").exists()
    ok = next(row for row in rows if row["status"] == "ok")
    assert ok["hardware"]["torch_version"] in (out / "report.md").read_text()

    # Nothing left to do: no new rows. An interrupted cell (row missing) runs again.
    assert run_suite(load_suite("smoke"), out, quiet=True)["ok"] == 0
    assert len(read_results(out)) == len(rows)
    kept = [row for row in rows if row["rule"] != "mono-forward"]
    (out / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept)
                                       + '{"cut mid-wri')
    counts = run_suite(load_suite("smoke"), out, quiet=True)
    assert counts["ok"] == 1 and counts["already_done"] == len(rows) - 1
    assert read_results(out)[-1]["rule"] == "mono-forward"


def test_suite_errors_are_one_line(tmp_path, cli):
    with pytest.raises(UserError, match="unknown suite"):
        load_suite("nosuch")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: train\nrules: [backprop]\ntasks: [{data: digits, net: 'mlp:8'}]\n"
                   "colour: red\n")
    with pytest.raises(UserError, match="unknown key 'colour'"):
        load_suite(str(bad))
    r = cli("bench", "--suite", "smoke", "--out", str(tmp_path / "x"), "--rules", "nosuchrule")
    assert r.returncode == 2 and "not in suite smoke" in r.stderr
    r = cli("bench", "--suite", "rules", "--out", str(tmp_path / "x"), "--seeds", "0,x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--seeds" in r.stderr


def test_seeds_flag_replaces_the_suites_seeds(tmp_path, cli):
    r = cli("bench", "--suite", "rules", "--out", str(tmp_path / "x"), "--seeds", "7",
            "--rules", "backprop", "--list")
    assert r.returncode == 0
    keys = r.stdout.split()
    # Two tasks, each with its frozen control (freeze_blocks=true: another options hash).
    assert len(keys) == 4 and all("/seed7/" in k for k in keys)
    cells = [c for c in load_suite("rules").cells() if c.rule == "backprop" and c.seed == 0]
    assert sorted(bool(c.options.get("freeze_blocks")) for c in cells) == [False, False,
                                                                           True, True]


def test_memory_suite_expands_depths():
    cells = load_suite("memory").cells()
    nets = sorted({c.net for c in cells}, key=len)
    assert [n.count("1024") for n in nets] == [2, 4, 8, 16, 32]
    assert {c.options["batch_size"] for c in cells} == {512}


def _memory(rule: str, depth: int, width: int = 256, batch: int = 16) -> dict:
    cell = Cell("memory", rule, "digits", "mlp:" + ",".join([str(width)] * depth), 0,
                {"batch_size": batch})
    return memory_cell(cell, {"steps": 2}, None, "cpu")


def test_memory_counts_activations_not_weights_and_local_rules_stay_flat():
    width, batch, floats = 256, 16, 4
    layer = batch * width * floats  # one block's output
    bp2, bp8 = _memory("backprop", 2), _memory("backprop", 8)
    # Saved for backward: every block's output (shared by the ReLU and the next linear
    # layer) and the input; weights (256x256, 16x larger than a layer's output) are not.
    # The allocator sees those and more (the output gradients of backward, temporaries).
    for r, depth in ((bp2, 2), (bp8, 8)):
        saved = r["saved_tensor_peak_bytes"]
        assert depth * layer <= saved < (depth + 1) * layer + batch * 64 * 8
        assert saved <= r["activation_peak_bytes"] < saved + 3 * layer
        assert r["peak_memory_bytes"] >= r["fixed_state_bytes"] + r["activation_peak_bytes"]
    mf2, mf8 = _memory("mono-forward", 2), _memory("mono-forward", 8)
    assert mf8["streams_losses"]
    # Block by block, the graph of block k is freed before block k+1 runs.
    assert mf8["activation_peak_bytes"] <= 1.1 * mf2["activation_peak_bytes"]
    assert mf8["activation_peak_bytes"] < 5 * layer
    assert bp8["activation_peak_bytes"] > 2 * mf8["activation_peak_bytes"]


def test_efficiency_counts_the_matmul_flops_backprop_performs():
    d, w, c, b = 64, 96, 10, 32  # digits: 64 inputs, 10 classes
    cell = Cell("efficiency", "backprop", "digits", f"mlp:{w},{w}", 0, {"batch_size": b})
    row = efficiency_cell(cell, {"warmup_steps": 1, "min_steps": 2, "min_seconds": 0}, None,
                          "cpu")
    forward = 2 * b * (d * w + w * w + w * c)
    # Backward: a weight gradient for every layer, an input gradient for all but the first.
    backward = 2 * b * (d * w + w * w + w * c) + 2 * b * (w * w + w * c)
    assert row["flops_per_step"] == forward + backward
    # Achieved FLOP/s can not beat the best matmul on the same shapes (beyond noise).
    assert row["peak_matmul_flops"] > 0 and 0 < row["efficiency"] <= 1 + FRACTION_NOISE
    assert not row["has_convolutions"]


def test_efficiency_leaves_the_matmul_fraction_out_for_conv_nets():
    cell = Cell("efficiency", "backprop", "digits", "cnn:4,8", 0, {"batch_size": 32})
    row = efficiency_cell(cell, {"warmup_steps": 1, "min_steps": 2, "min_seconds": 0}, None,
                          "cpu")
    assert row["has_convolutions"] and row["efficiency"] is None
    assert row["flops_per_sample"] > 0


def test_time_to_accuracy_and_flops_relative_to_backprop():
    history = [{"epoch": 0, "val_accuracy": 0.7, "elapsed_train_seconds": 1.0},
               {"epoch": 1, "val_accuracy": 0.91, "elapsed_train_seconds": 2.5},
               {"epoch": 2, "val_accuracy": 0.95, "elapsed_train_seconds": 4.0}]
    assert time_to_accuracy(history, 0.9) == 2.5
    assert time_to_accuracy(history, 0.96) is None
    rows = [{"kind": "train", "status": "ok", "rule": "ff", "data": "mnist5k", "net": "m",
             "seed": s, "history": history[: 3 - s], "options": {}} for s in (0, 1, 2)]
    rows.append({**rows[0], "options": {"freeze_blocks": True}, "history": history[2:]})
    tta = times_to_accuracy(rows)[("mnist5k", "m", "ff")]
    # Seed 2 stops before 0.90; the frozen control is not a run of the rule.
    assert tta["runs"] == 3 and tta["seconds"] == [2.5, 2.5] and tta["mean_seconds"] == 2.5
    eff = [{"kind": "efficiency", "status": "ok", "key": r, "rule": r, "net": "m",
            "batch_size": 8, "flops_per_sample": f} for r, f in (("backprop", 6.0), ("ff", 15.0))]
    assert relative_flops(eff) == {"backprop": 1.0, "ff": 2.5}


def test_dfa_streams_its_block_updates_once_the_error_exists():
    # Every block output lives until the output error exists (as in backprop), but each
    # block's projected error e B_k is made, used and freed one block at a time.
    bp8, dfa8 = _memory("backprop", 8), _memory("dfa", 8)
    layer = 16 * 256 * 4
    assert dfa8["streams_losses"]
    assert dfa8["activation_peak_bytes"] < bp8["activation_peak_bytes"] + 2 * layer


@pytest.mark.parametrize("rule", ["local", "lls", "ccl", "drtp", "tpsgd", "cafo", "sff"])
def test_block_local_rules_keep_activation_memory_flat_in_depth(rule):
    # A rule that overrides its loss loop must still hand its losses over block by block.
    shallow, deep = _memory(rule, 2), _memory(rule, 8)
    layer = 16 * 256 * 4  # one block's output at batch 16, width 256
    assert deep["streams_losses"], rule
    # Six more blocks add less than two blocks' outputs (backprop adds six).
    assert deep["activation_peak_bytes"] - shallow["activation_peak_bytes"] < 2 * layer, rule


def test_frozen_controls_run_beside_each_rule_and_reach_the_report(tmp_path):
    from locallearn.bench.suite import parse_suite
    from locallearn.report import write_report

    suite = parse_suite("t", "kind: train\nrules: [backprop]\ncontrols: [frozen]\n"
                             "tasks: [{data: digits, net: 'mlp:16'}]\nseeds: [0, 1]\n"
                             "options: {epochs: 1, batch_size: 64}\nsettings: {threads: 1}\n")
    counts = run_suite(suite, tmp_path, device="cpu", quiet=True)
    assert counts["ok"] == 4
    rows = read_results(tmp_path)
    frozen = [r for r in rows if r["options"].get("freeze_blocks")]
    assert len(frozen) == 2 and all(r["freeze_blocks"] is True for r in frozen)
    assert all(r["freeze_blocks"] is False for r in rows if r not in frozen)
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| backprop | digits | mlp:16 | 2 |" in md  # the frozen-control table's row
    # Each row records what made it: the command, the commit and the load at its start.
    assert all(len(r["load_average"]) == 3 and r["command"] for r in rows)
    assert "- Load average (1 min) at cell starts: " in md and "(4 of 4 cells recorded)" in md
    with pytest.raises(UserError, match="unknown control"):
        parse_suite("t", "rules: [backprop]\ncontrols: [thawed]\n"
                         "tasks: [{data: digits, net: 'mlp:16'}]\n")


def test_bench_data_runs_a_subset_of_the_suites_tasks(tmp_path, cli):
    r = cli("bench", "--suite", "rules", "--out", str(tmp_path), "--list", "--data", "mnist5k",
            "--rules", "backprop")
    assert r.returncode == 0, r.stderr
    keys = r.stdout.split()
    # Three seeds, each with its frozen control; the same keys as the full suite's cells.
    assert len(keys) == 6 and all(k.startswith("train/backprop/mnist5k/") for k in keys)
    bad = cli("bench", "--suite", "rules", "--out", str(tmp_path), "--list", "--data", "cifar")
    assert bad.returncode == 2 and "not in suite rules" in bad.stderr
