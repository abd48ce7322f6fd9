"""Training: the loop, optimisers and checkpoints."""

from exemplar_vae.training.checkpoint import (
    load_checkpoint,
    save_checkpoint,
)
from exemplar_vae.training.loop import BatchSampler, Callback, Trainer, TrainResult

__all__ = [
    "BatchSampler",
    "Callback",
    "TrainResult",
    "Trainer",
    "load_checkpoint",
    "save_checkpoint",
]
