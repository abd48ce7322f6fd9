"""The Python API the CLI is a thin layer over: train a run, evaluate it, draw from it, probe its codes.

Run folders are read through ``exemplar_vae.runs``; reports and tables of run folders are in
``exemplar_vae.report``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from exemplar_vae import distributed, rundir
from exemplar_vae.config import EvalConfig, RunConfig
from exemplar_vae.data import DataInput, DataSplits
from exemplar_vae.data.images import IMAGE_SUFFIXES
from exemplar_vae.errors import ConfigError
from exemplar_vae.evaluation import DEFAULT_KS, evaluate_density, knn_probe, tsne_plot
from exemplar_vae.generation import (
    check_temperature,
    cyclic_chain,
    exemplar_grid,
    exemplars_of_class,
    interpolation_grid,
    prior_sample_grid,
    read_images,
    sample_from_exemplars,
)
from exemplar_vae.io import CONFIG, EVALUATION, RunLock, atomic_write_json, check_run_lock
from exemplar_vae.models import VAE
from exemplar_vae.optional import require
from exemplar_vae.runs import (
    DATA_RECORD,
    build_model,
    check_data,
    data_record,
    extra_sources,
    load_exemplars_npz,
    load_run,
    prepare,
    python_data_error,
    read_data_record,
    resolve_device,
    run_data,
)
from exemplar_vae.training import (
    Callback,
    CurvesCallback,
    TensorBoardLogger,
    Trainer,
    TrainResult,
    has_checkpoint,
    load_checkpoint,
)
from exemplar_vae.validation import validate, validate_eval
from exemplar_vae.viz import save_image_grid

logger = logging.getLogger(__name__)


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data: DataInput | None = None,
    callbacks: Sequence[Callback] = (),
    tensorboard: bool = False,
    restart: bool = False,
) -> tuple[VAE, TrainResult]:
    """Train a model as ``config`` says.

    Args:
        config: the run's configuration (validated here).
        run_dir: output folder (config.json, metrics.jsonl, checkpoints); None keeps it in memory.
        resume: continue the run in ``run_dir`` from its last checkpoint; ``config`` must be the saved one
            (``load_run_config``), with ``train.epochs`` changed if more epochs are wanted.
        progress: show progress bars.
        data: the data to train on instead of loading ``config.data.dataset``: already-loaded splits
            (``DataSplits``, used as they are), or images held in Python in any form
            ``data.as_splits`` accepts (Tensor, NumPy array, (x, y), Dataset, DataLoader), converted
            with ``config.data.binarize`` and cut to ``config.data.train_size``.
        callbacks: called after every epoch with its metrics (``training.Callback``); with a run folder,
            RUN_DIR/curves.png is also rewritten every epoch.
        tensorboard: also log every epoch's metrics to RUN_DIR/tensorboard (needs the ``tensorboard``
            extra; checked before training starts).
        restart: start over a run in ``run_dir`` that stopped before its first checkpoint, with ``config``
            even when it differs from the saved one (with the same configuration it starts over anyway).

    A run folder records where its data came from in RUN_DIR/data.json (``runs.DATA_RECORD``: source
    "dataset" or "python", name, fingerprint, num_train, image_shape, binary), so that ``load_run``
    reloads the same data, or asks for it when it came from Python. Resuming checks that the data has
    the fingerprint recorded.

    The folder is claimed while training (RUN_DIR/.lock, ``exemplar_vae.rundir``): a second ``train`` on
    it is refused while the first runs, a lock left by a killed process is taken over. Everything that can
    be checked (folder, configuration, data, the checkpoint to resume) is checked before a run file is
    written. A run killed before its first checkpoint starts over in place when trained again with the
    same configuration.

    Under torchrun (``torchrun --nproc_per_node=W ...``) every process calls this with the same
    arguments; ``config.train.batch_size`` is the global batch, rank 0 claims and writes the run folder.

    Returns:
        (the model with its best-validation weights, how training ended).

    Raises:
        ConfigError: bad configuration, a folder held by another process or by another run.
        CheckpointError: nothing to resume, or a checkpoint that does not fit.
        io.WriteFailed: the disk is full (or the folder read-only, over quota, forbidden); its message says
            how to go on (the folder stays resumable from its last checkpoint).
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is None and (resume or restart):
        raise ConfigError(f"{'resume' if resume else 'restart'} needs a run folder")
    if run_dir is None and tensorboard:
        raise ConfigError("tensorboard logging needs a run folder")
    if resume and restart:
        raise ConfigError("--resume continues a run and --restart starts it over: pass one of them")
    distributed.start(config.train.device)  # joins a torchrun launch; nothing in a single process
    if run_dir is not None:  # what can be said before loading anything (again under the lock, below)
        _on_rank0(run_dir, lambda: _check_run_dir(run_dir, resume, restart))
    if tensorboard:  # the logger itself is made once the folder is claimed
        require("tensorboard", "tensorboard", "the TensorBoard logger")
    torch.manual_seed(config.train.seed)
    splits: DataSplits
    given = data is not None
    if data is None:
        config, splits = prepare(config)
        source = "dataset"
    else:
        splits, source = run_data(config, data)
        config = validate(config, splits.num_train, splits.data_dim)
    data = splits
    if distributed.world_size() > data.num_train:
        raise ConfigError(f"{distributed.world_size()} processes for {data.num_train} training examples")
    device = resolve_device(distributed.local_device(config.train.device))
    model = build_model(config, data, device)
    trainer = Trainer(model, data, config, run_dir, progress=progress, callbacks=list(callbacks))
    if run_dir is None:
        logger.info("training %s prior on %s: %s", config.prior.name, data.name, data.summary())
        return model, trainer.fit()
    record = data_record(splits, source) if resume or distributed.is_main() else None
    if resume:  # everything the checkpoint must agree with is checked before a file is touched
        on_disk = read_data_record(run_dir)
        if on_disk is not None and on_disk["source"] == "python" and not given:
            raise python_data_error(run_dir, on_disk, "train")
        assert record is not None
        check_data(run_dir, on_disk, splits, record["fingerprint"])
    else:  # a run that stopped before its first checkpoint starts over with the same config (or --restart)
        _on_rank0(run_dir, lambda: rundir.check_restart(run_dir, config, restart))
    lock = _on_rank0(run_dir, lambda: _claim_run_dir(run_dir, config, resume, restart))
    try:
        if resume:  # the checkpoint's own checks; only the lock is written before them
            trainer.resume()
        distributed.barrier()  # every rank has checked the folder before rank 0 writes into it

        def start_files() -> None:
            config.save(run_dir / CONFIG)
            if record is not None and not (resume and (run_dir / DATA_RECORD).is_file()):
                atomic_write_json(run_dir / DATA_RECORD, record)
            if tensorboard:  # callbacks run on rank 0 only, into the claimed folder
                trainer.callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
            trainer.callbacks.append(CurvesCallback(run_dir / "curves.png"))

        distributed.on_rank0(start_files, f"writing {run_dir}")
        logger.info("training %s prior on %s: %s", config.prior.name, data.name, data.summary())
        result = trainer.fit()
        if has_checkpoint(run_dir, "best"):
            model.load_state_dict(load_checkpoint(run_dir, "best", map_location=device, model=model).model)
    except OSError as err:  # disk full, read-only, ...: one line saying how to go on
        failure = rundir.write_failure(run_dir, err)
        if failure is err:
            raise
        raise failure from err
    finally:
        if lock is not None:
            lock.release()
    return model, result


