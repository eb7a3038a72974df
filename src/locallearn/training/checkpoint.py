"""Checkpoints: one safetensors file per checkpoint, tensors and metadata together.

A checkpoint is one file, ``STEM.safetensors``: the tensors, and in its header the
JSON metadata (epoch, history, optimiser settings, run id) with the SHA-256 of the
tensors' bytes. It is written to ``STEM.safetensors.tmp``, flushed to disk, and
renamed into place in one step, so after a kill at any moment the checkpoint is wholly
the old one or wholly the new one. The one it replaces is kept as
``STEM.prev.safetensors``: when the newest is damaged, :func:`load_checkpoint` resumes
from the previous one and says so. ``STEM.json`` is a readable copy of the metadata
for people; nothing reads it back.

Staged runs write one part per stage, ``stageR-eEPOCH.safetensors``, and commit the
epoch only when rank 0 writes the merged ``checkpoint.safetensors`` after every part
is on disk (see :mod:`locallearn.parallel.worker`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from locallearn.errors import UserError

META_KEY = "locallearn"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so that ``path`` is always the old or the new whole file."""
    _atomic_write_bytes(Path(path), json.dumps(obj, indent=1, default=str).encode())


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    stem: str = "checkpoint", keep_previous: bool = True,
                    mirror: bool = True) -> None:
    """Write ``STEM.safetensors`` as one unit (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = dict(meta, tensors_sha256=tensors_sha256(tensors))
    path, tmp = directory / f"{stem}.safetensors", directory / f"{stem}.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, default=str)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, directory / f"{stem}.prev.safetensors")
    os.replace(tmp, path)  # the commit: a kill before it leaves the previous checkpoint
    fsync_dir(directory)
    if mirror:
        write_json_atomic(directory / f"{stem}.json", meta)


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata in a checkpoint file's header (UserError if it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header[META_KEY])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except (KeyError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"corrupted checkpoint {path}: no readable metadata ({exc})") from None
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UserError(f"corrupted checkpoint {path}: {str(exc).splitlines()[0]}") from None
    return meta


def _load_one(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    legacy = path.with_suffix(".json")
    try:
        with safe_open(str(path), framework="pt") as f:
            has_meta = META_KEY in (f.metadata() or {})
    except Exception as exc:  # safetensors' own error types for a damaged header
        raise UserError(f"corrupted checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not has_meta and legacy.exists():  # written before metadata moved into the file
        try:
            meta = json.loads(legacy.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"corrupted checkpoint: {legacy} is not valid JSON") from None
        if not isinstance(meta, dict) or meta.get("safetensors_sha256") != _sha256(path):
            raise UserError(f"corrupted checkpoint: {path} does not match {legacy.name}")
        return load_file(str(path)), meta
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"corrupted checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if meta.get("tensors_sha256") != tensors_sha256(tensors):
        raise UserError(f"corrupted checkpoint {path}: its tensors do not match the checksum "
                        f"in its header")
    return tensors, meta


def checkpoint_paths(directory: Path, stem: str = "checkpoint") -> list[Path]:
    """The checkpoint files of ``stem`` that exist, newest first."""
    paths = [directory / f"{stem}.safetensors", directory / f"{stem}.prev.safetensors"]
    return [p for p in paths if p.is_file()]


def has_checkpoint(directory: Path, stem: str = "checkpoint") -> bool:
    return bool(checkpoint_paths(directory, stem))


def load_checkpoint(directory: Path, stem: str = "checkpoint", fallback: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest good checkpoint ``stem`` in ``directory``: when the newest is damaged and
    ``fallback`` is on, the previous one, with a line on stderr saying so."""
    paths = checkpoint_paths(Path(directory), stem)
    if not paths:
        raise UserError(f"nothing to resume in {directory}: no checkpoint ({stem}.safetensors),"
                        f" so no epoch was completed; train without --resume")
    problems = []
    for path in paths if fallback else paths[:1]:
        try:
            tensors, meta = _load_one(path)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if problems:
            print(f"locallearn: warning: {problems[0]}; using the previous checkpoint "
                  f"{path.name} (epoch {int(meta.get('epoch', -1)) + 1}) instead",
                  file=sys.stderr)
        return tensors, meta
    raise UserError(f"{problems[0]}; no older good checkpoint: delete the run directory or "
                    f"train with --overwrite")


