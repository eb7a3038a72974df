"""Peak training memory: what the allocator really holds during training steps.

``peak_memory_bytes`` is the allocator-level peak of a training step: every tensor
alive at once (parameters, buffers, optimiser state, gradients, the batch, the
activations autograd keeps, their gradients, temporaries and any ``no_grad`` work
such as Forward-Forward's label passes). Evaluation is not part of it. The
definition is the same on every device:

    peak = bytes alive between steps + most bytes a step adds above that

where *bytes alive between steps* are counted from the tensors themselves
(parameters, buffers, optimiser state, ``.grad`` and the batch; shared storages
once) and *most bytes a step adds* comes from the allocator: on CUDA
``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at the step's start,
on CPU the running sum of the ``torch.profiler`` allocation and free events
(``profile_memory=True``) in the order they happened.

The steps are measured in their own pass (:func:`measure_training_memory`) on a
copy of the rule and its optimisers, with the random state put back afterwards, so
the timed training steps never run under the meter and training is the same with or
without it.

Reported beside the peak:

- ``activation_peak_bytes``: the most a steady-state step adds above what is alive
  between steps (activations, activation gradients, temporaries, ``no_grad``
  passes). Fixed state such as feedback matrices (buffers) is not in it, and
  neither are parameters.
- ``fixed_state_bytes`` = ``parameter_bytes`` + ``buffer_bytes`` +
  ``optimizer_state_bytes``; ``gradient_bytes`` and ``input_bytes`` apart.
- ``saved_tensor_peak_bytes``: the peak of tensors autograd saved for backward
  (``saved_tensors_hooks``; parameters and buffers left out), the figure this meter reported
  before it was allocator-level. It misses everything a step allocates that autograd
  does not save.
- ``peak_rss_bytes``: the process's peak resident size since it started (holds the
  dataset and everything run earlier in the process).
"""

from __future__ import annotations

import copy
import os
import resource
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

STEP_MARK = "locallearn.memory.step"

# True while a measurement pass runs (tests check the timed steps never see it).
_ACTIVE = False


def meter_active() -> bool:
    """Whether a memory measurement pass is running now."""
    return _ACTIVE


def peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb if sys.platform == "darwin" else kb * 1024)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif hasattr(obj, "__dict__") and hasattr(obj, "to"):  # e.g. a graph batch object
        for v in vars(obj).values():
            yield from _tensors(v)


def tensor_bytes(tensors: Iterable[torch.Tensor], seen: set[int] | None = None) -> int:
    """Bytes of the tensors' storages, each storage once (``seen`` carries across calls)."""
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() == 0:
            continue
        seen.add(ptr)
        total += storage.nbytes()
    return total


def optimizer_state_bytes(optimizers, seen: set[int] | None = None) -> int:
    return tensor_bytes((t for opt in optimizers for t in _tensors(list(opt.state.values()))),
                        seen)


def state_bytes(module: nn.Module, optimizers, inputs: Any = None) -> dict[str, int]:
    """Bytes alive between steps, by kind; shared storages counted once."""
    seen: set[int] = set()
    params = list(module.parameters())
    out = {"parameter_bytes": tensor_bytes(params, seen),
           "buffer_bytes": tensor_bytes(module.buffers(), seen),
           "optimizer_state_bytes": optimizer_state_bytes(optimizers, seen),
           "gradient_bytes": tensor_bytes((p.grad for p in params if p.grad is not None), seen),
           "input_bytes": tensor_bytes(_tensors(inputs), seen)}
    out["fixed_state_bytes"] = (out["parameter_bytes"] + out["buffer_bytes"]
                                + out["optimizer_state_bytes"])
    return out


class _Saved:
    """Handle autograd keeps instead of the tensor; frees its count when dropped."""

    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter, key) -> None:
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Peak of live saved-for-backward bytes while ``track()`` is active.

    Only what autograd saves: not ``no_grad`` work, temporaries or gradients. Kept
    as ``saved_tensor_peak_bytes``; the training peak is :class:`AllocationMeter`'s.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
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
            self.peak = max(self.peak, self.live)
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
        """Count saved tensors inside the block; ``module``'s parameters and buffers (fixed
        state such as feedback matrices, not activations) are left out."""
        if module is not None:
            self._parameter_storages = {
                t.untyped_storage().data_ptr()
                for t in [*module.parameters(), *module.buffers()]}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield


def _walk(prof) -> Iterator[Any]:
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        yield node


def _allocation_events(prof, device: torch.device) -> list[tuple[int, int, int]]:
    """(time_ns, ptr, signed bytes) of the device's allocator events, in order."""
    events = []
    for node in _walk(prof):
        fields = node.extra_fields
        if (type(fields).__name__ == "_ExtraFields_Allocation"
                and fields.device.type == device.type):
            events.append((node.start_time_ns, fields.ptr, fields.alloc_size))
    events.sort(key=lambda e: e[0])
    return events


