"""Run folders: load a trained run, its configuration and data, and extra exemplars.

A run folder holds ``config.json`` (fully resolved), ``metrics.jsonl`` (one line per epoch), the ``best``
and ``last`` checkpoints (``best.json`` + ``best.safetensors``, ``last.json`` + ``last.safetensors`` +
``last-optimizer.safetensors``; ``best.pt``/``last.pt`` in older runs: see
``exemplar_vae.training.checkpoint``), and whatever evaluation and pictures were made from it (file names
in ``exemplar_vae.io``). Everything that reads a trained model -- evaluation, generation, the downstream
tools, the CLI -- goes through ``load_run``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from exemplar_vae.config import RunConfig
from exemplar_vae.data import (
    DATASETS,
    DataInput,
    DataSplits,
    as_splits,
    canonical_name,
    fingerprint,
    load_dataset,
    npz_images,
    read_npz,
    take_train,
)
from exemplar_vae.errors import CheckpointError, ConfigError, DataError
from exemplar_vae.io import CONFIG
from exemplar_vae.models import VAE, build_vae
from exemplar_vae.training.checkpoint import check_weights, load_checkpoint
from exemplar_vae.validation import validate

logger = logging.getLogger(__name__)

DATA_RECORD = "data.json"  # where a run's data came from: source, name, fingerprint, size, shape, binary


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
    return validate(config, data.num_train, data.data_dim), data


# --------------------------------------------------------------------------- where a run's data came from


def _dataset_name(dataset: str) -> str:
    """The name ``load_dataset(dataset)`` gives its splits: the registered name, an image folder's name,
    or an ``.npz`` file's stem."""
    key = canonical_name(dataset)
    if key in DATASETS:
        return key
    path = Path(dataset).expanduser()
    return path.resolve().name if path.is_dir() else path.stem


def run_data(config: RunConfig, data: DataInput) -> tuple[DataSplits, str]:
    """The splits of data passed to ``train``/``load_run``, and where they came from.

    A ``DataSplits`` is used as it is; it counts as the configured dataset (source "dataset") when its
    name is the one ``load_dataset(config.data.dataset)`` gives (e.g. splits ``prepare`` loaded), else as
    data from Python (source "python"). Any other form goes through ``as_splits`` with
    ``config.data.binarize``, keeps the first ``config.data.train_size`` training examples, as a dataset
    would, and is data from Python.
    """
    if isinstance(data, DataSplits):
        return data, "dataset" if data.name == _dataset_name(config.data.dataset) else "python"
    splits = as_splits(data, binarize=config.data.binarize)
    return take_train(splits, config.data.train_size), "python"


def data_record(splits: DataSplits, source: str) -> dict[str, Any]:
    """The document of RUN_DIR/data.json for a run trained on ``splits`` ("dataset" or "python")."""
    return {
        "source": source,
        "name": splits.name,
        "fingerprint": fingerprint(splits),
        "num_train": splits.num_train,
        "image_shape": list(splits.image_shape),
        "binary": splits.binary,
    }


