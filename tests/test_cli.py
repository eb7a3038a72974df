"""The command line: contract, config files, and one-line errors for every bad input."""

import json

import pytest
import torch

from datafiles import write_csv, write_mnist
from locallearn.cli.main import main
from locallearn.rules.backprop import Backprop

SUMMARY_KEYS = ("rule", "data", "net", "epochs", "seed", "test_accuracy", "train_seconds",
                "samples_per_second", "peak_memory_bytes", "device", "torch_version",
                "per_layer_test_accuracy")
FAST = ("--rule", "backprop", "--data", "digits", "--net", "mlp:16", "--batch-size", "128",
        "--quiet")


def run(capsys, *argv: str):
    """``locallearn ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_python_m_locallearn_list(cli):
    r = cli("list")
    assert r.returncode == 0, r.stderr
    for word in ("rules:", "datasets:", "networks:", "backprop", "mono-forward", "mnist5k",
                 "fashion-mnist", "cifar100", "csv", "mlp", "cnn"):
        assert word in r.stdout


def test_list_one_network_or_dataset_with_its_options(capsys):
    code, out, _ = run(capsys, "list", "nets", "mlp")
    assert code == 0 and out.splitlines()[0] == "networks:"
    assert "  mlp " in out and "  cnn " not in out
    assert any(line.split()[:4] == ["bias", "bool", "default", "true"]
               for line in out.splitlines())
    code, out, _ = run(capsys, "list", "data", "csbm")
    assert code == 0 and "    homophily " in out and "[a float between 0 and 1]" in out
    code, _, err = run(capsys, "list", "networks", "resnet")
    assert code == 2 and err.count("\n") == 1 and "unknown network 'resnet'" in err


def test_bad_input_in_a_real_process_is_one_line(cli, tmp_path):
    r = cli("train", "--rule", "backprob", "--data", "digits", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "unknown rule 'backprob'" in r.stderr and "backprop" in r.stderr
    assert not (tmp_path / "x").exists()


def test_summary_contract_and_rule_default_epochs(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", *FAST, "--seed", "3", "--out", str(out))
    assert code == 0, err
    s = summary(out)
    for key in SUMMARY_KEYS:
        assert key in s, key
    # No --epochs: the rule's own default, lengthened on small data to MIN_STEPS steps.
    from locallearn.data import load_dataset
    from locallearn.training.length import default_epochs

    expected = default_epochs(Backprop.defaults["epochs"], load_dataset("digits", seed=3),
                              128)[0]
    assert s["epochs"] == expected >= Backprop.defaults["epochs"] and s["seed"] == 3
    assert s["rule"] == "backprop" and s["data"] == "digits" and s["net"] == "mlp:16"
    assert 0.85 < s["test_accuracy"] <= 1 and s["per_layer_test_accuracy"] is None
    assert s["peak_memory_bytes"] > 0 and s["samples_per_second"] > 0
    assert s["device"] in ("cpu", "cuda") and s["torch_version"] == torch.__version__
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == s["epochs"] and json.loads(lines[-1])["epoch"] == s["epochs"] - 1
    assert "test accuracy" in stdout


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_config_file_with_set_overrides(capsys, tmp_path, fmt):
    if fmt == "yaml":
        text = ("rule: backprop\ndata: digits\nnet: mlp:12\nepochs: 3\nseed: 5\nlr: 0.002\n"
                "batch_size: 64\n")
    else:
        text = ('rule = "backprop"\ndata = "digits"\nnet = "mlp:12"\nepochs = 3\nseed = 5\n'
                "lr = 0.002\nbatch_size = 64\n[net_options]\nactivation_name = \"tanh\"\n")
    cfg = tmp_path / f"run.{fmt}"
    cfg.write_text(text)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--config", str(cfg), "--set", "epochs=2",
                       "--set", "net=mlp:10", "--quiet", "--out", str(out))
    assert code == 0, err
    s = summary(out)
    assert s["epochs"] == 2 and s["net"] == "mlp:10" and s["seed"] == 5
    assert s["train_config"]["lr"] == 0.002 and s["train_config"]["batch_size"] == 64
    if fmt == "toml":
        assert s["net_options"] == {"activation_name": "tanh"}
    # Flags beat the file, --set beats flags.
    out2 = tmp_path / "run2"
    code, _, err = run(capsys, "train", "--config", str(cfg), "--epochs", "1", "--seed", "7",
                       "--set", "seed=8", "--quiet", "--out", str(out2))
    assert code == 0, err
    assert summary(out2)["epochs"] == 1 and summary(out2)["seed"] == 8


def test_file_datasets_through_the_cli(capsys, tmp_path):
    write_mnist(tmp_path / "data" / "mnist" / "raw", gz=True)
    code, _, err = run(capsys, "train", "--data", "mnist", "--data-dir", str(tmp_path / "data"),
                       "--net", "mlp:8", "--epochs", "1", "--quiet", "--out",
                       str(tmp_path / "m"))
    assert code == 0, err
    s = summary(tmp_path / "m")
    assert s["data"] == "mnist" and s["data_dir"] == str(tmp_path / "data")
    table = write_csv(tmp_path / "t.csv", n=90)
    code, _, err = run(capsys, "train", "--data", f"csv:{table}", "--label-column", "species",
                       "--net", "mlp:8", "--epochs", "20", "--batch-size", "8", "--lr", "0.01",
                       "--quiet", "--out", str(tmp_path / "c"))
    assert code == 0, err
    s = summary(tmp_path / "c")
    assert s["data_options"] == {"label_column": "species"} and s["test_accuracy"] > 0.8


def checkpoint_tensors(out) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoint.safetensors"))


def assert_same_checkpoints(a, b):
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    assert any(k.startswith("rule.") for k in ta) and any(k.startswith("optim.") for k in ta)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_resume_extends_a_run_exactly(capsys, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    args = (*FAST, "--schedule", "none", "--seed", "1")
    assert run(capsys, "train", *args, "--epochs", "4", "--out", str(full))[0] == 0
    assert run(capsys, "train", *args, "--epochs", "2", "--out", str(part))[0] == 0
    code, _, err = run(capsys, "train", "--resume", "--epochs", "4", "--out", str(part),
                       "--quiet")
    assert code == 0, err
    assert_same_checkpoints(full, part)
    assert summary(part)["test_accuracy"] == summary(full)["test_accuracy"]
    assert summary(part)["epochs"] == 4
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 4


def test_resume_after_an_interruption_matches_an_uninterrupted_run(capsys, tmp_path,
                                                                   monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    args = (*FAST, "--epochs", "4", "--seed", "2", "--schedule", "cosine")
    assert run(capsys, "train", *args, "--out", str(full))[0] == 0

    def interrupt(self, epoch):  # Ctrl-C during epoch 2, before its checkpoint
        if epoch == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Backprop, "on_epoch_end", interrupt)
        code, _, err = run(capsys, "train", *args, "--out", str(part))
    assert code == 130 and "interrupted" in err
    assert json.loads((part / "checkpoint.json").read_text())["epoch"] == 1
    code, _, err = run(capsys, "train", "--resume", "--out", str(part), "--quiet")
    assert code == 0, err
    assert_same_checkpoints(full, part)


def test_early_stopping_keeps_the_best_weights(tmp_path):
    from safetensors.torch import load_file

    from locallearn import train

    # Two well separated classes: validation accuracy reaches its best early and stays.
    rows = ["a,b,y"] + [f"{(i % 2) * 4 + (i % 7) / 7:.3f},{(i % 5) / 5:.3f},{i % 2}"
                        for i in range(200)]
    (tmp_path / "easy.csv").write_text("\n".join(rows))
    out = tmp_path / "run"
    result = train(rule="backprop", data=f"csv:{tmp_path / 'easy.csv'}", net="mlp:8",
                   epochs=40, patience=3, out=str(out), quiet=True)
    s = result.summary
    assert s["stopped_early"] and s["epochs"] == s["best_epoch"] + 4 < 40
    assert len((out / "metrics.jsonl").read_text().splitlines()) == s["epochs"]
    best = load_file(str(out / "best.safetensors"))
    for key, value in result.rule.state_dict().items():
        assert torch.equal(value.cpu(), best[f"rule.{key}"]), key


# -- bad input: exit code 2, one line on stderr, no traceback ---------------------------

def bad_csvs(tmp_path):
    (tmp_path / "text.csv").write_text("a,b,y\n1,2,0\n3,four,1\n5,6,0\n")
    (tmp_path / "nan.csv").write_text("a,b,y\n1,2,0\n3,nan,1\n5,6,0\n")
    (tmp_path / "one.csv").write_text("a,b,y\n" + "".join(f"{i},{i},1\n" for i in range(9)))
    write_csv(tmp_path / "good.csv")


BAD_INPUT = {
    "unknown rule": (["--rule", "nope"], "unknown rule 'nope'"),
    "unknown dataset": (["--data", "mnist6k"], "unknown dataset 'mnist6k'"),
    "unknown network": (["--net", "resnet:3"], "unknown network 'resnet'"),
    "malformed net spec": (["--net", "mlp:500,x"], "malformed network spec 'mlp:500,x'"),
    "zero width": (["--net", "mlp:0"], "positive"),
    "missing data dir": (["--data", "mnist", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    "missing data file": (["--data", "fashion-mnist", "--data-dir", "{tmp}"],
                          "train-images-idx3-ubyte"),
    "missing csv": (["--data", "csv:{tmp}/absent.csv"], "absent.csv not found"),
    "csv text feature": (["--data", "csv:{tmp}/text.csv"], "not a number"),
    "csv nan": (["--data", "csv:{tmp}/nan.csv"], "NaN"),
    "csv single class": (["--data", "csv:{tmp}/one.csv"], "single class"),
    "csv label column": (["--data", "csv:{tmp}/good.csv", "--label-column", "kind"],
                         "no label column 'kind'"),
    "negative epochs": (["--epochs", "-1"], "epochs must be >= 0"),
    "zero lr": (["--lr", "0"], "learning rate must be positive"),
    "negative lr": (["--lr=-0.01"], "learning rate must be positive"),
    "zero batch": (["--batch-size", "0"], "batch size must be positive"),
    "non-integer epochs": (["--epochs", "two"], "invalid int value"),
    "bad --set value": (["--set", "epochs=many"], "'epochs' must be an int"),
    "bad --set lr": (["--set", "lr=-1"], "learning rate must be positive"),
    "bad --set form": (["--set", "epochs"], "key=value"),
    "unknown setting": (["--set", "epoch=3"], "unknown training option 'epoch'"),
    "unknown rule option": (["--set", "rule.momentum=3"], "has no option 'momentum'"),
    "bad net option": (["--set", "net.activation_name=swish"], "activation_name must be one of"),
    "unknown net option": (["--set", "net.depth=3"], "network 'mlp' has no option 'depth'"),
    "bad data option": (["--set", "data.val_fraction=-0.1"], "val_fraction must be a float >= 0"),
    "graph data, mlp": (["--data", "karate"], "needs a network with option 'task'"),
    "missing config": (["--config", "{tmp}/absent.yaml"], "absent.yaml not found"),
    "bad device": (["--device", "tpu"], "unknown device 'tpu'"),
    "resume without run": (["--resume", "--out", "{tmp}/empty"], "cannot resume"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, case):
    bad_csvs(tmp_path)
    argv, words = BAD_INPUT[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    base = ["--data", "digits", "--net", "mlp:8", "--epochs", "1", "--quiet"]
    code, _, err = run(capsys, "train", *base, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err


def test_cuda_without_gpu_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run(capsys, "train", *FAST, "--epochs", "1", "--device", "cuda")
    assert code == 2 and err.count("\n") == 1 and "--device cpu" in err


def test_existing_run_is_never_destroyed(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "train", *FAST, "--epochs", "1", "--out", str(out))[0] == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(capsys, "train", *FAST, "--epochs", "2", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --out naming a file is refused too, and the file is left alone.
    code, _, err = run(capsys, "train", *FAST, "--epochs", "1", "--out", str(out / "notes.txt"))
    assert code == 2 and (out / "notes.txt").read_text() == "mine"
    # --overwrite replaces the run but not the user's own files.
    code, _, err = run(capsys, "train", *FAST, "--epochs", "2", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert summary(out)["epochs"] == 2 and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["safetensors", "truncated", "config"])
def test_corrupted_checkpoint_is_one_line(capsys, tmp_path, damage):
    out = tmp_path / "run"
    assert run(capsys, "train", *FAST, "--epochs", "1", "--out", str(out))[0] == 0
    if damage == "safetensors":
        data = bytearray((out / "checkpoint.safetensors").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (out / "checkpoint.safetensors").write_bytes(bytes(data))
    elif damage == "truncated":
        data = (out / "checkpoint.safetensors").read_bytes()
        (out / "checkpoint.safetensors").write_bytes(data[:len(data) // 2])
    else:
        (out / "config.json").write_text("not json")
    code, _, err = run(capsys, "train", "--resume", "--epochs", "2", "--out", str(out), "--quiet")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "damaged" in err or "corrupted" in err


@pytest.mark.parametrize("name", ["example.yaml", "example.toml"])
def test_example_configs_in_the_readme_are_valid(name):
    from pathlib import Path

    from locallearn.cli.config import merge, parse_set, read_config
    from locallearn.training.run import TRAIN_KEYS, make_config

    path = Path(__file__).resolve().parents[1] / "configs" / name
    s = merge(read_config(path), parse_set(["lr=0.01", "epochs=5"]))
    assert (s["rule"], s["data"], s["net"]) == ("backprop", "mnist5k", "mlp:500,500")
    config = make_config(s["rule"], **{k: v for k, v in s.items() if k in TRAIN_KEYS})
    assert config.lr == 0.01 and config.epochs == 5 and config.batch_size == 128
    assert s["data_options"] == {"val_fraction": 0.1}
