"""Layer-parallel training on torch.distributed (gloo, CPU processes)."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from locallearn.parallel.stages import partition
from locallearn.training.checkpoint import load_checkpoint
from runhelpers import (
    ARGS,
    assert_same_weights,
    cli_env,
    killed_run_line,
    rule_tensors,
    run_cli,
    train_ok,
)


def exact_and_stale(tmp_path, args, stages: int, staleness: int) -> tuple[dict, dict]:
    """Train in one process, in ``stages`` stages with staleness 0, and in 2 stages with
    ``staleness``: the exact run ends with one process's weights, the stale one does not
    (block 0 learns from signals up to ``staleness`` micro-batches old). The summaries of
    the one-process and the stale run."""
    one, exact, late = tmp_path / "one", tmp_path / "exact", tmp_path / "late"
    s1 = train_ok(*args, out=one)
    train_ok(*args, "--stages", str(stages), out=exact)
    s_late = train_ok(*args, "--stages", "2", "--staleness", str(staleness), out=late)
    a, c = rule_tensors(one), rule_tensors(late)
    assert_same_weights(a, rule_tensors(exact))
    assert a.keys() == c.keys()
    assert not torch.allclose(a["rule.network.blocks.0.body.1.weight"],
                              c["rule.network.blocks.0.body.1.weight"])
    return s1, s_late


def test_partition_is_contiguous_and_balanced():
    assert partition(5, 2) == [range(0, 3), range(3, 5)]
    assert partition(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]


@pytest.fixture(scope="module")
def staged_runs(tmp_path_factory):
    """One process for 2 epochs, two stages for 2 epochs, and two stages 1 epoch + resume."""
    root = tmp_path_factory.mktemp("staged")
    one, two, part = root / "one", root / "two", root / "part"
    results = [
        cli_env("train", *ARGS, "--epochs", "2", "--out", str(one)),
        cli_env("train", *ARGS, "--epochs", "2", "--stages", "2", "--out", str(two)),
        cli_env("train", *ARGS, "--epochs", "1", "--stages", "2", "--out", str(part)),
        cli_env("train", "--resume", "--epochs", "2", "--stages", "2", "--out", str(part),
                "--quiet"),
    ]
    for r in results:
        assert r.returncode == 0, r.stderr
    return one, two, part


def test_two_stages_end_with_the_weights_of_one_process(staged_runs):
    one, two, _ = staged_runs
    assert_same_weights(rule_tensors(one), rule_tensors(two))
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["stages"] == 2 and len(s2["stage_info"]) == 2
    assert s1["test_accuracy"] == s2["test_accuracy"]
    assert s1["test_accuracy"] > 0.5
    assert all(0 <= info["busy_fraction"] <= 1 for info in s2["stage_info"])
    # Each stage's memory pass counts only its own parameters as fixed state, and none
    # of them as activations.
    mems = [info["memory"] for info in s2["stage_info"]]
    assert sum(m["parameter_bytes"] for m in mems) == s1["memory"]["parameter_bytes"]
    one_act = s1["memory"]["activation_peak_bytes"]
    assert all(0 < m["activation_peak_bytes"] <= 1.25 * one_act for m in mems)
    assert s2["peak_memory_bytes"] == sum(m["peak_memory_bytes"] for m in mems)
    # One epoch loop: stage 0 logs the records one process logs (diagnostics included),
    # with the stages' losses in the one process's group order.
    def records(run):
        return [json.loads(line) for line in open(run / "metrics.jsonl")]

    r1, r2 = records(one), records(two)
    assert [r.keys() for r in r1] == [r.keys() for r in r2] and "diagnostics" in r2[0]
    for a, b in zip(r1, r2, strict=True):
        assert a["val_accuracy"] == b["val_accuracy"] and a["samples"] == b["samples"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_staged_resume_continues_exactly(staged_runs):
    _, two, part = staged_runs
    assert_same_weights(rule_tensors(two), rule_tensors(part))
    # The parts of the two epochs that checkpoint and checkpoint.prev name are kept.
    parts = sorted(p.name for p in part.glob("stage1-e*.safetensors"))
    assert parts == ["stage1-e0.safetensors", "stage1-e1.safetensors"]


def test_a_killed_stage_stops_the_others_with_one_line(tmp_path):
    line = killed_run_line(tmp_path / "run", "--stages", "2")
    assert "stage 1" in line and "SIGKILL" in line


@pytest.mark.parametrize("extra, message", [
    (["--stages", "4"], "more than the network's 3 blocks"),
    (["--stages", "2", "--rule", "backprop"], "cannot be split into stages"),
    (["--stages", "2", "--staleness", "-1"], "staleness"),
    (["--stages", "2", "--staleness", "2"], "sends nothing backward"),
    (["--stages", "2", "--rule", "ff"], "negatives=random"),
    (["--stages", "2", "--rule", "pepita"], "cannot be split into stages"),
])
def test_impossible_stagings_exit_2(extra, message, capsys):
    # In this process: the launcher refuses before any stage starts (a real process's one
    # line: test_cli.py).
    code, _, err = run_cli(capsys, "train", *ARGS, "--epochs", "1", *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


DFA_ARGS = [a if a != "mono-forward" else "dfa" for a in ARGS]


def test_dfa_stages_get_the_output_error_and_match_one_process(tmp_path):
    """dfa sends its output error back to earlier stages: exact with staleness 0,
    and still learning when a stage may run 3 micro-batches ahead of its error."""
    s1, s3 = exact_and_stale(tmp_path, [*DFA_ARGS, "--epochs", "6"], stages=3, staleness=3)
    assert s3["staleness"] == 3 and s3["stages"] == 2
    assert s1["test_accuracy"] > 0.7 and s3["test_accuracy"] > 0.7


def test_with_upcoming_pairs_each_batch_with_the_next_input():
    from locallearn.parallel.worker import with_upcoming

    batches = [("x0", "y0"), ("x1", "y1"), ("x2", "y2")]
    assert list(with_upcoming(batches)) == [
        (("x0", "y0"), "x1"), (("x1", "y1"), "x2"), (("x2", "y2"), None)]
    assert list(with_upcoming([])) == []


@pytest.mark.parametrize("rule, task", [("mono-forward", "node"), ("dfa", "link")])
def test_graph_stages_match_one_process(tmp_path, rule, task):
    """Later stages bind the graph from their own copy of the batch; dfa's link error
    (made at the embeddings, one row per node) travels back like any output signal."""
    args = ["--rule", rule, "--data", "csbm", "--task", task, "--net", "gcn:16,16",
            "--epochs", "3", "--seed", "1", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = train_ok(*args, out=one)
    s2 = train_ok(*args, "--stages", "2", out=two)
    assert_same_weights(rule_tensors(one), rule_tensors(two))
    assert s1["test_accuracy"] == s2["test_accuracy"]


FF_ARGS = ["--data", "digits", "--net", "mlp:32,32,32", "--batch-size", "64", "--seed", "3",
           "--lr", "1e-2", "--set", "rule.negatives=random", "--quiet"]


def test_cff_stages_share_goodness_and_match_one_process(tmp_path):
    """cff's layers need every layer's goodness: the sum travels forward with the
    activation and back from the last stage. Exact with staleness 0 (3 stages); with
    staleness 2 a stage uses the others' goodness up to 2 micro-batches late and learns."""
    s1, s3 = exact_and_stale(tmp_path, ["--rule", "cff", *FF_ARGS, "--epochs", "8"],
                             stages=3, staleness=2)
    assert s1["test_accuracy"] > 0.75 and s3["test_accuracy"] > 0.75  # chance: 0.1


