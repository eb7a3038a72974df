"""Run settings from a config file (YAML or TOML), CLI flags and ``--set key=value``.

Precedence, lowest first: the rule's defaults, the config file, explicit
flags, ``--set``. Keys ``rule.X``, ``data.X`` and ``net.X`` go to the rule,
dataset and network options; other keys are run settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib
import yaml

from locallearn.errors import UserError

SECTIONS = {"rule": "rule_options", "data": "data_options", "net": "net_options"}


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.suffix == ".toml":
            cfg = tomllib.loads(text)
        else:
            cfg = yaml.safe_load(text) or {}
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"config file {path} does not parse: {first}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"config file {path} must hold a mapping of settings")
    return normalise(cfg)


def normalise(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fold ``rule: {...}``-style sections and dashed keys into the flat form."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        key = key.replace("-", "_")
        if key in SECTIONS and isinstance(value, dict):
            out.setdefault(SECTIONS[key], {}).update(value)
        elif key in SECTIONS.values():
            out.setdefault(key, {}).update(mapping(key, value))
        else:
            out[key] = value
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        section, dot, name = key.partition(".")
        if dot and section in SECTIONS:
            out.setdefault(SECTIONS[section], {})[name.replace("-", "_")] = value
        else:
            out[key.replace("-", "_")] = value
    return out


def mapping(key: str, value: Any) -> dict[str, Any]:
    """An options section (``rule_options`` ...): a mapping, or one line saying it is not."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"setting {key!r} must be a mapping of options (e.g. "
                        f"{key.removesuffix('_options')}: {{name: value}}), got {value!r}")
    return value


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in SECTIONS.values():
                out.setdefault(key, {}).update(mapping(key, value))
            elif value is not None:
                out[key] = value
    return out
