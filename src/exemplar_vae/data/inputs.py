"""Data passed from Python: tensors, arrays, Datasets and DataLoaders as splits, and a fingerprint of splits.

:func:`as_splits` turns images held in Python into the :class:`DataSplits` that training uses, exactly
as an ``.npz`` file of the same arrays would load (``load_dataset("data.npz")``): the same checks and
conversion of the values (:func:`~exemplar_vae.data.npz.npz_images`), the same seeded 80/10/10 split
when no validation or test set is given (:func:`~exemplar_vae.data.splits.seeded_split`), binary by
default (:func:`~exemplar_vae.data.splits.binary_splits`), ``binarize`` applied as ``DataConfig.binarize``
is (:func:`~exemplar_vae.data.splits.set_binarization`). Training on ``as_splits(x)`` therefore gives
the same model as training on ``x`` saved to an ``.npz`` file, with the same seed.

:func:`fingerprint` is a SHA-256 of the values of splits, which a run folder records (``data.json``) so
that a trained run is never reloaded with other data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from exemplar_vae.data.datasets import DataSplits
from exemplar_vae.data.npz import npz_images
from exemplar_vae.data.splits import (
    SPLIT_SEED,
    Pair,
    binary_splits,
    random_split_indices,
    seeded_split,
    set_binarization,
)
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import DataError

__all__ = ["DataInput", "as_splits", "fingerprint"]

logger = logging.getLogger(__name__)

DataInput: TypeAlias = DataSplits | Tensor | np.ndarray | Dataset[Any] | DataLoader[Any] | tuple[Any, Any]
"""What :func:`as_splits` accepts (and ``pipeline.train`` / ``runs.load_run`` as ``data``)."""

_CHANNELS = (1, 3, 4)  # channel counts recognised in [N, C, H, W] / [N, H, W, C] without image_shape
_PLURAL = {"item": "items", "batch": "batches"}
_FORMS = "a DataSplits, a torch Tensor, a NumPy array, an (x, y) tuple, a torch Dataset or a DataLoader"
_HASH_BLOCK_ELEMENTS = 1 << 22  # values per hashed block (16 MB of float32); fixed: part of the fingerprint
FINGERPRINT_VERSION = 1


# --------------------------------------------------------------------------- reading the inputs


def _numpy(value: Any) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the CPU; bfloat16 widened to float32) or an array-like."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.to(torch.float32)
        return value.numpy()
    return np.asarray(value)


def _item_parts(item: Any, what: str, kind: str, i: int) -> tuple[Any, Any]:
    """(x, y) of a Dataset item or a DataLoader batch that is ``x`` or ``(x, y)``; y is None for ``x``."""
    if isinstance(item, (tuple, list)):
        if len(item) == 2:
            return item[0], item[1]
        if len(item) == 1:
            return item[0], None
        raise DataError(f"{what}: {kind} {i} holds {len(item)} values; {_PLURAL[kind]} must be x or (x, y)")
    if isinstance(item, dict):
        raise DataError(
            f"{what}: {kind} {i} is a dict (keys {sorted(item)}); {_PLURAL[kind]} must be x or (x, y)"
        )
    return item, None


def _label_value(y: Any, what: str, i: int) -> int:
    """One example's label (an int, a NumPy integer, or a one-value integer tensor/array)."""
    a = _numpy(y)
    if a.size != 1 or a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise DataError(
            f"{what}: item {i} has label {y!r} (dtype {a.dtype}, shape {a.shape}); a label must be one "
            "integer (a class index, or -1 for unlabelled)"
        )
    return int(a.reshape(()))


def _check_same(a: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, what: str, kind: str, i: int) -> None:
    if a.shape != shape:
        raise DataError(
            f"{what}: {kind} {i} has shape {a.shape} but {kind} 0 has shape {shape}; every example "
            "must have the same shape"
        )
    if a.dtype != dtype:
        raise DataError(f"{what}: {kind} {i} has dtype {a.dtype} but {kind} 0 has dtype {dtype}")


