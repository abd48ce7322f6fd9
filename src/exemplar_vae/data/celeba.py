"""CelebA (Liu et al., ICCV 2015), aligned and cropped faces, as 64x64 RGB images with a decoded cache.

Files (from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "Align&Cropped Images"; they are on
Google Drive, so they cannot be downloaded with a simple checked URL)::

    <root>/img_align_celeba/000001.jpg ... 202599.jpg    178x218 JPEGs
    <root>/list_eval_partition.txt                       lines "000001.jpg 0"; 0 train, 1 val, 2 test

The official split is 162,770 / 19,867 / 19,962 images. Preprocessing follows the usual pipeline of
CelebA VAE code (``CenterCrop(140)``, ``Resize(64)``): a centred 140x140 crop (offsets rounded as
torchvision does), resized to 64x64 with Pillow's BILINEAR filter (torchvision's default for PIL
images; Pillow antialiases when downscaling), in RGB. Pixels stay uint8.

Decoding ~200k JPEGs takes minutes, so each split's decoded pixels are cached beside the data as
``<root>/celeba-<split>-<N>-crop140-64px-bilinear-<digest>.npy`` ([N, 3, 64, 64] uint8, written
atomically; the digest covers the image names, so a changed partition or subset gets a new file).
A cache that cannot be written (read-only folder) only costs the decoding time next run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from exemplar_vae.data.images import decode_image
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.io import atomic_write

__all__ = [
    "CELEBA_IMAGE_DIR",
    "CELEBA_PARTITION_FILE",
    "CELEBA_SPLITS",
    "FacePreprocessing",
    "cache_path",
    "center_crop_box",
    "has_celeba_files",
    "load_faces",
    "read_celeba",
    "read_partition",
]

logger = logging.getLogger(__name__)

CELEBA_IMAGE_DIR = "img_align_celeba"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_SPLITS = {"0": "train", "1": "val", "2": "test"}  # partition code -> split
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
_CHUNK = 1024  # images decoded per batch of threads
_CACHE_VERSION = "v1"

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class FacePreprocessing:
    """How a CelebA image becomes a training image.

    Attributes:
        crop: side of the centred square crop, in pixels of the 178x218 original.
        size: side of the resized square image.
        resample: Pillow filter for the resize: "nearest", "box", "bilinear", "hamming", "bicubic"
            or "lanczos".
    """

    crop: int = 140
    size: int = 64
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ConfigError(f"unknown resample filter {self.resample!r}; valid: {', '.join(_RESAMPLE)}")
        if self.crop < 1 or self.size < 1:
            raise ConfigError(f"crop and size must be positive, got crop={self.crop}, size={self.size}")

    @property
    def key(self) -> str:
        """The parameters as a file-name fragment, e.g. ``crop140-64px-bilinear``."""
        return f"crop{self.crop}-{self.size}px-{self.resample}"

    def __call__(self, image: Image.Image) -> Image.Image:
        """Centre crop and resize; DataError when the image is smaller than the crop."""
        width, height = image.size
        if width < self.crop or height < self.crop:
            raise DataError(f"image is {width}x{height}, smaller than the {self.crop}x{self.crop} crop")
        box = center_crop_box(width, height, self.crop)
        return image.crop(box).resize((self.size, self.size), _RESAMPLE[self.resample])


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centred ``crop`` x ``crop`` square, rounded like torchvision."""
    left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


def has_celeba_files(folder: Path) -> bool:
    """Whether ``folder`` holds ``img_align_celeba/`` and ``list_eval_partition.txt``."""
    return (folder / CELEBA_IMAGE_DIR).is_dir() and (folder / CELEBA_PARTITION_FILE).is_file()


def _parse_partition_line(line: str, path: Path, line_no: int) -> tuple[str, str]:
    """(image name, split) of one line "000001.jpg 0"; DataError naming the line otherwise."""
    parts = line.split()
    if len(parts) != 2 or parts[1] not in CELEBA_SPLITS or Path(parts[0]).name != parts[0]:
        raise DataError(
            f"{path}, line {line_no}: malformed line {line.strip()!r}; expected '<image file name> <0|1|2>' "
            "(0 train, 1 validation, 2 test)"
        )
    return parts[0], CELEBA_SPLITS[parts[1]]


