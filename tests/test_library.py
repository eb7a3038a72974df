"""Your model, your data, your deployment: ``ll.train(model=..., train=...)``, streaming
data, explicit normalisation, ``torch.export`` and ``ll.load``.

Exports are reloaded in a subprocess that never imports locallearn, and their argmax is
compared with ``rule.predict`` on raw held-out inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import locallearn as ll
from locallearn.errors import UserError
from locallearn.export import Predictor
from locallearn.rules import RULES
from runhelpers import load_benchmark, run_cli

RELOAD = r"""
import json, sys, torch
paths = json.loads(sys.argv[1])
x = torch.load(sys.argv[2])
out = {}
for name, path in paths.items():
    module = torch.export.load(path).module()
    out[name] = [module(x).argmax(-1).tolist(), module(x[:1]).argmax(-1).tolist()]
assert "locallearn" not in sys.modules
print(json.dumps(out))
"""


def reload_without_locallearn(paths: dict[str, str], x: torch.Tensor, tmp_path) -> dict:
    """Predictions of each exported program, from a process that has no locallearn."""
    torch.save(x, tmp_path / "x.pt")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # no PYTHONPATH: no locallearn
    done = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(paths),
                           str(tmp_path / "x.pt")], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def digits_tensors():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)




def test_user_sequential_and_loader_export_reloads_without_locallearn(tmp_path):
    """Done-when: a user nn.Sequential on a user TensorDataset / DataLoader with four rules,
    exported, reloaded without locallearn: same predictions as rule.predict on raw inputs."""
    x, y = digits_tensors()  # raw pixel counts 0..16: the library normalises
    train_set = TensorDataset(x[:1200], y[:1200])
    paths, results = {}, {}
    for rule in ("mono-forward", "ff", "dfa", "backprop"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        r = ll.train(rule=rule, model=model,
                     train=DataLoader(train_set, batch_size=64, shuffle=True),
                     val=(x[1200:1400], y[1200:1400]), test=TensorDataset(x[1400:], y[1400:]),
                     epochs=4, out=str(tmp_path / rule), quiet=True, early_exit=False)
        assert r.summary["export"] == str(tmp_path / rule / "model.pt2")
        assert r.summary["normalisation"]["applied"] is True
        assert r.summary["test_accuracy"] > 0.3, (rule, r.summary["test_accuracy"])  # chance 0.1
        paths[rule] = r.summary["export"]
        results[rule] = r
    raw = x[1400:]
    got = reload_without_locallearn(paths, raw, tmp_path)
    for rule, r in results.items():
        with torch.no_grad():
            r.rule.eval()
            want = r.rule.predict(r.dataset.normaliser(raw)).argmax(-1)
        assert got[rule][0] == want.tolist(), rule
        assert got[rule][1] == want[:1].tolist(), rule
        loaded = ll.load(tmp_path / rule)
        assert torch.equal(loaded.predict(raw), want)
        proba = loaded.predict_proba(raw[:5])
        assert torch.allclose(proba.sum(-1), torch.ones(5))


def test_rule_defaults_apply_as_on_the_command_line():
    x, y = digits_tensors()
    def model():  # ff widens the first layer in place to take the label: one model per run
        return [nn.Sequential(nn.Linear(64, 16), nn.ReLU())]

    r = ll.train(rule="ff", model=model(), train=(x, y), epochs=0, quiet=True)
    cfg = r.summary["train_config"]
    defaults = RULES.get("ff").defaults
    assert cfg["lr"] == defaults["lr"] and cfg["batch_size"] == defaults["batch_size"]
    r = ll.train(rule="ff", model=model(), train=(x, y), epochs=0, lr=0.01, quiet=True)
    assert r.summary["train_config"]["lr"] == 0.01
    # Held-out val and test parts when only train= is given, recorded in the summary.
    assert "held out" in r.summary["user_data"]["split"]
    assert len(r.dataset.val) + len(r.dataset.test) + len(r.dataset.train) == len(y)


class Counted(Dataset):
    """Samples made on the fly from their index (never stored), counting every read."""

    def __init__(self, n: int, shape=(1, 32, 32), classes: int = 4) -> None:
        self.n, self.shape, self.classes = n, shape, classes
        g = torch.Generator().manual_seed(0)
        self.patterns = torch.randn(classes, *shape, generator=g)
        self.reads = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not isinstance(i, int):
            raise TypeError("one index at a time")
        self.reads += 1
        g = torch.Generator().manual_seed(10_000 + i)
        c = i % self.classes
        return 3.0 + self.patterns[c] + torch.randn(*self.shape, generator=g), c


def test_dataset_larger_than_memory_budget_is_streamed(tmp_path):
    budget = 32 * 2**20  # bytes the library may hold of the training set at once
    train = Counted(9000)
    assert train.n * 4 * 32 * 32 > 1.05 * budget
    val, test = Counted(300), Counted(300)
    largest = []
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1024, 32), nn.ReLU(), nn.Linear(32, 32),
                          nn.ReLU())
    model[1].register_forward_pre_hook(lambda m, a: largest.append(a[0].shape[0]))
    r = ll.train(rule="mono-forward", model=model, train=train, val=val, test=test,
                 epochs=1, batch_size=100, eval_batch_size=100, normalise=False, num_classes=4,
                 quiet=True, measure_memory=False,  # the meter reads one more batch
                 out=str(tmp_path / "run"))
    # Every training sample read once in the epoch, none stacked beyond one batch.
    assert train.reads == train.n + 2  # plus a probe of two samples for the shapes
    assert max(largest) <= 100
    assert r.summary["test_accuracy"] > 0.8  # 4 classes: well above chance
    assert r.summary["normalisation"] == {"applied": False, "by": "none: data used as given"}
    assert "streamed" in r.summary["user_data"]["train"]


def test_streamed_normalisation_is_stored_with_the_model(tmp_path):
    data = Counted(600, shape=(2, 4, 4))
    r = ll.train(rule="mono-forward", model=[nn.Sequential(nn.Flatten(), nn.Linear(32, 8))],
                 train=data, val=Counted(50, (2, 4, 4)), test=Counted(50, (2, 4, 4)),
                 epochs=1, num_classes=4, quiet=True, out=str(tmp_path / "run"))
    norm = r.dataset.normaliser
    assert norm.mean.shape == (2, 1, 1)  # per channel for images
    stacked = torch.stack([data[i][0] for i in range(600)])
    assert torch.allclose(norm.mean.flatten(), stacked.mean(dim=(0, 2, 3)), atol=1e-4)
    state = torch.load(tmp_path / "run" / "state_dict.pt", weights_only=True)
    assert torch.allclose(state["mean"], norm.mean)


def test_seeded_loader_resumes_bit_exact(tmp_path):
    x, y = digits_tensors()
    loader = DataLoader(TensorDataset(x[:600], y[:600]), batch_size=50, shuffle=True)
    kw = dict(rule="mono-forward", val=(x[600:700], y[600:700]), test=(x[700:800], y[700:800]),
              quiet=True, early_exit=False)

    def model():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU())

    full = ll.train(model=model(), train=loader, epochs=2, out=str(tmp_path / "a"), **kw)
    ll.train(model=model(), train=loader, epochs=1, out=str(tmp_path / "b"), **kw)
    resumed = ll.train(model=model(), train=loader, epochs=2, out=str(tmp_path / "b"),
                       resume=True, **kw)
    for a, b in zip(full.rule.state_dict().values(), resumed.rule.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_loader_with_own_sampler_says_once_that_resume_is_not_exact():
    x, y = digits_tensors()
    sampler = torch.utils.data.WeightedRandomSampler(torch.ones(500), 500)
    loader = DataLoader(TensorDataset(x[:500], y[:500]), batch_size=50, sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ll.train(rule="local", model=[nn.Linear(64, 16)], train=loader,
                 val=(x[500:600], y[500:600]), test=(x[600:700], y[600:700]), epochs=3,
                 quiet=True)
    said = [w for w in caught if "cannot replay" in str(w.message)]
    assert len(said) == 1


@pytest.mark.parametrize("model, blocks, match", [
    (nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(16, 8)), None, "block '2'"),
    (nn.Sequential(nn.Linear(64, 32)), ["nope"], "no submodule 'nope'"),
    (nn.Linear(64, 8), None, "cannot split a Linear"),
    ([nn.Linear(64, 8), "relu"], None, "block 1"),
])
def test_model_that_cannot_be_split_is_one_line_error(model, blocks, match):
    x, y = digits_tensors()
    with pytest.raises(UserError, match=match) as err:
        ll.train(rule="mono-forward", model=model, blocks=blocks, train=(x, y), epochs=0,
                 quiet=True)
    assert "\n" not in str(err.value)


def test_named_blocks_of_a_module_and_given_head():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU())

    x, y = digits_tensors()
    images = x.view(-1, 1, 8, 8)
    head = nn.Linear(16, 10)
    r = ll.train(rule="mono-forward", model=Net(), blocks=["conv", "fc"], head=head,
                 train=(images, y), epochs=1, quiet=True)
    assert [b.name for b in r.rule.network.blocks] == ["conv", "fc"]
    assert r.rule.network.head is head
    assert r.summary["user_model"].startswith("custom: 1x8x8 -> 4x8x8 -> 16")


def test_parameter_free_children_join_the_block_before():
    x, y = digits_tensors()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(32, 32), nn.Tanh())
    r = ll.train(rule="mono-forward", model=model, train=(x, y), epochs=0, quiet=True)
    assert len(r.rule.network.blocks) == 2


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Every registered rule for vector data, trained one epoch on digits."""
    root = tmp_path_factory.mktemp("export")
    runs = {}
    for name in RULES.names():
        if "vector" not in RULES.get(name).supports_kinds:
            continue
        runs[name] = ll.train(rule=name, data="digits", net="mlp:24,24", epochs=1, quiet=True,
                              early_exit=False, measure_memory=False,
                              out=str(root / "runs" / name))
    return root, runs


