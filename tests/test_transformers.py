import math
from collections import Counter

import pytest
import torch

from locallearn import create_network, create_rule, train
from locallearn.data import load_dataset
from locallearn.errors import UserError
from locallearn.testing import assert_local

TEXT = {"context": 32, "max_chars": 40000}


@pytest.fixture(scope="module")
def text():
    return load_dataset("stdlib-text", **TEXT)


def unigram_perplexity(dataset) -> float:
    counts = Counter(dataset.train.y.flatten().tolist())
    total = sum(counts.values())
    targets = dataset.test.y.flatten().tolist()
    nll = -sum(math.log(counts.get(t, 0.5) / total) for t in targets) / len(targets)
    return math.exp(nll)


def test_stdlib_text_is_deterministic_and_split_by_file(text):
    again = load_dataset("stdlib-text", **TEXT)
    assert torch.equal(text.train.x, again.train.x) and torch.equal(text.test.y, again.test.y)
    assert text.train.x.dtype == torch.long and text.train.x.shape[1] == 32
    # targets are the inputs shifted by one character
    assert torch.equal(text.train.x[0, 1:], text.train.y[0, :-1])
    assert text.task.kind == "text" and text.num_classes > 90


def test_gpt_causal_mask_hides_the_future(text):
    net = create_network("gpt:2x32", text.input_shape, text.num_classes).eval()
    x = text.test.x[:2].clone()
    out = net(x)
    x2 = x.clone()
    x2[:, 20:] = (x2[:, 20:] + 1) % text.num_classes
    out2 = net(x2)
    assert torch.allclose(out[:, :20], out2[:, :20], atol=1e-5)
    assert not torch.allclose(out[:, 20:], out2[:, 20:])


@pytest.mark.parametrize("rule", ["backprop", "mono-forward"])
def test_gpt_learns_next_character(rule, text):
    s = train(rule=rule, data="stdlib-text", net="gpt:2x32", epochs=8, lr=3e-3, quiet=True,
              data_options=TEXT).summary
    assert s["test_perplexity"] < 0.75 * unigram_perplexity(text)
    assert 0 < s["test_accuracy"] <= 1


def test_mono_forward_on_gpt_is_local(text):
    net = create_network("gpt:3x32", text.input_shape, text.num_classes)
    rule = create_rule("mono-forward", net, text.task)
    assert_local(rule, text.train.x[:8], text.train.y[:8])


def test_mono_forward_on_vit_is_local(digits):
    net = create_network("vit:3x32", digits.input_shape, digits.num_classes)
    rule = create_rule("mono-forward", net, digits.task)
    assert_local(rule, digits.train.x[:16], digits.train.y[:16])


@pytest.mark.parametrize("rule", ["backprop", "mono-forward"])
def test_vit_learns_digits(rule):
    s = train(rule=rule, data="digits", net="vit:2x32", epochs=15, lr=3e-3, quiet=True).summary
    assert s["test_accuracy"] > 0.7


def test_bad_transformer_specs(digits):
    with pytest.raises(UserError, match="DEPTHxWIDTH"):
        create_network("vit:four", digits.input_shape, digits.num_classes)
    with pytest.raises(UserError, match="token sequences"):
        create_network("gpt:2x32", digits.input_shape, digits.num_classes)
