"""The Rule contract, checked for every registered rule (a new rule cannot land without it).

For each name in ``RULES``, on a tiny network of a data kind the rule supports:
locality (``assert_local``: disjoint groups covering every trainable parameter, loss k
reaching group k only), a checkpoint round trip (tensors and extra state), declared
options (every constructor option declared, defaults valid, listed by ``locallearn
list``), declared loss streaming (``iter_losses`` gives what ``losses`` gives), and
declared staging (the stage factory refuses exactly the rules that declare none, and a
one-stage pipeline computes the rule's own losses).
"""

from __future__ import annotations

import inspect
import json
import re

import pytest
import torch

from locallearn.cli.main import main
from locallearn.data import DATASETS, dataset_options, load_dataset
from locallearn.errors import UserError
from locallearn.networks import NETWORKS, create_network, network_options
from locallearn.options import NO_DEFAULT, declared_options
from locallearn.parallel.stages import StageContext, check_stageable, make_stage
from locallearn.rules import RULES, create_rule
from locallearn.rules.base import Staging
from locallearn.testing import assert_local

# Networks for rules that need more than a small MLP.
NETS = {"sff": "cnn:4,4", "drtp": "cnn:4,4"}


@pytest.fixture(scope="module")
def data():
    return {
        "image": load_dataset("digits", seed=0),
        **{f"graph-{task}": load_dataset("csbm", seed=0, task=task, nodes=60, classes=3,
                                         avg_degree=4, features=6) for task in ("node", "link")},
        "text": load_dataset("stdlib-text", context=8, max_chars=3000),
    }


def build(name: str, data, **options):
    """The rule on a tiny network of a kind it supports, with a batch to train on."""
    cls = RULES.get(name)
    torch.manual_seed(0)
    if "image" in cls.supports_kinds:
        d = data["image"]
        net = create_network(NETS.get(name, "mlp:8,8"), d.input_shape, d.num_classes)
        x, y = d.train.x[:16], d.train.y[:16]
    elif "graph" in cls.supports_kinds:
        d = data[f"graph-{getattr(cls, 'tasks', ('node',))[0]}"]
        net = create_network("gcn:8,8", d.input_shape, d.num_classes, task=d.graph_task)
        x, y = next(d.loader("train"))
    else:
        d = data["text"]
        net = create_network("gpt:1x16", d.input_shape, d.num_classes)
        x, y = d.train.x[:4], d.train.y[:4]
    return create_rule(name, net, d.task, **options), x, y


def values(losses) -> list[float]:
    return [float(loss.detach()) for loss in losses]


@pytest.mark.parametrize("name", RULES.names())
def test_rule_is_local(name, data):
    rule, x, y = build(name, data)
    assert rule.name == name  # set by the registry
    assert_local(rule, x, y)


@pytest.mark.parametrize("name", RULES.names())
def test_checkpoint_round_trip(name, data):
    rule, x, _ = build(name, data)
    rule.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        expected = rule.predict(x)
    extra = json.loads(json.dumps(rule.extra_state()))  # JSON, as checkpoints store it
    other, _, _ = build(name, data)
    torch.manual_seed(2)
    for p in other.parameters():  # anything not restored would now differ
        torch.nn.init.normal_(p)
    other.load_state_dict(rule.state_dict())
    other.load_extra_state(extra)
    other.eval()
    assert other.extra_state() == rule.extra_state()
    torch.manual_seed(1)
    with torch.no_grad():
        torch.testing.assert_close(other.predict(x), expected)


@pytest.mark.parametrize("name", RULES.names())
def test_options_are_declared_and_listed(name, capsys):
    cls = RULES.get(name)
    params = [p.name for p in inspect.signature(cls.__init__).parameters.values()
              if p.name not in ("self", "network", "task") and p.kind != p.VAR_KEYWORD]
    declared = declared_options(cls)
    assert set(params) <= {o.name for o in declared}, "every option must be declared"
    assert main(["list", "rules", name]) == 0
    listed = capsys.readouterr().out
    for o in declared:
        assert o.help and o.default is not NO_DEFAULT, o.name
        assert o.check(name, o.default) == o.default  # the default is allowed
        assert f"    {o.name} " in listed
    with pytest.raises(UserError, match="has no option 'no_such_option'"):
        create_rule(name, None, None, no_such_option=1)


@pytest.mark.parametrize("kind,name", [("datasets", n) for n in DATASETS.names()]
                         + [("networks", n) for n in NETWORKS.names()])
def test_builder_options_are_declared_and_listed(kind, name, capsys):
    """Every keyword option of a dataset or network builder is declared with a help and
    a valid default, and `locallearn list datasets|networks NAME` prints it."""
    registry, options_of, skip = {
        "datasets": (DATASETS, dataset_options, ("seed", "data_dir", "argument")),
        "networks": (NETWORKS, network_options, ("argument", "input_shape", "num_classes")),
    }[kind]
    params = [p.name for p in inspect.signature(registry.get(name)).parameters.values()
              if p.name not in skip]
    declared = {o.name for o in getattr(registry.get(name), "options", ())}
    assert set(params) == declared, "every option declared, nothing declared that is not one"
    assert main(["list", kind, name]) == 0
    listed = capsys.readouterr().out
    for o in options_of(name):
        assert o.help and o.default is not NO_DEFAULT, o.name
        assert o.check(name, o.default) == o.default  # the default is allowed
        assert f"    {o.name} " in listed


