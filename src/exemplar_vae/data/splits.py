"""Train/validation/test splits: fixed and seeded splits, the binary or 8-bit choice, train-size limits.

MNIST and Fashion-MNIST follow the Exemplar VAE paper's protocol: of the 60,000 training images the
first 50,000 are the training set (the exemplars) and the last 10,000 the validation set
(:func:`validation_size`); the 10,000 test images are the test set. Datasets without a fixed split
(digits, ``.npz`` files, image folders) are split by a seeded permutation (:func:`seeded_split`,
:func:`random_split_indices`, seed ``SPLIT_SEED``).

Binary data (:func:`binary_splits`) has its validation and test images binarised once with fixed
seeds (``VAL_BINARIZE_SEED``, ``TEST_BINARIZE_SEED``; their grey values are kept as ``val_grey`` /
``test_grey``, e.g. for kNN probes); training images are binarised dynamically per batch. 8-bit data
(:func:`eight_bit_splits`) keeps its values k/255 everywhere.

``binarize`` (``DataConfig.binarize``, applied by :func:`set_binarization`) overrides a dataset's
default: None keeps it (binary for MNIST, Fashion-MNIST, digits, Omniglot, .npz files and image
folders; 8-bit for CelebA); False models the data as 8-bit values (val/test keep their grey values,
checked to be multiples of 1/255); True binarises (val/test once, with the fixed seeds).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data.datasets import DataSplits, check_8bit, fixed_binarize
from exemplar_vae.data.store import as_tensor
from exemplar_vae.errors import ConfigError, DataError

__all__ = [
    "PAPER_TRAIN_IMAGES",
    "PAPER_VAL_IMAGES",
    "SPLIT_SEED",
    "TEST_BINARIZE_SEED",
    "VAL_BINARIZE_SEED",
    "Pair",
    "binary_splits",
    "eight_bit_splits",
    "random_split_indices",
    "seeded_split",
    "set_binarization",
    "take_train",
    "validation_size",
]

logger = logging.getLogger(__name__)

VAL_BINARIZE_SEED = 777  # the seed of the paper's code
TEST_BINARIZE_SEED = 778
SPLIT_SEED = 0  # permutation seed for datasets without a fixed split (digits, .npz)
PAPER_TRAIN_IMAGES = 60_000
PAPER_VAL_IMAGES = 10_000

Pair = tuple[Tensor, Tensor]  # (x [N, D], y [N])


# --------------------------------------------------------------------------- fixed and seeded splits


def validation_size(num_train_images: int) -> int:
    """How many of the training file's images become the validation set.

    The paper's fixed split holds out the last 10,000 of MNIST's 60,000 training images; any other
    count (e.g. a small test fixture) holds out the last sixth.

    Args:
        num_train_images: images in the training file.

    Returns:
        The size of the validation split.
    """
    if num_train_images == PAPER_TRAIN_IMAGES:
        return PAPER_VAL_IMAGES
    return num_train_images // 6


def random_split_indices(n: int, n_val: int, n_test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Splits ``range(n)`` at random into disjoint train, validation and test indices.

    Which example goes where is random (a seeded permutation); within each split the indices are
    sorted, so every split keeps the original order of the data.

    Args:
        n: number of examples.
        n_val: size of the validation split.
        n_test: size of the test split.
        seed: seed of the permutation (numpy ``RandomState``).

    Returns:
        (train [n - n_val - n_test], val [n_val], test [n_test]) int64 index tensors.
    """
    if min(n_val, n_test) < 0 or n_val + n_test > n:
        raise DataError(f"cannot split {n} examples into {n_val} validation and {n_test} test examples")
    perm = torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(torch.int64)
    n_train = n - n_val - n_test
    parts = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    train, val, test = (part.sort().values for part in parts)
    return train, val, test