def test_every_rule_exports_or_is_refused_in_one_line(tiny_runs, tmp_path, capsys):
    root, runs = tiny_runs
    paths, refused = {}, {}
    for name in runs:
        code, out, err = run_cli(capsys, "export", str(root / "runs" / name), "--out",
                                 str(tmp_path / name))
        if code == 0:
            paths[name] = str(tmp_path / name / "model.pt2")
        else:
            assert code == 2 and err.count("\n") == 1 and "cannot be exported" in err, err
            refused[name] = err
    assert set(refused) <= {"noprop-dt", "noprop-ct", "noprop-fm"}, refused
    assert {"backprop", "ff", "mono-forward", "dfa", "sff", "drtp"} <= set(paths)
    dataset = next(iter(runs.values())).dataset
    raw = dataset.test.x[:64] * dataset.std + dataset.mean  # the inputs as loaded, raw
    got = reload_without_locallearn(paths, raw, tmp_path)
    for name in paths:
        rule = runs[name].rule.eval()
        with torch.no_grad():
            want = rule.predict(dataset.test.x[:64]).argmax(-1)
        assert (torch.tensor(got[name][0]) == want).float().mean() >= 0.98, name
        # ll.load gives the same on the run directory, and a uniform predict / predict_proba.
        loaded = ll.load(root / "runs" / name)
        assert torch.equal(loaded.predict(raw), Predictor(rule, dataset.mean,
                                                          dataset.std)(raw).argmax(-1))


