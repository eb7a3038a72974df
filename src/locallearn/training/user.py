"""``ll.train`` with your own model and / or data (the path behind ``model=``, ``train=``).

The rule's defaults apply exactly as on the command line (:func:`make_config`), options
override them; the run directory, metrics, checkpoints and summary are the same as for
a registered dataset and network spec. A run of your own model also writes
``OUT/model.pt2`` (see :mod:`locallearn.export`), because the run directory cannot
rebuild a model that only your code defines.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from locallearn.data import load_dataset
from locallearn.data.user import user_data
from locallearn.errors import UserError
from locallearn.networks import create_network
from locallearn.networks.from_model import network_from_model
from locallearn.rules import RULES, create_rule
from locallearn.training.spec import suggested_options
from locallearn.training.trainer import Trainer


def split_options(rule: str, options: dict[str, Any], train_keys: set[str]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword options into (training settings, rule options): a key the rule's
    constructor takes and that is no training setting is a rule option."""
    accepted = inspect.signature(RULES.get(rule).__init__).parameters
    rule_opts = {k: v for k, v in options.items() if k not in train_keys and k in accepted}
    return {k: v for k, v in options.items() if k not in rule_opts}, rule_opts


def train_user(rule: str, config, *, model=None, net: Any = None, data: Any = None,
               train=None, val=None, test=None, blocks=None, head=None,
               num_classes: int | None = None, normalise: bool = True,
               data_dir: str | None = None, data_options: dict | None = None,
               net_options: dict | None = None, rule_options: dict | None = None,
               length=None):
    from locallearn.training.run import TrainResult, run_info_for

    RULES.get(rule)
    if train is None and not isinstance(data, str):
        train = data
    if train is not None:
        dataset = user_data(train, val, test, seed=config.seed, num_classes=num_classes,
                            normalise=normalise, **(data_options or {}))
        data_name = "user"
    else:
        if val is not None or test is not None:
            raise UserError("val= and test= go with train=; a registered dataset has its own")
        dataset = load_dataset(data, seed=config.seed, data_dir=data_dir,
                               **(data_options or {}))
        data_name = data
    task = dataset.task
    torch.manual_seed(config.seed)
    if model is not None:
        network = network_from_model(model, task.input_shape, task.num_classes, blocks, head)
        net_name = "custom"
    else:
        net_options = {**suggested_options(data_name, net, dataset), **(net_options or {})}
        network = create_network(net, task.input_shape, task.num_classes, **net_options)
        net_name = net
    learner = create_rule(rule, network, task, **(rule_options or {}))
    run_info = run_info_for(rule, data_name, net_name, data_dir if data_name != "user" else None,
                            rule_options, data_options, net_options if model is None else None)
    if model is not None:
        run_info["user_model"] = network.describe()
    if data_name == "user":
        run_info["user_data"] = dataset.info["sources"]
        run_info["normalisation"] = dataset.info["normalisation"]
    if length is not None:
        config.epochs, run_info["epochs_default"] = length(config.epochs, dataset,
                                                           config.batch_size)
    trainer = Trainer(config, run_info)
    summary = trainer.fit(learner, dataset)
    if model is not None and config.out:
        summary = _export_into_run(learner, dataset, Path(config.out), summary)
    return TrainResult(summary, learner, dataset)


def _export_into_run(rule, dataset, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write model.pt2 next to the run (or the reason it cannot be), in summary.json too."""
    from locallearn.export import export_predictor, predictor_for, raw_batch

    device = next((p.device for p in rule.parameters()), torch.device("cpu"))
    try:
        rule.to("cpu")
        export_predictor(predictor_for(rule, dataset), raw_batch(dataset), out,
                         {"num_classes": rule.task.num_classes})
        summary["export"] = str(out / "model.pt2")
    except UserError as exc:
        summary["export"] = f"not exported: {exc}"
    finally:
        rule.to(device)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


__all__ = ["split_options", "train_user"]
