"""Watching a run: callbacks after every epoch, curves.png rewritten each epoch, a stop on request, and
the optional TensorBoard logger."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from exemplar_vae.config import RunConfig
from exemplar_vae.data import load_dataset
from exemplar_vae.errors import ConfigError
from exemplar_vae.runs import build_model
from exemplar_vae.training import Callback, CurvesCallback, TensorBoardLogger, Trainer
from exemplar_vae.validation import validate


def trainer(callbacks: list[Callback], epochs: int = 3) -> Trainer:
    data = load_dataset("digits")
    config = validate(RunConfig.from_dict({
        "data": {"dataset": "digits"}, "model": {"hidden": 16, "latent_dim": 4},
        "prior": {"name": "gaussian"}, "train": {"epochs": epochs, "warmup": 1, "batch_size": 200, "device": "cpu"},
    }), data.num_train)  # fmt: skip
    return Trainer(build_model(config, data), data, config, progress=False, callbacks=callbacks)


class Recorder(Callback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.epochs: list[int] = []
        self.ended = False
        self.stop_after = stop_after

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.epochs.append(metrics["epoch"])
        if self.stop_after is not None and metrics["epoch"] >= self.stop_after:
            trainer.request_stop()

    def on_train_end(self, trainer: Trainer) -> None:
        self.ended = True


def test_callbacks_see_every_epoch_and_can_stop_the_run(tmp_path: Path) -> None:
    rec, curves = Recorder(stop_after=2), CurvesCallback(tmp_path / "curves.png")
    stamps: list[int] = []

    class Watch(Callback):
        def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
            stamps.append((tmp_path / "curves.png").stat().st_mtime_ns)  # rewritten before this one ran

    result = trainer([rec, curves, Watch()], epochs=5).fit()
    assert rec.epochs == [1, 2] and rec.ended and result.epochs_run == 2
    assert len(stamps) == 2 and stamps[1] >= stamps[0]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_logger_without_tensorboard_says_which_extra(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exemplar-vae\[tensorboard\]"):
        TensorBoardLogger(tmp_path / "tb")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
def test_tensorboard_logger_writes_event_files(tmp_path: Path) -> None:
    trainer([TensorBoardLogger(tmp_path / "tb")], epochs=2).fit()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