def test_pruned_and_grown_models_export(tiny_runs, tmp_path, capsys):
    root, runs = tiny_runs
    run = str(root / "runs" / "mono-forward")
    assert run_cli(capsys, "prune", run, "--keep", "1", "--out", str(tmp_path / "p"))[0] == 0
    assert run_cli(capsys, "grow", run, "--max-blocks", "1", "--epochs", "1", "--quiet",
                   "--out", str(tmp_path / "g"))[0] == 0
    from locallearn.anytime.runs import load_run

    for kind in ("p", "g"):
        code, _, err = run_cli(capsys, "export", str(tmp_path / kind), "--out",
                               str(tmp_path / f"x{kind}"))
        assert code == 0, err
        loaded = load_run(tmp_path / kind)
        x = loaded.dataset.test.x[:50]
        want = loaded.rule.predict(x).argmax(-1)
        # A cut network called directly answers as the rule does (not block features).
        assert torch.equal(loaded.rule.network(x).argmax(-1), want)
        raw = x * loaded.dataset.std + loaded.dataset.mean
        exported = torch.export.load(str(tmp_path / f"x{kind}" / "model.pt2")).module()
        assert (exported(raw).argmax(-1) == want).float().mean() >= 0.98


def test_train_without_out_keeps_the_run_and_says_where(cli):
    import os
    from pathlib import Path

    r = cli("train", "--rule", "mono-forward", "--data", "digits", "--net", "mlp:16",
            "--epochs", "1", "--threads", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.split("run folder: ")[1].split(" ")[0])
    assert folder.parent == Path(os.environ["LOCALLEARN_RUNS_DIR"])
    assert folder.name.startswith("mono-forward-digits-")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["threads"] == 1 and summary["train_config"]["threads"] == 1
    assert f"wrote {folder / 'summary.json'}" in r.stdout


def test_version_and_bad_threads(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"locallearn {ll.__version__}"
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--threads", "-1", "--epochs",
                           "1")
    assert code == 2 and err.count("\n") == 1 and "threads" in err


def test_readme_python_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) < 15
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('epochs=5', 'epochs=1, quiet=True'), "README", "exec"), {})
    assert (tmp_path / "runs" / "mine" / "model.pt2").exists()


def test_link_prediction_selects_epochs_on_validation_auc(tmp_path):
    r = ll.train(rule="mono-forward", data="csbm", net="gcn:16", epochs=6, lr=0.01, quiet=True,
                 patience=2, data_options={"nodes": 150, "task": "link", "homophily": 0.9},
                 out=str(tmp_path / "run"))
    s = r.summary
    assert s["selected_on"] == "val_auc"
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    aucs = [h["val_auc"] for h in history]
    assert s["best_epoch"] == aucs.index(max(aucs)) and s["best_val_auc"] == max(aucs)