T = TypeVar("T")


def _on_rank0(run_dir: Path, action: Callable[[], T]) -> T | None:
    """``action()`` on rank 0 only (the rank that owns the run folder); when it fails, every rank raises
    (rank 0 its error, the others one that points to it), so that no rank waits for the others."""
    result: T | None = None
    failure: Exception | None = None
    if distributed.is_main():
        try:
            result = action()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = err
    if distributed.broadcast_flag(failure is not None):
        if failure is not None:
            raise failure
        raise ConfigError(f"rank 0 refused the run folder {run_dir}: its error message says why")
    return result


def _check_run_dir(run_dir: Path, resume: bool, restart: bool) -> None:
    check_run_lock(run_dir)
    rundir.check_folder(run_dir, resume=resume, restart=restart)


def _claim_run_dir(run_dir: Path, config: RunConfig, resume: bool, restart: bool) -> RunLock:
    """Claim the folder (``rundir.claim``), check it again now that no other process can change it, and
    clear the files of an unfinished run that starts over."""
    lock = rundir.claim(run_dir)
    try:
        rundir.check_folder(run_dir, resume=resume, restart=restart)
        if not resume and rundir.check_restart(run_dir, config, restart):
            rundir.clear_unfinished(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def evaluate_run(
    run_dir: str | Path,
    config: EvalConfig | None = None,
    device: str = "auto",
    progress: bool = True,
    extra_exemplars: Tensor | str | Path | None = None,
    add_val_exemplars: bool = False,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Importance-sampled log-likelihood and ELBO of a run's best model; saved to RUN_DIR/evaluation.json.

    The exemplar prior uses the whole training set as exemplars, without leave-one-out. ``config`` says how
    (None: ``EvalConfig()``; its defaults are the CLI's: S = 5000, the prior truncated to the 1000 exemplars nearest
    each test point, the truncation error measured on 10 points; ``candidates=None``: the full prior).
    ``extra_exemplars`` and ``add_val_exemplars`` enlarge the exemplar set without retraining (see
    ``runs.load_run``); the result records "exemplars" (the number in use), "train_examples",
    "extra_exemplars" (0 when none were added) and "extra_exemplar_sources". ``out`` writes the JSON
    elsewhere than RUN_DIR/evaluation.json. Under torchrun every process scores its share of the test
    points (the figures equal one process's) and rank 0 writes the file.
    """
    config = validate_eval(config if config is not None else EvalConfig())
    if add_val_exemplars and config.split == "val":
        raise ConfigError("--with-val with --split val would score the validation images against themselves")
    if out is not None and Path(out).suffix.lower() != ".json":
        raise ConfigError(f"--out must be a .json file, got '{out}'")
    distributed.start(device)  # under torchrun the test points are split across the processes
    model, data, run_config = load_run(
        run_dir, device=distributed.local_device(device), extra_exemplars=extra_exemplars,
        add_val_exemplars=add_val_exemplars, refresh=False,  # evaluate_density refreshes the prior
    )  # fmt: skip
    x = data.test_x if config.split == "test" else data.val_x
    if config.limit is not None:
        x = x[: config.limit]
    result = evaluate_density(model, x, config, progress=progress)
    mixture = model.prior.kernel_mixture()
    in_use = mixture.centers.shape[0] if mixture is not None else data.num_train
    result.update(
        split=config.split, prior=run_config.prior.name, arch=run_config.model.arch,
        likelihood=model.observation.name, dataset=data.name, exemplars=in_use, train_examples=data.num_train,
        extra_exemplars=in_use - data.num_train,
        extra_exemplar_sources=extra_sources(data, extra_exemplars, add_val_exemplars),
    )  # fmt: skip
    target = Path(out) if out is not None else Path(run_dir) / EVALUATION
    distributed.on_rank0(lambda: atomic_write_json(target, result), f"writing {target}")
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
    cyclic: int | None = None,
    class_label: int | None = None,
    from_images: str | Path | None = None,
    interpolate: bool = False,
    steps: int = 10,
) -> Path:
    """Write one PNG grid from a trained model.

    Layouts (pick at most one of ``from_exemplars``, ``cyclic``, ``interpolate``):

    * default: n prior samples (decoder means) in a near-square grid;
    * ``from_exemplars``: n rows, each an exemplar followed by ``variations`` draws from r(z|x), decoded;
    * ``cyclic=T``: n rows, each a cyclic chain x_0 (uniform noise), x_1, ..., x_T (``cyclic_chain``);
    * ``class_label`` / ``from_images``: n samples from the Parzen window over the training images of one
      class, or over the images of an ``.npz``/folder (``generation.sample_from_exemplars``: no retraining);
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
    if cyclic is not None and cyclic < 1:
        raise ConfigError(f"--cyclic needs at least 1 step, got {cyclic}")
    layouts = [
        from_exemplars,
        cyclic is not None,
        interpolate,
        class_label is not None,
        from_images is not None,
    ]
    if sum(layouts) > 1:
        raise ConfigError("pick one of --from-exemplars, --cyclic, --interpolate, --class and --from-images")
    if from_exemplars and variations < 1:
        raise ConfigError(f"--variations must be at least 1, got {variations}")
    if interpolate and steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {steps}")
    model, data, _ = load_run(run_dir, device=device, extra_exemplars=extra_exemplars)
    g = torch.Generator(device=model.device).manual_seed(seed)
    pick_g = torch.Generator().manual_seed(seed)
    pool = data.train_x  # [N, D] where exemplar rows and pairs are drawn from
    exemplar_set = model.prior.exemplar_set()
    if exemplar_set is not None and extra_exemplars is not None:
        pool = exemplar_set[data.num_train :].cpu()  # [n_extra, D]: load_run appended them
    if from_exemplars:
        pick = torch.randperm(pool.shape[0], generator=pick_g)[:n]
        grid = exemplar_grid(model, pool[pick], variations, g, temperature)
    elif cyclic is not None:
        grid = cyclic_chain(model, cyclic, n, g, temperature)
    elif class_label is not None or from_images is not None:
        if class_label is not None:
            chosen = exemplars_of_class(data, class_label)  # [M, D] the training images of that class
        else:
            chosen = _images_from(Path(from_images), data)  # type: ignore[arg-type]
        cols = max(1, math.ceil(math.sqrt(n)))
        rows = math.ceil(n / cols)
        grid = sample_from_exemplars(model, chosen, rows * cols, g, temperature).reshape(rows, cols, -1)
    elif interpolate:
        if pool.shape[0] < 2:
            raise ConfigError("interpolation needs at least 2 exemplars")
        pairs = torch.stack([torch.randperm(pool.shape[0], generator=pick_g)[:2] for _ in range(n)])  # [n, 2]
        grid = interpolation_grid(model, pool[pairs[:, 0]], pool[pairs[:, 1]], steps, g)
    else:
        grid = prior_sample_grid(model, n, g, temperature)
    return save_image_grid(grid, data.image_shape, out)


def _images_from(path: Path, data: DataSplits) -> Tensor:
    """Exemplar images from an ``.npz`` (array ``x``) or a folder of image files: [M, D] in [0, 1]."""
    if path.suffix.lower() == ".npz":
        return load_exemplars_npz(path, data)
    if not path.is_dir():
        raise ConfigError(f"--from-images must be an .npz file or a folder of images, got '{path}'")
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return read_images(files, data.image_shape)


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
