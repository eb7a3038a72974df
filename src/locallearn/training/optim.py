"""Optimisers and learning-rate schedules, one per parameter group."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from locallearn.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    if lr <= 0:
        raise UserError(f"learning rate must be positive, got {lr}; e.g. --lr 1e-3")
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **_fused(params))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **_fused(params))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _fused(params: list[nn.Parameter]) -> dict[str, bool]:
    """``fused=True`` where torch has a fused Adam kernel for these parameters.

    The same update as the default multi-tensor Adam in one pass over memory, so a
    faster optimiser step on CPU (figure: docs/results/efficiency.md, "Measurements
    behind code choices").
    """
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    devices = {p.device.type for p in params}
    ok = (params and all(p.is_floating_point() for p in params)
          and (devices <= {"cuda"} or (devices <= {"cpu", "cuda"} and version >= (2, 4))))
    return {"fused": True} if ok and len(devices) == 1 else {}


def make_schedule(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    raise UserError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def plan_schedule(schedule, epochs: int) -> None:
    """Point a restored schedule at the run's (possibly new) total number of epochs."""
    if isinstance(schedule, torch.optim.lr_scheduler.CosineAnnealingLR):
        schedule.T_max = max(1, epochs)
    elif isinstance(schedule, torch.optim.lr_scheduler.StepLR):
        schedule.step_size = max(1, epochs // 3)


def optimizers_for(groups, cfg) -> list[torch.optim.Optimizer]:
    """One optimiser per parameter group (:class:`~locallearn.rules.base.ParamGroup`), the
    group's own options over the run's settings (a :class:`TrainConfig`). The one-process
    and the staged loops both build theirs here; a stage passes only its groups."""
    return [make_optimizer(g.options.get("optimizer", cfg.optimizer), g.params,
                           lr=g.options.get("lr", cfg.lr),
                           weight_decay=g.options.get("weight_decay", cfg.weight_decay),
                           momentum=cfg.momentum)
            for g in groups]


def schedules_for(optimizers: list[torch.optim.Optimizer], cfg) -> list:
    """The run's learning-rate schedule for each optimiser (None entries for ``none``)."""
    return [make_schedule(cfg.schedule, o, cfg.epochs) for o in optimizers]