def read_partition(path: Path) -> dict[str, list[str]]:
    """Reads ``list_eval_partition.txt``.

    Args:
        path: the partition file.

    Returns:
        {"train": names, "val": names, "test": names}, each in file order.

    Raises:
        DataError: the file is missing or unreadable, a line is malformed, a name appears twice, or a
            split is empty.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the CelebA partition file {path}: {err}") from err
    splits: dict[str, list[str]] = {split: [] for split in CELEBA_SPLITS.values()}
    seen: set[str] = set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, split = _parse_partition_line(line, path, line_no)
        if name in seen:
            raise DataError(f"{path}, line {line_no}: {name} is listed twice")
        seen.add(name)
        splits[split].append(name)
    empty = [split for split, names in splits.items() if not names]
    if empty:
        raise DataError(f"{path} lists no images for the {' and '.join(empty)} split(s)")
    return splits


def cache_path(root: Path, split: str, names: Sequence[str], prep: FacePreprocessing) -> Path:
    """Where the decoded pixels of ``names`` are cached (keyed by the names and the preprocessing)."""
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]
    return root / f"celeba-{split}-{len(names)}-{prep.key}-{_CACHE_VERSION}-{digest}.npy"


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None when it is absent, unreadable or of another shape (with a warning)."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        logger.warning("ignoring unreadable cache %s (%s); decoding the images again", path, err)
        return None
    if array.dtype != np.uint8 or array.shape != shape:
        logger.warning("ignoring cache %s: %s %s, expected uint8 %s", path, array.dtype, array.shape, shape)
        return None
    return array


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` streamed to a temporary file beside ``path``, then renamed: never half a file."""
    atomic_write(path, lambda f: np.save(f, array))


def _check_present(image_dir: Path, names: Sequence[str], partition: Path) -> None:
    """DataError listing (the first few) images named in the partition file but missing."""
    missing = [name for name in names if not (image_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{partition} names {len(missing)} images missing from {image_dir}, e.g. "
            f"{', '.join(missing[:3])}; use the complete img_align_celeba folder (or a smaller "
            "train_size / eval_size if only the first images are there)"
        )


def _decode_faces(image_dir: Path, names: Sequence[str], prep: FacePreprocessing, desc: str) -> np.ndarray:
    """Decodes and preprocesses images with a pool of threads (Pillow releases the GIL)."""
    faces = np.empty((len(names), 3, prep.size, prep.size), dtype=np.uint8)  # [N, 3, S, S]

    def decode(name: str) -> np.ndarray:
        return decode_image(image_dir / name, "RGB", prep)  # [S, S, 3]

    workers = min(8, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(names), desc=desc, unit="img", disable=None) as bar,
    ):
        for start in range(0, len(names), _CHUNK):  # chunks: an error stops within one chunk
            for i, pixels in enumerate(pool.map(decode, names[start : start + _CHUNK]), start):
                faces[i] = pixels.transpose(2, 0, 1)
            bar.update(min(_CHUNK, len(names) - start))
    return faces


def load_faces(root: Path, split: str, names: Sequence[str], prep: FacePreprocessing) -> np.ndarray:
    """The preprocessed images ``names`` of ``root/img_align_celeba``, from the cache when present.

    Args:
        root: the CelebA folder.
        split: "train", "val" or "test" (part of the cache's name).
        names: image file names.
        prep: the preprocessing.

    Returns:
        [N, 3, S, S] uint8 (S = ``prep.size``).

    Raises:
        DataError: an image is missing, unreadable, or smaller than the crop.
    """
    path = cache_path(root, split, names, prep)
    cached = _read_cache(path, (len(names), 3, prep.size, prep.size))
    if cached is not None:
        logger.info("celeba %s: reading %d decoded images from %s", split, len(names), path)
        return cached
    image_dir = root / CELEBA_IMAGE_DIR
    _check_present(image_dir, names, root / CELEBA_PARTITION_FILE)
    faces = _decode_faces(image_dir, names, prep, desc=f"celeba {split}")
    try:
        _atomic_save_npy(path, faces)
    except OSError as err:
        logger.warning("cannot write the CelebA cache %s (%s); the images will be decoded again", path, err)
    return faces


def read_celeba(
    root: Path,
    prep: FacePreprocessing | None = None,
    *,
    train_size: int | None = None,
    eval_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Reads the three CelebA splits of ``root``, limited before decoding.

    Args:
        root: the folder with ``img_align_celeba/`` and ``list_eval_partition.txt``.
        prep: the preprocessing (None: crop 140, 64x64, bilinear).
        train_size: keep only the first N training images of the partition file (None: all).
        eval_size: keep only the first N validation and the first N test images (None: all).

    Returns:
        {"train", "val", "test"} -> [N, 3, S, S] uint8. Only the kept images are checked, decoded
        and cached, so a folder holding just those images works.

    Raises:
        DataError: see :func:`read_partition` and :func:`load_faces`.
        ConfigError: ``train_size`` is larger than the training split (checked before decoding).
    """
    prep = prep or FacePreprocessing()
    partition = read_partition(root / CELEBA_PARTITION_FILE)
    n_train = len(partition["train"])
    if train_size is not None and not 1 <= train_size <= n_train:
        raise ConfigError(
            f"train_size={train_size} is out of range: celeba has {n_train} training examples, so "
            f"train_size must be between 1 and {n_train}"
        )
    limits = {"train": train_size, "val": eval_size, "test": eval_size}
    return {
        split: load_faces(root, split, names[: limits[split]], prep) for split, names in partition.items()
    }
