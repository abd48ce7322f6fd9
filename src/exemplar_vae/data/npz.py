"""Datasets stored in ``.npz`` files: reading and checking the arrays, and loading them as splits.

:func:`load_npz` is what ``load_dataset("data.npz")`` uses; :func:`read_npz` and :func:`npz_images`
are the checked reader underneath it, for code that needs the raw arrays (e.g. an augmented set's
``source_index``).
"""

from __future__ import annotations

import logging
import math
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data.datasets import DataSplits
from exemplar_vae.data.formats import check_memory
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
_NPY_MAGIC = b"\x93NUMPY"
# what reading a damaged archive raises (zipfile, zlib, numpy's .npy parser); RuntimeError: encrypted
_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)


def _npy_header(member: IO[bytes], path: Path, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the ``.npy`` member open in ``member``, from its header only."""
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:  # 2.0 and 3.0 share the layout (a 4-byte header length)
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    except DataError:
        raise
    except (*_READ_ERRORS, SyntaxError, TypeError) as err:
        raise DataError(f"{path}: member {name!r} is not a valid .npy array ({_one_line(err)})") from err
    if dtype.hasobject:
        raise DataError(
            f"{path}: member {name!r} holds Python objects (dtype {dtype}); only plain arrays are read"
        )
    return tuple(int(d) for d in shape), dtype, member.tell()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _read_members(archive: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    """Every ``.npy`` member of ``archive`` by key, each header checked against the member's size and
    all of them against the memory available before any array is allocated."""
    members: dict[str, zipfile.ZipInfo] = {}
    need = 0
    for info in archive.infolist():
        name = info.filename
        if name.endswith("/"):
            continue  # a folder entry
        if not name.endswith(".npy"):
            if name in _NPZ_KEYS:
                raise DataError(
                    f"{path}: member {name!r} is not an .npy array; save the arrays with np.savez"
                )
            logger.warning("%s: ignoring member %r, which is not an .npy array", path, name)
            continue
        with archive.open(info) as member:
            shape, dtype, header_len = _npy_header(member, path, name)
        implied, held = math.prod(shape) * dtype.itemsize, info.file_size - header_len
        if implied > held:
            raise DataError(
                f"{path}: member {name!r} is truncated or corrupt: its header declares shape {shape} of {dtype} "
                f"({implied:,} bytes) but it holds {max(held, 0):,}"
            )
        members[name[: -len(".npy")]] = info
        need += implied + 4 * math.prod(shape)  # the array and its float32 copy
    check_memory(need, f"{path}: its arrays")
    arrays = {}
    for key, info in members.items():
        with archive.open(info) as member:
            arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by key; warns about keys :func:`load_npz` does not use.

    Each member's ``.npy`` header is read first: the size it declares is checked against the member's
    size and, summed over the members, against the memory available, before any array is read. Members
    that are not ``.npy`` arrays are refused when their name is a key :func:`load_npz` reads, and ignored
    with a warning otherwise. A file that is not a regular file (a named pipe) is never opened.

    Raises:
        DataError: the file is missing or not a regular file, not a readable .npz archive (a single
            ``.npy`` array, a damaged zip, a member whose header claims more bytes than it holds, an
            object array), too big for the memory available, or has no array ``x``.
    """
    if not path.is_file():
        if path.exists():
            raise DataError(f"dataset file {path} is not a regular file (a folder, named pipe or device)")
        raise DataError(f"dataset file {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
        if head == _NPY_MAGIC:
            raise DataError(
                f"{path} is not an .npz archive but a single .npy array; save the data with "
                "np.savez(FILE.npz, x=images)"
            )
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path} is not a readable .npz file: not a zip archive of .npy arrays")
        with zipfile.ZipFile(path) as archive:
            arrays = _read_members(archive, path)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path} is not a readable .npz file: {_one_line(err)}") from err
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
    """Array ``key`` as [n] int64 labels (class indices; -1: unlabelled), or all -1 when absent."""
    if key not in arrays:
        return torch.full((n,), -1, dtype=torch.int64)
    labels = arrays[key]
    if labels.shape != (n,):
        raise DataError(f"{path}: {key} has shape {labels.shape}, expected ({n},): one label per example")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key} has dtype {labels.dtype}; labels must be integers")
    if labels.dtype == np.uint64 and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{path}: {key} holds labels above 2**63 - 1; labels are class indices 0, 1, ...")
    labels = labels.astype(np.int64)
    if labels.size and int(labels.min()) < -1:
        raise DataError(
            f"{path}: {key} holds the label {int(labels.min())}; labels are class indices 0, 1, ... "
            "(or -1 for an unlabelled example)"
        )
    return torch.from_numpy(labels)


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
