"""The training loop, its configuration, optimizer, schedule, checkpoints and distributed setup."""
from .config import RunConfig, TrainConfig
from .trainer import Trainer, pretrain

__all__ = ["RunConfig", "TrainConfig", "Trainer", "pretrain"]
