"""Where a dataset's files are: the search path, checked downloads, and the missing-files errors.

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

Every function here takes a dataset's registered name ("fashion-mnist", not an alias; see
:func:`~exemplar_vae.data.registry.canonical_name`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from exemplar_vae.data.celeba import CELEBA_IMAGE_DIR, CELEBA_PARTITION_FILE, CELEBA_URL, has_celeba_files
from exemplar_vae.data.formats import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_MIRRORS,
    MNIST_FILES,
    MNIST_MIRRORS,
    download_any,
    find_file,
)
from exemplar_vae.data.omniglot import OMNIGLOT_FILE, OMNIGLOT_MD5, OMNIGLOT_URLS, check_chardata
from exemplar_vae.errors import ConfigError, DataError

__all__ = [
    "DATA_ENV_VAR",
    "IDX_SOURCES",
    "IdxSource",
    "celeba_root",
    "check_has_files",
    "download_dir",
    "find_folder",
    "missing_files_error",
    "omniglot_file",
    "resolve_idx_files",
    "search_dirs",
]

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "EXEMPLAR_VAE_DATA"


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


# --------------------------------------------------------------------------- locating files


def _holds_files(name: str, folder: Path) -> bool:
    """Whether ``folder`` holds every data file of ``name``."""
    if name in IDX_SOURCES:
        return _find_all(folder, IDX_SOURCES[name]) is not None
    return _FILE_CHECKS[name](folder)


def check_has_files(name: str) -> None:
    """ConfigError unless ``name`` is a dataset with data files (MNIST-type, Omniglot, CelebA)."""
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


def search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    """The folders searched for ``name``'s files, in order (see the module docstring)."""
    if data_dir is not None:
        return [data_dir]
    env = _env_dir(name)
    system_dirs = IDX_SOURCES[name].system_dirs if name in IDX_SOURCES else ()
    return [*([env] if env else []), *system_dirs, _cache_dir(name)]


def download_dir(name: str, data_dir: Path | None) -> Path:
    """The folder ``name``'s files are downloaded into (see the module docstring)."""
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


def find_folder(name: str, data_dir: Path | None) -> Path | None:
    """The first searched folder that holds all of ``name``'s files, or None."""
    return next((folder for folder in search_dirs(name, data_dir) if _holds_files(name, folder)), None)


# --------------------------------------------------------------------------- missing files


def missing_files_error(
    name: str, searched: list[Path], files: str, reason: str, hint: str = "", data_dir: Path | None = None
) -> DataError:
    """The error for data files found nowhere; ``files`` lists them, ``hint`` is a last suggestion.
    With ``data_dir`` (the folder the user named) the advice is to put the files there."""
    folders = ", ".join(str(folder) for folder in searched)
    advice = (
        f"Put these files into {data_dir} (the --data-dir given){hint}"
        if data_dir is not None
        else f"Pass --data-dir pointing at a folder with these files, or set {DATA_ENV_VAR}{hint}"
    )
    return DataError(f"{name}: data files not found in {folders} (expected {files}), and {reason}. {advice}")


def _idx_missing_error(
    name: str, searched: list[Path], source: IdxSource, reason: str, data_dir: Path | None = None
) -> DataError:
    files = ", ".join(f"{_stem(f)}[.gz]" for f, _ in source.files.values())
    hint = f"; or install them with `{source.install_hint}`" if source.install_hint else ""
    return missing_files_error(name, searched, files, reason, hint, data_dir)


# --------------------------------------------------------------------------- finding or downloading


def _download_missing(folder: Path, source: IdxSource) -> dict[str, Path]:
    """Downloads into ``folder`` each file it lacks; returns role -> file."""
    paths = {}
    for role, (file_name, md5) in source.files.items():
        existing = find_file(folder, _stem(file_name))
        urls = [mirror + file_name for mirror in source.mirrors]
        paths[role] = existing or download_any(urls, folder / file_name, md5)
    return paths


def resolve_idx_files(name: str, data_dir: Path | None, download: bool) -> dict[str, Path]:
    """Finds (or downloads) the four IDX files of ``name``; returns role -> file.

    Args:
        name: a key of :data:`IDX_SOURCES` ("mnist", "fashion-mnist").
        data_dir: the only folder searched, or None for the default search path.
        download: whether missing files may be downloaded (md5-checked).

    Raises:
        DataError: the files are found nowhere and downloading is disabled or failed.
    """
    source = IDX_SOURCES[name]
    searched = search_dirs(name, data_dir)
    for folder in searched:
        found = _find_all(folder, source)
        if found is not None:
            logger.info("%s: reading files from %s", name, folder)
            return found
    if not download:
        raise _idx_missing_error(name, searched, source, "downloading is disabled", data_dir)
    target = download_dir(name, data_dir)
    try:
        return _download_missing(target, source)
    except DataError as err:
        reason = f"downloading into {target} failed: {err}"
        raise _idx_missing_error(name, searched, source, reason, data_dir) from err


def omniglot_file(data_dir: Path | None, download: bool) -> Path:
    """Finds (or downloads, checked structurally) ``chardata.mat``.

    Raises:
        DataError: the file is found nowhere and downloading is disabled or failed.
    """
    searched = search_dirs("omniglot", data_dir)
    folder = find_folder("omniglot", data_dir)
    if folder is not None:
        logger.info("omniglot: reading %s", folder / OMNIGLOT_FILE)
        return folder / OMNIGLOT_FILE
    if not download:
        raise missing_files_error(
            "omniglot", searched, OMNIGLOT_FILE, "downloading is disabled", data_dir=data_dir
        )
    target = download_dir("omniglot", data_dir) / OMNIGLOT_FILE
    try:
        return download_any(OMNIGLOT_URLS, target, OMNIGLOT_MD5, verify=check_chardata)
    except DataError as err:
        reason = f"downloading into {target.parent} failed: {err}"
        raise missing_files_error("omniglot", searched, OMNIGLOT_FILE, reason, data_dir=data_dir) from err


def celeba_root(data_dir: Path | None) -> Path:
    """The folder holding CelebA's files; DataError saying where to put them when there is none."""
    folder = find_folder("celeba", data_dir)
    if folder is not None:
        return folder
    files = f"{CELEBA_IMAGE_DIR}/ with the 178x218 JPEGs, and {CELEBA_PARTITION_FILE}"
    reason = (
        "CelebA cannot be downloaded automatically (it is on Google Drive): download "
        f"img_align_celeba.zip and {CELEBA_PARTITION_FILE} from {CELEBA_URL} ('Align&Cropped Images' "
        f"and 'Eval') and unzip them into {download_dir('celeba', data_dir)}"
    )
    raise missing_files_error("celeba", search_dirs("celeba", data_dir), files, reason, data_dir=data_dir)
