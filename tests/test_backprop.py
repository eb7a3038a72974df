import json

import torch

from locallearn import create_network, create_rule, train
from locallearn.testing import assert_local


def test_backprop_learns_digits(tmp_path):
    result = train(rule="backprop", data="digits", net="mlp:64", epochs=10, out=str(tmp_path),
                   quiet=True)
    assert result.summary["test_accuracy"] > 0.9
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["test_accuracy"] == result.summary["test_accuracy"]


def test_backprop_is_one_global_loss(digits):
    net = create_network("mlp:32,32", digits.input_shape, digits.num_classes)
    rule = create_rule("backprop", net, digits.task)
    assert len(rule.param_groups()) == 1
    assert_local(rule, digits.train.x[:64], digits.train.y[:64])


def test_cli_train_writes_summary(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--rule", "backprop", "--data", "digits", "--net", "mlp:32", "--epochs", "2",
            "--batch-size", "64", "--seed", "0", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    for key in ("rule", "data", "net", "epochs", "seed", "test_accuracy", "train_seconds",
                "samples_per_second", "peak_memory_bytes", "device", "torch_version",
                "per_block_test_accuracy", "per_layer_test_accuracy"):
        assert key in s, key
    assert s["rule"] == "backprop" and s["epochs"] == 2 and 0 <= s["test_accuracy"] <= 1
    assert s["per_block_test_accuracy"] is None and s["per_layer_test_accuracy"] is None
    assert s["torch_version"] == torch.__version__
