"""The training loop and its pieces."""

from locallearn.training.run import TrainResult, build, train
from locallearn.training.trainer import TrainConfig, Trainer, evaluate

__all__ = ["TrainConfig", "TrainResult", "Trainer", "build", "evaluate", "train"]
