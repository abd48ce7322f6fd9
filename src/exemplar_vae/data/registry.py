"""Dataset names -> loaders, and where their files are found.

``load_dataset("fashion-mnist")`` is the entry point; it also accepts "mnist", "digits" and a path to
an ``.npz`` file. Every loader returns a :class:`~exemplar_vae.data.datasets.DataSplits`.

MNIST and Fashion-MNIST follow the Exemplar VAE paper's protocol: of the 60,000 training images the
first 50,000 are the training set (the exemplars) and the last 10,000 the validation set; the
10,000 test images are the test set. Pixels are scaled to [0, 1]; validation and test images are
binarised once with fixed seeds (their grey values are kept as ``val_grey`` / ``test_grey``, e.g. for
kNN probes), training images dynamically per batch.

Their files are looked up, in order, in:

1. ``data_dir``, when given (and then only there);
2. ``$EXEMPLAR_VAE_DATA/<name>``, when that environment variable is set;
3. system folders: ``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST (the Debian/Ubuntu
   package ``dataset-fashion-mnist``);
4. ``~/.cache/exemplar-vae/<name>``.

If no folder holds all four files they are downloaded (md5-checked) into ``data_dir`` when given,
else into ``$EXEMPLAR_VAE_DATA/<name>`` when set, else into ``~/.cache/exemplar-vae/<name>``.
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

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data.datasets import DataSplits, fixed_binarize, random_split_indices
from exemplar_vae.data.formats import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_MIRRORS,
    MNIST_FILES,
    MNIST_MIRRORS,
    download_any,
    find_file,
    read_idx,
)
from exemplar_vae.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "IDX_SOURCES",
    "IdxSource",
    "default_data_dir",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_npz",
]

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "EXEMPLAR_VAE_DATA"
VAL_BINARIZE_SEED = 777  # the seed of the paper's code
TEST_BINARIZE_SEED = 778
SPLIT_SEED = 0  # permutation seed for datasets without a fixed split (digits, .npz)
PAPER_TRAIN_IMAGES = 60_000
PAPER_VAL_IMAGES = 10_000
MNIST_IMAGE_SIZE = 28

Loader = Callable[[Path | None, bool], DataSplits]


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

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}


# --------------------------------------------------------------------------- locating files


def _idx_source(name: str) -> IdxSource:
    if name not in IDX_SOURCES:
        raise ConfigError(f"dataset {name!r} has no data files; datasets with files: {sorted(IDX_SOURCES)}")
    return IDX_SOURCES[name]


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
    return [*([env] if env else []), *_idx_source(name).system_dirs, _cache_dir(name)]


def _download_dir(name: str, data_dir: Path | None) -> Path:
    return data_dir or _env_dir(name) or _cache_dir(name)


def _find_all(folder: Path, source: IdxSource) -> dict[str, Path] | None:
    """Role -> file for every role, or None if ``folder`` lacks any of them."""
    found = {role: find_file(folder, _stem(file_name)) for role, (file_name, _) in source.files.items()}
    if any(path is None for path in found.values()):
        return None
    return {role: path for role, path in found.items() if path is not None}


def default_data_dir(name: str) -> Path:
    """The folder ``load_dataset(name)`` reads when no ``data_dir`` is given.

    Args:
        name: "mnist" or "fashion-mnist" (or an alias such as "fashion_mnist").

    Returns:
        The first default folder (``$EXEMPLAR_VAE_DATA/<name>``, system folders,
        ``~/.cache/exemplar-vae/<name>``) that holds all the files, else the folder they would be
        downloaded into.

    Raises:
        ConfigError: ``name`` is not a dataset with data files.
    """
    name = canonical_name(name)
    source = _idx_source(name)
    for folder in _search_dirs(name, None):
        if _find_all(folder, source) is not None:
            return folder
    return _download_dir(name, None)


def _missing_files_error(name: str, searched: list[Path], source: IdxSource, reason: str) -> DataError:
    files = ", ".join(f"{_stem(f)}[.gz]" for f, _ in source.files.values())
    folders = ", ".join(str(folder) for folder in searched)
    hint = f"; or install them with `{source.install_hint}`" if source.install_hint else ""
    return DataError(
        f"{name}: data files not found in {folders} (expected {files}), and {reason}. "
        f"Pass --data-dir pointing at a folder with these files, or set {DATA_ENV_VAR}{hint}"
    )


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
    source = _idx_source(name)
    searched = _search_dirs(name, data_dir)
    for folder in searched:
        found = _find_all(folder, source)
        if found is not None:
            logger.info("%s: reading files from %s", name, folder)
            return found
    if not download:
        raise _missing_files_error(name, searched, source, "downloading is disabled")
    target = _download_dir(name, data_dir)
    try:
        return _download_missing(target, source)
    except DataError as err:
        raise _missing_files_error(
            name, searched, source, f"downloading into {target} failed: {err}"
        ) from err


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


def _load_idx_dataset(name: str, data_dir: Path | None, download: bool) -> DataSplits:
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
    test_grey = _to_unit_tensor(test_images)  # [10000, 784]
    return DataSplits(
        name=name,
        image_shape=(1, MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE),
        train_x=x[:n_train].clone(),
        train_y=y[:n_train].clone(),
        val_x=fixed_binarize(x[n_train:], seed=VAL_BINARIZE_SEED),
        val_y=y[n_train:].clone(),
        test_x=fixed_binarize(test_grey, seed=TEST_BINARIZE_SEED),
        test_y=_labels_tensor(test_labels),
        binary=True,
        val_grey=x[n_train:].clone(),
        test_grey=test_grey,
    )


def load_mnist(data_dir: Path | None = None, download: bool = True) -> DataSplits:
    """MNIST: 50,000 train / 10,000 validation / 10,000 test, 1x28x28, binary.

    Args:
        data_dir: folder with the four IDX files (None: the default search path).
        download: whether to download missing files.
    """
    return _load_idx_dataset("mnist", data_dir, download)


def load_fashion_mnist(data_dir: Path | None = None, download: bool = True) -> DataSplits:
    """Fashion-MNIST: 50,000 train / 10,000 validation / 10,000 test, 1x28x28, binary.

    Args:
        data_dir: folder with the four IDX files (None: the default search path).
        download: whether to download missing files.
    """
    return _load_idx_dataset("fashion-mnist", data_dir, download)


# --------------------------------------------------------------------------- digits


def load_digits(data_dir: Path | None = None, download: bool = True) -> DataSplits:
    """scikit-learn's 8x8 digits: 1,197 train / 300 validation / 300 test, 1x8x8, binary.

    A tiny dataset bundled with scikit-learn, for quick runs and tests. Pixel values 0..16 are
    scaled to [0, 1]; the split is a fixed seeded permutation. Both arguments are ignored.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: sklearn imports slowly

    bunch = sklearn_digits()
    x = torch.from_numpy(bunch.data).to(torch.float32).div_(16.0)  # [1797, 64]
    y = torch.from_numpy(bunch.target).to(torch.int64)
    train, val, test = random_split_indices(len(x), 300, 300, seed=SPLIT_SEED)
    return DataSplits(
        name="digits",
        image_shape=(1, 8, 8),
        train_x=x[train],
        train_y=y[train],
        val_x=fixed_binarize(x[val], seed=VAL_BINARIZE_SEED),
        val_y=y[val],
        test_x=fixed_binarize(x[test], seed=TEST_BINARIZE_SEED),
        test_y=y[test],
        binary=True,
        val_grey=x[val],
        test_grey=x[test],
    )


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
    n, n_held = len(x), max(1, len(x) // 10)
    n_val, n_test = (0 if val else n_held), (0 if test else n_held)
    if n < 1 + n_val + n_test:
        raise DataError(
            f"{path}: x holds {n} examples; needs at least {1 + n_val + n_test} "
            "(at least one each for train, validation and test)"
        )
    train_idx, val_idx, test_idx = random_split_indices(n, n_val, n_test, seed=SPLIT_SEED)
    val_x, val_y = val or (x[val_idx], y[val_idx])
    test_x, test_y = test or (x[test_idx], y[test_idx])
    return DataSplits(
        name=path.stem,
        image_shape=image_shape,
        train_x=x[train_idx],
        train_y=y[train_idx],
        val_x=fixed_binarize(val_x, seed=VAL_BINARIZE_SEED),
        val_y=val_y,
        test_x=fixed_binarize(test_x, seed=TEST_BINARIZE_SEED),
        test_y=test_y,
        binary=True,
        val_grey=val_x,
        test_grey=test_x,
    )


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Loader] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "digits": load_digits,
}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def _take_train(splits: DataSplits, train_size: int) -> DataSplits:
    """Keeps the first ``train_size`` training examples."""
    if not 1 <= train_size <= splits.num_train:
        raise ConfigError(
            f"train_size={train_size} is out of range: {splits.name} has {splits.num_train} training "
            f"examples, so train_size must be between 1 and {splits.num_train}"
        )
    return dataclasses.replace(
        splits, train_x=splits.train_x[:train_size].clone(), train_y=splits.train_y[:train_size].clone()
    )


