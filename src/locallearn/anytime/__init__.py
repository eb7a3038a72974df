"""What locality buys: per-block readouts make depth a choice made after training.

* :mod:`~locallearn.anytime.exits`: early-exit prediction and its accuracy/depth sweep;
* :mod:`~locallearn.anytime.importance`: accuracy drop when a block is skipped, and
  input/output cosine similarity per block;
* :mod:`~locallearn.anytime.prune`: keep K blocks, write the smaller model;
* :mod:`~locallearn.anytime.grow`: add blocks on top, training only the new one;
* :mod:`~locallearn.anytime.runs`: load a run directory (and derived models) back.
"""

from locallearn.anytime.exits import (
    Anytime,
    early_exit_predict,
    early_exit_summary,
    operating_point,
    sweep,
)
from locallearn.anytime.grow import grow
from locallearn.anytime.importance import layer_importance
from locallearn.anytime.prune import apply_prune, choose_prune
from locallearn.anytime.runs import LoadedRun, load_run

__all__ = ["Anytime", "LoadedRun", "apply_prune", "choose_prune", "early_exit_predict",
           "early_exit_summary", "grow", "layer_importance", "load_run", "operating_point",
           "sweep"]