@pytest.mark.parametrize("call,message", [
    (lambda: create_network("mlp:4", (1, 8, 8), 10, activation_name="swish"),
     "mlp activation_name must be one of relu"),
    (lambda: create_network("cnn:4", (1, 8, 8), 10, kernel_size=0),
     "cnn kernel_size must be a positive integer, got 0"),
    (lambda: create_network("gcn:4", (6,), 3, task="graph"), "gcn task must be one of node"),
    (lambda: create_network("mlp:4", (1, 8, 8), 10, widths=3),
     "network 'mlp' has no option 'widths'; its options: activation_name, bias"),
    (lambda: load_dataset("digits", val_fraction=1.0), "digits val_fraction must be a float"),
    (lambda: load_dataset("digits", val_fraction="abc"), "digits val_fraction must be a float"),
    (lambda: load_dataset("csbm", homophily=1.5), "csbm homophily must be a float between 0 "
                                                   "and 1, got 1.5"),
    (lambda: load_dataset("csbm", nodes=10.5), "csbm nodes must be an int, got 10.5"),
    (lambda: load_dataset("digits", shuffle=True), "dataset 'digits' has no option 'shuffle'"),
    (lambda: load_dataset("csv:x.csv", val_fraction=0.9), "leaves no training data"),
])
def test_bad_builder_options_are_one_line(call, message):
    with pytest.raises(UserError, match=re.escape(message)) as info:
        call()
    assert "\n" not in str(info.value)


def test_an_undeclared_builder_option_is_checked_by_its_default(monkeypatch):
    """A network family from outside the package that declares nothing still gets one
    validation path: each keyword option typed by its default."""
    monkeypatch.setattr(NETWORKS, "_entries", dict(NETWORKS._entries))
    monkeypatch.setattr(NETWORKS, "_help", dict(NETWORKS._help))

    @NETWORKS.register("plain-test")
    def plain(argument, input_shape, num_classes, width: int = 4):
        return create_network(f"mlp:{width}", input_shape, num_classes)

    assert [o.name for o in network_options("plain-test")] == ["width"]
    assert create_network("plain-test", (1, 8, 8), 10, width=3).blocks[0].out_shape == (3,)
    with pytest.raises(UserError, match="plain-test width must be an int, got 'x'"):
        create_network("plain-test", (1, 8, 8), 10, width="x")
    with pytest.raises(UserError, match="network 'plain-test' has no option 'depth'"):
        create_network("plain-test", (1, 8, 8), 10, depth=2)


@pytest.mark.parametrize("name", RULES.names())
def test_declared_streaming_gives_the_same_losses(name, data):
    rule, x, y = build(name, data)
    torch.manual_seed(3)
    whole = values(rule.losses(x, y))
    rule, _, _ = build(name, data)  # afresh: some rules carry state from step to step
    torch.manual_seed(3)
    streamed = values(rule.iter_losses(x, y))
    assert streamed == pytest.approx(whole, rel=1e-5, abs=1e-6)
    assert isinstance(rule.streams_losses, bool)


class NoPeers:
    """The channel of a one-stage pipeline: nothing is ever sent or received."""

    def send(self, *args, **kwargs) -> None:
        raise AssertionError("a single stage sends nothing forward")

    def send_signal(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass


# The FF family stages only with random negatives and goodness prediction.
RANDOM = {"negatives": "random", "predict": "goodness"}
STAGED = [(name, {}) for name in RULES.names()] + [
    ("ff", RANDOM), ("symba", RANDOM), ("cff", RANDOM), ("drtp", {"pre_pool": False})]


@pytest.mark.parametrize("name,options", STAGED)
def test_declared_staging_is_what_the_stages_do(name, options, data):
    rule, x, y = build(name, data, **options)
    plan = rule.staging
    if not plan.stageable:
        assert plan.kind is Staging.NONE and plan.reason
        with pytest.raises(UserError, match="cannot be split into stages"):
            check_stageable(rule)
        return
    check_stageable(rule)
    # One stage holding every block runs the stage loop the rule declares; its losses
    # must be the rule's own (same weights, same random draws).
    ctx = StageContext(0, 1, range(len(rule.network.blocks)), torch.device("cpu"))
    stage = make_stage(rule, ctx, NoPeers(), optimizers=[])
    torch.manual_seed(4)
    expected = values(rule.losses(x, y))
    rule.zero_grad(set_to_none=True)
    torch.manual_seed(4)
    stage.step(x, y)
    stage.flush()
    assert stage.epoch_losses() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name,options", [("ff-seq", {}), ("drtp", {"conv_signal": "mean"}),
                                          ("drtp", {"conv_signal": "map"}),
                                          ("sff", {"blocks_per_unit": 2})])
def test_rules_that_would_compute_other_losses_in_stages_declare_none(name, options, data):
    rule, _, _ = build(name, data, **options)
    assert not rule.stageable
    with pytest.raises(UserError, match=re.escape(rule.staging.reason)):
        check_stageable(rule)


def test_list_options_prints_every_rule_with_typed_defaults(capsys):
    assert main(["list", "--options"]) == 0
    out = capsys.readouterr().out
    for name in RULES.names():
        assert f"  {name} " in out, name
        for o in declared_options(RULES.get(name)):
            assert any(line.startswith(f"    {o.name} ") and o.type_name() in line
                       and "default " in line for line in out.splitlines()), o.name
    for name in DATASETS.names():  # dataset and network builders' declarations too
        assert f"  {name} " in out, name
    assert any(line.startswith("    val_fraction ") and "default 0.1 " in line
               for line in out.splitlines())
    assert any(line.startswith("    activation_name ") and "[relu, gelu" in line
               for line in out.splitlines())
    assert main(["list", "rules", "no-such-rule"]) == 2
