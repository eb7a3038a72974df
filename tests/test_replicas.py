"""Data-parallel replicas (--replicas) and the stages x replicas grid, on gloo (CPU)."""

import json
import subprocess
import sys
from functools import partial

import pytest
import torch

from locallearn.errors import UserError
from locallearn.parallel.replicas import Grid, resolve_grid, shard, shard_bounds
from runhelpers import (
    ARGS,
    assert_same_weights,
    cli_env,
    kill_env,
    killed_run_line,
    rule_tensors,
    run_cli,
    train_ok,
)


def cli(*args, env=None, timeout=180):
    return cli_env(*args, env=env, timeout=timeout)


train_ok = partial(train_ok, timeout=180)


# -- splitting ---------------------------------------------------------------------

def test_shards_cover_the_batch_and_weigh_by_labelled_rows():
    assert shard_bounds(13, 2) == [(0, 7), (7, 13)]
    x, y = torch.arange(13.0).unsqueeze(1), torch.arange(13)
    (x0, y0, w0), (x1, y1, w1) = shard(x, y, 0, 2), shard(x, y, 1, 2)
    assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)
    assert (w0, w1) == (7 / 13, 6 / 13)
    y[:5] = -100  # unlabelled rows (graph nodes, padding tokens) do not count
    assert shard(x, y, 0, 2)[2] == 2 / 8 and shard(x, y, 1, 2)[2] == 6 / 8
    # Fewer rows than replicas: the last replica still takes part, with weight 0.
    _, y_last, w = shard(x[:1], y[:1], 1, 2)
    assert y_last.shape == (1,) and w == 0.0


def test_grid_ranks_and_names():
    g = Grid(stages=2, replicas=3, rank=5)
    assert (g.stage, g.replica, g.world) == (1, 2, 6)
    assert g.pipeline_ranks(2) == [4, 5] and g.replica_ranks(1) == [1, 3, 5]
    assert g.describe(5) == "stage 1 of replica 2 (rank 5)"
    assert Grid(1, 2, 0).describe(1) == "replica 1"
    assert resolve_grid(2, None, 4) == (2, 2)  # torchrun: replicas = world / stages
    with pytest.raises(UserError, match="does not divide"):
        resolve_grid(2, None, 3)
    with pytest.raises(UserError, match="needs 4 processes"):
        resolve_grid(2, 2, 6)


# Which rules end a step on the full batch exactly where two weighted slices do. Not
# exact: rules that draw random numbers per row (replicas draw from their own streams:
# ff's random negatives, ff-seq's, NoProp's noise) and losses that couple the rows of a
# batch (local's predsim similarity matrix).
EXACT = [("backprop", "digits", "mlp:16,16", {}), ("mono-forward", "digits", "cnn:4,8", {}),
         ("backprop", "stdlib-text", "gpt:1x16", {}), ("cafo", "digits", "mlp:16,16", {}),
         ("ccl", "digits", "mlp:16,16", {}), ("cff", "digits", "mlp:16,16", {}),
         ("dfa", "digits", "mlp:16,16", {}), ("drtp", "digits", "mlp:16,16", {}),
         ("fa", "digits", "mlp:16,16", {}), ("ff", "digits", "mlp:16,16", {}),
         ("lls", "digits", "mlp:16,16", {}), ("local", "digits", "cnn:4,8", {}),
         ("pepita", "digits", "mlp:16,16", {}), ("sff", "digits", "cnn:4,8", {}),
         ("symba", "digits", "mlp:16,16", {}), ("tpsgd", "digits", "mlp:16,16", {})]
NOT_EXACT = [("ff", "digits", "mlp:16,16", {"negatives": "random"}),
             ("local", "digits", "mlp:16,16", {"loss": "predsim"}),
             ("noprop-dt", "digits", "mlp:16,16", {})]


def sliced_gradient(rule, x, y, replicas: int) -> dict:
    """What the replicas' weighted all_reduce leaves in every parameter's gradient."""
    total = {}
    for r in range(replicas):
        x_r, y_r, weight = shard(x, y, r, replicas)
        rule.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        torch.stack(rule.losses(x_r, y_r)).sum().backward()
        for name, p in rule.named_parameters():
            if p.grad is not None:
                total[name] = total.get(name, 0) + weight * p.grad
    return total


