"""Dataset names -> loaders, and where their files are found.

``load_dataset("fashion-mnist")`` is the entry point. Names: "fashion-mnist" (also "fashion_mnist"),
"mnist", "digits", "omniglot", "celeba" (also "celeb-a", "celeb_a"); a path to an ``.npz`` file
(:func:`load_npz`); or a path to a folder of images (:func:`load_image_folder`). A registered name
wins over a folder of the same name in the working directory (write ``./celeba`` for the folder).
Every loader returns a :class:`~exemplar_vae.data.datasets.DataSplits`.

MNIST and Fashion-MNIST follow the Exemplar VAE paper's protocol: of the 60,000 training images the
first 50,000 are the training set (the exemplars) and the last 10,000 the validation set; the
10,000 test images are the test set. Omniglot (IWAE's ``chardata.mat``, see
:mod:`~exemplar_vae.data.omniglot`) is split 23,000 / 1,345 by IWAE's seeded permutation, with 8,070
test images. Pixels are scaled to [0, 1]; validation and test images are binarised once with fixed
seeds (their grey values are kept as ``val_grey`` / ``test_grey``, e.g. for kNN probes), training
images dynamically per batch.

CelebA (:mod:`~exemplar_vae.data.celeba`) is 8-bit data: 64x64 RGB faces with values k/255, the
official 162,770 / 19,867 / 19,962 split, nothing binarised (``binary=False``).

``binarize`` (``DataConfig.binarize``) overrides a dataset's default: None keeps it (binary for
MNIST, Fashion-MNIST, digits, Omniglot, .npz files and image folders; 8-bit for CelebA); False models
the data as 8-bit values (val/test keep their grey values; :func:`load_dataset` checks they are
multiples of 1/255); True binarises (val/test once, with the fixed seeds).

Files of MNIST, Fashion-MNIST, Omniglot and CelebA are looked up, in order, in:

1. ``data_dir``, when given (and then only there);
2. ``$EXEMPLAR_VAE_DATA/<name>``, when that environment variable is set;
3. system folders: ``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST (the Debian/Ubuntu
   package ``dataset-fashion-mnist``);
4. ``~/.cache/exemplar-vae/<name>``.

If no folder holds all the files they are downloaded (MNIST-type files md5-checked, Omniglot's
``chardata.mat`` checked structurally: no checksum is published) into ``data_dir`` when given, else
into ``$EXEMPLAR_VAE_DATA/<name>`` when set, else into ``~/.cache/exemplar-vae/<name>``. CelebA
cannot be downloaded automatically (it is on Google Drive); the error says where to put it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data.celeba import (
    CELEBA_IMAGE_DIR,
    CELEBA_PARTITION_FILE,
    CELEBA_URL,
    FacePreprocessing,
    has_celeba_files,
    read_celeba,
)
from exemplar_vae.data.datasets import DataSplits, check_8bit, fixed_binarize, random_split_indices
from exemplar_vae.data.formats import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_MIRRORS,
    MNIST_FILES,
    MNIST_MIRRORS,
    download_any,
    find_file,
    read_idx,
)
from exemplar_vae.data.images import read_image_folder
from exemplar_vae.data.omniglot import (
    OMNIGLOT_FILE,
    OMNIGLOT_MD5,
    OMNIGLOT_URLS,
    check_chardata,
    omniglot_split,
    read_chardata,
)
from exemplar_vae.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "IDX_SOURCES",
    "IdxSource",
    "Loader",
    "binary_splits",
    "canonical_name",
    "default_data_dir",
    "eight_bit_splits",
    "load_celeba",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "load_omniglot",
    "set_binarization",
    "take_train",
]

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "EXEMPLAR_VAE_DATA"
VAL_BINARIZE_SEED = 777  # the seed of the paper's code
TEST_BINARIZE_SEED = 778
SPLIT_SEED = 0  # permutation seed for datasets without a fixed split (digits, .npz)
PAPER_TRAIN_IMAGES = 60_000
PAPER_VAL_IMAGES = 10_000
MNIST_IMAGE_SIZE = 28

Pair = tuple[Tensor, Tensor]  # (x [N, D], y [N])


class Loader(Protocol):
    """A registered loader: ``loader(data_dir, download, train_size=None) -> DataSplits``.

    ``train_size`` keeps the first N training examples (ConfigError when out of range); CelebA
    applies it before decoding.
    """

    def __call__(
        self, data_dir: Path | None = None, download: bool = True, *, train_size: int | None = None
    ) -> DataSplits: ...


@dataclass(frozen=True)
class IdxSource:
    """Where the IDX files of an MNIST-type dataset come from.

    Attributes:
        files: role -> (official .gz file name, md5 of that file); roles are train_images,
            train_labels, test_images, test_labels.
        mirrors: base URLs, each followed by a file name, tried in order.
        system_dirs: folders searched before the user cache (e.g. a Debian package's).
        install_hint: a shell command that installs the files, or "".
    """

    files: Mapping[str, tuple[str, str]]
    mirrors: tuple[str, ...]
    system_dirs: tuple[Path, ...] = ()
    install_hint: str = ""


IDX_SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(MNIST_FILES, MNIST_MIRRORS),
    "fashion-mnist": IdxSource(
        FASHION_MNIST_FILES,
        FASHION_MNIST_MIRRORS,
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
        install_hint="apt-get install dataset-fashion-mnist",
    ),
}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "celeb-a": "celeba",
    "celeb_a": "celeba",
}


# --------------------------------------------------------------------------- locating files


def _holds_files(name: str, folder: Path) -> bool:
    """Whether ``folder`` holds every data file of ``name``."""
    if name in IDX_SOURCES:
        return _find_all(folder, IDX_SOURCES[name]) is not None
    return _FILE_CHECKS[name](folder)


def _check_has_files(name: str) -> None:
    if name not in IDX_SOURCES and name not in _FILE_CHECKS:
        names = sorted([*IDX_SOURCES, *_FILE_CHECKS])
        raise ConfigError(f"dataset {name!r} has no data files; datasets with files: {names}")


def _stem(file_name: str) -> str:
    return file_name.removesuffix(".gz")


def _cache_dir(name: str) -> Path:
    return Path.home() / ".cache" / "exemplar-vae" / name


def _env_dir(name: str) -> Path | None:
    root = os.environ.get(DATA_ENV_VAR)
    return Path(root).expanduser() / name if root else None


def _search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    """The folders searched for ``name``'s files, in order (see the module docstring)."""
    if data_dir is not None:
        return [data_dir]
    env = _env_dir(name)
    system_dirs = IDX_SOURCES[name].system_dirs if name in IDX_SOURCES else ()
    return [*([env] if env else []), *system_dirs, _cache_dir(name)]


def _download_dir(name: str, data_dir: Path | None) -> Path:
    return data_dir or _env_dir(name) or _cache_dir(name)


def _find_all(folder: Path, source: IdxSource) -> dict[str, Path] | None:
    """Role -> file for every role, or None if ``folder`` lacks any of them."""
    found = {role: find_file(folder, _stem(file_name)) for role, (file_name, _) in source.files.items()}
    if any(path is None for path in found.values()):
        return None
    return {role: path for role, path in found.items() if path is not None}


_FILE_CHECKS: dict[str, Callable[[Path], bool]] = {  # datasets with files that are not IDX files
    "omniglot": lambda folder: (folder / OMNIGLOT_FILE).is_file(),
    "celeba": has_celeba_files,
}


def _find_folder(name: str, data_dir: Path | None) -> Path | None:
    """The first searched folder that holds all of ``name``'s files, or None."""
    return next((folder for folder in _search_dirs(name, data_dir) if _holds_files(name, folder)), None)


def default_data_dir(name: str) -> Path:
    """The folder ``load_dataset(name)`` reads when no ``data_dir`` is given.

    Args:
        name: "mnist", "fashion-mnist", "omniglot" or "celeba" (or an alias such as "fashion_mnist").

    Returns:
        The first default folder (``$EXEMPLAR_VAE_DATA/<name>``, system folders,
        ``~/.cache/exemplar-vae/<name>``) that holds all the files, else the folder they would be
        downloaded into.

    Raises:
        ConfigError: ``name`` is not a dataset with data files.
    """
    name = canonical_name(name)
    _check_has_files(name)
    return _find_folder(name, None) or _download_dir(name, None)


def _missing_files_error(
    name: str, searched: list[Path], files: str, reason: str, hint: str = ""
) -> DataError:
    """The error for data files found nowhere; ``files`` lists them, ``hint`` is a last suggestion."""
    folders = ", ".join(str(folder) for folder in searched)
    return DataError(
        f"{name}: data files not found in {folders} (expected {files}), and {reason}. "
        f"Pass --data-dir pointing at a folder with these files, or set {DATA_ENV_VAR}{hint}"
    )


def _idx_missing_error(name: str, searched: list[Path], source: IdxSource, reason: str) -> DataError:
    files = ", ".join(f"{_stem(f)}[.gz]" for f, _ in source.files.values())
    hint = f"; or install them with `{source.install_hint}`" if source.install_hint else ""
    return _missing_files_error(name, searched, files, reason, hint)


def _download_missing(folder: Path, source: IdxSource) -> dict[str, Path]:
    """Downloads into ``folder`` each file it lacks; returns role -> file."""
    paths = {}
    for role, (file_name, md5) in source.files.items():
        existing = find_file(folder, _stem(file_name))
        urls = [mirror + file_name for mirror in source.mirrors]
        paths[role] = existing or download_any(urls, folder / file_name, md5)
    return paths


def _resolve_files(name: str, data_dir: Path | None, download: bool) -> dict[str, Path]:
    """Finds (or downloads) the four IDX files of ``name``; returns role -> file."""
    source = IDX_SOURCES[name]
    searched = _search_dirs(name, data_dir)
    for folder in searched:
        found = _find_all(folder, source)
        if found is not None:
            logger.info("%s: reading files from %s", name, folder)
            return found
    if not download:
        raise _idx_missing_error(name, searched, source, "downloading is disabled")
    target = _download_dir(name, data_dir)
    try:
        return _download_missing(target, source)
    except DataError as err:
        raise _idx_missing_error(name, searched, source, f"downloading into {target} failed: {err}") from err


# --------------------------------------------------------------------------- assembling splits


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
    parts = {"training": splits.train_x, "validation": splits.val_grey, "test": splits.test_grey}
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
    return (splits.train_x, splits.train_y), (splits.val_x, splits.val_y), (splits.test_x, splits.test_y)


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
    """Reads [N] integer labels from an IDX file and checks there is one per image."""
    labels = read_idx(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected a 1-D array of integer labels, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != num_images:
        raise DataError(f"{images_path} holds {num_images} images but {path} holds {labels.shape[0]} labels")
    return labels


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


def _to_unit_tensor(images: np.ndarray) -> Tensor:
    """[N, ...] uint8 -> [N, D] float32 in [0, 1]."""
    flat = torch.from_numpy(images.reshape(images.shape[0], -1))  # [N, D]
    return flat.to(torch.float32).div_(255.0)


def _labels_tensor(labels: np.ndarray) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def _load_idx_dataset(name: str, data_dir: Path | None, download: bool, train_size: int | None) -> DataSplits:
    paths = _resolve_files(name, data_dir, download)
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
    """
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: sklearn imports slowly

    bunch = sklearn_digits()
    x = torch.from_numpy(bunch.data).to(torch.float32).div_(16.0)  # [1797, 64]
    y = torch.from_numpy(bunch.target).to(torch.int64)
    train, val, test = random_split_indices(len(x), 300, 300, seed=SPLIT_SEED)
    splits = binary_splits("digits", (1, 8, 8), (x[train], y[train]), (x[val], y[val]), (x[test], y[test]))
    return take_train(splits, train_size)


# --------------------------------------------------------------------------- Omniglot


def _omniglot_file(data_dir: Path | None, download: bool) -> Path:
    """Finds (or downloads, checked structurally) ``chardata.mat``."""
    searched = _search_dirs("omniglot", data_dir)
    folder = _find_folder("omniglot", data_dir)
    if folder is not None:
        logger.info("omniglot: reading %s", folder / OMNIGLOT_FILE)
        return folder / OMNIGLOT_FILE
    if not download:
        raise _missing_files_error("omniglot", searched, OMNIGLOT_FILE, "downloading is disabled")
    target = _download_dir("omniglot", data_dir) / OMNIGLOT_FILE
    try:
        return download_any(OMNIGLOT_URLS, target, OMNIGLOT_MD5, verify=check_chardata)
    except DataError as err:
        reason = f"downloading into {target.parent} failed: {err}"
        raise _missing_files_error("omniglot", searched, OMNIGLOT_FILE, reason) from err


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
    """
    chardata = read_chardata(_omniglot_file(data_dir, download))
    train_idx, val_idx = omniglot_split(len(chardata.train_x))
    x, y = torch.from_numpy(chardata.train_x), torch.from_numpy(chardata.train_y)  # [N, 784], [N]
    train, val = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    test = (torch.from_numpy(chardata.test_x), torch.from_numpy(chardata.test_y))
    return take_train(binary_splits("omniglot", (1, 28, 28), train, val, test), train_size)


# --------------------------------------------------------------------------- CelebA


def _celeba_root(data_dir: Path | None) -> Path:
    """The folder holding CelebA's files; DataError saying where to put them when there is none."""
    folder = _find_folder("celeba", data_dir)
    if folder is not None:
        return folder
    files = f"{CELEBA_IMAGE_DIR}/ with the 178x218 JPEGs, and {CELEBA_PARTITION_FILE}"
    reason = (
        "CelebA cannot be downloaded automatically (it is on Google Drive): download "
        f"img_align_celeba.zip and {CELEBA_PARTITION_FILE} from {CELEBA_URL} ('Align&Cropped Images' "
        f"and 'Eval') and unzip them into {_download_dir('celeba', data_dir)}"
    )
    raise _missing_files_error("celeba", _search_dirs("celeba", data_dir), files, reason)


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
    faces = read_celeba(_celeba_root(data_dir), prep, train_size=train_size, eval_size=eval_size)
    pairs = {split: _face_pair(array) for split, array in faces.items()}
    splits = eight_bit_splits(
        "celeba", (3, prep.size, prep.size), pairs["train"], pairs["val"], pairs["test"]
    )
    return take_train(splits, train_size)


def _face_pair(faces: np.ndarray) -> Pair:
    """[N, 3, S, S] uint8 -> (x [N, 3*S*S] float32 k/255, y [N] all -1)."""
    return _to_unit_tensor(faces), torch.full((len(faces),), -1, dtype=torch.int64)


# --------------------------------------------------------------------------- .npz files

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
) -> tuple[Tensor, Tensor] | None:
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
        (:func:`~exemplar_vae.data.datasets.random_split_indices` with ``SPLIT_SEED``).

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


# --------------------------------------------------------------------------- image folders


def load_image_folder(path: str | Path) -> DataSplits:
    """A dataset from a folder of images (PNG, JPEG, ...; see :mod:`~exemplar_vae.data.images`).

    ``folder/*.png`` gives unlabelled images (label -1); ``folder/<class>/*.png`` labels each
    image by its class's index among the sorted class names. All images must have the same size;
    grey images give C = 1, and if any image is colour all become RGB (C = 3). The split is the
    seeded 80/10/10 split of :func:`load_npz`. The data is binary by default (grey values are
    Bernoulli probabilities; images whose pixels are all 0 or 255 are binary already);
    ``load_dataset(..., binarize=False)`` models it as 8-bit values instead.

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


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Loader] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "digits": load_digits,
    "omniglot": load_omniglot,
    "celeba": load_celeba,
}


def canonical_name(name: str) -> str:
    """The registered spelling of a dataset name ("Fashion_MNIST" -> "fashion-mnist")."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def _load_path(name: str | Path) -> DataSplits:
    """An image folder or an ``.npz`` file; ConfigError when ``name`` is neither."""
    path = Path(name).expanduser()
    if path.is_dir():
        return load_image_folder(path)
    if isinstance(name, Path) or str(name).lower().endswith(".npz") or path.is_file():
        return load_npz(path)
    raise ConfigError(
        f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
        f"(or {', '.join(_ALIASES)}), or a path to an .npz file or to a folder of images"
    )


def load_dataset(
    name: str | Path,
    data_dir: str | Path | None = None,
    *,
    train_size: int | None = None,
    download: bool = True,
    binarize: bool | None = None,
) -> DataSplits:
    """Loads a dataset by name, or from an ``.npz`` file or a folder of images.

    Args:
        name: one of ``DATASETS`` ("fashion-mnist", "mnist", "digits", "omniglot", "celeba";
            aliases such as "fashion_mnist" also work), or a path (str or Path) to an ``.npz`` file
            (see :func:`load_npz`) or to a folder of images (see :func:`load_image_folder`).
        data_dir: folder with the dataset's files (None: the default search path, see the module
            docstring). Ignored by "digits", ``.npz`` files and image folders.
        train_size: keep only the first N training examples (None: all). CelebA decodes only those.
        download: whether missing MNIST-type or Omniglot files may be downloaded.
        binarize: None: the dataset's default (binary for everything but CelebA, which is 8-bit);
            True: binary (Bernoulli; val/test binarised once); False: 8-bit values k/255, checked
            (see :func:`set_binarization`).

    Returns:
        The train/validation/test splits.

    Raises:
        ConfigError: unknown name, or ``train_size`` out of range.
        DataError: missing or bad data files, or binarize=False on data that is not 8-bit.
    """
    key = canonical_name(str(name))
    folder = Path(data_dir).expanduser() if data_dir is not None else None
    if key in DATASETS:
        splits = DATASETS[key](folder, download, train_size=train_size)
    else:
        splits = take_train(_load_path(name), train_size)
    splits = set_binarization(splits, binarize)
    logger.info("%s", splits.summary())
    return splits
