"""Training: config, schedule, checkpoints, distributed set-up, the trainer, evaluation (seed 001)."""
from avfast.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from avfast.train.config import Config, ConfigError, load_config
from avfast.train.schedule import warmup_cosine
from avfast.train.trainer import Trainer

__all__ = ["Config", "ConfigError", "load_config", "CheckpointError", "load_checkpoint", "save_checkpoint",
           "warmup_cosine", "Trainer"]