def _read_items(items: Iterable[Any], size: int | None, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Stacks Dataset items ``x`` or ``(x, y)``: ([N, ...] examples, [N] labels or None)."""
    out: np.ndarray | None = None
    stacked: list[np.ndarray] = []
    labels: list[int] = []
    shape: tuple[int, ...] = ()
    dtype = np.dtype(np.float32)
    with_labels: bool | None = None
    count = 0
    for i, item in enumerate(items):
        x, y = _item_parts(item, what, "item", i)
        if with_labels is None:
            with_labels = y is not None
        elif with_labels != (y is not None):
            raise DataError(
                f"{what}: item {i} is {'(x, y)' if y is not None else 'x alone'} but item 0 is "
                f"{'(x, y)' if with_labels else 'x alone'}; every item must have the same form"
            )
        a = _numpy(x)
        if i == 0:
            shape, dtype = a.shape, a.dtype
            if size is not None:  # a map-style Dataset: one array, filled in place
                out = np.empty((size, *shape), dtype=dtype)
        else:
            _check_same(a, shape, dtype, what, "item", i)
        if out is not None:
            if i >= len(out):
                raise DataError(f"{what}: the Dataset yields more than the {len(out)} items its len() says")
            out[i] = a
        else:
            stacked.append(a)
        if y is not None:
            labels.append(_label_value(y, what, i))
        count = i + 1
    if count == 0:
        raise DataError(f"{what} holds no examples; the dataset is empty")
    if out is not None:
        x_all = out[:count]
    else:
        x_all = np.stack(stacked)
    return x_all, (np.asarray(labels, dtype=np.int64) if with_labels else None)


def _dataset_items(dataset: Dataset[Any]) -> tuple[Iterable[Any], int | None]:
    """The items of a Dataset, and its length when it has one (map-style) else None (iterable)."""
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return iter(dataset), None  # type: ignore[call-overload]

    def items() -> Iterator[Any]:
        for i in range(size):
            yield dataset[i]

    return items(), size


def _read_loader(loader: DataLoader[Any], what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Concatenates one pass of a DataLoader whose batches are ``x`` or ``(x, y)``."""
    sampler = getattr(loader, "batch_sampler", None)
    if isinstance(loader.sampler, RandomSampler) or isinstance(
        getattr(sampler, "sampler", None), RandomSampler
    ):
        logger.warning(
            "%s: the DataLoader shuffles; its examples are taken in the order of one pass, so the "
            "validation and test splits drawn from them change from pass to pass",
            what,
        )
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    shape: tuple[int, ...] = ()
    dtype = np.dtype(np.float32)
    with_labels: bool | None = None
    for b, batch in enumerate(loader):
        x, y = _item_parts(batch, what, "batch", b)
        a = _numpy(x)
        if a.ndim == 0:
            raise DataError(f"{what}: batch {b} is a scalar; batches must be [B, ...] examples or (x, y)")
        if b == 0:
            shape, dtype, with_labels = a.shape[1:], a.dtype, y is not None
        else:
            if a.shape[1:] != shape:
                raise DataError(
                    f"{what}: batch {b} holds examples of shape {a.shape[1:]} but batch 0 holds {shape}; "
                    "every example must have the same shape"
                )
            if a.dtype != dtype:
                raise DataError(f"{what}: batch {b} has dtype {a.dtype} but batch 0 has dtype {dtype}")
            if with_labels != (y is not None):
                raise DataError(f"{what}: batch {b} and batch 0 differ in form (x alone vs (x, y))")
        if y is not None:
            labels = _numpy(y)
            if labels.shape != (len(a),):
                raise DataError(
                    f"{what}: batch {b} has labels of shape {labels.shape} for {len(a)} examples; "
                    "expected one label per example"
                )
            ys.append(labels)
        xs.append(a)
    if not xs:
        raise DataError(f"{what}: the DataLoader yields no batches; the data is empty")
    return np.concatenate(xs), (np.concatenate(ys) if with_labels else None)


def _read(data: Any, what: str) -> tuple[np.ndarray, Any]:
    """([N, ...] examples as an array, their labels or None) of any accepted form but DataSplits."""
    if isinstance(data, (Tensor, np.ndarray)):
        return _numpy(data), None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (Tensor, np.ndarray)):
        return _numpy(data[0]), data[1]
    # a Dataset's or a DataLoader's reads must not move the caller's random state (e.g. a loader's seed)
    with torch.random.fork_rng(devices=[]):
        if isinstance(data, DataLoader):
            return _read_loader(data, what)
        if isinstance(data, TensorDataset):
            tensors = data.tensors
            if len(tensors) not in (1, 2):
                raise DataError(f"{what}: a TensorDataset of {len(tensors)} tensors; expected (x,) or (x, y)")
            return _numpy(tensors[0]), (tensors[1] if len(tensors) == 2 else None)
        if isinstance(data, Dataset):
            items, size = _dataset_items(data)
            return _read_items(items, size, what)
    if isinstance(data, DataSplits):
        raise DataError(f"{what}: a DataSplits can only be passed as the data itself, not as {what}")
    raise DataError(f"{what} must be {_FORMS}, got {type(data).__name__}")


