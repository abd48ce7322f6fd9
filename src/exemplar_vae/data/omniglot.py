"""Omniglot as 28x28 images: IWAE's ``chardata.mat`` (Burda et al., ICLR 2016), read and checked.

The file (https://github.com/yburda/iwae, ``datasets/OMNIGLOT/chardata.mat``) is a MATLAB v5 file
with::

    data        [784, 24345] float64 in [0, 1]   training images, one per column
    testdata    [784, 8070]  float64 in [0, 1]   test images
    target      [50, 24345]  one-hot alphabet of each training image (optional here)
    testtarget  [50, 8070]   one-hot alphabet of each test image (optional here)

(it also holds ``targetchar``/``testtargetchar``, the character's number within its alphabet, which
the paper's code uses as "labels"; we use the alphabet, a proper class.) Each column is a 28x28
image stored column-major (MATLAB order): an image is ``column.reshape(28, 28, order="F")``, which is
what the VampPrior / Exemplar VAE code does with
``data.T.reshape((-1, 28, 28)).reshape((-1, 784), order='F')``. :func:`columns_to_images` returns
the images upright, flattened row by row.

Split: the paper's code shuffles the 24,345 training images without a seed and holds out the last
1,345 for validation (23,000 train). We use IWAE's seeded permutation instead
(``RandomState(123)``, IWAE's ``datasets.py``), so the split is fixed and equal to IWAE's. The 8,070
test images are the test set.

No md5 of ``chardata.mat`` is published (none was found in IWAE's repository or elsewhere), so a
download is checked structurally only (:func:`check_chardata`: keys, shapes, value range).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exemplar_vae.errors import DataError
from exemplar_vae.optional import require

__all__ = [
    "OMNIGLOT_FILE",
    "OMNIGLOT_MD5",
    "OMNIGLOT_SPLIT_SEED",
    "OMNIGLOT_URLS",
    "Chardata",
    "check_chardata",
    "columns_to_images",
    "omniglot_split",
    "omniglot_validation_size",
    "read_chardata",
]

OMNIGLOT_FILE = "chardata.mat"
OMNIGLOT_URLS: tuple[str, ...] = ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",)
OMNIGLOT_MD5: str | None = None  # no published checksum: downloads are checked structurally only
OMNIGLOT_SPLIT_SEED = 123  # IWAE's shuffle_seed (datasets.py: binarized_shuffled_omniglot)
PAPER_TRAIN_IMAGES = 24_345  # images in chardata.mat's `data`
PAPER_VAL_IMAGES = 1_345  # held out for validation by IWAE and the paper's code
SIDE = 28
PIXELS = SIDE * SIDE

_IMAGE_KEYS = {"train": "data", "test": "testdata"}
_LABEL_KEYS = {"train": "target", "test": "testtarget"}


@dataclass(frozen=True)
class Chardata:
    """The arrays of ``chardata.mat``, images upright and flattened row by row.

    Attributes:
        train_x: [N, 784] float32 grey values in [0, 1] (N = 24,345 in the real file).
        train_y: [N] int64 alphabet index in 0..49, -1 when the file has no ``target``.
        test_x: [Nt, 784] float32 in [0, 1] (Nt = 8,070).
        test_y: [Nt] int64, -1 when the file has no ``testtarget``.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def columns_to_images(columns: np.ndarray) -> np.ndarray:
    """MATLAB-ordered image columns -> upright images flattened in C (row-major) order.

    Args:
        columns: [784, N]; column n is a 28x28 image stored column-major.

    Returns:
        [N, 784]; row n reshaped with ``reshape(28, 28)`` is image n, upright.
    """
    images = columns.T.reshape(-1, SIDE, SIDE)  # [N, 28, 28], transposed (column-major storage)
    return np.ascontiguousarray(images.transpose(0, 2, 1)).reshape(-1, PIXELS)  # [N, 784]


