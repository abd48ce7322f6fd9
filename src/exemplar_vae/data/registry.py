"""Dataset names -> loaders: the name table and ``load_dataset``, the entry point.

``load_dataset("fashion-mnist")`` loads a dataset. Names: "fashion-mnist" (also "fashion_mnist"),
"mnist", "digits", "omniglot", "celeba" (also "celeb-a", "celeb_a"); a path to an ``.npz`` file
(:func:`~exemplar_vae.data.npz.load_npz`); or a path to a folder of images
(:func:`~exemplar_vae.data.loaders.load_image_folder`). A registered name wins over a folder of the
same name in the working directory (write ``./celeba`` for the folder). Every loader returns a
:class:`~exemplar_vae.data.datasets.DataSplits`.

The loaders and each dataset's split are described in :mod:`~exemplar_vae.data.loaders`; where the
files are looked for (``data_dir``, ``$EXEMPLAR_VAE_DATA``, system folders, the user cache) and
downloaded to in :mod:`~exemplar_vae.data.paths`; the binary / 8-bit choice (``binarize``) in
:mod:`~exemplar_vae.data.splits`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from exemplar_vae.data.datasets import DataSplits
from exemplar_vae.data.loaders import (
    load_celeba,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    load_omniglot,
)
from exemplar_vae.data.npz import load_npz
from exemplar_vae.data.paths import check_has_files, download_dir, find_folder
from exemplar_vae.data.splits import set_binarization, take_train
from exemplar_vae.errors import ConfigError

__all__ = [
    "DATASETS",
    "Loader",
    "canonical_name",
    "default_data_dir",
    "load_dataset",
]

logger = logging.getLogger(__name__)

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "celeb-a": "celeba",
    "celeb_a": "celeba",
}


class Loader(Protocol):
    """A registered loader: ``loader(data_dir, download, train_size=None) -> DataSplits``.

    ``train_size`` keeps the first N training examples (ConfigError when out of range); CelebA
    applies it before decoding.
    """

    def __call__(
        self, data_dir: Path | None = None, download: bool = True, *, train_size: int | None = None
    ) -> DataSplits: ...


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
    check_has_files(name)
    return find_folder(name, None) or download_dir(name, None)


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
            (see :func:`~exemplar_vae.data.npz.load_npz`) or to a folder of images (see
            :func:`~exemplar_vae.data.loaders.load_image_folder`).
        data_dir: folder with the dataset's files (None: the default search path, see
            :mod:`~exemplar_vae.data.paths`). Ignored by "digits", ``.npz`` files and image folders.
        train_size: keep only the first N training examples (None: all). CelebA decodes only those.
        download: whether missing MNIST-type or Omniglot files may be downloaded.
        binarize: None: the dataset's default (binary for everything but CelebA, which is 8-bit);
            True: binary (Bernoulli; val/test binarised once); False: 8-bit values k/255, checked
            (see :func:`~exemplar_vae.data.splits.set_binarization`).

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