# --------------------------------------------------------------------------- shapes, values, labels


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    values = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else ()
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise DataError(f"image_shape must be (C, H, W), three positive integers, got {image_shape!r}")
    c, h, w = (int(v) for v in values)
    return c, h, w


def _layout(
    shape: tuple[int, ...], image_shape: tuple[int, int, int] | None, what: str, source: str
) -> tuple[tuple[int, int, int], bool]:
    """((C, H, W), whether the array is [N, H, W, C]) of an array of ``shape``.

    ``image_shape``, when known (given, or ``source`` = the data's for a validation/test set), must
    match; it also settles [N, D] with D not a square and [N, C, H, W] vs [N, H, W, C].
    """
    rest = shape[1:]
    expected = "images as [N, D], [N, H, W], [N, C, H, W] or [N, H, W, C]"
    if len(shape) < 2 or len(shape) > 4:
        raise DataError(f"{what}: x has shape {shape}; expected {expected}")
    if 0 in rest:
        raise DataError(f"{what}: x has shape {shape}, with an empty image dimension")
    if len(rest) == 1:
        dim = rest[0]
        if image_shape is not None:
            if math.prod(image_shape) != dim:
                raise DataError(
                    f"{what}: x has {dim} values per example, but {source} {image_shape} has "
                    f"{math.prod(image_shape)}"
                )
            return image_shape, False
        side = math.isqrt(dim)
        if side * side != dim:
            raise DataError(
                f"{what}: x has shape {shape}, flat rows of D={dim} values, which is not a square image; "
                f"pass image_shape=(C, H, W) with C * H * W = {dim}"
            )
        return (1, side, side), False
    if len(rest) == 2:
        found = (1, rest[0], rest[1])
        if image_shape is not None and image_shape != found:
            raise DataError(f"{what}: x holds images of shape {found}, but {source} is {image_shape}")
        return found, False
    if image_shape is not None:
        c, h, w = image_shape
        if rest == (c, h, w):
            return image_shape, False
        if rest == (h, w, c):
            return image_shape, True
        raise DataError(
            f"{what}: x has shape {shape}, neither [N, C, H, W] nor [N, H, W, C] for {source} {image_shape}"
        )
    if rest[2] in _CHANNELS and rest[0] not in _CHANNELS:
        return (rest[2], rest[0], rest[1]), True
    if rest[0] in _CHANNELS:
        return (rest[0], rest[1], rest[2]), False
    raise DataError(
        f"{what}: x has shape {shape}; expected [N, C, H, W] or [N, H, W, C] with C in {{1, 3, 4}} "
        "(pass image_shape=(C, H, W) for another number of channels)"
    )


def _labels(labels: Any, n: int, what: str) -> Tensor:
    """[n] int64 labels: integers, each a class index >= 0 or -1 (unlabelled)."""
    a = _numpy(labels)
    if a.shape != (n,):
        raise DataError(f"{what} has shape {a.shape}, expected ({n},): one label per example")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{what} has dtype {a.dtype}; labels must be integers (class indices, -1 for none)")
    low = int(a.min())
    if low < -1:
        raise DataError(
            f"{what} holds the label {low}; labels must be class indices >= 0, or -1 for unlabelled"
        )
    return torch.from_numpy(a.astype(np.int64))