def read_data_record(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/data.json, or None for a run written before runs recorded their data.

    Raises:
        ConfigError: the file is not a JSON object with a source and a fingerprint.
    """
    path = Path(run_dir) / DATA_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not readable JSON: {err}") from err
    if (
        not isinstance(record, dict)
        or record.get("source") not in ("dataset", "python")
        or not isinstance(record.get("fingerprint"), str)
    ):
        raise ConfigError(f"{path} is not a data record (a source 'dataset' or 'python', and a fingerprint)")
    return record


def python_data_error(run_dir: Path, record: dict[str, Any], call: str) -> ConfigError:
    """The error for a run trained on data from Python that ``call`` was asked to use without it."""
    return ConfigError(
        f"{run_dir} was trained on data passed from Python (fingerprint {record['fingerprint'][:16]}...); "
        f"pass data=... to {call}, or export the model (save_pretrained) to load it without its data"
    )


def check_data(
    run_dir: Path, record: dict[str, Any] | None, splits: DataSplits, fp: str | None = None
) -> None:
    """Raises DataError when ``splits`` are not the data ``record`` (RUN_DIR/data.json) was written for.

    Args:
        run_dir: the run folder (for the message).
        record: its data record; None (an older run) checks nothing.
        splits: the data about to be used with the run.
        fp: ``fingerprint(splits)`` when already computed.
    """
    if record is None:
        return
    now = fp if fp is not None else fingerprint(splits)
    if now != record["fingerprint"]:
        hint = (
            "; it was trained on data passed from Python: pass that data as data=..."
            if record["source"] == "python"
            else f"; it was trained on the dataset '{record.get('name')}'"
        )
        raise DataError(
            f"{run_dir}: the data differs from the data the run was trained on: fingerprint {now[:16]} != "
            f"{record['fingerprint'][:16]} ({Path(run_dir) / DATA_RECORD}){hint}"
        )


def build_model(config: RunConfig, data: DataSplits, device: torch.device | str = "cpu") -> VAE:
    """A fresh VAE with the prior named in ``config``, its exemplar set the training images of ``data``."""
    model = build_vae(
        config.model, config.prior, data.train_store, data.image_shape, data.binary, config=config
    )
    return model.to(device)


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


def extra_sources(
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
    data: DataInput | None = None,
    extra_exemplars: Tensor | str | Path | None = None,
    add_val_exemplars: bool = False,
    refresh: bool = True,
) -> tuple[VAE, DataSplits, RunConfig]:
    """Rebuild a trained model from its run folder, its exemplar set reloaded from the training data.

    New exemplars can join the exemplar prior without retraining: the prior becomes the Parzen window
    over the training images plus the extra ones, each with weight 1 / (N + n_extra).

    Args:
        run_dir: a folder written by ``train``.
        checkpoint: "best" or "last".
        device: where to put the model.
        data: the run's data if already loaded, or the data it was trained on if that was passed from
            Python (any form ``data.as_splits`` accepts; converted with the run's ``binarize`` and
            ``train_size``, as ``train`` did).
        extra_exemplars: exemplar prior only: [n, D] images in [0, 1], or an ``.npz`` file (see
            ``load_exemplars_npz``), appended to the training images as the exemplar set.
        add_val_exemplars: exemplar prior only: also append the validation images (grey when kept).
        refresh: refresh the prior's cache for the loaded weights (False for a caller that refreshes
            it itself, e.g. ``evaluate_density``).

    Returns:
        (model in eval mode with its prior refreshed, data, config).

    The run's RUN_DIR/data.json (runs trained since runs record their data) says where its data came
    from and holds its fingerprint: the data loaded or given here must have the same fingerprint.

    Raises:
        ConfigError: extra exemplars for a prior other than the exemplar prior; no ``data`` for a run
            trained on data passed from Python.
        DataError: extra exemplars of the wrong width or with values outside [0, 1]; data that differs
            from the data the run was trained on (another fingerprint).
        CheckpointError: no such checkpoint, or one that fails its checks (``load_checkpoint``: a file
            changed since it was written, a missing or misshapen tensor, non-finite weights); a saved
            configuration that is invalid or asks for networks larger than the memory here (refused
            before the model is built).
    """
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', got '{checkpoint}'")
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist")
    record = read_data_record(run_dir)  # None for runs written before runs recorded their data
    if data is None and record is not None and record["source"] == "python":
        raise python_data_error(run_dir, record, "load_run")
    ckpt = load_checkpoint(run_dir, checkpoint)  # files, hashes, structure, finite values checked
    config = ckpt.config
    if (extra_exemplars is not None or add_val_exemplars) and config.prior.name != "exemplar":
        raise ConfigError(
            f"only the exemplar prior has an exemplar set; {run_dir} uses the '{config.prior.name}' prior, "
            "so no exemplars can be added"
        )
    try:
        validate(config)  # before any data is loaded
    except ConfigError as err:
        raise CheckpointError(f"{ckpt.path}: its configuration cannot be used here: {err}") from err
    if data is None:
        d = config.data
        data = load_dataset(d.dataset, d.data_dir, train_size=d.train_size, binarize=d.binarize)
    else:
        data, _ = run_data(config, data)
    check_data(run_dir, record, data)
    try:  # the networks' memory for this D, refused before the model is built
        config = validate(config, data.num_train, data.data_dim)
    except ConfigError as err:
        raise CheckpointError(f"{ckpt.path}: its configuration cannot be used here: {err}") from err
    extra = extra_exemplar_set(data, extra_exemplars, add_val_exemplars)  # [n_extra, D] or None
    dev = resolve_device(device)
    model = build_model(config, data, dev)
    check_weights(ckpt, model.state_dict())  # names, shapes, dtypes: one line naming the tensor
    model.load_state_dict(ckpt.model)
    if extra is not None:
        model.prior.set_exemplars(data.train_store.concat(extra))  # [N + n_extra, D]
        logger.info("exemplar set: %d training + %d extra images", data.num_train, extra.shape[0])
    model.eval()
    if refresh:
        model.prior.refresh(model.encoder)
    return model, data, config