def seeded_split(
    x: Tensor, y: Tensor, what: str, val: Pair | None = None, test: Pair | None = None
) -> tuple[Pair, Pair, Pair]:
    """Draws the validation and test splits that are not given from ``x`` (seeded, 10% each).

    Args:
        x: [N, D] examples.
        y: [N] labels.
        what: names ``x`` in the error message, e.g. "data.npz: x".
        val: the given validation (x, y), or None to draw it.
        test: the given test (x, y), or None to draw it.

    Returns:
        (train, val, test) (x, y) pairs; drawn splits keep the order of ``x``
        (:func:`random_split_indices` with ``SPLIT_SEED``).

    Raises:
        DataError: too few examples to leave at least one in each drawn split and in training.
    """
    n, n_held = len(x), max(1, len(x) // 10)
    n_val, n_test = (0 if val else n_held), (0 if test else n_held)
    if n < 1 + n_val + n_test:
        raise DataError(
            f"{what} holds {n} examples; needs at least {1 + n_val + n_test} "
            "(at least one each for train, validation and test)"
        )
    train_idx, val_idx, test_idx = random_split_indices(n, n_val, n_test, seed=SPLIT_SEED)
    return (x[train_idx], y[train_idx]), val or (x[val_idx], y[val_idx]), test or (x[test_idx], y[test_idx])


def take_train(splits: DataSplits, train_size: int | None) -> DataSplits:
    """Keeps the first ``train_size`` training examples (None: all).

    Raises:
        ConfigError: ``train_size`` is not between 1 and the number of training examples.
    """
    if train_size is None or train_size == splits.num_train:  # nothing to drop: no copy
        return splits
    if not 1 <= train_size <= splits.num_train:
        raise ConfigError(
            f"train_size={train_size} is out of range: {splits.name} has {splits.num_train} training "
            f"examples, so train_size must be between 1 and {splits.num_train}"
        )
    return dataclasses.replace(
        splits, train_x=splits.train_x[:train_size].clone(), train_y=splits.train_y[:train_size].clone()
    )


# --------------------------------------------------------------------------- binary or 8-bit


def _assemble_splits(
    name: str, image_shape: tuple[int, int, int], train: Pair, val: Pair, test: Pair, binary: bool
) -> DataSplits:
    """DataSplits from (x, y) pairs; binary data has its validation and test images binarised once."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, val, test
    return DataSplits(
        name=name,
        image_shape=image_shape,
        train_x=train_x,
        train_y=train_y,
        val_x=fixed_binarize(val_x, seed=VAL_BINARIZE_SEED) if binary else val_x,
        val_y=val_y,
        test_x=fixed_binarize(test_x, seed=TEST_BINARIZE_SEED) if binary else test_x,
        test_y=test_y,
        binary=binary,
        val_grey=val_x,
        test_grey=test_x,
    )


def binary_splits(
    name: str, image_shape: tuple[int, int, int], train: Pair, val: Pair, test: Pair
) -> DataSplits:
    """Binary data: validation and test images binarised once (fixed seeds), their grey values kept.

    Args:
        name: the dataset's name.
        image_shape: (C, H, W).
        train, val, test: (x [N, D] float32 grey values in [0, 1], y [N] int64) of each split.
    """
    return _assemble_splits(name, image_shape, train, val, test, binary=True)


def eight_bit_splits(
    name: str, image_shape: tuple[int, int, int], train: Pair, val: Pair, test: Pair
) -> DataSplits:
    """8-bit data: every split keeps its values k/255 (``val_grey``/``test_grey`` are ``val_x``/``test_x``).

    Args:
        name: the dataset's name.
        image_shape: (C, H, W).
        train, val, test: (x [N, D] float32 values k/255, y [N] int64) of each split.
    """
    return _assemble_splits(name, image_shape, train, val, test, binary=False)


def _to_8bit(splits: DataSplits) -> DataSplits:
    """Binary splits -> 8-bit splits of their grey values, checked to be multiples of 1/255."""
    if splits.val_grey is None or splits.test_grey is None:
        raise DataError(
            f"{splits.name}: binarize=False needs the grey validation and test images, which this loader "
            "did not keep"
        )
    parts = {"training": as_tensor(splits.train_x), "validation": splits.val_grey, "test": splits.test_grey}
    for what, x in parts.items():
        check_8bit(x, f"{splits.name}: the {what} images")
    if all(bool(((x == 0) | (x == 1)).all()) for x in parts.values()):
        logger.warning(
            "%s: every pixel is 0 or 1 (binary images) but binarize=False models 8-bit values", splits.name
        )
    train, val, test = _pairs(splits)
    return eight_bit_splits(
        splits.name, splits.image_shape, train, (splits.val_grey, val[1]), (splits.test_grey, test[1])
    )


def _pairs(splits: DataSplits) -> tuple[Pair, Pair, Pair]:
    """((train_x, train_y), (val_x, val_y), (test_x, test_y))."""
    train = (as_tensor(splits.train_x), splits.train_y)
    return train, (splits.val_x, splits.val_y), (splits.test_x, splits.test_y)


def set_binarization(splits: DataSplits, binarize: bool | None) -> DataSplits:
    """Applies ``DataConfig.binarize`` to loaded splits.

    Args:
        splits: as loaded, with the dataset's default (``splits.binary``).
        binarize: None keeps the default; True makes the data binary (validation and test binarised
            once with the fixed seeds, grey values kept); False makes it 8-bit (validation and test
            become their grey values, which must all be multiples of 1/255, as must the training set).

    Returns:
        The splits, converted when ``binarize`` differs from ``splits.binary``.

    Raises:
        DataError: binarize=False on data that is not 8-bit (e.g. digits' 0..16 levels, Omniglot's
            grey values) or without kept grey values.
    """
    if binarize is None or binarize == splits.binary:
        return splits
    if not binarize:
        return _to_8bit(splits)
    return binary_splits(splits.name, splits.image_shape, *_pairs(splits))
