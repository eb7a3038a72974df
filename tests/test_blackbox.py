import numpy as np
import pytest
import torch
from torch import nn

from locallearn import create_network, create_rule, train
from locallearn.errors import UserError
from locallearn.networks import from_modules
from locallearn.networks.blackbox import black_box_block
from locallearn.testing import assert_local


# Rules that never differentiate through another block; measured 0.84-0.94.
@pytest.mark.parametrize("rule", ["mono-forward", "local", "ff", "dfa"])
def test_numpy_black_box_in_the_middle_still_trains(rule):
    s = train(rule=rule, data="digits", net="mlp:64,bb,64", epochs=15, quiet=True,
              checkpoint=False).summary
    assert s["test_accuracy"] > 0.75  # chance is 0.1
    if rule != "dfa":  # dfa has no per-block readouts
        assert len(s["per_layer_test_accuracy"]) == 3


def test_black_box_has_no_gradient_and_rule_stays_local(digits):
    net = create_network("mlp:32,bb,32", digits.input_shape, digits.num_classes)
    assert not net.blocks[1].differentiable and not list(net.blocks[1].parameters())
    rule = create_rule("mono-forward", net, digits.task)
    assert_local(rule, digits.train.x[:32], digits.train.y[:32])
    out = net.blocks[1](torch.randn(4, 32, requires_grad=True))
    assert not out.requires_grad


def test_any_python_callable_is_a_block(digits):
    def numpy_square(x):
        return np.square(x.numpy())

    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()),
              black_box_block(numpy_square), nn.Sequential(nn.Linear(16, 16), nn.ReLU())]
    net = from_modules(blocks, nn.Linear(16, 10), digits.input_shape, 10)
    rule = create_rule("mono-forward", net, digits.task)
    assert rule.predict(digits.test.x[:5]).shape == (5, 10)


@pytest.mark.parametrize("rule", ["backprop", "fa"])
def test_rules_needing_gradients_refuse_black_boxes(rule, digits, cli):
    net = create_network("mlp:32,bb,32", digits.input_shape, digits.num_classes)
    with pytest.raises(UserError, match="black-box"):
        create_rule(rule, net, digits.task)
    r = cli("train", "--rule", rule, "--data", "digits", "--net", "mlp:32,bb,32", "--epochs", "1")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "black-box" in r.stderr
