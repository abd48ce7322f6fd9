"""What every section of the benchmark shares: timing one call, the run's configuration, fresh models."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from exemplar_vae import DataConfig, DataSplits, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.models.vae import VAE
from exemplar_vae.runs import build_model
from exemplar_vae.training.checkpoint import load_checkpoint
from exemplar_vae.validation import validate


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by one call of ``fn``."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def run_config(
    prior: PriorConfig, args: argparse.Namespace, num_train: int, compile: str = "off"
) -> RunConfig:
    """The paper's MLP VAE and optimiser with ``prior``, validated against the data (resolves M);
    ``compile`` is ``TrainConfig.compile`` of the training step."""
    config = RunConfig(
        data=DataConfig(args.dataset, args.data_dir),
        model=ModelConfig(),
        prior=prior,
        train=TrainConfig(
            batch_size=args.batch_size, seed=args.seed, device=str(args.device), compile=compile
        ),
    )
    return validate(config, num_train)


def fresh_model(
    prior: PriorConfig, args: argparse.Namespace, data: DataSplits, compile: str = "off"
) -> tuple[VAE, RunConfig]:
    """A newly initialised model (seeded by ``args.seed``) with ``prior``, and its validated config."""
    torch.manual_seed(args.seed)
    config = run_config(prior, args, data.num_train, compile)
    return build_model(config, data, args.device), config


def load_trained_weights(model: VAE, args: argparse.Namespace) -> None:
    """Load the weights of the trained run ``args.run`` (its best checkpoint) into ``model``."""
    ckpt = load_checkpoint(Path(args.run), "best", map_location=args.device, model=model)
    model.load_state_dict(ckpt.model)


def exemplar_count(args: argparse.Namespace, data: DataSplits) -> int:
    """M, the exemplars drawn per training step: ``--exemplars``, else half the training set."""
    return args.exemplars if args.exemplars is not None else data.num_train // 2


def prior_label(p: PriorConfig) -> tuple[str, str, str]:
    """(prior, k, M) columns of the tables."""
    if p.name == "exemplar":
        k = str(p.knn) if p.knn else "exact"
        if p.grad_tolerance is not None:
            k += f", gradient tolerance {p.grad_tolerance:g}"
        return p.name, k, f"{p.exemplars:,}"
    if p.name in ("mog", "vampprior"):
        return p.name, "-", f"K={p.components}"
    return p.name, "-", "-"