def test_report_groups_by_configuration_not_with_pruned_copies(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1):
        ll.train(rule="mono-forward", data="digits", net="mlp:16,16", epochs=1, seed=seed,
                 quiet=True, early_exit=False, out=str(root / f"s{seed}"))
    assert run_cli(capsys, "prune", str(root / "s0"), "--keep", "1", "--out",
                   str(root / "pruned"))[0] == 0
    code, _, err = run_cli(capsys, "report", str(root))
    assert code == 0, err
    md = (root / "report.md").read_text()
    results = [line for line in md.split("## Results")[1].split("\n## ")[0].splitlines()
               if line.startswith("|")]
    header = [c.strip() for c in results[0].split("|")]
    rows = [[c.strip() for c in line.split("|")] for line in results
            if line.startswith("| mono-forward")]
    assert len(rows) == 2  # the two seeds together; the pruned copy on its own
    assert sorted(row[header.index("seeds")] for row in rows) == ["1", "2"]
    assert sorted(row[header.index("settings")] for row in rows)[1].startswith("pruned")
    assert "2 runs averaged as seeds [0, 1]" in md
    hardware = [line for line in md.splitlines() if line.startswith("Hardware:")]
    assert hardware and not any("?" in line for line in hardware)


def test_crop_flip_is_a_shifted_window_and_seeded():
    from locallearn.data.augment import crop_flip

    x = torch.randn(64, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    assert out.shape == x.shape
    assert torch.equal(out, crop_flip(x, torch.Generator().manual_seed(3), padding=2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # each image is one window of the padded image, maybe mirrored
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert not torch.equal(out, x)


def test_cifar10_augment_option_and_recipe_on_tiny_real_format_files(tmp_path):

    from datafiles import write_cifar10

    write_cifar10(tmp_path, per_batch=12, n_test=20)
    data = ll.load_dataset("cifar10", data_dir=tmp_path, augment=True)
    first = next(data.loader("train", 16, shuffle=True, seed=5))[0]
    again = next(data.loader("train", 16, shuffle=True, seed=5))[0]
    plain = next(data.loader("val", 16))[0]
    assert torch.equal(first, again) and first.shape == (16, 3, 32, 32)
    assert torch.equal(plain, data.val.x[:16])  # val and test are never augmented

    bench = load_benchmark("cifar10")
    bench.main(["--data-dir", str(tmp_path), "--rules", "backprop,mono-forward", "--net",
                "cnn:4", "--epochs", "1", "--augment", "--amp", "--workers", "1",
                "--pin-memory", "--device", "cpu", "--json", str(tmp_path / "r.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["rule"] for r in rows] == ["backprop", "mono-forward"]
    for r in rows:
        assert r["epochs"] == 1 and r["train_config"]["amp"] is True
        assert 0 <= r["test_accuracy"] <= 1 and r["normalisation"]["applied"]


def test_default_length_follows_optimiser_steps():
    from types import SimpleNamespace

    from locallearn.training.length import MIN_STEPS, SAMPLE_BUDGET, default_epochs

    def table(rows):
        return SimpleNamespace(train=range(rows))

    # mnist5k-sized: 3,600 rows at batch 128 = 29 steps x 20 epochs >= MIN_STEPS: unchanged.
    assert default_epochs(20, table(3600), 128)[0] == 20
    # a ~180-row table: one or two steps per epoch -> at least MIN_STEPS steps.
    epochs, why = default_epochs(20, table(128), 128)
    assert epochs == MIN_STEPS and "optimiser steps" in why
    # never more than SAMPLE_BUDGET rows, never below the rule's default
    assert default_epochs(20, table(1000), 2000)[0] == SAMPLE_BUDGET // 1000
    assert default_epochs(20, table(50_000), 50_000)[0] == 20
    # a graph: one full-graph step per epoch
    graph = SimpleNamespace(graph_task="node", x=torch.zeros(34, 3), evaluate=None)
    assert default_epochs(20, graph, 128)[0] == MIN_STEPS


def test_named_epochs_are_kept_and_the_default_is_explained(monkeypatch):
    import locallearn.training.length as length

    monkeypatch.setattr(length, "MIN_STEPS", 2 * RULES.get("mono-forward").defaults["epochs"])
    x, y = digits_tensors()
    r = ll.train(rule="mono-forward", model=[nn.Linear(64, 8)], train=(x[:300], y[:300]),
                 epochs=2, quiet=True)
    assert r.summary["epochs"] == 2 and "epochs_default" not in r.summary
    r = ll.train(rule="mono-forward", model=[nn.Linear(64, 8)], train=(x[:200], y[:200]),
                 batch_size=200, quiet=True, early_exit=False)
    assert r.summary["epochs"] > RULES.get("mono-forward").defaults["epochs"]
    assert "optimiser steps" in r.summary["epochs_default"]