def state_tensors(rule_state: dict[str, torch.Tensor],
                  optimizers) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """What a checkpoint holds as tensors: the rule's state (``rule.*``), each optimiser's
    tensors (``optim.i.*``) and the torch RNG; plus each optimiser's non-tensor rest.
    Used by the one-process trainer and by every pipeline stage (its own part)."""
    tensors = {f"rule.{k}": v for k, v in rule_state.items()}
    rests = []
    for i, opt in enumerate(optimizers):
        t, rest = flatten_optimizer(f"optim.{i}", opt.state_dict())
        tensors.update(t)
        rests.append(rest)
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, rests


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


def check_loaded_state(optimizers, rests: list, tensors: dict[str, torch.Tensor],
                       where: Path | str) -> None:
    """Check a checkpoint's optimiser state and RNG state against what this run's
    optimisers and torch expect, before anything is loaded: a wrong shape would train
    NaNs, and a too-small ``exp_avg`` lets a fused optimiser write past its buffer."""
    def bad(what: str) -> UserError:
        return UserError(f"checkpoint in {where} does not fit this run: {what}; resume with "
                         f"the same settings or start again with --overwrite")

    if not isinstance(rests, list) or len(rests) != len(optimizers):
        raise bad(f"{len(rests) if isinstance(rests, list) else 'no'} optimiser states for "
                  f"{len(optimizers)} optimisers")
    for i, (opt, rest) in enumerate(zip(optimizers, rests, strict=True)):
        params = [p for g in opt.param_groups for p in g["params"]]
        groups = rest.get("param_groups") if isinstance(rest, dict) else None
        if not isinstance(groups, list) or \
                [len(g.get("params", [])) for g in groups] != [len(g["params"])
                                                               for g in opt.param_groups]:
            raise bad(f"optimiser {i} has other parameter groups")
        state = rest.get("state")
        if not isinstance(state, dict):
            raise bad(f"optimiser {i} has no state")
        for pid, entries in state.items():
            try:
                param = params[int(pid)]
            except (ValueError, IndexError):
                raise bad(f"optimiser {i} has state for parameter {pid!r}, which it does not "
                          f"have") from None
            for name, value in (entries or {}).items():
                if not (isinstance(value, dict) and "tensor" in value):
                    continue
                t = tensors.get(value["tensor"])
                if t is None:
                    raise bad(f"optimiser tensor {value['tensor']} is missing")
                scalar = name == "step"
                if (t.numel() != 1) if scalar else (tuple(t.shape) != tuple(param.shape)):
                    raise bad(f"optimiser {i} {name} of parameter {pid} has shape "
                              f"{tuple(t.shape)}, expected "
                              f"{() if scalar else tuple(param.shape)}")
                if not (t.is_floating_point() or scalar):
                    raise bad(f"optimiser {i} {name} of parameter {pid} is {t.dtype}")
    rng = tensors.get("rng.torch")
    expected = torch.get_rng_state()
    if rng is None or rng.dtype != expected.dtype or rng.shape != expected.shape:
        raise bad("its random number generator state is missing or of the wrong size")


def check_meta(meta: dict[str, Any]) -> None:
    """The fields a resume uses have their types (ValueError naming the first that does
    not): ``epoch`` an int >= 0, ``history`` one record per epoch so far, ``best`` a dict
    with a numeric ``val_accuracy`` and an int ``epoch``."""
    epoch, history, best = meta.get("epoch"), meta.get("history"), meta.get("best")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch is {epoch!r}")
    if not isinstance(history, list) or len(history) != epoch + 1 or \
            not all(isinstance(h, dict) and isinstance(h.get("train_seconds"), int | float)
                    and isinstance(h.get("samples"), int) for h in history):
        raise ValueError(f"history does not hold {epoch + 1} epoch records")
    if not (isinstance(best, dict) and isinstance(best.get("val_accuracy"), int | float)
            and isinstance(best.get("epoch"), int)):
        raise ValueError(f"best is {best!r}")


def load_training_state(optimizers, schedules, meta: dict[str, Any],
                        tensors: dict[str, torch.Tensor], where: Any) -> list:
    """Restore each optimiser and learning-rate schedule from a checkpoint (after
    :func:`check_loaded_state`); the schedules that were restored. Used by the
    one-process trainer and by every pipeline stage."""
    check_loaded_state(optimizers, meta["optimizers"], tensors, where)
    for opt, rest in zip(optimizers, meta["optimizers"], strict=True):
        opt.load_state_dict(unflatten_optimizer(rest, tensors))
    restored = []
    for sch, st in zip(schedules, meta["schedules"], strict=True):
        if sch is not None and st is not None:
            sch.load_state_dict(st)
            restored.append(sch)
    return restored