def step_figures(prof, device: torch.device) -> list[dict[str, int]]:
    """Per step marked with :data:`STEP_MARK`, from the profiler's allocator events:

    - ``start``: net bytes allocated since the window began, at the step's start;
    - ``added``: the most bytes above ``start`` during the step;
    - ``transient``: the most bytes alive at once among the blocks the step allocates
      *and frees itself* (activations, their gradients, temporaries, ``no_grad``
      passes), leaving out what outlives the step (gradients, optimiser state).

    torch does not report frees of blocks allocated before profiling began, so the
    window should start with nothing alive that a step frees (gradients set to None):
    :func:`measure_step_memory` does so.
    """
    events = _allocation_events(prof, device)
    windows = sorted((n.start_time_ns, n.end_time_ns) for n in _walk(prof)
                     if n.name == STEP_MARK)
    # When each allocation is freed (None: not freed in the window).
    freed_at: dict[int, int | None] = {}
    open_alloc: dict[int, int] = {}
    for i, (t, ptr, size) in enumerate(events):
        if size > 0:
            open_alloc[ptr] = i
            freed_at[i] = None
        elif ptr in open_alloc:
            freed_at[open_alloc.pop(ptr)] = t
    out = []
    live: dict[int, int] = {}  # ptr -> (size, transient) of allocations made in the window
    net = 0
    i = 0
    for start, end in windows:
        while i < len(events) and events[i][0] < start:
            net = _apply(events[i], live, net)[0]
            i += 1
        fig = {"start": net, "added": 0, "transient": 0}
        transient = 0
        while i < len(events) and events[i][0] <= end:
            t, ptr, size = events[i]
            if size > 0:
                f = freed_at.get(i)
                is_transient = f is not None and f <= end
            net, was_transient, released = _apply(events[i], live, net, i, end, freed_at)
            if size > 0 and is_transient:
                transient += size
            elif size < 0 and was_transient:
                transient -= released
            fig["added"] = max(fig["added"], net - fig["start"])
            fig["transient"] = max(fig["transient"], transient)
            i += 1
        out.append(fig)
    return out


def _apply(event: tuple[int, int, int], live: dict, net: int, index: int = -1,
           end: int | None = None, freed_at: dict | None = None) -> tuple[int, bool, int]:
    """Apply one allocator event; returns (net, whether the freed block was transient,
    bytes freed)."""
    _, ptr, size = event
    if size > 0:
        f = freed_at.get(index) if freed_at is not None else None
        live[ptr] = (size, f is not None and end is not None and f <= end)
        return net + size, False, 0
    size_freed, transient = live.pop(ptr, (0, False))
    return net - size_freed, transient, size_freed


def measure_step_memory(step: Callable[[], Any], module: nn.Module, optimizers,
                        inputs: Any, device: torch.device, steps: int = 2) -> dict[str, int]:
    """Run ``step()`` ``steps`` times and return the allocator-level figures.

    ``module``/``optimizers``/``inputs`` are what stays alive between steps. Gradients
    are set to None first, so nothing a step frees was allocated before the window.
    Runs the steps for real: pass a copy (see :func:`measure_training_memory`).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    global _ACTIVE
    device = torch.device(device)
    cuda = device.type == "cuda"
    for p in module.parameters():
        p.grad = None
    base = state_bytes(module, optimizers, inputs)
    base_total = base["fixed_state_bytes"] + base["input_bytes"]
    saved = SavedTensorMeter()
    cuda_peaks: list[int] = []  # per step: max_memory_allocated above the window's origin
    _ACTIVE = True
    try:
        if cuda:
            torch.cuda.synchronize(device)
            origin = torch.cuda.memory_allocated(device)
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with native_stderr_silenced():
            prof.start()
        try:
            for _ in range(steps):
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                with record_function(STEP_MARK), saved.track(module):
                    step()
                if cuda:
                    torch.cuda.synchronize(device)
                    cuda_peaks.append(torch.cuda.max_memory_allocated(device) - origin)
        finally:
            with native_stderr_silenced():
                prof.stop()
    finally:
        _ACTIVE = False
    figures = step_figures(prof, device)
    after = state_bytes(module, optimizers, inputs)
    if cuda:
        # The allocator's own counter, reset around each training step only.
        peak = base_total + max(cuda_peaks)
    else:
        peak = base_total + max(f["start"] + f["added"] for f in figures)
    return {
        "peak_memory_bytes": int(peak),
        "activation_peak_bytes": int(max(f["transient"] for f in figures)),
        "between_steps_bytes": int(base_total + figures[-1]["start"]),
        "parameter_bytes": after["parameter_bytes"],
        "buffer_bytes": after["buffer_bytes"],
        "optimizer_state_bytes": after["optimizer_state_bytes"],
        "fixed_state_bytes": after["fixed_state_bytes"],
        "gradient_bytes": after["gradient_bytes"],
        "input_bytes": after["input_bytes"],
        "saved_tensor_peak_bytes": int(saved.peak),
        "steps": steps,
        "peak_rss_bytes": peak_rss_bytes(),
    }


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Hide what torch's C++ profiler prints on file descriptor 2 when it starts and stops
    ("USDT ... profiler_start"): noise on every training run's terminal. Python errors
    still propagate as exceptions."""
    sys.stderr.flush()
    try:
        saved_fd = os.dup(2)
    except OSError:  # no usable stderr: nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Put torch's random state back afterwards, so measuring changes no result."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.device(device).type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def measure_training_memory(rule: nn.Module, optimizers,
                            make_optimizers: Callable[[nn.Module], list],
                            step: Callable[[nn.Module, list, Any, Any], Any], x: Any, y: Any,
                            device: torch.device, steps: int = 2) -> dict[str, int]:
    """Allocator-level memory of ``steps`` training steps on a copy of ``rule`` and its
    optimisers (their state copied too), outside any timed work; ``rule``,
    ``optimizers`` and the random state are left as they were."""
    with preserved_rng(device):
        twin = copy.deepcopy(rule)
        twin_optimizers = make_optimizers(twin)
        for mine, theirs in zip(twin_optimizers, optimizers, strict=True):
            # deepcopy: load_state_dict would share the state tensors with the original.
            mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
        twin.train()
        return measure_step_memory(lambda: step(twin, twin_optimizers, x, y), twin,
                                   twin_optimizers, (x, y), device, steps)
