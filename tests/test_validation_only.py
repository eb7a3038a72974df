"""Selection on validation only: early stopping, early exit, prune and grow never use test."""

from __future__ import annotations

import pytest
import torch

from locallearn import TrainConfig, Trainer, create_network, create_rule
from locallearn.anytime.exits import early_exit_summary
from locallearn.anytime.prune import choose_prune
from locallearn.data import load_dataset
from locallearn.errors import UserError
from locallearn.training.trainer import evaluate


@pytest.fixture(scope="module")
def no_val():
    return load_dataset("digits", seed=0, val_fraction=0.0)


def _rule(name, data, net="mlp:16,16", **options):
    torch.manual_seed(0)
    return create_rule(name, create_network(net, data.input_shape, data.num_classes),
                       data.task, **options)


def test_empty_split_has_no_accuracy(no_val):
    assert len(no_val.val) == 0
    result = evaluate(_rule("backprop", no_val), no_val.loader("val", 64), torch.device("cpu"))
    assert result["accuracy"] is None and result["per_block_accuracy"] is None


def test_patience_without_validation_is_refused(no_val):
    cfg = TrainConfig(epochs=2, patience=1, quiet=True, checkpoint=False, measure_memory=False)
    with pytest.raises(UserError, match="validation split"):
        Trainer(cfg).fit(_rule("backprop", no_val), no_val)


def test_no_validation_gives_no_best_epoch_and_no_exit_threshold(no_val):
    cfg = TrainConfig(epochs=1, quiet=True, checkpoint=False, measure_memory=False)
    rule = _rule("mono-forward", no_val)
    summary = Trainer(cfg).fit(rule, no_val)
    assert summary["best_val_accuracy"] is None and summary["best_epoch"] == -1
    assert summary["test_accuracy"] > 0.1
    # the exit threshold is never chosen on the test split
    assert summary["early_exit_operating_point"] is None and summary["early_exit"]
    assert early_exit_summary(rule, no_val)["early_exit_operating_point"] is None
    with pytest.raises(UserError, match="validation"):
        choose_prune(rule, no_val, keep=1)


def test_best_epoch_restored_in_memory_with_the_rules_extra_state(digits):
    """patience without checkpoint files: weights and extra state of the best epoch."""
    rule = _rule("mono-forward", digits, "mlp:16,16,16", predict_from="best")
    seen = []
    original = rule.on_validation

    def record(result):  # the extra state the rule holds after each epoch's validation
        original(result)
        seen.append(rule.best_block)

    rule.on_validation = record
    cfg = TrainConfig(epochs=8, patience=2, lr=3e-2, quiet=True, checkpoint=False,
                      measure_memory=False, early_exit=False)
    summary = Trainer(cfg).fit(rule, digits)
    best = summary["best_epoch"]
    assert 0 <= best < summary["epochs"] - 1  # a later epoch was worse: something to restore
    assert rule.best_block == seen[best]
    # the restored weights are the best epoch's: validation gives its accuracy again
    # (validation at epoch e predicted from the block chosen at epoch e - 1)
    rule.best_block = seen[best - 1] if best > 0 else len(rule.network.blocks) - 1
    again = evaluate(rule, digits.loader("val", 1024), torch.device("cpu"))["accuracy"]
    assert again == pytest.approx(summary["best_val_accuracy"])


def test_ff_early_exit_full_depth_is_the_rules_own_predictor(digits):
    """The early-exit sweep at full depth answers as rule.predict, honouring used_layers."""
    from locallearn.anytime.exits import Anytime, block_table, sweep

    torch.manual_seed(0)
    rule = create_rule("ff", create_network("mlp:32,32,32", digits.input_shape, 10),
                       digits.task, predict="goodness", skip_first=True)
    assert rule.used_layers == [1, 2]
    Trainer(TrainConfig(epochs=2, lr=1e-2, quiet=True, checkpoint=False,
                        measure_memory=False, early_exit=False)).fit(rule, digits)
    anytime = Anytime(rule, probe=digits.test.x[:8])
    assert anytime.mode == "goodness"
    full = sweep(*block_table(anytime, digits.loader("test", 1024)))[-1]
    own = evaluate(rule, digits.loader("test", 1024), torch.device("cpu"))["accuracy"]
    assert full["mean_blocks"] == 3 and full["accuracy"] == pytest.approx(own)
