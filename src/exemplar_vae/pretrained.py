"""Self-contained model folders: load what ``VAE.save_pretrained`` wrote, on any machine, without the
training data or the run folder.

A folder (format version 1) holds:

- ``config.json``: the run configuration (``RunConfig.to_dict()``: sections data, model, prior, train)
  plus ``image_shape`` [C, H, W], ``likelihood`` ("bernoulli" or "logistic"), ``binary``,
  ``format_version`` (1), ``exemplar_vae_version`` and ``files`` ({file name: SHA-256 hex digest});
- ``model.safetensors``: the state dict;
- ``exemplars.safetensors``: only for a prior with an exemplar set (the exemplar prior): one tensor
  ``exemplars`` [N, D], uint8 codes k (value k / 255) or float32 values in [0, 1].

Nothing is unpickled: tensors are read with safetensors only, after each file's SHA-256 has been checked
against config.json, and every tensor is checked against the model the configuration builds (names,
shapes, dtypes, finite values) before it is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from exemplar_vae.config import RunConfig
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import CheckpointError, ExemplarVAEError
from exemplar_vae.io import (
    PRETRAINED_CONFIG,
    PRETRAINED_EXEMPLARS,
    PRETRAINED_FORMAT_VERSION,
    PRETRAINED_WEIGHTS,
    sha256_file,
)
from exemplar_vae.models.build import build_vae
from exemplar_vae.models.observation import observation_for
from exemplar_vae.models.vae import VAE
from exemplar_vae.runs import resolve_device
from exemplar_vae.training.checkpoint import check_tensors

__all__ = ["from_pretrained", "read_pretrained_config"]

# config.json keys beside the RunConfig sections
META_KEYS = ("image_shape", "likelihood", "binary", "format_version", "exemplar_vae_version", "files")
KNOWN_FILES = (PRETRAINED_WEIGHTS, PRETRAINED_EXEMPLARS)


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_pretrained_config(directory: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run configuration and the other entries of a model folder's config.json, checked.

    Returns:
        (RunConfig, {"image_shape": (C, H, W), "likelihood", "binary", "format_version",
        "exemplar_vae_version", "files": {name: sha256}}).

    Raises:
        CheckpointError: no folder or no config.json, not JSON, a newer or unknown format version,
            a missing or malformed entry, or a likelihood that does not match ``binary``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"pretrained model folder {directory} does not exist")
    path = directory / PRETRAINED_CONFIG
    what = f"{PRETRAINED_CONFIG} in {directory}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{what} is missing: not a folder written by save_pretrained") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{what} is not readable JSON: {_first_line(err)}") from err
    if not isinstance(doc, dict):
        raise CheckpointError(f"{what} holds a {type(doc).__name__}, expected a JSON object")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{what} has no integer format_version (got {version!r})")
    if version != PRETRAINED_FORMAT_VERSION:
        saved_by = doc.get("exemplar_vae_version", "an unknown version")
        raise CheckpointError(
            f"{what} has format_version {version} (written by exemplar-vae {saved_by}); this exemplar-vae "
            f"reads format_version {PRETRAINED_FORMAT_VERSION}"
        )
    missing = [key for key in META_KEYS if key not in doc]
    if missing:
        raise CheckpointError(f"{what} lacks the entries {', '.join(missing)}")
    meta = {key: doc.pop(key) for key in META_KEYS}
    try:
        config = RunConfig.from_dict(doc)
    except (ExemplarVAEError, TypeError) as err:
        raise CheckpointError(f"{what}: the run configuration is not valid: {_first_line(err)}") from err
    shape = meta["image_shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise CheckpointError(f"{what}: image_shape must be three positive integers [C, H, W], got {shape!r}")
    meta["image_shape"] = tuple(shape)
    if not isinstance(meta["binary"], bool):
        raise CheckpointError(f"{what}: binary must be true or false, got {meta['binary']!r}")
    expected = observation_for(meta["binary"]).name
    if meta["likelihood"] != expected:
        raise CheckpointError(
            f"{what}: likelihood {meta['likelihood']!r} does not match binary={str(meta['binary']).lower()} "
            f"(which means '{expected}')"
        )
    files = meta["files"]
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise CheckpointError(f"{what}: files must map file names to SHA-256 digests, got {files!r}")
    unknown = sorted(set(files) - set(KNOWN_FILES))
    if unknown:
        raise CheckpointError(
            f"{what} lists unknown files {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_FILES)}"
        )
    if PRETRAINED_WEIGHTS not in files:
        raise CheckpointError(f"{what} does not list {PRETRAINED_WEIGHTS}")
    return config, meta


def _load_tensors(directory: Path, name: str, digest: str) -> dict[str, Tensor]:
    """The tensors of one safetensors file of the folder, after its SHA-256 matched ``digest``."""
    from safetensors.torch import load_file

    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{name}: file missing from {directory}")
    try:
        found = sha256_file(path)
    except OSError as err:
        raise CheckpointError(f"{name}: not readable: {_first_line(err)}") from err
    if found != digest.lower():
        raise CheckpointError(
            f"{name}: SHA-256 {found} does not match the {digest} recorded in {PRETRAINED_CONFIG} "
            "(the file was changed or corrupted)"
        )
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types (and OSError); never unpickles
        raise CheckpointError(f"{name}: not a readable safetensors file: {_first_line(err)}") from err


def _exemplar_store(tensors: dict[str, Tensor], width: int) -> ExemplarStore:
    """The exemplar set of exemplars.safetensors, checked: one [N, D] uint8 or float32 tensor."""
    name = PRETRAINED_EXEMPLARS
    extra = sorted(set(tensors) - {"exemplars"})
    if extra:
        raise CheckpointError(f"{name}: unexpected tensor {extra[0]} (only 'exemplars' belongs there)")
    if "exemplars" not in tensors:
        raise CheckpointError(f"{name}: tensor exemplars is missing")
    x = tensors["exemplars"]
    if x.dtype not in (torch.uint8, torch.float32):
        raise CheckpointError(
            f"{name}: tensor exemplars has dtype {x.dtype}, expected torch.uint8 or float32"
        )
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != width:
        raise CheckpointError(
            f"{name}: tensor exemplars has shape {_shape(x.shape)}, expected [N, {width}] with N >= 1"
        )
    if x.dtype == torch.uint8:
        return ExemplarStore.from_uint8(x)
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise CheckpointError(f"{name}: tensor exemplars holds values outside [0, 1] (or NaN)")
    return ExemplarStore(x.contiguous())


def _check_weights(tensors: dict[str, Tensor], expected: dict[str, Any]) -> None:
    """Every tensor the model expects, with its shape and dtype, none other, all finite."""
    check_tensors(PRETRAINED_WEIGHTS, tensors, expected, finite=True)


def from_pretrained(directory: str | Path, device: str = "auto") -> VAE:
    """Load a model folder written by ``VAE.save_pretrained`` (or ``exemplar-vae export``).

    Needs neither the training data nor the run folder: the exemplar set travels in the folder.

    Args:
        directory: the folder.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".

    Returns:
        The model on ``device``, in eval mode, its prior refreshed (the exemplar prior's codes computed),
        ``model.config`` the saved run configuration. The exemplar set stays in host memory (rows are
        moved to the device as they are encoded, as for ``load_run``).

    Raises:
        CheckpointError: a file is missing, its SHA-256 differs from config.json, it is not a safetensors
            file, or a tensor is missing, unexpected, of the wrong shape or dtype, or not finite; the
            message names the file and the tensor.
        ConfigError: an unknown or unavailable device.
    """
    directory = Path(directory)
    dev = resolve_device(device)
    config, meta = read_pretrained_config(directory)
    files: dict[str, str] = meta["files"]
    image_shape: tuple[int, int, int] = meta["image_shape"]
    width = math.prod(image_shape)
    if config.prior.name == "exemplar" and PRETRAINED_EXEMPLARS not in files:
        raise CheckpointError(
            f"{PRETRAINED_CONFIG} in {directory} does not list {PRETRAINED_EXEMPLARS}, which the exemplar "
            "prior needs (its exemplar set)"
        )
    exemplars: Tensor | ExemplarStore
    if PRETRAINED_EXEMPLARS in files:
        exemplars = _exemplar_store(
            _load_tensors(directory, PRETRAINED_EXEMPLARS, files[PRETRAINED_EXEMPLARS]), width
        )
    else:
        exemplars = torch.zeros((1, width))  # only its width is read (e.g. the VampPrior's pseudo-inputs)
    weights = _load_tensors(directory, PRETRAINED_WEIGHTS, files[PRETRAINED_WEIGHTS])
    try:
        model = build_vae(config.model, config.prior, exemplars, image_shape, meta["binary"], config=config)
    except ExemplarVAEError as err:
        raise CheckpointError(
            f"{PRETRAINED_CONFIG} in {directory} does not build a model: {_first_line(err)}"
        ) from err
    has_set = model.prior.exemplar_set() is not None
    if has_set != (PRETRAINED_EXEMPLARS in files):
        raise CheckpointError(
            f"{PRETRAINED_CONFIG} in {directory} lists {PRETRAINED_EXEMPLARS}, but the "
            f"'{config.prior.name}' prior has no exemplar set"
            if not has_set
            else f"{PRETRAINED_CONFIG} in {directory} does not list {PRETRAINED_EXEMPLARS}, which the "
            f"'{config.prior.name}' prior needs (its exemplar set)"
        )
    _check_weights(weights, model.state_dict())
    model.load_state_dict(weights, strict=True)
    model.to(dev)
    model.eval()
    model.prior.refresh(model.encoder)
    return model