@pytest.mark.parametrize("case", EXACT + NOT_EXACT, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}")
def test_two_weighted_slices_give_the_full_batch_gradient(case):
    from locallearn.training.run import build

    name, data, net, options = case
    dataset, rule = build(name, data, net, 0, rule_options=options)
    x, y = next(dataset.loader("train", 13, shuffle=True, seed=0))  # slices of 7 and 6
    full, sliced = sliced_gradient(rule, x, y, 1), sliced_gradient(rule, x, y, 2)
    assert full.keys() == sliced.keys()
    worst = max(float((full[k] - sliced[k]).abs().max() / full[k].abs().max().clamp_min(1e-12))
                for k in full)
    if case in EXACT:
        assert worst < 1e-5
    else:
        assert worst > 1e-3


def test_averager_starts_buckets_in_backward_and_keeps_missing_gradients_missing():
    """One process as a world of one: the weighted all_reduce is a scaling here."""
    import torch.distributed as dist

    from locallearn.parallel.replicas import GradientAverager

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
        unused = torch.nn.Linear(3, 3)
        opt = torch.optim.SGD([*net.parameters(), *unused.parameters()], lr=0.0)
        averager = GradientAverager(None, 1, bucket_bytes=1)  # one parameter per bucket
        averager.attach([opt])
        x = torch.randn(5, 4)
        expected = torch.autograd.grad(net(x).square().sum(), net[0].weight)[0]
        averager.weights.append(0.25)
        net(x).square().sum().backward()
        started = [b.work is not None for b in averager.buckets]
        assert started == [False, False, True, True, True, True]  # unused's 2 never fill
        opt.step()
        torch.testing.assert_close(net[0].weight.grad, 0.25 * expected)
        assert unused.weight.grad is None and not averager.weights
        # A second backward into started buckets: they are reduced again at the step.
        opt.zero_grad(set_to_none=True)
        averager.weights.append(1.0)
        net(x).square().sum().backward()
        net(x).square().sum().backward()
        assert any(b.late for b in averager.buckets)
        opt.step()
        torch.testing.assert_close(net[0].weight.grad, 2 * expected)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compression, dtype", [("bf16", torch.bfloat16),
                                                ("fp16", torch.float16)])
def test_compressed_averaging_sends_half_the_bytes_and_rounds(compression, dtype):
    """gradient_compression: the weighted gradients travel in bf16/fp16 (half the bytes)
    and come back as float32, equal to the uncompressed average up to that dtype's
    rounding, not bit for bit."""
    import torch.distributed as dist

    from locallearn.parallel.replicas import GradientAverager

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 3))
        x = torch.randn(9, 16)
        expected = torch.autograd.grad(net(x).square().sum(), net[0].weight)[0]
        sent = {}
        for name in ("none", compression):
            opt = torch.optim.SGD(net.parameters(), lr=0.0)
            averager = GradientAverager(None, 1, compression=name)
            averager.attach([opt])
            opt.zero_grad(set_to_none=True)
            averager.weights.append(0.5)
            net(x).square().sum().backward()
            opt.step()
            sent[name] = averager.bytes_reduced
            grad = net[0].weight.grad
        assert grad.dtype == torch.float32 and not torch.equal(grad, 0.5 * expected)
        torch.testing.assert_close(grad, (0.5 * expected).to(dtype).float(), rtol=0, atol=0)
        assert sent[compression] * 2 == sent["none"]
    finally:
        dist.destroy_process_group()


# -- spawned replicas (gloo) ---------------------------------------------------------

@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    train_ok(*ARGS, "--epochs", "2", out=out)
    return out


def test_two_replicas_end_with_the_weights_of_one_process(one_process, tmp_path):
    two = tmp_path / "two"
    s = train_ok(*ARGS, "--epochs", "2", "--replicas", "2", out=two)
    assert_same_weights(rule_tensors(one_process), rule_tensors(two))
    assert s["replicas"] == 2 and s["stages"] == 1
    assert s["test_accuracy"] == json.loads((one_process / "summary.json").read_text())[
        "test_accuracy"]
    # The files of a one-process run, written once by replica 0 (and the processes' logs);
    # each epoch trained on every row.
    def files(run):
        return sorted(p.name for p in run.iterdir() if not p.name.endswith(".log"))

    assert files(two) == files(one_process)
    assert sorted(p.name for p in two.glob("*.log")) == ["replica0.log", "replica1.log"]
    def samples(run):
        return [json.loads(line)["samples"] for line in open(run / "metrics.jsonl")]

    assert samples(two) == samples(one_process) == [1294] * 2
    assert s["gradient_bytes_per_step"] > 0


