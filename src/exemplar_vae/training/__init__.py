"""Training: the loop, optimisers and checkpoints."""

from exemplar_vae.training.callbacks import Callback, CurvesCallback, TensorBoardLogger
from exemplar_vae.training.checkpoint import (
    Checkpoint,
    checkpoint_file,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from exemplar_vae.training.loop import BatchSampler, Trainer, TrainResult

__all__ = [
    "BatchSampler",
    "Callback",
    "Checkpoint",
    "CurvesCallback",
    "TensorBoardLogger",
    "TrainResult",
    "Trainer",
    "checkpoint_file",
    "has_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
