"""Training: the loop, optimisers and checkpoints."""

from exemplar_vae.training.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from exemplar_vae.training.loop import BatchSampler, Callback, Trainer, TrainResult

__all__ = [
    "BatchSampler",
    "Callback",
    "TrainResult",
    "Trainer",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "save_checkpoint",
]
