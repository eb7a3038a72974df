"""locallearn: deep networks trained without end-to-end backpropagation."""

__version__ = "0.1.0"

from locallearn.data import DATASETS, load_dataset  # noqa: E402
from locallearn.errors import UserError  # noqa: E402
from locallearn.export import export, load  # noqa: E402
from locallearn.networks import NETWORKS, create_network  # noqa: E402
from locallearn.rules import RULES, Rule, create_rule  # noqa: E402
from locallearn.training import TrainConfig, Trainer, train  # noqa: E402

__all__ = ["DATASETS", "NETWORKS", "RULES", "Rule", "TrainConfig", "Trainer", "UserError",
           "create_network", "create_rule", "export", "load", "load_dataset", "train"]