def _examples(
    data: Any, what: str, labels: Any, image_shape: tuple[int, int, int] | None, source: str
) -> tuple[Pair, tuple[int, int, int]]:
    """((x [N, D] float32 in [0, 1], y [N] int64), (C, H, W)) of one of the accepted forms."""
    array, found_labels = _read(data, what)
    if labels is not None and found_labels is not None:
        raise DataError(f"{what} carries its own labels ((x, y) items) and labels= is given too; pass one")
    if array.dtype == np.object_:
        raise DataError(f"{what}: x is an array of Python objects; examples of different shapes?")
    if array.ndim >= 1 and array.shape[0] == 0:
        raise DataError(f"{what} holds no examples (shape {array.shape}); the data is empty")
    if array.dtype != np.uint8 and array.dtype != np.bool_ and np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{what}: x has dtype {array.dtype}; integer pixels must be uint8 (0..255): convert with "
            ".astype(np.uint8) or .to(torch.uint8), or pass floats in [0, 1]"
        )
    shape, channels_last = _layout(array.shape, image_shape, what, source)
    if channels_last:
        array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))  # [N, C, H, W]
    n = len(array)
    x, _ = npz_images({"x": array.reshape(n, -1)}, "x", Path(what))  # the .npz loader's checks and values
    if labels is not None:
        y = _labels(labels, n, "labels")
    elif found_labels is not None:
        y = _labels(found_labels, n, f"{what}: y")
    else:
        y = torch.full((n,), -1, dtype=torch.int64)
    return (x, y), shape


def _split(x: Tensor, y: Tensor, val: Pair | None, test: Pair | None, seed: int) -> tuple[Pair, Pair, Pair]:
    """The .npz loader's split: missing validation/test sets drawn from ``x`` (10% each), seeded."""
    if seed == SPLIT_SEED:
        return seeded_split(x, y, "data: x", val, test)
    index = torch.arange(len(x))  # the split's sizes and checks, then the same draw with another seed
    _, drawn_val, drawn_test = seeded_split(index, index, "data: x", val, test)
    n_val = 0 if val is not None else len(drawn_val[0])
    n_test = 0 if test is not None else len(drawn_test[0])
    train_i, val_i, test_i = random_split_indices(len(x), n_val, n_test, seed=seed)
    return (x[train_i], y[train_i]), val or (x[val_i], y[val_i]), test or (x[test_i], y[test_i])


def as_splits(
    data: DataInput,
    *,
    labels: Any = None,
    val: Any = None,
    test: Any = None,
    image_shape: tuple[int, int, int] | None = None,
    binarize: bool | None = None,
    name: str = "python",
    seed: int = SPLIT_SEED,
) -> DataSplits:
    """Images held in Python as train/validation/test splits, as an ``.npz`` file of them would load.

    Args:
        data: a ``DataSplits`` (returned as it is, with ``binarize`` applied), a torch Tensor, a NumPy
            array, an ``(x, y)`` tuple of them, a torch ``Dataset`` whose items are ``x`` or ``(x, y)``
            (a ``TensorDataset`` of (x,) or (x, y)), or a ``DataLoader`` (one pass; batches ``x`` or
            ``(x, y)``). Images are [N, C, H, W], [N, H, W, C] (4-D with the last dimension in {1, 3, 4}
            and dimension 1 not), [N, H, W], or flat [N, D] (D a square: (1, H, H); else give
            ``image_shape``); values uint8 (k/255), bool, or float in [0, 1] (float16/64 become float32).
        labels: [N] integer labels of ``data`` (class indices, -1 for unlabelled); else the labels of
            (x, y) items, else -1.
        val: the validation set, in any of the forms of ``data`` (not a DataSplits); None: 10% of
            ``data``, drawn with a seeded permutation (the ``.npz`` loader's split).
        test: the test set, likewise.
        image_shape: (C, H, W) of one example: needed for flat rows of a non-square D; settles
            [N, C, H, W] vs [N, H, W, C]; checked against the data otherwise.
        binarize: None: binary (Bernoulli, dynamic binarisation, as for ``.npz`` files); True: binary;
            False: 8-bit values k/255 (checked), as ``DataConfig.binarize``.
        name: the dataset's name in the splits (logs, results).
        seed: the permutation seed of the drawn validation/test sets; the default (``SPLIT_SEED``) draws
            exactly what the ``.npz`` loader draws.

    Returns:
        The splits; each split keeps the order of the data.

    Raises:
        DataError: one line naming what is wrong: an unsupported form, shape or dtype (integers other
            than uint8), values outside [0, 1] or NaN, empty data, labels of the wrong length, type or
            value (negative other than -1), Dataset items of different shapes, too few examples to split.
    """
    if isinstance(data, DataSplits):
        given = [k for k, v in {"labels": labels, "val": val, "test": test, "image_shape": image_shape}.items()
                 if v is not None]  # fmt: skip
        if given:
            raise DataError(f"{', '.join(given)} cannot be combined with a DataSplits, which has its own")
        return set_binarization(data, binarize)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    wanted = _check_image_shape(image_shape) if image_shape is not None else None
    (x, y), shape = _examples(data, "data", labels, wanted, "image_shape")
    held: dict[str, Pair] = {}
    for split, part in (("val", val), ("test", test)):
        if part is not None:
            source = "image_shape" if wanted is not None else "the data's image shape"
            held[split], _ = _examples(part, split, None, shape, source)
    train, val_pair, test_pair = _split(x, y, held.get("val"), held.get("test"), seed)
    return set_binarization(binary_splits(name, shape, train, val_pair, test_pair), binarize)