def test_ff_with_random_negatives_stages_exactly(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--rule", "ff", *FF_ARGS, "--set", "rule.predict=goodness", "--epochs", "2"]
    train_ok(*args, out=one)
    train_ok(*args, "--stages", "2", out=two)
    assert_same_weights(rule_tensors(one), rule_tensors(two))


def test_stashed_weights_keep_a_pending_graph_valid_after_an_update():
    """With staleness > 0 a stage updates its weights while older graphs wait for their
    signal: their backward must use the weights the forward ran with."""
    from locallearn.parallel.stages import stashed_weights

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    x = torch.randn(5, 4)
    expected = torch.autograd.grad(block(x).square().sum(), block[1].weight)[0]
    with stashed_weights():
        loss = block(x).square().sum()
    with torch.no_grad():
        block[1].weight.add_(1.0)  # an optimiser step in between
    loss.backward()
    torch.testing.assert_close(block[1].weight.grad, expected)
    # Without the stash autograd refuses the changed weight.
    loss = block(x).square().sum()
    with torch.no_grad():
        block[1].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_staged_resume_uses_the_last_committed_set(staged_runs, tmp_path):
    """Killed after every stage saved its epoch-2 part but before the merged checkpoint
    committed it: resume continues from epoch 1's set and ends where the full run did."""
    import shutil

    _, two, _ = staged_runs
    run = tmp_path / "run"
    shutil.copytree(two, run)
    os.replace(run / "checkpoint.prev.safetensors", run / "checkpoint.safetensors")
    assert (run / "stage0-e1.safetensors").exists()  # the uncommitted parts are there
    r = cli_env("train", "--resume", "--epochs", "2", "--stages", "2", "--out", str(run),
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert_same_weights(rule_tensors(two), rule_tensors(run))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_staged_resume_refuses_a_part_of_another_run(staged_runs, tmp_path):
    import shutil

    from locallearn.training.checkpoint import save_checkpoint

    _, two, _ = staged_runs
    run = tmp_path / "run"
    shutil.copytree(two, run)
    tensors, meta = load_checkpoint(run, stem="stage1-e1", fallback=False)
    save_checkpoint(run, tensors, {**meta, "run_id": "someone-else"}, stem="stage1-e1",
                    keep_previous=False, mirror=False)
    r = cli_env("train", "--resume", "--epochs", "3", "--stages", "2", "--out", str(run),
                "--quiet")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "another run" in r.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow  # a real launcher killed with SIGKILL (~20 s)
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_stages_die_with_their_launcher(tmp_path, sig):
    import signal

    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "locallearn", "train", *ARGS, "--epochs",
                                 "500", "--stages", "2", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    stages = []
    while len(stages) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        stages = _children(launcher.pid)
    assert len(stages) == 2
    time.sleep(3)
    launcher.send_signal(getattr(signal, sig))
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 15
    alive = stages
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in stages if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().rpartition(")")[2].split()[0] != "Z"]
    assert not alive, f"stages {alive} outlived their launcher"