def _load_mat(path: Path) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v5 file; DataError when it cannot be read.

    Raises:
        ConfigError: scipy (the ``omniglot`` extra) is not installed.
    """
    scipy_io = require("scipy.io", "omniglot", "reading Omniglot's chardata.mat")  # optional; slow to import

    if not path.is_file():
        raise DataError(f"Omniglot file {path} does not exist")
    try:
        return scipy_io.loadmat(path)
    except (scipy_io.matlab.MatReadError, OSError, ValueError, TypeError, NotImplementedError) as err:
        raise DataError(
            f"{path} is not a readable MATLAB v5 file ({err}); expected IWAE's chardata.mat"
        ) from err


def _images(mat: dict[str, np.ndarray], split: str, path: Path) -> np.ndarray:
    """The checked images of ``split`` as [N, 784] float32 in [0, 1], upright."""
    key = _IMAGE_KEYS[split]
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path} has no variable '{key}' (found: {found}); expected IWAE's chardata.mat")
    columns = mat[key]
    if columns.ndim != 2 or columns.shape[0] != PIXELS or columns.shape[1] < 1:
        raise DataError(f"{path}: '{key}' has shape {columns.shape}, expected [784, N] with N >= 1")
    if not np.issubdtype(columns.dtype, np.number) or np.issubdtype(columns.dtype, np.complexfloating):
        raise DataError(f"{path}: '{key}' has dtype {columns.dtype}, expected real numbers in [0, 1]")
    low, high = float(columns.min()), float(columns.max())
    if not (0.0 <= low and high <= 1.0):  # also rejects NaN
        raise DataError(f"{path}: '{key}' has values in [{low}, {high}], expected grey values in [0, 1]")
    return columns_to_images(columns.astype(np.float32))


def _labels(mat: dict[str, np.ndarray], split: str, n: int, path: Path) -> np.ndarray:
    """[n] int64 alphabet indices from the one-hot [K, n] matrix, or all -1 when it is absent."""
    key = _LABEL_KEYS[split]
    if key not in mat:
        return np.full(n, -1, dtype=np.int64)
    one_hot = mat[key]
    if one_hot.ndim != 2 or one_hot.shape[1] != n:
        raise DataError(f"{path}: '{key}' has shape {one_hot.shape}, expected [K, {n}] (one-hot per column)")
    return np.argmax(one_hot, axis=0).astype(np.int64)


def read_chardata(path: str | Path) -> Chardata:
    """Reads and checks IWAE's ``chardata.mat``.

    Args:
        path: the file.

    Returns:
        The train and test images (upright, [N, 784] float32 in [0, 1]) and alphabet labels.

    Raises:
        DataError: the file is missing or not a MATLAB v5 file, lacks ``data``/``testdata``, has
            wrong shapes (not 784 rows, or label matrices of another length), or values outside
            [0, 1]. The message names the file and the problem.
    """
    path = Path(path)
    mat = _load_mat(path)
    train_x, test_x = _images(mat, "train", path), _images(mat, "test", path)
    return Chardata(
        train_x=train_x,
        train_y=_labels(mat, "train", len(train_x), path),
        test_x=test_x,
        test_y=_labels(mat, "test", len(test_x), path),
    )


def check_chardata(path: Path) -> None:
    """Structural check of a downloaded ``chardata.mat`` (the download's ``verify``).

    Raises:
        DataError: as :func:`read_chardata`.
    """
    read_chardata(path)


def omniglot_validation_size(num_train_images: int) -> int:
    """How many of ``data``'s images become the validation set.

    The real file's 24,345 images give the paper's 1,345 (23,000 train); any other count (e.g. a
    small test file) holds out the same proportion, rounded, and at least one image while leaving at
    least one for training.

    Args:
        num_train_images: images in ``data``.

    Returns:
        The size of the validation split.

    Raises:
        DataError: fewer than 2 images, too few to split.
    """
    if num_train_images < 2:
        raise DataError(f"Omniglot: 'data' holds {num_train_images} images; need at least 2 to split")
    if num_train_images == PAPER_TRAIN_IMAGES:
        return PAPER_VAL_IMAGES
    proportional = round(num_train_images * PAPER_VAL_IMAGES / PAPER_TRAIN_IMAGES)
    return min(max(1, proportional), num_train_images - 1)


def omniglot_split(num_train_images: int, seed: int = OMNIGLOT_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """IWAE's split of ``data``: a seeded permutation, of which the last images validate.

    Unlike :func:`~exemplar_vae.data.datasets.random_split_indices`, each split keeps the permuted
    order (as IWAE and the paper's code do), so the first N training images are a random subset
    rather than the first alphabets of the file.

    Args:
        num_train_images: images in ``data``.
        seed: seed of numpy's ``RandomState`` permutation (IWAE's 123).

    Returns:
        (train [N - Nv], validation [Nv]) int64 index arrays, disjoint, covering ``range(N)``;
        Nv = :func:`omniglot_validation_size`.
    """
    n_val = omniglot_validation_size(num_train_images)
    perm = np.random.RandomState(seed).permutation(num_train_images).astype(np.int64)
    split_at = num_train_images - n_val
    return perm[:split_at], perm[split_at:]
