"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

``checkpoint.json`` records the SHA-256 of ``checkpoint.safetensors``, so a
truncated or mismatched pair is detected on load instead of half-loading.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from locallearn.errors import UserError


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    stem: str = "checkpoint") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    st_path = directory / f"{stem}.safetensors"
    tmp = directory / f"{stem}.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, st_path)
    meta = dict(meta, safetensors_sha256=_sha256(st_path))
    _atomic_write_bytes(directory / f"{stem}.json", json.dumps(meta, indent=1).encode())


def load_checkpoint(directory: Path, stem: str = "checkpoint"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    st_path, js_path = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    if not st_path.exists() or not js_path.exists():
        raise UserError(f"no checkpoint in {directory} (expected {stem}.safetensors and "
                        f"{stem}.json); train without --resume first")
    try:
        meta = json.loads(js_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"corrupted checkpoint: {js_path} is not valid JSON; "
                        f"delete the run directory or train with --overwrite") from None
    if meta.get("safetensors_sha256") != _sha256(st_path):
        raise UserError(f"corrupted checkpoint: {st_path} does not match {js_path.name}; "
                        f"delete the run directory or train with --overwrite")
    try:
        tensors = load_file(str(st_path))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"corrupted checkpoint {st_path}: {exc}") from None
    return tensors, meta


def flatten_optimizer(prefix: str, state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors and a JSON-able rest."""
    tensors, rest = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, st in state_dict["state"].items():
        rest["state"][str(pid)] = {}
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{name}"] = value
                rest["state"][str(pid)][name] = {"tensor": f"{prefix}.{pid}.{name}"}
            else:
                rest["state"][str(pid)][name] = value
    return tensors, rest


def unflatten_optimizer(rest: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for pid, st in rest["state"].items():
        state[int(pid)] = {
            name: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for name, v in st.items()
        }
    return {"state": state, "param_groups": rest["param_groups"]}


def load_rule_tensors(rule, tensors: dict[str, torch.Tensor], mismatch: str, fix: str) -> None:
    """Load a checkpoint's ``rule.*`` tensors into ``rule``; a shape or key mismatch ends
    in one line: ``mismatch`` (what does not fit), torch's first line, then ``fix``."""
    state = {k[len("rule."):]: v for k, v in tensors.items() if k.startswith("rule.")}
    try:
        rule.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{mismatch} ({first}); {fix}") from None
