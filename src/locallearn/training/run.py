"""Build dataset, network and rule by name, then train: what ``locallearn train`` does."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from locallearn.errors import UserError
from locallearn.rules import RULES, Rule
from locallearn.training.length import default_epochs
from locallearn.training.spec import (  # noqa: F401 (check_names: imported from here)
    RunSpec,
    check_names,
    check_network_size,
    memory_available,
)
from locallearn.training.trainer import TrainConfig, Trainer

TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
TRAIN_TYPES = {f.name: f.type for f in fields(TrainConfig)}


@dataclass
class TrainResult:
    summary: dict[str, Any]
    rule: Rule
    dataset: Any


def build(rule: str, data: str, net: str, seed: int = 0, data_dir: str | None = None,
          data_options: dict | None = None, net_options: dict | None = None,
          rule_options: dict | None = None):
    """Dataset and rule (on its network) of :class:`RunSpec` ``(rule, data, net, ...)``."""
    dataset, _, learner = RunSpec(rule, data, net, seed, data_dir, rule_options, data_options,
                                  net_options).build()
    return dataset, learner


def make_config(rule: str, **train_options: Any) -> TrainConfig:
    """TrainConfig from the rule's defaults overridden by ``train_options``."""
    if not isinstance(rule, str):
        raise UserError(f"setting 'rule' must be a name like 'backprop', got {rule!r}")
    settings = {k: v for k, v in RULES.get(rule).defaults.items() if k in TRAIN_KEYS}
    settings.update({k: v for k, v in train_options.items() if v is not None})
    unknown = set(settings) - TRAIN_KEYS
    if unknown:
        raise UserError(f"unknown training option {sorted(unknown)[0]!r}; "
                        f"known: {', '.join(sorted(TRAIN_KEYS))}")
    config = TrainConfig(**{k: coerce_setting(k, v) for k, v in settings.items()})
    config.validate()
    return config


def coerce_setting(key: str, value: Any) -> Any:
    """Config files and ``--set`` give strings or YAML scalars: check them against
    TrainConfig's field types so ``epochs=abc`` is a one-line error, not a TypeError."""
    kind = str(TRAIN_TYPES[key])
    if value is None:
        return value
    if kind.startswith("dict"):
        if not isinstance(value, dict):
            raise UserError(f"setting {key!r} must be a mapping, got {value!r}")
        return value
    if "str" in kind:
        if not isinstance(value, str):
            raise UserError(f"setting {key!r} must be a string, got {value!r}")
        return value
    try:
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            if not isinstance(value, (bool, int)):
                raise ValueError
            return bool(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                number = value
            else:
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                number = int(as_float)
            if abs(number) > 2**63 - 1:
                raise UserError(f"setting {key!r} = {number} does not fit in 64 bits")
            return number
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise UserError(f"setting {key!r} must be a finite number, got {value!r}")
            return number
    except (TypeError, ValueError):
        raise UserError(f"setting {key!r} must be {'an' if kind == 'int' else 'a'} {kind}, "
                        f"got {value!r}") from None
    return value


def run_info_for(rule: str, data: str, net: str, data_dir, rule_options, data_options,
                 net_options) -> dict[str, Any]:
    """The run description config.json records (:meth:`RunSpec.info`)."""
    return RunSpec(rule, data, net, 0, data_dir, rule_options, data_options,
                   net_options).info()


def train(rule: str = "backprop", data: Any = "mnist5k", net: Any = "mlp:500,500",
          data_dir: str | None = None, data_options: dict | None = None,
          net_options: dict | None = None, rule_options: dict | None = None, *,
          model: Any = None, train: Any = None, val: Any = None, test: Any = None,
          blocks: list[str] | None = None, head: Any = None, num_classes: int | None = None,
          normalise: bool = True, **options: Any) -> TrainResult:
    """Train one rule; the summary is also written to ``out/summary.json``.

    ``options`` are :class:`TrainConfig` fields (those left out take the rule's own
    defaults, ``Rule.defaults``, then TrainConfig's) or the rule's own options.

    Your own model and data (:mod:`locallearn.training.user`): ``model`` is an
    ``nn.Sequential`` (each child a block), a list of modules, or a module with
    ``blocks=[submodule names]`` (``net=`` a module works too); ``train`` / ``val`` /
    ``test`` are ``(X, y)`` pairs, torch Datasets or DataLoaders (``data=`` one of them
    works too; without val/test they are held out of it). ``normalise`` (default True)
    standardises with training statistics stored with the model; False uses the data
    as given.
    """
    if not isinstance(net, str) and model is None:
        model, net = net, None
    own_data = train is not None or not isinstance(data, str)
    from locallearn.training.user import split_options, train_user

    options, extra_rule_options = split_options(rule, options, TRAIN_KEYS)
    if extra_rule_options:
        rule_options = {**(rule_options or {}), **extra_rule_options}
    config = make_config(rule, **options)
    # No epochs named: the default follows the optimiser steps (training/length.py).
    length = None if options.get("epochs") is not None else default_epochs
    if model is not None or own_data:
        return train_user(rule, config, model=model, net=net, data=data, train=train, val=val,
                          test=test, blocks=blocks, head=head, num_classes=num_classes,
                          normalise=normalise, data_dir=data_dir, data_options=data_options,
                          net_options=net_options, rule_options=rule_options, length=length)
    dataset, learner = build(rule, data, net, config.seed, data_dir, data_options, net_options,
                             rule_options)
    run_info = run_info_for(rule, data, net, data_dir, rule_options, data_options, net_options)
    if length is not None:
        config.epochs, run_info["epochs_default"] = length(config.epochs, dataset,
                                                           config.batch_size)
    if getattr(dataset, "mean", None) is not None:  # registered data: standardised on load
        run_info["normalisation"] = {"applied": True, "by": "locallearn",
                                     "statistics_from": "training split",
                                     "stored_with_model": "rebuilt from the run's config"}
    if hasattr(dataset, "graph_task"):
        run_info["task"] = dataset.graph_task
    trainer = Trainer(config, run_info)
    summary = trainer.fit(learner, dataset)
    return TrainResult(summary, learner, dataset)
