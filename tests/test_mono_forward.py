from locallearn import create_network, create_rule, train
from locallearn.testing import assert_local


def test_mono_forward_is_local(digits):
    net = create_network("mlp:32,32,32", digits.input_shape, digits.num_classes)
    rule = create_rule("mono-forward", net, digits.task)
    assert len(rule.param_groups()) == 3
    assert_local(rule, digits.train.x[:64], digits.train.y[:64])


def test_mono_forward_learns_with_per_block_readouts(tmp_path):
    s = train(rule="mono-forward", data="digits", net="mlp:64,64", epochs=20, quiet=True).summary
    assert s["test_accuracy"] > 0.88
    assert len(s["per_layer_test_accuracy"]) == 2
    assert min(s["per_layer_test_accuracy"]) > 0.8
