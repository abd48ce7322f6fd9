"""High-level API that the CLI is a thin layer over: prepare data, train a run, load it, evaluate, draw.

A run folder holds ``config.json`` (fully resolved), ``metrics.jsonl`` (one line per epoch), ``best.pt``
and ``last.pt`` (atomic checkpoints), and whatever evaluation and pictures were made from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from exemplar_vae.config import RunConfig, validate
from exemplar_vae.data import DataSplits, load_dataset
from exemplar_vae.data.registry import npz_images, read_npz  # the .npz reader load_dataset uses
from exemplar_vae.errors import CheckpointError, ConfigError, DataError
from exemplar_vae.evaluation import DEFAULT_KS, evaluate_density, knn_probe, tsne_plot
from exemplar_vae.generation import (
    check_temperature,
    cyclic_chain,
    exemplar_grid,
    interpolation_grid,
    prior_sample_grid,
)
from exemplar_vae.io import BEST, CONFIG, EVALUATION, LAST, METRICS, atomic_write_text, read_metrics
from exemplar_vae.models import VAE, build_vae
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.training import Trainer, TrainResult, load_checkpoint
from exemplar_vae.viz import plot_training_curves, save_image_grid

logger = logging.getLogger(__name__)


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
    data = load_dataset(
        config.data.dataset,
        config.data.data_dir,
        train_size=config.data.train_size,
        binarize=config.data.binarize,
    )
    return validate(config, data.num_train), data


def build_model(config: RunConfig, data: DataSplits, device: torch.device | str = "cpu") -> VAE:
    """A fresh VAE with the prior named in ``config``, its exemplar set the training images of ``data``."""
    return build_vae(config.model, config.prior, data.train_x, data.image_shape, data.binary).to(device)


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


def load_exemplars_npz(path: str | Path, data: DataSplits) -> Tensor:
    """Extra exemplars from an ``.npz`` file in the format ``load_dataset`` reads.

    All rows of its array ``x`` are taken, as grey values (uint8 0..255, bool, or float in [0, 1]; shape
    [n, D], [n, H, W] or [n, C, H, W]); labels and ``x_val``/``x_test`` are ignored.

    Args:
        path: the ``.npz`` file.
        data: the run's data; the file's D must equal ``data.data_dim``.

    Returns:
        [n, D] float32 in [0, 1].

    Raises:
        DataError: the file is missing or unreadable, has no ``x``, holds no examples or values out of
            range, or its D differs from the model's.
    """
    path = Path(path).expanduser()
    x, image_shape = npz_images(read_npz(path), "x", path)  # [n, D]
    if x.shape[1] != data.data_dim:
        raise DataError(
            f"{path}: x holds images of shape {image_shape} (D={x.shape[1]}), but the model was trained on "
            f"{data.name} with D={data.data_dim} values per example"
        )
    return x


def _checked_exemplars(x: Tensor, data: DataSplits) -> Tensor:
    """An [n, D] tensor of extra exemplars, checked against the data: float32, finite, in [0, 1]."""
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != data.data_dim:
        raise DataError(
            f"extra exemplars must be a non-empty [n, {data.data_dim}] tensor for {data.name}, "
            f"got shape {tuple(x.shape)}"
        )
    x = x.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise DataError("extra exemplars must hold finite values in [0, 1]")
    return x


def extra_exemplar_set(
    data: DataSplits, extra_exemplars: Tensor | str | Path | None = None, add_val_exemplars: bool = False
) -> Tensor | None:
    """The exemplars to add to the training images: the validation images (grey when the data kept
    them) if ``add_val_exemplars``, then ``extra_exemplars`` (an [n, D] tensor in [0, 1], or an ``.npz``
    file read by ``load_exemplars_npz``). Returns [n_extra, D] float32, or None when nothing is added."""
    parts = []
    if add_val_exemplars:
        parts.append(data.val_grey if data.val_grey is not None else data.val_x)
    if isinstance(extra_exemplars, (str, Path)):
        parts.append(load_exemplars_npz(extra_exemplars, data))
    elif extra_exemplars is not None:
        parts.append(_checked_exemplars(extra_exemplars, data))
    return torch.cat(parts) if parts else None


def _extra_sources(
    data: DataSplits, extra_exemplars: Tensor | str | Path | None, add_val_exemplars: bool
) -> list[str]:
    """Where the extra exemplars came from, for evaluation.json."""
    sources = []
    if add_val_exemplars:
        sources.append("validation set (" + ("grey)" if data.val_grey is not None else "binarised)"))
    if isinstance(extra_exemplars, (str, Path)):
        sources.append(str(extra_exemplars))
    elif extra_exemplars is not None:
        sources.append("tensor")
    return sources


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "auto",
    data: DataSplits | None = None,
    extra_exemplars: Tensor | str | Path | None = None,
    add_val_exemplars: bool = False,
) -> tuple[VAE, DataSplits, RunConfig]:
    """Rebuild a trained model from its run folder, its exemplar set reloaded from the training data.

    New exemplars can join the exemplar prior without retraining: the prior becomes the Parzen window
    over the training images plus the extra ones, each with weight 1 / (N + n_extra).

    Args:
        run_dir: a folder written by ``train``.
        checkpoint: "best" or "last".
        device: where to put the model.
        data: the run's data if already loaded.
        extra_exemplars: exemplar prior only: [n, D] images in [0, 1], or an ``.npz`` file (see
            ``load_exemplars_npz``), appended to the training images as the exemplar set.
        add_val_exemplars: exemplar prior only: also append the validation images (grey when kept).

    Returns:
        (model in eval mode with its prior refreshed, data, config). The number of exemplars in use is
        ``model.prior.num_total`` for the exemplar prior.

    Raises:
        ConfigError: extra exemplars for a prior other than the exemplar prior.
        DataError: extra exemplars of the wrong width or with values outside [0, 1].
    """
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', got '{checkpoint}'")
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist")
    ckpt = load_checkpoint(run_dir / (BEST if checkpoint == "best" else LAST))
    config = RunConfig.from_dict(ckpt["config"])
    if (extra_exemplars is not None or add_val_exemplars) and config.prior.name != "exemplar":
        raise ConfigError(
            f"only the exemplar prior has an exemplar set; {run_dir} uses the '{config.prior.name}' prior, "
            "so no exemplars can be added"
        )
    if data is None:
        config, data = prepare(config)
    extra = extra_exemplar_set(data, extra_exemplars, add_val_exemplars)  # [n_extra, D] or None
    dev = resolve_device(device)
    model = build_model(config, data, dev)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint in {run_dir} does not match its config: {e}") from e
    if extra is not None:
        assert isinstance(model.prior, ExemplarPrior)
        model.prior.set_exemplars(torch.cat([data.train_x, extra]))  # [N + n_extra, D]
        logger.info("exemplar set: %d training + %d extra images", data.num_train, extra.shape[0])
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
    candidates: int | None = 1000,
    check_exact: int = 10,
    certify: bool = False,
    extra_exemplars: Tensor | str | Path | None = None,
    add_val_exemplars: bool = False,
    out: str | Path | None = None,
    certify_tolerance: float = 0.01,
    certify_budget: float = 0.5,
) -> dict[str, Any]:
    """Importance-sampled log-likelihood and ELBO of a run's best model; saved to RUN_DIR/evaluation.json.

    The exemplar prior uses the whole training set as exemplars, without leave-one-out; ``candidates``,
    ``certify``, ``certify_tolerance``, ``certify_budget`` and ``check_exact`` are as in
    ``evaluation.evaluate_density``, with the CLI's defaults: the prior truncated to the 1000 exemplars
    nearest each test point and the truncation error measured on 10 points (``candidates=None``: the full
    prior). ``extra_exemplars`` and
    ``add_val_exemplars`` enlarge the exemplar set without retraining (see ``load_run``); the result
    records "exemplars" (the number in use), "train_examples", "extra_exemplars" (0 when none were added)
    and "extra_exemplar_sources". ``out`` writes the JSON elsewhere than RUN_DIR/evaluation.json.
    """
    if split not in ("test", "val"):
        raise ConfigError(f"--split must be 'test' or 'val', got '{split}'")
    if num_samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {num_samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if candidates is not None and candidates < 1:
        raise ConfigError(f"--candidates must be at least 1, got {candidates}")
    if check_exact < 0:
        raise ConfigError(f"--check-exact must be >= 0, got {check_exact}")
    if not certify_tolerance > 0:
        raise ConfigError(f"--certify-tolerance must be positive, got {certify_tolerance}")
    if not 0 <= certify_budget <= 1:
        raise ConfigError(f"--certify-budget must be between 0 and 1 (a fraction of N), got {certify_budget}")
    if add_val_exemplars and split == "val":
        raise ConfigError(
            "--add-val-exemplars with --split val would score the validation images against themselves"
        )
    if out is not None and Path(out).suffix.lower() != ".json":
        raise ConfigError(f"--out must be a .json file, got '{out}'")
    model, data, config = load_run(
        run_dir, device=device, extra_exemplars=extra_exemplars, add_val_exemplars=add_val_exemplars
    )
    x = data.test_x if split == "test" else data.val_x
    if limit is not None:
        x = x[:limit]
    result = evaluate_density(
        model, x, num_samples, batch_size, seed=seed, progress=progress, candidates=candidates,
        check_exact=check_exact, certify=certify, certify_tolerance=certify_tolerance, certify_budget=certify_budget,
    )  # fmt: skip
    in_use = model.prior.num_total if isinstance(model.prior, ExemplarPrior) else data.num_train
    result.update(
        split=split, prior=config.prior.name, arch=config.model.arch, likelihood=model.observation.name,
        dataset=data.name, exemplars=in_use, train_examples=data.num_train,
        extra_exemplars=in_use - data.num_train,
        extra_exemplar_sources=_extra_sources(data, extra_exemplars, add_val_exemplars),
    )  # fmt: skip
    atomic_write_text(
        Path(out) if out is not None else Path(run_dir) / EVALUATION, json.dumps(result, indent=2) + "\n"
    )
    return result


def generate_pictures(
    run_dir: str | Path,
    out: str | Path,
    n: int = 64,
    from_exemplars: bool = False,
    variations: int = 10,
    device: str = "auto",
    seed: int = 0,
    *,
    extra_exemplars: Tensor | str | Path | None = None,
    temperature: float = 1.0,
    cyclic: int = 0,
    interpolate: bool = False,
    steps: int = 10,
) -> Path:
    """Write one PNG grid from a trained model.

    Layouts (pick at most one of ``from_exemplars``, ``cyclic``, ``interpolate``):

    * default: n prior samples (decoder means) in a near-square grid;
    * ``from_exemplars``: n rows, each an exemplar followed by ``variations`` draws from r(z|x), decoded;
    * ``cyclic=T``: n rows, each a cyclic chain x_0 (uniform noise), x_1, ..., x_T (``cyclic_chain``);
    * ``interpolate``: n rows, each an exemplar x_a, ``steps`` decoded points on the line from mu(x_a) to
      mu(x_b), then the exemplar x_b, for random pairs of exemplars.

    Exemplar rows and pairs are drawn from the training images, or from the extra exemplars when
    ``extra_exemplars`` is given (which also join the exemplar prior's mixture for prior samples; exemplar
    prior only). ``temperature`` multiplies the standard deviation of the prior (default layout) or of
    r(z|x) (the other layouts).
    """
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file, got '{out}'")
    temperature = check_temperature(temperature)
    if cyclic < 0:
        raise ConfigError(f"--cyclic must be a number of steps >= 1, got {cyclic}")
    if sum([from_exemplars, cyclic > 0, interpolate]) > 1:
        raise ConfigError("pick one of --from-exemplars, --cyclic and --interpolate")
    if from_exemplars and variations < 1:
        raise ConfigError(f"--variations must be at least 1, got {variations}")
    if interpolate and steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {steps}")
    model, data, _ = load_run(run_dir, device=device, extra_exemplars=extra_exemplars)
    g = torch.Generator(device=model.device).manual_seed(seed)
    pick_g = torch.Generator().manual_seed(seed)
    pool = data.train_x  # [N, D] where exemplar rows and pairs are drawn from
    if isinstance(model.prior, ExemplarPrior) and extra_exemplars is not None:
        pool = model.prior.exemplars[data.num_train :].cpu()  # [n_extra, D]: load_run appended them
    if from_exemplars:
        pick = torch.randperm(pool.shape[0], generator=pick_g)[:n]
        grid = exemplar_grid(model, pool[pick], variations, g, temperature)
    elif cyclic > 0:
        grid = cyclic_chain(model, cyclic, n, g, temperature)
    elif interpolate:
        if pool.shape[0] < 2:
            raise ConfigError("interpolation needs at least 2 exemplars")
        pairs = torch.stack([torch.randperm(pool.shape[0], generator=pick_g)[:2] for _ in range(n)])  # [n, 2]
        grid = interpolation_grid(model, pool[pairs[:, 0]], pool[pairs[:, 1]], steps, g)
    else:
        grid = prior_sample_grid(model, n, g, temperature)
    return save_image_grid(grid, data.image_shape, out)


def probe_run(
    run_dir: str | Path,
    ks: Sequence[int] = DEFAULT_KS,
    device: str = "auto",
    include_val: bool = False,
    tsne: str | Path | None = None,
    tsne_points: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """kNN classification on a run's encoder means (``evaluation.knn_probe``), and optionally a t-SNE map.

    Args:
        run_dir: a folder written by ``train`` (its best checkpoint).
        ks: numbers of neighbours.
        device: where to encode.
        include_val: put the validation images in the index too (the paper's protocol).
        tsne: a .png file for the t-SNE map of the test codes (None: no map).
        tsne_points: test codes in the map.
        seed: picks the mapped points and seeds t-SNE.

    Returns:
        the ``knn_probe`` result, plus "prior", "run_dir" and (with ``tsne``) "tsne".
    """
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k values must be at least 1, got {list(ks)}")
    if tsne is not None and Path(tsne).suffix.lower() != ".png":
        raise ConfigError(f"--tsne must be a .png file, got '{tsne}'")
    if tsne is not None and tsne_points < 5:
        raise ConfigError(f"--tsne-points must be at least 5, got {tsne_points}")
    model, data, config = load_run(run_dir, device=device)
    result = knn_probe(model, data, ks, include_val=include_val)
    result.update(prior=config.prior.name, run_dir=str(run_dir))
    if tsne is not None:
        title = f"t-SNE of {data.name} test codes, {config.prior.name} prior"
        result["tsne"] = str(tsne_plot(model, data, tsne, tsne_points, seed, title=title))
    return result


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
        ]
        check = ev.get("truncation_check")
        if check:
            lines.append(
                f"- prior truncated to the {ev['candidates']} exemplars nearest each test point (a lower bound); "
                f"against the full prior on {check['points']} points with the same samples the error was "
                f"{check['mean_error']:.2e} nats on average, {check['max_error']:.2e} at most"
            )
        lines.append("")
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
        extra = ev.get("extra_exemplars", 0)
        train_n = f"{ev.get('train_examples', ev['exemplars'])}" + (f" (+{extra} exemplars)" if extra else "")
        rows.append(
            f"| {p.name} | {ev['dataset']} | {train_n} | {epochs} ({config.train.warmup}) | {mk} "
            f"| {ev['split']}, {ev['examples']}, {ev['samples']} "
            f"| {ev['log_likelihood']:.2f} ± {ev['log_likelihood_std_error']:.2f} | {ev['elbo']:.2f} "
            f"| {per_epoch:.1f} |"
        )
    return "\n".join([header, *rows]) + "\n"
