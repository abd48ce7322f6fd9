"""Image files read with Pillow: a folder of images as a dataset, and the decoding helper it shares.

A folder is read as either

- flat: ``folder/*.png`` (any of :data:`IMAGE_SUFFIXES`), all unlabelled (label -1); or
- one sub-folder per class: ``folder/<class name>/*.png``; labels are the class's index among the
  sorted class names.

Files are taken in sorted name order. Hidden files and folders (names starting with ".") are
skipped; other files that are not images are skipped with a warning, and so are entries that are not
regular files (named pipes, sockets, devices, broken links: never opened, whatever their name).
Sizes are read from the headers first (Pillow's lazy open): an image above Pillow's decompression-bomb
limit (``PIL.Image.MAX_IMAGE_PIXELS`` pixels), or a folder whose decoded pixels would not fit in the
memory available, is refused before anything is decoded. All images must have the
same width and height (no resizing). Grey images (Pillow modes "1", "L", "LA") give one channel;
if any image is colour (e.g. "RGB", "RGBA", "P"), every image is converted to RGB (three channels).
Alpha channels are dropped. Only 8-bit images are supported.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from exemplar_vae.data.formats import check_memory
from exemplar_vae.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "decode_image",
    "list_image_folder",
    "read_image_folder",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_COLOUR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# bytes per decoded value while a folder becomes a dataset: the uint8 pixels, their float32 copy, and the
# float32 split copies
_BYTES_PER_VALUE = 1 + 4 + 4

Transform = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class ImageFolder:
    """The images of a folder.

    Attributes:
        images: [N, C, H, W] uint8 pixels, C = 1 (grey) or 3 (RGB).
        labels: [N] int64 class index, -1 for a flat folder.
        classes: the class (sub-folder) names, sorted; empty for a flat folder.
        files: the N image files, in the order of ``images``.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    files: tuple[Path, ...]


def decode_image(path: Path, mode: str, transform: Transform | None = None) -> np.ndarray:
    """Decodes one image file to pixels.

    Args:
        path: the image file.
        mode: the Pillow mode to convert to: "L" (grey) or "RGB".
        transform: applied to the converted image before it becomes an array (e.g. crop and
            resize); may raise DataError.

    Returns:
        [H, W] uint8 for mode "L", [H, W, 3] uint8 for "RGB".

    Raises:
        DataError: the file is missing, not an image, or truncated; the message names the file.
    """
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
        if transform is not None:
            converted = transform(converted)
        return np.asarray(converted, dtype=np.uint8)
    except DataError as err:  # from transform
        raise DataError(f"{path}: {err}") from err
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """((width, height), Pillow mode) of an image, reading only its header."""
    try:
        with warnings.catch_warnings():  # an image above the pixel limit is refused, not warned about
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size, image.mode
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def _images_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, visible sub-folders) directly in ``folder``, sorted; warns about other files."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list image folder {folder}: {err.strerror or err}") from err
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        logger.warning("%s: skipping %d files that are not images, e.g. %s", folder, len(others), others[0])
    special = [p.name for p in entries if not p.is_file() and not p.is_dir()]  # stat only: never opened
    if special:
        logger.warning(
            "%s: skipping %d entries that are not regular files (named pipes, sockets, devices, broken "
            "links), e.g. %s",
            folder, len(special), special[0],
        )  # fmt: skip
    return images, [p for p in entries if p.is_dir()]


