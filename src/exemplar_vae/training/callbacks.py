"""Callbacks that watch a run: the training curves rewritten every epoch, and an optional TensorBoard log.

A callback (``training.loop.Callback``) is called by the trainer after every epoch with the epoch's metrics (the line written to
``metrics.jsonl``); under torchrun only rank 0 calls them. ``train(..., callbacks=[...])`` passes more.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from exemplar_vae.optional import require
from exemplar_vae.training.loop import Callback, Trainer
from exemplar_vae.viz import plot_training_curves

logger = logging.getLogger(__name__)


class CurvesCallback(Callback):
    """Rewrites ``path`` (curves.png) from the run's history after every epoch, so a run can be watched."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        plot_training_curves(trainer.history, self.path)


class TensorBoardLogger(Callback):
    """Writes every numeric metric of every epoch to a TensorBoard event file in ``log_dir``
    (``tensorboard --logdir RUN/tensorboard``). Needs the ``tensorboard`` package (the extra
    ``exemplar-vae[tensorboard]``); checked when the logger is made, before training starts."""

    def __init__(self, log_dir: str | Path) -> None:
        require("tensorboard", "tensorboard", "the TensorBoard logger")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        for name, value in metrics.items():
            if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.close()
