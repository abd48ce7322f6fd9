"""Datasets stored in ``.npz`` files: reading and checking the arrays, and loading them as splits.

:func:`load_npz` is what ``load_dataset("data.npz")`` uses; :func:`read_npz` and :func:`npz_images`
are the checked reader underneath it, for code that needs the raw arrays (e.g. an augmented set's
``source_index``).
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data.datasets import DataSplits
from exemplar_vae.data.splits import Pair, binary_splits, seeded_split
from exemplar_vae.errors import DataError

__all__ = ["load_npz", "npz_images", "read_npz"]

logger = logging.getLogger(__name__)

_NPZ_KEYS = (
    "x",
    "y",
    "x_val",
    "y_val",
    "x_test",
    "y_test",
    "source_index",
)  # source_index: written by augment


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by key; warns about keys :func:`load_npz` does not use.

    Raises:
        DataError: the file is missing, not a readable .npz archive, or has no array ``x``.
    """
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is not an .npz archive (np.load returned a {type(loaded).__name__})")
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not a readable .npz file: {err}") from err
    if "x" not in arrays:
        raise DataError(f"{path} has no array 'x' (found keys: {sorted(arrays)})")
    unknown = sorted(set(arrays) - set(_NPZ_KEYS))
    if unknown:
        logger.warning("%s: ignoring arrays %s (known: %s)", path, unknown, list(_NPZ_KEYS))
    return arrays


def _npz_image_shape(shape: tuple[int, ...], path: Path, key: str) -> tuple[int, int, int]:
    """(C, H, W) for an array of shape [N, D], [N, H, W] or [N, C, H, W] (C in {1, 3})."""
    if len(shape) >= 2 and 0 in shape[1:]:
        raise DataError(f"{path}: {key} has shape {shape}, with an empty image dimension")
    if len(shape) == 2:
        side = math.isqrt(shape[1])
        return (1, side, side) if side * side == shape[1] else (1, 1, shape[1])
    if len(shape) == 3:
        return (1, shape[1], shape[2])
    if len(shape) == 4 and shape[1] in (1, 3):
        return (shape[1], shape[2], shape[3])
    raise DataError(
        f"{path}: {key} has shape {shape}; expected [N, D], [N, H, W] or [N, C, H, W] with C in {{1, 3}} "
        "(channels first)"
    )


def _npz_unit_values(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """uint8 (/255), bool, or float in [0, 1] -> float32 in [0, 1]."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(
            f"{path}: {key} has dtype {array.dtype}; expected uint8 (0..255), bool, or float in [0, 1]"
        )
    if not np.isfinite(array).all():
        raise DataError(f"{path}: {key} contains NaN or inf values")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{path}: {key} has values in [{low}, {high}]; float data must lie in [0, 1] "
            "(save 0..255 pixels as uint8)"
        )
    return array.astype(np.float32)


def npz_images(arrays: Mapping[str, np.ndarray], key: str, path: Path) -> tuple[Tensor, tuple[int, int, int]]:
    """Array ``key`` as [N, D] float32 in [0, 1], and its (C, H, W)."""
    array = arrays[key]
    if array.ndim == 0 or array.shape[0] == 0:
        raise DataError(f"{path}: {key} holds no examples (shape {array.shape}); the dataset is empty")
    image_shape = _npz_image_shape(array.shape, path, key)
    values = _npz_unit_values(array, path, key)
    return torch.from_numpy(values.reshape(len(values), -1)), image_shape  # [N, D]


def _npz_labels(arrays: Mapping[str, np.ndarray], key: str, n: int, path: Path) -> Tensor:
    """Array ``key`` as [n] int64 labels, or all -1 when absent."""
    if key not in arrays:
        return torch.full((n,), -1, dtype=torch.int64)
    labels = arrays[key]
    if labels.shape != (n,):
        raise DataError(f"{path}: {key} has shape {labels.shape}, expected ({n},): one label per example")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key} has dtype {labels.dtype}; labels must be integers")
    return torch.from_numpy(labels.astype(np.int64))


def _npz_given_split(
    arrays: Mapping[str, np.ndarray], split: str, image_shape: tuple[int, int, int], path: Path
) -> Pair | None:
    """The (x, y) of a split stored as ``x_<split>``/``y_<split>``, or None."""
    x_key, y_key = f"x_{split}", f"y_{split}"
    if x_key not in arrays:
        if y_key in arrays:
            raise DataError(f"{path}: has {y_key} but no {x_key}")
        return None
    x, shape = npz_images(arrays, x_key, path)
    if shape != image_shape:
        raise DataError(f"{path}: {x_key} has image shape {shape} but x has {image_shape}")
    return x, _npz_labels(arrays, y_key, len(x), path)


def load_npz(path: str | Path) -> DataSplits:
    """A dataset stored in an ``.npz`` file.

    Keys: ``x`` (required; uint8 0..255, bool, or float in [0, 1]; shape [N, D], [N, H, W] or
    [N, C, H, W] with C in {1, 3}); ``y`` (optional integer labels [N]); ``x_val``/``y_val`` and
    ``x_test``/``y_test`` (optional given splits). A missing validation or test split is drawn from
    ``x`` with a seeded permutation (10% each; 80/10/10 when both are missing); each split keeps the
    file's order. [N, D] data with D a perfect square is treated as square images.

    The data is modelled as Bernoulli (``binary=True``): grey values are treated as Bernoulli
    probabilities, training batches are binarised dynamically, and validation/test sets once.

    Args:
        path: the ``.npz`` file.

    Raises:
        DataError: the file is missing or not an .npz archive, has no ``x``, is empty, has values
            out of range, mismatched label lengths, or too few examples to split (at least 3).
    """
    path = Path(path).expanduser()
    arrays = read_npz(path)
    x, image_shape = npz_images(arrays, "x", path)
    y = _npz_labels(arrays, "y", len(x), path)
    val = _npz_given_split(arrays, "val", image_shape, path)
    test = _npz_given_split(arrays, "test", image_shape, path)
    train, val, test = seeded_split(x, y, f"{path}: x", val, test)
    return binary_splits(path.stem, image_shape, train, val, test)
