"""Training: the supervised fine-tuning loop, its schedule, checkpoints and memory measurement."""

from acculturate.train.checkpoint import (Checkpoint, CheckpointError, find_checkpoint, load_checkpoint,
                                          save_checkpoint)
from acculturate.train.memory import PeakMemory
from acculturate.train.schedule import warmup_cosine, warmup_cosine_lambda
from acculturate.train.sft import TrainConfig, TrainResult, evaluate_loss, train

__all__ = ["Checkpoint", "CheckpointError", "PeakMemory", "TrainConfig", "TrainResult", "evaluate_loss",
           "find_checkpoint", "load_checkpoint", "save_checkpoint", "train", "warmup_cosine",
           "warmup_cosine_lambda"]