def test_two_by_two_grid_ends_with_the_weights_of_one_process(one_process, tmp_path):
    grid = tmp_path / "grid"
    s = train_ok(*ARGS, "--epochs", "2", "--stages", "2", "--replicas", "2", out=grid)
    assert_same_weights(rule_tensors(one_process), rule_tensors(grid))
    assert s["replicas"] == 2 and s["stages"] == 2 and len(s["stage_info"]) == 2
    first, last = s["stage_info"]
    assert first["activation_bytes_per_step"] > 0 and last["gradient_bytes_per_step"] > 0
    # Stage parts are written once (by replica 0), not once per replica.
    parts = [p.name for p in grid.glob("stage*.safetensors")]
    assert {name.split("-")[0] for name in parts} == {"stage0", "stage1"}
    assert "stage0-e1.safetensors" in parts and "stage1-e1.safetensors" in parts
    assert not [p for p in grid.iterdir() if "replica" in p.name and p.suffix != ".log"]


def test_bf16_compressed_replicas_train_close_to_one_process(one_process, tmp_path):
    """--set gradient_compression=bf16: the replicas learn, their weights near one
    process's (within bf16 rounding carried over 2 epochs of Adam) but not equal."""
    two = tmp_path / "bf16"
    s = train_ok(*ARGS, "--epochs", "2", "--replicas", "2", "--set",
                 "gradient_compression=bf16", out=two)
    one = json.loads((one_process / "summary.json").read_text())
    assert s["test_accuracy"] > 0.3 and abs(s["test_accuracy"] - one["test_accuracy"]) < 0.05
    a, b = rule_tensors(one_process), rule_tensors(two)
    drift = max(float((a[k] - b[k]).norm() / a[k].norm()) for k in a)
    assert 0 < drift < 0.05
    assert s["train_config"]["gradient_compression"] == "bf16"


def test_backprop_replicas_resume_and_match_one_process(tmp_path):
    """backprop (one loss through the whole net) on 2 replicas, 1 epoch then --resume
    with the grid read from the run: the weights of 2 epochs in one process."""
    args = [*ARGS[2:], "--rule", "backprop"]
    one, part = tmp_path / "one", tmp_path / "part"
    train_ok(*args, "--epochs", "2", out=one)
    train_ok(*args, "--epochs", "1", "--replicas", "2", out=part)
    s = train_ok("--resume", "--epochs", "2", "--quiet", out=part)
    assert s["replicas"] == 2 and s["epochs"] == 2
    assert_same_weights(rule_tensors(one), rule_tensors(part))


def test_a_killed_replica_stops_the_run_with_one_line(tmp_path):
    line = killed_run_line(tmp_path / "run", "--replicas", "2")
    assert "replica 1" in line and "SIGKILL" in line and "epoch 1" in line


@pytest.mark.parametrize("extra, message", [
    (["--replicas", "0"], "--replicas must be >= 1"),
    (["--replicas", "2", "--batch-size", "1"], "smaller than --replicas"),
    (["--replicas", "2", "--data", "karate", "--net", "gcn:8"], "whole graph"),
])
def test_impossible_replications_exit_2(extra, message, capsys):
    # In this process: refused before any replica starts (a real process: test_cli.py).
    code, _, err = run_cli(capsys, "train", *ARGS, "--epochs", "1", *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


# -- torchrun ------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"localhost:{free_port()}", "--monitor-interval", "0.2",
            *options, "-m", "locallearn", "train"]


@pytest.mark.slow
def test_torchrun_restarts_a_killed_replica_from_the_last_checkpoint(one_process, tmp_path):
    """Replica 1 dies in epoch 2 once; torchrun --max-restarts 1 starts both again, they
    resume from epoch 1's checkpoint by themselves and end with one process's weights."""
    out = tmp_path / "run"
    env = kill_env(rank=1, after=30)
    r = subprocess.run([*torchrun("--nproc-per-node", "2", "--max-restarts", "1"), *ARGS,
                        "--epochs", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exitcode: -9" in r.stderr  # the kill happened and torchrun restarted the group
    assert_same_weights(rule_tensors(one_process), rule_tensors(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["epochs"] == 2


@pytest.mark.slow
def test_two_torchrun_node_groups_on_localhost(one_process, tmp_path):
    """The multi-machine path: two torchrun agents (--nnodes 2) meet at one c10d
    rendezvous, one replica each; the second has its own --out it never writes."""
    out, other = tmp_path / "node0", tmp_path / "node1"
    command = torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-id", "ll")
    procs = [subprocess.Popen([*command, *ARGS, "--epochs", "2", "--out", str(folder)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for folder in (out, other)]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in results]
    lead = out if (out / "summary.json").exists() else other
    assert_same_weights(rule_tensors(one_process), rule_tensors(lead))
    assert json.loads((lead / "summary.json").read_text())["replicas"] == 2
    assert not ((other if lead == out else out) / "summary.json").exists()