def list_image_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files of a flat or class-per-sub-folder image folder (see the module docstring).

    Args:
        folder: the folder.

    Returns:
        (files, labels, class names): labels are indices into the sorted class names, or -1 for a
        flat folder (then the class names are empty).

    Raises:
        DataError: the folder does not exist, holds no images, or mixes image files with class
            sub-folders that hold images.
    """
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a folder")
    files, subdirs = _images_in(folder)
    classes = [(d.name, _images_in(d)[0]) for d in subdirs]
    classes = [(name, images) for name, images in classes if images]
    if files and classes:
        raise DataError(
            f"{folder} holds both image files (e.g. {files[0].name}) and class sub-folders with images "
            f"(e.g. {classes[0][0]}/); put every image in a class sub-folder, or none"
        )
    if files:
        return files, [-1] * len(files), []
    if not classes:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"{folder} holds no image files ({suffixes}), neither directly nor in sub-folders")
    paths = [p for _, images in classes for p in images]
    labels = [index for index, (_, images) in enumerate(classes) for _ in images]
    return paths, labels, [name for name, _ in classes]


def _common_size(files: Sequence[Path], sizes: Sequence[tuple[int, int]], folder: Path) -> tuple[int, int]:
    """The (width, height) shared by every image; DataError listing the files that differ."""
    counts = Counter(sizes)
    if len(counts) == 1:
        return sizes[0]
    (width, height), count = counts.most_common(1)[0]
    odd = [f"{f} ({w}x{h})" for f, (w, h) in zip(files, sizes) if (w, h) != (width, height)]
    raise DataError(
        f"{folder}: all images must have the same size; {count} are {width}x{height} but "
        f"{len(odd)} differ: {', '.join(odd[:5])}{', ...' if len(odd) > 5 else ''}. Resize them first"
    )


def _folder_mode(files: Sequence[Path], modes: Sequence[str]) -> str:
    """ "RGB" if any image is colour, else "L"; DataError for images that are not 8-bit."""
    for path, mode in zip(files, modes):
        if mode not in _GREY_MODES | _COLOUR_MODES:
            raise DataError(
                f"{path}: Pillow mode {mode!r} is not supported; images must be 8-bit grey or colour "
                f"(e.g. 'L', 'RGB'), not 16-bit or floating point"
            )
    return "RGB" if any(mode in _COLOUR_MODES for mode in modes) else "L"


def _check_decoded_size(folder: Path, files: Sequence[Path], width: int, height: int, channels: int) -> None:
    """DataError, before decoding, for images above Pillow's pixel limit or a folder too big for memory."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise DataError(
            f"{folder}: the images are {width}x{height} = {width * height:,} pixels each (e.g. {files[0].name}), "
            f"above Pillow's decompression-bomb limit of {int(limit):,} pixels; resize them first (every pixel "
            "is an input of the networks)"
        )
    values = len(files) * width * height * channels
    check_memory(
        values * _BYTES_PER_VALUE,
        f"{folder}: {len(files)} images of {width}x{height}x{channels}, decoded (uint8 and float32 copies),",
    )


def read_image_folder(folder: str | Path) -> ImageFolder:
    """Reads every image of a folder (see the module docstring for the layout).

    Args:
        folder: the folder.

    Returns:
        The images as [N, C, H, W] uint8, with labels and class names.

    Raises:
        DataError: as :func:`list_image_folder`; an unreadable image, images of different sizes
            (the message lists them), an unsupported mode (16-bit, float), images above Pillow's pixel
            limit, or more pixels than the memory available holds.
    """
    folder = Path(folder).expanduser()
    files, labels, classes = list_image_folder(folder)
    headers = [_header(path) for path in files]
    width, height = _common_size(files, [size for size, _ in headers], folder)
    mode = _folder_mode(files, [m for _, m in headers])
    channels = 3 if mode == "RGB" else 1
    _check_decoded_size(folder, files, width, height, channels)
    images = np.empty((len(files), height, width, channels), dtype=np.uint8)  # [N, H, W, C]
    for i, path in enumerate(files):
        images[i] = decode_image(path, mode).reshape(height, width, channels)
    return ImageFolder(
        images=np.ascontiguousarray(images.transpose(0, 3, 1, 2)),  # [N, C, H, W]
        labels=np.asarray(labels, dtype=np.int64),
        classes=tuple(classes),
        files=tuple(files),
    )
