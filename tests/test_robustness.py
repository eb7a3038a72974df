"""White-box attacks on a trained model (locallearn inspect --attack)."""

import pytest
import torch
import torch.nn.functional as F

from locallearn import create_network, create_rule, train
from locallearn.errors import UserError
from locallearn.measure.robustness import input_gradient, model_bound, robust_accuracy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = train(rule="local", data="digits", net="mlp:32,32", epochs=4, batch_size=32,
              quiet=True, measure_memory=False, early_exit=False, out=str(out))
    return r, out


def test_fgsm_eps_0_is_clean_and_attacks_lower_accuracy(trained):
    r, _ = trained
    zero = robust_accuracy(r.rule, r.dataset, "test", "fgsm", 0.0)
    assert zero["attacked_accuracy"] == zero["clean_accuracy"] > 0.5
    for kind in ("fgsm", "pgd"):
        hit = robust_accuracy(r.rule, r.dataset, "test", kind, 2.0, steps=3)
        assert hit["clean_accuracy"] == zero["clean_accuracy"]
        assert hit["attacked_accuracy"] < hit["clean_accuracy"] - 0.1, hit


def test_input_gradient_is_backprop_s_through_local_detaches(digits):
    """A local rule detaches every block input in training; the attack still gets the
    true input gradient of its prediction (here equal to the plain network's)."""
    torch.manual_seed(0)
    net = create_network("mlp:16,16", digits.input_shape, digits.num_classes)
    rule = create_rule("backprop", net, digits.task)
    x, y = digits.test.x[:8], digits.test.y[:8]
    ref_x = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(F.cross_entropy(net(ref_x), y), ref_x)
    torch.testing.assert_close(input_gradient(rule, x, y), ref)
    local = create_rule("local", net, digits.task)
    assert input_gradient(local, x, y).abs().sum() > 0
    ff = create_rule("ff", net, digits.task, predict="goodness")  # goodness argmax scores
    assert input_gradient(ff, x, y).abs().sum() > 0


def test_eps_is_in_raw_input_units(digits):
    bound = model_bound(digits, 0.6, "cpu")
    torch.testing.assert_close(bound, 0.6 / digits.std)


def test_bad_attack_settings_are_user_errors(trained):
    r, _ = trained
    with pytest.raises(UserError, match="eps"):
        robust_accuracy(r.rule, r.dataset, "test", "fgsm", -1.0)
    with pytest.raises(UserError, match="attack"):
        robust_accuracy(r.rule, r.dataset, "test", "cw", 0.1)


def test_inspect_prints_clean_and_attacked_accuracy(trained, cli):
    _, out = trained
    p = cli("inspect", str(out), "--attack", "fgsm", "--eps", "0.1")
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("fgsm attack"))
    assert "clean" in line and "attacked" in line and "raw input units" in line
    assert "zeros" in p.stdout and "dead" in p.stdout  # activity columns
    p = cli("inspect", str(out), "--eps", "0.1")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def test_suite_attack_setting_adds_robustness_rows_and_report_table(tmp_path):
    from locallearn.bench.runner import read_results, run_suite
    from locallearn.bench.suite import parse_suite

    suite = parse_suite("attack", """
description: robustness of one rule
kind: train
rules: [usf]
tasks:
  - {data: digits, net: "mlp:16"}
seeds: [0]
options: {epochs: 2, batch_size: 64, measure_memory: false, early_exit: false}
settings: {attack: {kind: fgsm, eps: 1.0}}
""")
    counts = run_suite(suite, tmp_path, device="cpu", quiet=True)
    assert counts.get("ok") == 1, counts
    rows = read_results(tmp_path)
    for row in rows:
        hit = row["robustness"]
        assert hit["attack"] == "fgsm" and hit["eps"] == 1.0
        assert hit["attacked_accuracy"] < hit["clean_accuracy"]
        assert hit["clean_accuracy"] == row["test_accuracy"]
    from locallearn.report import write_report

    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Robustness" in md and "| usf | no | digits | mlp:16 | fgsm | 1 |" in md
