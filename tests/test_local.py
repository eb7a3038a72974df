"""local: greedy local learning with an auxiliary classifier per block (linear/mlp, predsim).

Locality on a real batch for every data kind the networks support (mlp, cnn, vit,
gpt, gcn/sage/gat for nodes and links), and learning on small offline sets.
"""

import pytest
import torch

from locallearn import create_network, create_rule, train
from locallearn.data import load_dataset
from locallearn.errors import UserError
from locallearn.testing import assert_local

VARIANTS = [("linear", "pred"), ("mlp", "pred"), ("linear", "predsim"), ("mlp", "predsim")]


@pytest.mark.parametrize("aux,loss", VARIANTS)
@pytest.mark.parametrize("net", ["mlp:32,32", "cnn:8,16", "vit:2x32"])
def test_local_is_local_on_images(net, aux, loss, digits):
    rule = create_rule("local", create_network(net, digits.input_shape, digits.num_classes),
                       digits.task, aux=aux, loss=loss)
    assert len(rule.param_groups()) == 3  # two blocks (each with its aux) + head
    assert_local(rule, digits.train.x[:32], digits.train.y[:32])


@pytest.mark.parametrize("aux,loss", VARIANTS)
def test_local_on_gpt_is_local_with_next_token_heads(aux, loss):
    text = load_dataset("stdlib-text", context=16, max_chars=20000)
    net = create_network("gpt:2x32", text.input_shape, text.num_classes)
    rule = create_rule("local", net, text.task, aux=aux, loss=loss)
    x, y = text.train.x[:8], text.train.y[:8]
    scores = rule.block_scores(x)
    assert [tuple(s.shape) for s in scores] == [(8, 16, text.num_classes)] * 2
    assert_local(rule, x, y)


@pytest.mark.parametrize("spec", ["gcn:16,16", "sage:16,16", "gat:16,16"])
@pytest.mark.parametrize("task,loss", [("node", "pred"), ("node", "predsim"), ("link", "pred")])
def test_local_on_graphs_is_local(spec, task, loss):
    d = load_dataset("csbm", seed=0, task=task, nodes=120, classes=3, avg_degree=6, features=8)
    net = create_network(spec, d.input_shape, d.num_classes, task=d.graph_task)
    rule = create_rule("local", net, d.task, aux="mlp", loss=loss)
    graph, y = next(d.loader("train"))
    assert_local(rule, graph, y)


def test_local_options_are_checked(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    for bad in ({"aux": "conv"}, {"loss": "sim"}, {"beta": 1.5}, {"sim_samples": 1}):
        with pytest.raises(UserError, match="local"):
            create_rule("local", net, digits.task, **bad)
    d = load_dataset("csbm", seed=0, task="link", nodes=60, classes=3, features=8)
    link_net = create_network("gcn:8", d.input_shape, d.num_classes, task="link")
    with pytest.raises(UserError, match="predsim"):
        create_rule("local", link_net, d.task, loss="predsim")


def test_predsim_similarity_term_is_zero_for_class_aligned_features(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    rule = create_rule("local", net, digits.task, loss="predsim")
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    aligned = torch.nn.functional.one_hot(y, 10).float() * 3.0  # same width as onehot(y)
    assert rule.sim_loss(0, aligned, y).item() < 1e-10
    assert rule.sim_loss(0, torch.randn(6, 10), y).item() > 1e-3


# Held-out accuracy on digits (chance 0.1); measured 0.82-0.91 depending on the variant.
@pytest.mark.parametrize("net,aux,loss,epochs,floor", [("mlp:64,64", "linear", "pred", 10, 0.85),
                                                       ("mlp:64,64", "mlp", "predsim", 10, 0.75),
                                                       ("cnn:8,16", "mlp", "pred", 15, 0.75)])
def test_local_learns_digits_with_per_layer_readouts(net, aux, loss, epochs, floor):
    s = train(rule="local", data="digits", net=net, epochs=epochs, quiet=True, checkpoint=False,
              measure_memory=False, rule_options={"aux": aux, "loss": loss}).summary
    assert s["test_accuracy"] > floor, s["test_accuracy"]
    assert len(s["per_block_test_accuracy"]) == 2
    assert min(s["per_block_test_accuracy"]) > 0.6
    assert s["per_layer_test_accuracy"] == s["per_block_test_accuracy"]  # old name, one release


def test_local_learns_node_classification():
    s = train(rule="local", data="csbm", net="gcn:32,32", epochs=30, lr=0.01, quiet=True,
              checkpoint=False, measure_memory=False, rule_options={"loss": "predsim"},
              data_options={"nodes": 300, "homophily": 0.8, "snr": 0.7}).summary
    assert s["test_accuracy"] > 0.8, s["test_accuracy"]  # measured 0.98
    assert min(s["per_layer_test_accuracy"]) > 0.8