# --------------------------------------------------------------------------- fingerprint


def _hash_blocks(h: Any, blocks: Iterable[Tensor]) -> None:
    """Each [b, D] block as uint8 codes (tag ``u``) when every value is exactly k/255, else float32 (``f``)."""
    for block in blocks:
        if block.dtype == torch.uint8:  # a compact store's codes: k/255 by construction
            h.update(b"u")
            h.update(block.cpu().contiguous().numpy())
            continue
        values = block.detach().to(device="cpu", dtype=torch.float32).contiguous()
        codes = torch.round(values * 255.0).clamp_(0, 255).to(torch.uint8)
        back = codes.to(torch.float32).div_(255.0)
        if torch.equal(back.view(torch.int32), values.view(torch.int32)):
            h.update(b"u")
            h.update(codes.numpy())
        else:
            h.update(b"f")
            h.update(values.numpy())


def _row_blocks(x: Tensor | ExemplarStore) -> Iterator[Tensor]:
    """[b, D] blocks of rows, b fixed by D; a compact store yields its uint8 codes, not decoded."""
    n, dim = int(x.shape[0]), int(x.shape[1])
    step = max(1, _HASH_BLOCK_ELEMENTS // max(dim, 1))
    backing = x.backing if isinstance(x, ExemplarStore) and x.compact else None
    for start in range(0, n, step):
        stop = min(n, start + step)
        if backing is None:
            yield x.rows(start, stop) if isinstance(x, ExemplarStore) else x[start:stop]
        elif isinstance(backing, Tensor):
            yield backing[start:stop]
        else:
            yield torch.from_numpy(np.array(backing[start:stop]))  # a memory map: read one block


def _hash_part(h: Any, tag: str, x: Tensor | ExemplarStore) -> None:
    h.update(f"|{tag}:{int(x.shape[0])}x{int(x.shape[1])}|".encode())
    _hash_blocks(h, _row_blocks(x))


def _hash_labels(h: Any, tag: str, y: Tensor) -> None:
    h.update(f"|{tag}:{int(y.shape[0])}|".encode())
    h.update(y.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy())


def fingerprint(splits: DataSplits) -> str:
    """A SHA-256 (hex) of the data: equal for equal data, different when one pixel or label changes.

    Hashed: the image shape and the binary flag; the training, validation and test values (each block
    of rows as uint8 codes when every value is exactly k/255, else as float32 bytes) and labels; the
    grey validation/test images where they differ from ``val_x``/``test_x`` (binary data). Not the name.
    Read in blocks of rows (a compact ``ExemplarStore`` as its codes), so no copy of the data is made:
    an ``ExemplarStore`` and the float tensor it stands for have the same fingerprint.
    """
    h = hashlib.sha256()
    header = {
        "version": FINGERPRINT_VERSION,
        "image_shape": list(splits.image_shape),
        "binary": bool(splits.binary),
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    _hash_part(h, "train_x", splits.train_x)
    _hash_labels(h, "train_y", splits.train_y)
    for split in ("val", "test"):
        x, y, grey = (getattr(splits, f"{split}_{part}") for part in ("x", "y", "grey"))
        _hash_part(h, f"{split}_x", x)
        _hash_labels(h, f"{split}_y", y)
        if grey is not None and grey is not x and not torch.equal(grey, x):
            _hash_part(h, f"{split}_grey", grey)
    return h.hexdigest()