def load_dataset(
    name: str | Path,
    data_dir: str | Path | None = None,
    *,
    train_size: int | None = None,
    download: bool = True,
) -> DataSplits:
    """Loads a dataset by name, or from an ``.npz`` file.

    Args:
        name: one of ``DATASETS`` ("fashion-mnist", "mnist", "digits"; "fashion_mnist" also
            works), or a path (str or Path) to an ``.npz`` file (see :func:`load_npz`).
        data_dir: folder with the dataset's files (None: the default search path, see the module
            docstring). Ignored by "digits" and ``.npz`` files.
        train_size: keep only the first N training examples (None: all).
        download: whether missing MNIST-type files may be downloaded.

    Returns:
        The train/validation/test splits.

    Raises:
        ConfigError: unknown name, or ``train_size`` out of range.
        DataError: missing or bad data files.
    """
    key = canonical_name(str(name))
    folder = Path(data_dir).expanduser() if data_dir is not None else None
    if key in DATASETS:
        splits = DATASETS[key](folder, download)
    elif isinstance(name, Path) or key.endswith(".npz") or Path(name).expanduser().is_file():
        splits = load_npz(name)
    else:
        raise ConfigError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
            f"(or {', '.join(_ALIASES)}), or a path to an .npz file"
        )
    if train_size is not None:
        splits = _take_train(splits, train_size)
    logger.info("%s", splits.summary())
    return splits
