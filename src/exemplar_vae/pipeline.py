"""High-level API that the CLI is a thin layer over: prepare data, train a run, load it, evaluate, draw.

A run folder holds ``config.json`` (fully resolved), ``metrics.jsonl`` (one line per epoch), ``best.pt``
and ``last.pt`` (atomic checkpoints), and whatever evaluation and pictures were made from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from exemplar_vae.config import RunConfig, validate
from exemplar_vae.data import DataSplits, load_dataset
from exemplar_vae.errors import CheckpointError, ConfigError
from exemplar_vae.evaluation import evaluate_density
from exemplar_vae.generation import exemplar_grid, prior_sample_grid
from exemplar_vae.models.vae import VAE, build_vae
from exemplar_vae.training import Trainer, TrainResult, atomic_write_text, load_checkpoint
from exemplar_vae.training.loop import BEST, LAST, METRICS
from exemplar_vae.viz import plot_training_curves, save_image_grid

logger = logging.getLogger(__name__)

CONFIG = "config.json"
EVALUATION = "evaluation.json"


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; otherwise the named device (checked to exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device '{name}'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here")
    return device


def prepare(config: RunConfig) -> tuple[RunConfig, DataSplits]:
    """Load the data and validate the config against it (resolving M = N/2)."""
    validate(config)  # cheap checks before touching any file
    data = load_dataset(config.data.dataset, config.data.data_dir, train_size=config.data.train_size)
    return validate(config, data.num_train), data


def build_model(config: RunConfig, data: DataSplits, device: torch.device | str = "cpu") -> VAE:
    """A fresh VAE with the prior named in ``config``, its exemplar set the training images of ``data``."""
    return build_vae(config.model, config.prior, data.train_x, data.image_shape).to(device)


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data: DataSplits | None = None,
) -> tuple[VAE, TrainResult]:
    """Train a model as ``config`` says.

    Args:
        config: the run's configuration (validated here).
        run_dir: output folder (config.json, metrics.jsonl, best.pt, last.pt); None keeps it in memory.
        resume: continue the run in ``run_dir`` from its last checkpoint; ``config`` must be the saved one
            (``load_run_config``), with ``train.epochs`` changed if more epochs are wanted.
        progress: show progress bars.
        data: already-loaded data matching ``config.data`` (optional).

    Returns:
        (the model with its best-validation weights, how training ended).
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ConfigError("resume needs a run folder")
    if run_dir is not None:
        if resume:
            if not (run_dir / LAST).is_file():
                raise CheckpointError(f"cannot resume: no {LAST} in {run_dir}")
        elif run_dir.exists() and any((run_dir / f).exists() for f in (CONFIG, LAST, METRICS)):
            raise ConfigError(
                f"{run_dir} already holds a run; pass --resume to continue it or pick another --out"
            )
    torch.manual_seed(config.train.seed)
    if data is None:
        config, data = prepare(config)
    else:
        config = validate(config, data.num_train)
    device = resolve_device(config.train.device)
    model = build_model(config, data, device)
    trainer = Trainer(model, data, config, run_dir, progress=progress)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG)
        if resume:
            trainer.resume()
    logger.info("training %s prior on %s: %s", config.prior.name, data.name, data.summary())
    result = trainer.fit()
    if run_dir is not None and (run_dir / BEST).is_file():
        model.load_state_dict(load_checkpoint(run_dir / BEST, map_location=device)["model"])
        if result.history:
            plot_training_curves(trainer.history, run_dir / "curves.png")
    return model, result


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration saved in a run folder."""
    return RunConfig.load(Path(run_dir) / CONFIG)


def load_run(
    run_dir: str | Path, checkpoint: str = "best", device: str = "auto", data: DataSplits | None = None
) -> tuple[VAE, DataSplits, RunConfig]:
    """Rebuild a trained model from its run folder, its exemplar set reloaded from the training data.

    Args:
        run_dir: a folder written by ``train``.
        checkpoint: "best" or "last".
        device: where to put the model.
        data: the run's data if already loaded.

    Returns:
        (model in eval mode with its prior refreshed, data, config).
    """
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', got '{checkpoint}'")
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist")
    ckpt = load_checkpoint(run_dir / (BEST if checkpoint == "best" else LAST))
    config = RunConfig.from_dict(ckpt["config"])
    if data is None:
        config, data = prepare(config)
    dev = resolve_device(device)
    model = build_model(config, data, dev)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint in {run_dir} does not match its config: {e}") from e
    model.eval()
    model.prior.refresh(model.encoder)
    return model, data, config


def evaluate_run(
    run_dir: str | Path,
    num_samples: int = 5000,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 100,
    device: str = "auto",
    progress: bool = True,
    seed: int = 0,
    candidates: int | None = None,
    check_exact: int = 0,
) -> dict[str, Any]:
    """Importance-sampled log-likelihood and ELBO of a run's best model; saved to RUN_DIR/evaluation.json.

    The exemplar prior uses the whole training set as exemplars, without leave-one-out; ``candidates``
    and ``check_exact`` are as in ``evaluation.evaluate_density``.
    """
    if split not in ("test", "val"):
        raise ConfigError(f"--split must be 'test' or 'val', got '{split}'")
    if num_samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {num_samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    model, data, config = load_run(run_dir, device=device)
    x = data.test_x if split == "test" else data.val_x
    if limit is not None:
        x = x[:limit]
    if candidates is not None and candidates < 1:
        raise ConfigError(f"--candidates must be at least 1, got {candidates}")
    if check_exact < 0:
        raise ConfigError(f"--check-exact must be >= 0, got {check_exact}")
    result = evaluate_density(
        model, x, num_samples, batch_size, seed=seed, progress=progress, candidates=candidates,
        check_exact=check_exact,
    )  # fmt: skip
    result.update(split=split, prior=config.prior.name, dataset=data.name, exemplars=data.num_train)
    atomic_write_text(Path(run_dir) / EVALUATION, json.dumps(result, indent=2) + "\n")
    return result


def generate_pictures(
    run_dir: str | Path,
    out: str | Path,
    n: int = 64,
    from_exemplars: bool = False,
    variations: int = 10,
    device: str = "auto",
    seed: int = 0,
) -> Path:
    """Write a PNG grid of prior samples, or (``from_exemplars``) rows of exemplar + variations."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file, got '{out}'")
    model, data, _ = load_run(run_dir, device=device)
    g = torch.Generator(device=model.device).manual_seed(seed)
    if from_exemplars:
        pick = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(seed))[:n]
        grid = exemplar_grid(model, data.train_x[pick], variations, g)
    else:
        grid = prior_sample_grid(model, n, g)
    return save_image_grid(grid, data.image_shape, out)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch lines of RUN_DIR/metrics.jsonl."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(run_dir: str | Path, device: str = "auto", seed: int = 0) -> Path:
    """Pictures and a short markdown report for a run folder.

    Writes samples.png (64 prior samples), exemplars.png (10 exemplars, each followed by 10 variations),
    curves.png (training curves) and report.md (configuration, training summary, evaluation.json if
    ``evaluate`` was run).
    """
    run_dir = Path(run_dir)
    model, data, config = load_run(run_dir, device=device)
    g = torch.Generator(device=model.device).manual_seed(seed)
    save_image_grid(prior_sample_grid(model, 64, g), data.image_shape, run_dir / "samples.png")
    pick = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(seed))[:10]
    save_image_grid(
        exemplar_grid(model, data.train_x[pick], 10, g), data.image_shape, run_dir / "exemplars.png"
    )
    history = read_metrics(run_dir)
    if history:
        plot_training_curves(history, run_dir / "curves.png")
    lines = [f"# exemplar-vae run: {config.prior.name} prior on {data.name}", ""]
    lines += ["## Configuration", "", "| section | setting | value |", "|---|---|---|"]
    for section, values in config.to_dict().items():
        lines += [f"| {section} | {k} | {v} |" for k, v in values.items()]
    lines += ["", f"Data: {data.summary()}", ""]
    if history:
        best = min(history, key=lambda m: m["val_loss"])
        total = sum(m["seconds"] for m in history)
        lines += [
            "## Training",
            "",
            f"{len(history)} epochs in {total:.0f} s ({total / len(history):.1f} s per epoch); best validation "
            f"-ELBO {best['val_loss']:.2f} nats at epoch {best['epoch']} "
            f"(reconstruction {best['val_rec']:.2f}, KL {best['val_kl']:.2f}).",
            "",
            "![training curves](curves.png)",
            "",
        ]
    eval_path = run_dir / EVALUATION
    if eval_path.is_file():
        ev = json.loads(eval_path.read_text())
        lines += [
            "## Evaluation",
            "",
            f"{ev['split']} split, {ev['examples']} examples, S={ev['samples']} importance samples, "
            f"{ev['exemplars']} exemplars:",
            "",
            f"- log-likelihood: **{ev['log_likelihood']:.2f} ± {ev['log_likelihood_std_error']:.2f} nats** "
            f"({ev['bits_per_dim']:.4f} bits/dim)",
            f"- ELBO: {ev['elbo']:.2f} nats",
            "",
        ]
    lines += [
        "## Pictures",
        "",
        "Samples from the prior (decoder means):",
        "",
        "![samples](samples.png)",
        "",
        "Exemplar-based generation (each row: a training exemplar, then 10 draws from r(z|x), decoded):",
        "",
        "![exemplars](exemplars.png)",
        "",
    ]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def results_table(run_dirs: list[str | Path]) -> str:
    """A markdown table of evaluated runs: prior, budget, test log-likelihood and ELBO (nats).

    Every number is read from the run folders (config.json, metrics.jsonl, evaluation.json).
    """
    header = (
        "| prior | dataset | train N | epochs (warm-up) | M / k | split, n, S | log-likelihood (nats) "
        "| ELBO (nats) | s/epoch |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        eval_path = run_dir / EVALUATION
        if not eval_path.is_file():
            raise ConfigError(f"{run_dir} has no {EVALUATION}: run `exemplar-vae evaluate {run_dir}` first")
        ev = json.loads(eval_path.read_text())
        config = load_run_config(run_dir)
        history = read_metrics(run_dir)
        epochs = len(history)
        per_epoch = sum(m["seconds"] for m in history) / max(1, epochs)
        p = config.prior
        mk = (
            f"{p.exemplars} / {p.knn if p.knn else 'exact'}"
            if p.name == "exemplar"
            else (f"K={p.components}" if p.name in ("vampprior", "mog") else "-")
        )
        rows.append(
            f"| {p.name} | {ev['dataset']} | {ev['exemplars']} | {epochs} ({config.train.warmup}) | {mk} "
            f"| {ev['split']}, {ev['examples']}, {ev['samples']} "
            f"| {ev['log_likelihood']:.2f} ± {ev['log_likelihood_std_error']:.2f} | {ev['elbo']:.2f} "
            f"| {per_epoch:.1f} |"
        )
    return "\n".join([header, *rows]) + "\n"
