"""Training: the loop with hooks, checkpoints, the bundle, and the ``train`` entry point."""

from medseg.train.api import TrainRequest, train
from medseg.train.loop import TrainConfig, Trainer

__all__ = ["TrainConfig", "TrainRequest", "Trainer", "train"]
