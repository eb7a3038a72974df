"""Per-epoch diagnostics in metrics.jsonl: activity for any rule, alignment angles for
the feedback-based rules, positive / negative goodness for the FF family."""

import json

import pytest
import torch

from locallearn import TrainConfig, Trainer, create_network, create_rule, train
from locallearn.measure.diagnostics import PROBE_ROWS, activity, angle, probe_batch
from locallearn.training.run import build


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_fa_weight_alignment_falls_from_90_degrees(tmp_path, digits):
    """The known FA result (Lillicrap et al. 2016): W comes to align with the fixed B.
    At init B and W are independent, so the angle starts near 90 degrees."""
    dataset, rule = build("fa", "digits", "mlp:64,64", seed=0)
    x, y = probe_batch(dataset, torch.device("cpu"))
    start = rule.epoch_diagnostics(x, y)
    assert all(80 < a < 100 for a in start["weight_alignment"]), start
    cfg = TrainConfig(epochs=6, batch_size=32, quiet=True, checkpoint=False,
                      measure_memory=False, early_exit=False, out=str(tmp_path))
    Trainer(cfg).fit(rule, dataset)
    logged = [m["diagnostics"] for m in metrics(tmp_path)]
    assert len(logged) == 6
    for d in logged:
        assert len(d["weight_alignment"]) == len(d["gradient_alignment"]) == 3  # 2 blocks, head
        assert len(d["sparsity"]) == len(d["dead_units"]) == 2
    end = logged[-1]
    # The layers whose B carries the error (head, last block) align by tens of degrees.
    assert end["weight_alignment"][-1] < start["weight_alignment"][-1] - 15, (start, end)
    assert end["weight_alignment"][-2] < start["weight_alignment"][-2] - 5, (start, end)
    assert [d["weight_alignment"][-1] for d in logged] == sorted(
        d["weight_alignment"][-1] for d in logged)[::-1]  # falls every epoch
    # The head's update is backprop's exactly; lower layers point within 90 degrees.
    assert end["gradient_alignment"][-1] < 1.0
    assert all(a < 85 for a in end["gradient_alignment"][:-1]), end


@pytest.mark.parametrize("name", ["dfa", "usf", "drtp"])
def test_feedback_rules_log_alignment(name, tmp_path):
    train(rule=name, data="digits", net="mlp:32,32", epochs=2, batch_size=64, quiet=True,
          checkpoint=False, measure_memory=False, early_exit=False, out=str(tmp_path))
    d = metrics(tmp_path)[-1]["diagnostics"]
    assert len(d["gradient_alignment"]) == 3 and all(0 <= a <= 180
                                                     for a in d["gradient_alignment"])
    if name != "drtp":  # drtp's projection of the target has no forward counterpart
        assert all(0 <= a <= 180 for a in d["weight_alignment"])
    assert d["gradient_alignment"][-1] < 1.0  # every rule here trains the head by backprop


def test_angle():
    a = torch.tensor([1.0, 0.0])
    assert angle(a, torch.tensor([0.0, 2.0])) == pytest.approx(90.0)
    assert angle(a, 3 * a) == pytest.approx(0.0, abs=1e-6)
    assert angle(a, -a) == pytest.approx(180.0)
    assert angle(a, torch.zeros(2)) is None and angle(None, a) is None


def test_activity_counts_zeros_and_dead_units(digits):
    net = create_network("mlp:8,8", digits.input_shape, digits.num_classes)
    rule = create_rule("backprop", net, digits.task)
    linear = net.blocks[0].body[1] if isinstance(net.blocks[0].body[0], torch.nn.Flatten) \
        else net.blocks[0].body[0]
    with torch.no_grad():
        linear.bias[:3] = -1e6  # three units of block 0 never fire
        linear.bias[3:] = 1e6   # the other five always do
    a = activity(rule, digits.train.x[:50])
    assert a["dead_units"][0] == pytest.approx(3 / 8)
    assert a["sparsity"][0] == pytest.approx(3 / 8)
    cnn = create_network("cnn:4,8", digits.input_shape, digits.num_classes)
    with torch.no_grad():
        cnn.blocks[0].body[0].bias[0] = -1e6  # channel 0 dead everywhere
    a = activity(create_rule("backprop", cnn, digits.task), digits.train.x[:50])
    assert a["dead_units"][0] >= 0.25 and 0 < a["sparsity"][0] < 1


def test_ff_logs_positive_above_negative_goodness(tmp_path):
    train(rule="ff", data="digits", net="mlp:64,64", epochs=8, batch_size=64, quiet=True,
          checkpoint=False, measure_memory=False, early_exit=False, out=str(tmp_path))
    d = metrics(tmp_path)[-1]["diagnostics"]
    assert len(d["goodness_positive"]) == len(d["goodness_negative"]) == 2
    assert all(p > n for p, n in zip(d["goodness_positive"], d["goodness_negative"],
                                     strict=True)), d


@pytest.mark.parametrize("name", ["brsf", "ff"])
def test_diagnostics_do_not_change_training(name):
    """The measurement draws random numbers (brsf's magnitudes, FF's negatives) but puts
    the generator back: the same weights with and without it."""
    weights = []
    for on in (True, False):
        r = train(rule=name, data="digits", net="mlp:16", epochs=2, batch_size=64,
                  quiet=True, checkpoint=False, measure_memory=False, early_exit=False,
                  diagnostics=on)
        weights.append([p.detach().clone() for p in r.rule.parameters()])
    for a, b in zip(*weights, strict=True):
        assert torch.equal(a, b)


def test_probe_batch_is_fixed_training_rows(digits):
    x, _ = probe_batch(digits, torch.device("cpu"))
    assert torch.equal(x, digits.train.x[:PROBE_ROWS])


def test_report_shows_diagnostics(tmp_path):
    from locallearn.report import write_report

    for name in ("fa", "ff"):
        train(rule=name, data="digits", net="mlp:16", epochs=2, batch_size=128, quiet=True,
              checkpoint=False, measure_memory=False, early_exit=False,
              out=str(tmp_path / name))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Diagnostics at the last epoch" in md
    table = md.split("## Diagnostics at the last epoch")[1].split("##")[0].splitlines()
    fa_row = next(line for line in table if line.startswith("| fa | no | digits"))
    weight, gradient = fa_row.split(" | ")[4:6]
    assert len(weight.split()) == 2 and gradient.split()[-1] == "0"  # head: exact gradient
    ff_row = next(line for line in table if line.startswith("| ff | no | digits"))
    assert ff_row.split(" | ")[-2] != "-"  # positive goodness logged
    page = (tmp_path / "report.html").read_text()
    for title in ("Alignment angles by epoch", "Activity by epoch",
                  "Forward-Forward goodness by epoch"):
        assert title in page


def test_diagnostics_leave_batch_norm_statistics_alone(digits):
    from locallearn.measure.diagnostics import epoch_diagnostics

    net = create_network("mlp:8", digits.input_shape, digits.num_classes)
    net.blocks[0].body.append(torch.nn.BatchNorm1d(8))
    rule = create_rule("fa", net, digits.task).train()
    bn = net.blocks[0].body[-1]
    before = bn.running_mean.clone()
    d = epoch_diagnostics(rule, probe_batch(digits, torch.device("cpu")))
    assert torch.equal(bn.running_mean, before) and rule.training
    assert len(d["gradient_alignment"]) == 2
