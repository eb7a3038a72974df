"""Forward-Forward family: locality on a real batch, learning on digits, per-layer scores."""

import pytest
import torch

from locallearn import create_network, create_rule, train
from locallearn.errors import UserError
from locallearn.rules.ff_common import LabelEmbedding, goodness, normalise, wrong_labels
from locallearn.testing import assert_local


def test_label_embedding_images_overwrite_first_pixels_vectors_append(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    embed = LabelEmbedding(net, digits.task, scale=5.0)
    x = digits.train.x[:4]
    out = embed(x, torch.tensor([0, 3, 9, 3]))
    assert out.shape == x.shape
    flat = out.flatten(1)
    assert flat[1, 3] == 5.0 and flat[1, :10].sum() == 5.0
    assert torch.equal(flat[:, 10:], x.flatten(1)[:, 10:])
    neutral = embed(x, None).flatten(1)
    assert torch.allclose(neutral[:, :10], torch.full((4, 10), 0.5))

    from locallearn.data.base import Task
    task = Task(num_classes=3, input_shape=(5,), kind="vector")
    vnet = create_network("mlp:8", (5,), 3)
    vembed = LabelEmbedding(vnet, task, scale=1.0)
    v = vembed(torch.zeros(2, 5), torch.tensor([2, 0]))
    assert v.shape == (2, 8) and v[0, 7] == 1.0 and v[1, 5] == 1.0
    assert vnet(v).shape == (2, 3)  # the first layer was widened to take the label


def test_goodness_normalise_and_negatives():
    h = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
    assert goodness(h, "mean").item() == pytest.approx(1.5)
    assert goodness(h, "sum").item() == pytest.approx(6.0)
    assert normalise(3 * h).square().mean().item() == pytest.approx(1.0, rel=1e-5)
    y = torch.randint(0, 10, (500,))
    assert (wrong_labels(y, 10) != y).all()
    scores = torch.zeros(500, 10)
    scores[:, 4] = 1.0
    hard = wrong_labels(y, 10, scores)
    assert (hard[y != 4] == 4).all() and (hard[y == 4] != 4).all()


def test_ff_rejects_bad_options(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    with pytest.raises(UserError, match="negatives"):
        create_rule("ff", net, digits.task, negatives="worst")


@pytest.mark.parametrize("negatives", ["random", "hardest", "readout"])
def test_ff_is_local(digits, negatives):
    net = create_network("mlp:32,32,32", digits.input_shape, digits.num_classes)
    rule = create_rule("ff", net, digits.task, negatives=negatives)
    assert [g.name for g in rule.param_groups()] == ["block0", "block1", "block2", "head"]
    assert_local(rule, digits.train.x[:64], digits.train.y[:64])


def test_ff_learns_digits_with_goodness_and_readout():
    s = train(rule="ff", data="digits", net="mlp:64,64", epochs=10, quiet=True,
              checkpoint=False).summary
    assert s["test_accuracy"] > 0.85  # readout (default)
    per_layer = s["per_layer_test_accuracy"]
    assert len(per_layer) == 2 and min(per_layer) > 0.3  # goodness over labels, per layer
    g = train(rule="ff", data="digits", net="mlp:64,64", epochs=10, quiet=True,
              checkpoint=False, rule_options={"predict": "goodness"}).summary
    assert g["test_accuracy"] > 0.8
