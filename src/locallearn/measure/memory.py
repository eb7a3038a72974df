"""Peak training memory, measured the same way for every rule.

On CUDA: ``torch.cuda.max_memory_allocated``. On CPU there is no allocator
counter, so we count what training really holds: parameters, gradients and
optimiser state, plus the peak bytes of tensors that autograd saved for the
backward pass (through ``saved_tensors_hooks``; shared storages counted once).
Process peak RSS is reported beside it.

``activation_peak_bytes`` (the saved-tensor peak) is measured the same way on
every device. Parameters that autograd saves (a linear layer keeps its weight
for the input gradient) are left out of it: they are already counted in
``parameter_bytes`` and are not activations. ``peak_rss_bytes`` is the
process's peak since it started, so it also holds the dataset and anything run
earlier in the same process.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb if sys.platform == "darwin" else kb * 1024)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(optimizers) -> int:
    total = 0
    for opt in optimizers:
        for state in opt.state.values():
            total += tensor_bytes(v for v in state.values() if torch.is_tensor(v))
    return total


class _Saved:
    """Handle autograd keeps instead of the tensor; frees its count when dropped."""

    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: torch.Tensor, meter: MemoryMeter, key) -> None:
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self) -> None:
        self.meter._release(self.key)


class MemoryMeter:
    """Tracks the peak of live saved-for-backward bytes while ``track()`` is active."""

    def __init__(self) -> None:
        self.live = 0
        self.peak_activations = 0
        self._refs: dict = {}
        self._parameter_storages: set[int] = set()

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() in self._parameter_storages:
            return t
        key = (storage.data_ptr(), storage.nbytes())
        count = self._refs.get(key, 0)
        if count == 0:
            self.live += key[1]
            self.peak_activations = max(self.peak_activations, self.live)
        self._refs[key] = count + 1
        return _Saved(t, self, key)

    @staticmethod
    def _unpack(obj):
        return obj.tensor if isinstance(obj, _Saved) else obj

    def _release(self, key) -> None:
        count = self._refs.get(key, 0) - 1
        if count <= 0:
            self._refs.pop(key, None)
            self.live -= key[1]
        else:
            self._refs[key] = count

    @contextmanager
    def track(self, module: nn.Module | None = None) -> Iterator[None]:
        """Count saved tensors inside the block; ``module``'s parameters are left out."""
        if module is not None:
            self._parameter_storages = {p.untyped_storage().data_ptr()
                                        for p in module.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    def report(self, module: nn.Module, optimizers, device: torch.device) -> dict[str, int]:
        params = list(module.parameters())
        param_bytes = tensor_bytes(params)
        grad_bytes = tensor_bytes(p for p in params if p.requires_grad)
        optim_bytes = optimizer_state_bytes(optimizers)
        out = {
            "parameter_bytes": param_bytes,
            "gradient_bytes": grad_bytes,
            "optimizer_state_bytes": optim_bytes,
            "activation_peak_bytes": self.peak_activations,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        if device.type == "cuda":
            out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        else:
            out["peak_memory_bytes"] = (
                param_bytes + grad_bytes + optim_bytes + self.peak_activations
            )
        return out
