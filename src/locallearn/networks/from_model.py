"""Your own PyTorch model as a locallearn :class:`Network` (blocks + head).

``network_from_model(model, input_shape, num_classes)`` accepts

* an ``nn.Sequential``: each child is a block;
* a list (or tuple / ``nn.ModuleList``) of modules: each is a block;
* any module plus ``blocks=["layer1", "layer2", ...]``: the named submodules are the
  blocks, run in the order given (the model's own ``forward`` is not used).

A child without parameters (an activation, ``Flatten``, pooling, dropout) is not a
block of its own: local rules would give it a readout and a loss with nothing to
learn. It joins the block before it (leading ones join the first block). The head
(``Flatten`` + ``Linear`` to the classes) is made from the last block's output shape
unless ``head=`` gives one; per-block readouts are made by each rule from the shapes.

A probe batch is run through the blocks one at a time; a block that cannot take its
predecessor's output is named in a one-line :class:`UserError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from locallearn.errors import UserError
from locallearn.networks.network import Block, Network


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _named_blocks(model, blocks: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    if blocks is not None:
        if not isinstance(model, nn.Module):
            raise UserError("blocks=[names] needs model to be one nn.Module holding them")
        if isinstance(blocks, str) or not blocks:
            raise UserError("blocks must be a non-empty list of submodule names, "
                            "e.g. blocks=['layer1', 'layer2']")
        out = []
        for name in blocks:
            try:
                out.append((str(name), model.get_submodule(str(name))))
            except AttributeError:
                children = ", ".join(n for n, _ in model.named_children())
                raise UserError(f"model has no submodule {name!r} to use as a block; "
                                f"its children: {children or 'none'}") from None
        used = {id(p) for _, m in out for p in m.parameters()}
        left = [n for n, p in model.named_parameters() if id(p) not in used]
        if left:
            warnings.warn(f"parameters outside the listed blocks are not trained or used: "
                          f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''}",
                          stacklevel=3)
        return out
    if isinstance(model, nn.Sequential):
        return [(n, m) for n, m in model.named_children()]
    if isinstance(model, (list, tuple, nn.ModuleList)):
        items = list(model)
        for i, m in enumerate(items):
            if not isinstance(m, nn.Module):
                raise UserError(f"block {i} of the model list is a {type(m).__name__}, "
                                f"not an nn.Module")
        return [(str(i), m) for i, m in enumerate(items)]
    if isinstance(model, nn.Module):
        raise UserError(f"cannot split a {type(model).__name__} into blocks by itself: pass an "
                        f"nn.Sequential, a list of modules, or blocks=[submodule names]")
    raise UserError(f"model must be an nn.Module or a list of them, got {type(model).__name__}")


def _group(named: list[tuple[str, nn.Module]], merge: bool) -> list[tuple[str, list[nn.Module]]]:
    """Parameter-free modules join the block before them (leading ones the first block)."""
    if not merge:
        return [(n, [m]) for n, m in named]
    groups: list[tuple[str, list[nn.Module]]] = []
    pending: list[nn.Module] = []
    for name, m in named:
        if _has_params(m):
            groups.append((name, pending + [m]))
            pending = []
        elif groups:
            groups[-1][1].append(m)
        else:
            pending.append(m)
    if not groups:
        raise UserError("the model has no parameters to train; give it at least one layer "
                        "with weights")
    return groups


def network_from_model(
    model, input_shape: Sequence[int], num_classes: int, blocks: Sequence[str] | None = None,
    head: nn.Module | None = None, merge_parameter_free: bool = True,
    input_dtype: torch.dtype = torch.float32,
) -> Network:
    """``model`` as blocks (see the module docstring) with a head to ``num_classes``."""
    groups = _group(_named_blocks(model, blocks), merge_parameter_free)
    h = torch.zeros(2, *input_shape, dtype=input_dtype)
    made, prev = [], "the input"
    was = [m.training for _, ms in groups for m in ms]
    with torch.no_grad():
        for name, mods in groups:
            body = mods[0] if len(mods) == 1 else nn.Sequential(*mods)
            for m in mods:
                m.eval()
            try:
                out = body(h)
            except Exception as exc:  # any torch error here is a split that does not chain
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"block {name!r} cannot take the output of {prev} (shape "
                                f"{'x'.join(map(str, h.shape[1:]))}): {first}") from None
            if not isinstance(out, torch.Tensor):
                raise UserError(f"block {name!r} returns a {type(out).__name__}, not one "
                                f"tensor; a block must map a tensor to a tensor")
            if out.dim() < 2 or out.shape[0] != h.shape[0]:
                raise UserError(f"block {name!r} changes the batch dimension ({h.shape[0]} in, "
                                f"shape {tuple(out.shape)} out); blocks must keep it first")
            made.append(Block(body, name=name))
            h, prev = out, f"block {name!r}"
    flags = iter(was)
    for _, ms in groups:
        for m in ms:
            m.train(next(flags))
    if head is None:
        features = int(torch.tensor(h.shape[1:]).prod()) if h.dim() > 1 else 1
        head = nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    else:
        try:
            with torch.no_grad():
                scores = head(h)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"head cannot take the output of {prev} (shape "
                            f"{'x'.join(map(str, h.shape[1:]))}): {first}") from None
        if scores.shape[-1] != num_classes:
            raise UserError(f"head gives {scores.shape[-1]} outputs, but the data has "
                            f"{num_classes} classes")
    return Network(made, head, tuple(input_shape), num_classes, spec="custom",
                   input_dtype=input_dtype)


__all__ = ["network_from_model"]
