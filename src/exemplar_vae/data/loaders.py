"""The loaders of the named datasets and of image folders: files -> :class:`DataSplits`.

Each loader finds its files (:mod:`~exemplar_vae.data.paths`), reads them with the format's reader
(:mod:`~exemplar_vae.data.formats`, :mod:`~exemplar_vae.data.omniglot`,
:mod:`~exemplar_vae.data.celeba`, :mod:`~exemplar_vae.data.images`) and splits them
(:mod:`~exemplar_vae.data.splits`). Pixels are scaled to [0, 1].

- MNIST and Fashion-MNIST: the paper's fixed 50,000 / 10,000 split of the training file, the test
  file as the test set; binary.
- digits (scikit-learn's 8x8 digits): a seeded 1,197 / 300 / 300 split; binary.
- Omniglot (IWAE's ``chardata.mat``): 23,000 / 1,345 by IWAE's seeded permutation, 8,070 test
  images; binary.
- CelebA: 64x64 RGB faces with values k/255, the official 162,770 / 19,867 / 19,962 split, nothing
  binarised (``binary=False``).
- image folders: a seeded 80/10/10 split; binary.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data.celeba import FacePreprocessing, read_celeba
from exemplar_vae.data.datasets import DataSplits
from exemplar_vae.data.formats import find_file, read_idx
from exemplar_vae.data.images import read_image_folder
from exemplar_vae.data.omniglot import omniglot_split, read_chardata
from exemplar_vae.data.paths import IDX_SOURCES, celeba_root, omniglot_file, resolve_idx_files
from exemplar_vae.data.splits import (
    SPLIT_SEED,
    Pair,
    binary_splits,
    eight_bit_splits,
    random_split_indices,
    seeded_split,
    take_train,
    validation_size,
)
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.optional import require

__all__ = [
    "load_celeba",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_omniglot",
]

logger = logging.getLogger(__name__)

MNIST_IMAGE_SIZE = 28
MNIST_CLASSES = 10  # MNIST and Fashion-MNIST labels are 0..9


def _to_unit_tensor(images: np.ndarray) -> Tensor:
    """[N, ...] uint8 -> [N, D] float32 in [0, 1]."""
    flat = torch.from_numpy(images.reshape(images.shape[0], -1))  # [N, D]
    return flat.to(torch.float32).div_(255.0)


# --------------------------------------------------------------------------- MNIST-type datasets


def _read_images(path: Path) -> np.ndarray:
    """Reads [N, 28, 28] uint8 images from an IDX file."""
    images = read_idx(path)
    expected = (MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != expected:
        raise DataError(
            f"{path}: expected uint8 images of shape [N, 28, 28], got {images.dtype} of shape {images.shape}"
        )
    return images


def _read_labels(path: Path, images_path: Path, num_images: int) -> np.ndarray:
    """Reads [N] integer labels from an IDX file; checks there is one per image, each a class 0..9."""
    labels = read_idx(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected a 1-D array of integer labels, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != num_images:
        raise DataError(f"{images_path} holds {num_images} images but {path} holds {labels.shape[0]} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= MNIST_CLASSES))
    if bad.size:
        raise DataError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is not a class 0..{MNIST_CLASSES - 1} "
            f"({bad.size} labels out of range); the file is damaged or not an MNIST-type label file"
        )
    return labels


def _check_present_files(name: str, data_dir: Path | None) -> None:
    """When ``data_dir`` holds some of the four files but not all, reads the ones it holds, so a broken
    file is named as broken (rather than the folder reported as lacking data files)."""
    if data_dir is None:
        return
    stems = [file_name.removesuffix(".gz") for file_name, _ in IDX_SOURCES[name].files.values()]
    present = [path for stem in stems if (path := find_file(data_dir, stem)) is not None]
    if 0 < len(present) < len(stems):
        for path in present:
            read_idx(path)  # DataError naming the file when it is broken


def _labels_tensor(labels: np.ndarray) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def _load_idx_dataset(name: str, data_dir: Path | None, download: bool, train_size: int | None) -> DataSplits:
    _check_present_files(name, data_dir)
    paths = resolve_idx_files(name, data_dir, download)
    train_images = _read_images(paths["train_images"])
    train_labels = _read_labels(paths["train_labels"], paths["train_images"], len(train_images))
    test_images = _read_images(paths["test_images"])
    test_labels = _read_labels(paths["test_labels"], paths["test_images"], len(test_images))
    n_val = validation_size(len(train_images))
    n_train = len(train_images) - n_val
    if n_val < 1 or len(test_images) < 1:
        raise DataError(
            f"{name}: {paths['train_images']} holds {len(train_images)} images and {paths['test_images']} "
            f"{len(test_images)}; need at least 6 training and 1 test image"
        )
    x = _to_unit_tensor(train_images)  # [60000, 784]
    y = _labels_tensor(train_labels)
    train = (x[:n_train].clone(), y[:n_train].clone())
    val = (x[n_train:].clone(), y[n_train:].clone())
    test = (_to_unit_tensor(test_images), _labels_tensor(test_labels))  # [10000, 784]
    splits = binary_splits(name, (1, MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE), train, val, test)
    return take_train(splits, train_size)


def load_mnist(
    data_dir: Path | None = None, download: bool = True, *, train_size: int | None = None
) -> DataSplits:
    """MNIST: 50,000 train / 10,000 validation / 10,000 test, 1x28x28, binary.

    Args:
        data_dir: folder with the four IDX files (None: the default search path).
        download: whether to download missing files.
        train_size: keep only the first N training images (None: all).
    """
    return _load_idx_dataset("mnist", data_dir, download, train_size)


def load_fashion_mnist(
    data_dir: Path | None = None, download: bool = True, *, train_size: int | None = None
) -> DataSplits:
    """Fashion-MNIST: 50,000 train / 10,000 validation / 10,000 test, 1x28x28, binary.

    Args:
        data_dir: folder with the four IDX files (None: the default search path).
        download: whether to download missing files.
        train_size: keep only the first N training images (None: all).
    """
    return _load_idx_dataset("fashion-mnist", data_dir, download, train_size)


# --------------------------------------------------------------------------- digits


def load_digits(
    data_dir: Path | None = None, download: bool = True, *, train_size: int | None = None
) -> DataSplits:
    """scikit-learn's 8x8 digits: 1,197 train / 300 validation / 300 test, 1x8x8, binary.

    A tiny dataset bundled with scikit-learn, for quick runs and tests. Pixel values 0..16 are
    scaled to [0, 1] (so they are not 8-bit values); the split is a fixed seeded permutation.
    ``data_dir`` and ``download`` are ignored; ``train_size`` keeps the first N training images.

    Raises:
        ConfigError: scikit-learn (the ``digits`` extra) is not installed.
    """
    # optional, and lazy: sklearn imports slowly
    sklearn_datasets = require("sklearn.datasets", "digits", "the digits dataset")
    bunch = sklearn_datasets.load_digits()
    x = torch.from_numpy(bunch.data).to(torch.float32).div_(16.0)  # [1797, 64]
    y = torch.from_numpy(bunch.target).to(torch.int64)
    train, val, test = random_split_indices(len(x), 300, 300, seed=SPLIT_SEED)
    splits = binary_splits("digits", (1, 8, 8), (x[train], y[train]), (x[val], y[val]), (x[test], y[test]))
    return take_train(splits, train_size)


# --------------------------------------------------------------------------- Omniglot


def load_omniglot(
    data_dir: Path | None = None, download: bool = True, *, train_size: int | None = None
) -> DataSplits:
    """Omniglot (IWAE's chardata.mat): 23,000 train / 1,345 validation / 8,070 test, 1x28x28, binary.

    The split is IWAE's seeded permutation (see :mod:`~exemplar_vae.data.omniglot`); labels are the
    50 alphabets. The download (when ``chardata.mat`` is found nowhere) is checked structurally only:
    no md5 of the file is published.

    Args:
        data_dir: folder with ``chardata.mat`` (None: the default search path).
        download: whether to download it when missing.
        train_size: keep only the first N (randomly ordered) training images (None: all).

    Raises:
        ConfigError: scipy (the ``omniglot`` extra) is not installed.
    """
    require("scipy.io", "omniglot", "reading Omniglot's chardata.mat")  # before any download
    chardata = read_chardata(omniglot_file(data_dir, download))
    train_idx, val_idx = omniglot_split(len(chardata.train_x))
    x, y = torch.from_numpy(chardata.train_x), torch.from_numpy(chardata.train_y)  # [N, 784], [N]
    train, val = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    test = (torch.from_numpy(chardata.test_x), torch.from_numpy(chardata.test_y))
    return take_train(binary_splits("omniglot", (1, 28, 28), train, val, test), train_size)


# --------------------------------------------------------------------------- CelebA


def load_celeba(
    data_dir: Path | None = None,
    download: bool = True,
    *,
    train_size: int | None = None,
    eval_size: int | None = None,
    preprocessing: FacePreprocessing | None = None,
) -> DataSplits:
    """CelebA: 162,770 train / 19,867 validation / 19,962 test faces, 3x64x64, 8-bit (``binary=False``).

    Centre crop 140, resize to 64 (bilinear), RGB; values k/255 as float32. Decoded pixels are
    cached beside the data (see :mod:`~exemplar_vae.data.celeba`). Memory: the full training set as
    float32 is 162,770 x 12,288 x 4 bytes = 8 GB (plus 2 GB for the uint8 array while converting);
    use ``train_size`` (and ``eval_size``) to load fewer images. The limits apply before decoding:
    only the first images of each split in the partition file are read, so a folder holding just
    those works. CelebA has no class labels here (all -1). It cannot be downloaded automatically;
    ``download`` is ignored.

    Args:
        data_dir: folder with ``img_align_celeba/`` and ``list_eval_partition.txt`` (None: the
            default search path).
        download: ignored.
        train_size: keep only the first N training images (None: all).
        eval_size: keep only the first N validation and the first N test images (None: all).
        preprocessing: crop, size and resample filter (None: 140, 64, "bilinear").

    Raises:
        DataError: files missing (the message says where to put them), a malformed partition file,
            a listed image missing or unreadable.
        ConfigError: ``train_size`` or ``eval_size`` below 1, or ``train_size`` above the number of
            training images.
    """
    if eval_size is not None and eval_size < 1:
        raise ConfigError(f"eval_size={eval_size} is out of range: it must be at least 1")
    prep = preprocessing or FacePreprocessing()
    faces = read_celeba(celeba_root(data_dir), prep, train_size=train_size, eval_size=eval_size)
    pairs = {split: _face_pair(array) for split, array in faces.items()}
    splits = eight_bit_splits(
        "celeba", (3, prep.size, prep.size), pairs["train"], pairs["val"], pairs["test"]
    )
    return take_train(splits, train_size)


def _face_pair(faces: np.ndarray) -> Pair:
    """[N, 3, S, S] uint8 -> (x [N, 3*S*S] float32 k/255, y [N] all -1)."""
    return _to_unit_tensor(faces), torch.full((len(faces),), -1, dtype=torch.int64)


# --------------------------------------------------------------------------- image folders


def load_image_folder(path: str | Path) -> DataSplits:
    """A dataset from a folder of images (PNG, JPEG, ...; see :mod:`~exemplar_vae.data.images`).

    ``folder/*.png`` gives unlabelled images (label -1); ``folder/<class>/*.png`` labels each
    image by its class's index among the sorted class names. All images must have the same size;
    grey images give C = 1, and if any image is colour all become RGB (C = 3). The split is the
    seeded 80/10/10 split of :func:`~exemplar_vae.data.npz.load_npz`. The data is binary by default
    (grey values are Bernoulli probabilities; images whose pixels are all 0 or 255 are binary
    already); ``load_dataset(..., binarize=False)`` models it as 8-bit values instead.

    Args:
        path: the folder.

    Returns:
        The splits; ``name`` is the folder's name.

    Raises:
        DataError: no images, images and class folders mixed, an unreadable image, images of
            different sizes, an unsupported (16-bit, float) mode, or fewer than 3 images.
    """
    folder = Path(path).expanduser()
    images = read_image_folder(folder)
    _, channels, height, width = images.images.shape
    x, y = _to_unit_tensor(images.images), torch.from_numpy(images.labels)  # [N, C*H*W], [N]
    if bool(((images.images == 0) | (images.images == 255)).all()):
        logger.info("%s: every pixel is 0 or 255: binary images", folder)
    train, val, test = seeded_split(x, y, f"{folder}: the folder")
    return binary_splits(folder.resolve().name, (channels, height, width), train, val, test)
