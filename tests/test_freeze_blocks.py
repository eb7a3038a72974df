"""``freeze_blocks``: the frozen control keeps blocks at their random init for every rule."""

from __future__ import annotations

import json

import pytest
import torch

from locallearn.data import load_dataset
from locallearn.errors import UserError
from locallearn.networks import create_network
from locallearn.rules import RULES, create_rule
from locallearn.training import TrainConfig, Trainer
from locallearn.training.trainer import to_device
from runhelpers import run_cli

# One tiny dataset and network per data kind (graph rules of link data get their own).
KINDS = {
    "image": ("digits", {}, "cnn:4,8"),
    "signal": ("mnist1d", {}, "mlp:16"),
    "vector": ("csv", {}, "mlp:16"),
    "graph": ("csbm", {"nodes": 60, "classes": 3, "features": 8}, "gcn:8"),
    "text": ("stdlib-text", {"context": 16, "max_chars": 20000}, "gpt:1x16"),
}
LINK_RULES = {"ff-link"}


# Rules built on an mlp only (ff-recurrent splits each block into Linear + activation).
MLP_ONLY = {"ff-recurrent"}


def _dataset(kind: str, rule: str, tmp_path_factory):
    name, options, net = KINDS[kind]
    if rule in MLP_ONLY and kind == "image":
        net = "mlp:16"
    options = dict(options)
    if kind == "vector":
        path = tmp_path_factory.mktemp("csv") / "easy.csv"
        g = torch.Generator().manual_seed(0)
        x = torch.randn(200, 6, generator=g)
        y = (x[:, 0] > 0).long()
        path.write_text("a,b,c,d,e,f,label\n" + "\n".join(
            ",".join(f"{v:.4f}" for v in row) + f",{int(t)}" for row, t in zip(x, y, strict=True)))
        name = f"csv:{path}"
    if kind == "graph" and rule in LINK_RULES:
        options["task"] = "link"
    return load_dataset(name, seed=0, **options), net


CASES = [(r, k) for r in RULES.names() for k in RULES.get(r).supports_kinds]


@pytest.mark.parametrize(("rule_name", "kind"), CASES, ids=[f"{r}-{k}" for r, k in CASES])
def test_freeze_blocks_keeps_blocks_and_trains_the_rest(rule_name, kind, tmp_path_factory):
    data, net = _dataset(kind, rule_name, tmp_path_factory)
    torch.manual_seed(0)
    network = create_network(net, data.task.input_shape, data.task.num_classes,
                             **getattr(data, "network_options", {}))
    rule = create_rule(rule_name, network, data.task)
    trainer = Trainer(TrainConfig(quiet=True, checkpoint=False, measure_memory=False,
                                  freeze_blocks=True, lr=1e-2))
    optimizers = trainer.make_optimizers(rule)
    blocks = {id(p) for m in rule.block_modules() for p in m.parameters()}
    assert blocks and all(not p.requires_grad for m in rule.block_modules()
                          for p in m.parameters())
    before = {n: p.detach().clone() for n, p in rule.named_parameters()}
    rule.train()
    x, y = next(iter(data.loader("train", 32, shuffle=True, seed=0)))
    for _ in range(2):
        trainer._step(rule, optimizers, to_device(x, trainer.device), to_device(y, trainer.device))
    changed = {n for n, p in rule.named_parameters() if not torch.equal(p, before[n])}
    frozen_changed = [n for n, p in rule.named_parameters() if id(p) in blocks and n in changed]
    assert not frozen_changed, f"frozen block parameters moved: {frozen_changed[:3]}"
    learners = [n for n, p in rule.named_parameters() if p.requires_grad]
    if learners:  # what lies outside the blocks (head, readouts, predictors) learns
        assert changed, f"{rule_name}: nothing outside the blocks learned"


def test_freeze_blocks_is_recorded_and_set_by_every_route(tmp_path, capsys):
    from locallearn.training import train

    result = train("dfa", "digits", "mlp:16", epochs=1, quiet=True, freeze_blocks=True,
                   out=str(tmp_path / "api"))
    assert result.summary["freeze_blocks"] is True
    assert all(not p.requires_grad for p in result.rule.network.blocks.parameters())
    assert json.loads((tmp_path / "api" / "summary.json").read_text())["freeze_blocks"] is True

    code, _, err = run_cli(capsys, "train", "--rule", "dfa", "--data", "digits", "--net",
                           "mlp:16", "--epochs", "1", "--quiet", "--set", "freeze_blocks=true",
                           "--out", str(tmp_path / "cli"))
    assert code == 0, err
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["freeze_blocks"] is True

    (tmp_path / "c.yaml").write_text("rule: dfa\ndata: digits\nnet: mlp:16\nepochs: 1\n"
                                     "freeze_blocks: true\n")
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "c.yaml"), "--quiet",
                           "--out", str(tmp_path / "cfg"))
    assert code == 0, err
    assert json.loads((tmp_path / "cfg" / "summary.json").read_text())["freeze_blocks"] is True

    off = train("dfa", "digits", "mlp:16", epochs=1, quiet=True, checkpoint=False)
    assert off.summary["freeze_blocks"] is False


def test_freeze_blocks_refuses_bad_values():
    from locallearn.training.run import make_config

    with pytest.raises(UserError):
        make_config("dfa", freeze_blocks="maybe")
    assert make_config("dfa", freeze_blocks="true").freeze_blocks is True


def test_freeze_blocks_refused_with_stages():
    from locallearn.parallel.launch import validate

    settings = {"rule": "mono-forward", "data": "digits", "net": "mlp:16,16",
                "freeze_blocks": "true"}
    with pytest.raises(UserError, match="freeze_blocks"):
        validate(settings, stages=2, staleness=0)
