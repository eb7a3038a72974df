"""NoProp rules: noprop-dt, noprop-ct, noprop-fm (one-hot and learned-prototype embeddings).

Locality on a real batch (block t's loss reaches block t only; the classifier and a
learned W_Embed are the shared "head" group), learning on digits, and inference: the
number of denoising steps is configurable, prediction is deterministic, and the
accuracy of T steps is what the training run reported.
"""

import json

import pytest
import torch

from locallearn import create_network, create_rule, train
from locallearn.cli.main import main
from locallearn.errors import UserError
from locallearn.testing import assert_local, gradient_reach
from locallearn.training.trainer import evaluate

RULES = ["noprop-dt", "noprop-ct", "noprop-fm"]


def make(name, digits, net="mlp:16", **options):
    return create_rule(name, create_network(net, digits.input_shape, digits.num_classes),
                       digits.task, **options)


@pytest.mark.parametrize("embedding", ["onehot", "prototype"])
@pytest.mark.parametrize("name", RULES)
def test_each_loss_reaches_only_its_group(name, embedding, digits):
    rule = make(name, digits, net="cnn:4,8", steps=3, embedding=embedding, hidden=16)
    names = [g.name for g in rule.param_groups()]
    if name == "noprop-dt":
        assert names == ["block0", "block1", "block2", "head"]
    elif name == "noprop-ct":
        assert names == ["denoiser", "head"]
    else:  # fm has no classifier: a head only to learn prototypes
        assert names == (["denoiser", "head"] if embedding == "prototype" else ["denoiser"])
    assert_local(rule, digits.train.x[:32], digits.train.y[:32])
    head = {id(p) for g in rule.param_groups() if g.name == "head" for p in g.params}
    # The shared pieces are exactly the classifier and a learned W_Embed.
    shared = [p for m in (getattr(rule, "classifier", None),) if m is not None
              for p in m.parameters()]
    if embedding == "prototype":
        shared.append(rule.embedding.weight)
    assert head == {id(p) for p in shared}


def test_dt_blocks_are_independent_copies_of_the_network(digits):
    rule = make("noprop-dt", digits, net="cnn:4,8", steps=4, hidden=16)
    # Block 0 embeds x with the network's own modules, the others with fresh copies.
    assert rule.blocks[0].features is rule.network.blocks
    w = [b.features[0].body[0].weight for b in rule.blocks]
    assert all(w[0].shape == v.shape and not torch.equal(w[0], v) for v in w[1:])
    assert not any(p.requires_grad for p in rule.network.head.parameters())
    # With one-hot labels there is no shared piece between blocks at all: block t's
    # loss leaves the classifier and every other block untouched (assert_local), and
    # its input z is a sample of the noising process, not another block's output.
    reach = gradient_reach(rule, digits.train.x[:16], digits.train.y[:16])
    assert [row.index(True) for row in reach] == list(range(5))


# Held-out accuracy floors on digits (chance 0.1); measured values are well above.
LEARNING = [("noprop-dt", "onehot", 8, 0.8), ("noprop-dt", "prototype", 8, 0.75),
            ("noprop-ct", "onehot", 10, 0.85), ("noprop-fm", "onehot", 10, 0.8),
            ("noprop-fm", "prototype", 10, 0.75)]


@pytest.mark.parametrize("name,embedding,epochs,floor", LEARNING)
def test_learns_digits(name, embedding, epochs, floor):
    s = train(rule=name, data="digits", net="mlp:64", epochs=epochs, quiet=True,
              checkpoint=False, measure_memory=False, rule_options={"embedding": embedding},
              ).summary
    assert s["test_accuracy"] > floor, s["test_accuracy"]
    # One readout per denoising step (+ the final classifier / end point).
    assert len(s["per_layer_test_accuracy"]) == 11


@pytest.mark.parametrize("name", RULES)
def test_inference_steps_are_configurable_and_t_steps_match_training(name):
    r = train(rule=name, data="digits", net="mlp:32", epochs=3, batch_size=32, quiet=True,
              checkpoint=False, measure_memory=False, rule_options={"steps": 4, "hidden": 32})
    rule = r.rule
    assert rule.inference_steps == 4

    def test():
        return evaluate(rule, r.dataset.loader("test", 1024), torch.device("cpu"))

    # The loop's figure is reproduced exactly: inference noise has its own seed.
    again = test()
    assert again["accuracy"] == r.summary["test_accuracy"]
    assert again["per_block_accuracy"] == r.summary["per_layer_test_accuracy"]
    before = torch.get_rng_state()
    x = r.dataset.test.x[:64]
    assert torch.equal(rule.predict(x), rule.predict(x))
    assert torch.equal(before, torch.get_rng_state())  # evaluation leaves training's RNG
    for n in (1, 2):
        rule.set_inference_steps(n)
        assert len(rule.block_scores(x)) == n + 1
        assert test()["accuracy"] > 0.6  # measured 0.80-0.85 (chance 0.1)
    with pytest.raises(UserError):
        rule.set_inference_steps(0)


def test_dt_one_step_runs_only_the_first_block(digits):
    rule = make("noprop-dt", digits, steps=5, inference_steps=1, hidden=8)
    calls = [0] * 5
    for t, block in enumerate(rule.blocks):
        block.register_forward_hook(lambda *_, t=t: calls.__setitem__(t, calls[t] + 1))
    rule.predict(digits.test.x[:8])
    assert calls == [1, 0, 0, 0, 0]
    rule.set_inference_steps(5)
    rule.predict(digits.test.x[:8])
    assert calls == [2, 1, 1, 1, 1]


def test_fm_refuses_inference_noise(digits):
    # fm's inference is an Euler solve with no noise term: the option would do nothing.
    with pytest.raises(UserError, match="inference_noise"):
        make("noprop-fm", digits, inference_noise=True)
    assert make("noprop-fm", digits).inference_noise is False
    assert make("noprop-ct", digits, inference_noise=True).inference_noise is True


def test_cli_trains_and_rejects_bad_options(capsys, tmp_path):
    base = ["train", "--rule", "noprop-dt", "--data", "digits", "--net", "cnn:4,8",
            "--epochs", "1", "--quiet", "--set", "rule.steps=2", "--set", "rule.hidden=8"]
    assert main(base + ["--out", str(tmp_path / "run")]) == 0
    # Checkpoints hold the network's modules under two names (block 1 embeds x with them).
    assert main(base[:7] + ["--epochs", "2"] + base[9:] + ["--out", str(tmp_path / "run"),
                                                           "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2
    capsys.readouterr()
    for extra, words in ((["--set", "rule.embedding=word2vec"], "onehot, prototype"),
                         (["--set", "rule.stepz=3"], "has no option 'stepz'"),
                         (["--set", "rule.steps=0"], "steps must be a positive integer"),
                         (["--set", "rule.eta=abc"], "eta must be a float"),
                         (["--net", "mlp:16,bb"], "black-box")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
