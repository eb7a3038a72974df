"""Default training length from optimiser steps, when no epoch count is given.

A rule's ``defaults["epochs"]`` was tuned on mnist-sized data (thousands of rows, tens of
batches per epoch). On a table of ~180 rows the same 20 epochs are 20-40 optimiser steps
and the network stays undertrained; a small graph (one full-graph step per epoch) gets
20 steps. So, when the run names no epochs, the default is

    epochs = max(rule default, ceil(MIN_STEPS / steps per epoch)),
    but never more than SAMPLE_BUDGET training rows in all (and never below the default),

which leaves mnist-sized runs (already >= MIN_STEPS steps) exactly as before and trains
small tables and graphs for at least MIN_STEPS steps. MIN_STEPS was chosen on validation
accuracy only (docs/results/default_length.md). ``summary.json`` says which rule gave
the epochs (``epochs_default``).
"""

from __future__ import annotations

import math
from typing import Any

MIN_STEPS = 250
# About the rows one default mnist5k run reads (20 epochs x 3,600): small data may use
# up to that, a large dataset never more than its rule's default epochs.
SAMPLE_BUDGET = 72_000


def train_rows(dataset: Any) -> int | None:
    """Training rows per epoch (nodes for a graph), or None when unknown (text)."""
    x = getattr(dataset, "x", None)
    if getattr(dataset, "graph_task", None) is not None and x is not None:
        return int(x.shape[0])
    if getattr(dataset, "evaluate", None) is not None:
        return None
    try:
        return len(dataset.train)
    except (AttributeError, TypeError):
        return None


def steps_per_epoch(dataset: Any, batch_size: int) -> int | None:
    if getattr(dataset, "graph_task", None) is not None:
        return 1  # one full-graph batch per epoch
    rows = train_rows(dataset)
    if not rows:
        return None
    loader = getattr(dataset.train, "loader_given", None)  # a user DataLoader's own batch
    size = loader.batch_size if loader is not None and loader.batch_size else batch_size
    return math.ceil(rows / size)


def default_epochs(rule_epochs: int, dataset: Any, batch_size: int,
                   min_steps: int | None = None) -> tuple[int, str]:
    """The epoch count for a run that named none, and a line saying why."""
    min_steps = MIN_STEPS if min_steps is None else min_steps
    steps, rows = steps_per_epoch(dataset, batch_size), train_rows(dataset)
    if not steps or not rows or min_steps <= 0:
        return rule_epochs, f"the rule's default ({rule_epochs})"
    wanted = math.ceil(min_steps / steps)
    cap = max(rule_epochs, SAMPLE_BUDGET // rows)
    epochs = max(rule_epochs, min(wanted, cap))
    if epochs == rule_epochs:
        return epochs, (f"the rule's default ({rule_epochs}; {rule_epochs * steps} steps "
                        f">= {min_steps} or data too large to extend)")
    return epochs, (f"{epochs} epochs for >= {min_steps} optimiser steps ({steps} per epoch; "
                    f"the rule's default {rule_epochs} would give {rule_epochs * steps}"
                    f"{'; capped at ' + str(SAMPLE_BUDGET) + ' rows' if epochs < wanted else ''})")


__all__ = ["MIN_STEPS", "default_epochs", "steps_per_epoch", "train_rows"]
