"""Standard on-disk formats: the IDX files of MNIST and Fashion-MNIST, and checked downloads.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a big-endian header followed by
a dense array::

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions n
    4n bytes    n big-endian uint32 sizes
    rest        prod(sizes) items, big-endian, C order

Files are often gzip-compressed; :func:`read_idx` detects that from the magic bytes ``1f 8b``, not
from the file name. It reads the header first and checks the size it declares against the file (or
the decompressed stream) and the memory available before reading the payload, so a header claiming
10^12 items is refused without allocating anything, and a named pipe is never opened.

Downloads are checked against the md5 of the official ``.gz`` files. Files found locally are NOT
checksummed (the Debian ``dataset-fashion-mnist`` package recompresses them, so their
md5s differ); they are validated structurally by :func:`read_idx` instead. A file without a published
md5 (Omniglot's ``chardata.mat``) is downloaded with a structural ``verify`` check instead of an md5.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from exemplar_vae.errors import DataError

__all__ = [
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "IDX_DTYPES",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "available_memory",
    "check_memory",
    "download",
    "download_any",
    "find_file",
    "read_idx",
]

logger = logging.getLogger(__name__)

# role -> (file name of the official gzip file, md5 of that gzip file)
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS: tuple[str, ...] = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)

FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
FASHION_MNIST_MIRRORS: tuple[str, ...] = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

# IDX type code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

Verifier = Callable[[Path], object]  # raises DataError when a downloaded file is not what it should be

_GZIP_MAGIC = b"\x1f\x8b"
_DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK_BYTES = 1 << 20
_EXTRA_COUNT_LIMIT = 64 << 20  # bytes past a gzip payload counted before "at least" is reported


def available_memory() -> int | None:
    """Bytes of memory available to this process (MemAvailable of /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(need: int, what: str) -> None:
    """DataError when ``need`` bytes are more than the memory available (checked before allocating).

    Args:
        need: the bytes the data would take.
        what: the data, for the message, e.g. "x.npz: array x of shape (10, 784) uint8".
    """
    have = available_memory()
    if have is not None and need > have:
        raise DataError(
            f"{what} would take about {need / 2**30:.1f} GiB of memory but {have / 2**30:.1f} GiB are "
            "available; use a smaller dataset (or check that the file is what you meant)"
        )


def _check_regular_file(path: Path, what: str) -> None:
    """DataError unless ``path`` is a regular file (or a link to one): a named pipe is never opened."""
    if path.is_file():
        return
    if not path.exists():
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise DataError(f"cannot read {what} {path}: no such file{broken}")
    raise DataError(f"cannot read {what} {path}: not a regular file (a folder, named pipe, socket or device)")


class _IdxStream:
    """Reads an IDX file's bytes, gunzipped when the file starts with ``1f 8b``; errors name the file."""

    def __init__(self, raw: BinaryIO, path: Path) -> None:
        self.path = path
        self.compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        self.stream: BinaryIO = raw
        if self.compressed:
            self.stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer at the end), read in chunks: memory grows with what the file holds,
        not with what its header claims."""
        chunks, left = [], n
        while left > 0:
            chunk = self._read(min(left, _CHUNK_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read(self, n: int) -> bytes:
        try:
            return self.stream.read(n)
        except (OSError, EOFError, zlib.error) as err:
            if self.compressed:
                raise DataError(
                    f"corrupt gzip file {self.path}: {err}; delete it and download it again"
                ) from err
            reason = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise DataError(f"cannot read IDX file {self.path}: {reason}") from err

    def count_rest(self) -> tuple[int, bool]:
        """(bytes left, whether all were counted): at most ``_EXTRA_COUNT_LIMIT`` are counted."""
        extra = 0
        while extra < _EXTRA_COUNT_LIMIT:
            chunk = self.read(_CHUNK_BYTES)
            if not chunk:
                return extra, True
            extra += len(chunk)
        return extra, False


def _parse_idx_header(data: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parses an IDX header.

    Returns:
        (big-endian item dtype, dims, header length in bytes).
    """
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(data)} bytes, a header needs at least 4")
    if data[0:2] != b"\x00\x00":
        raise DataError(f"{path} is not an IDX file: magic starts with {data[0:2].hex(' ')}, expected 00 00")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02x} ({d.name})" for c, d in IDX_DTYPES.items())
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x}; valid codes are {valid}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_len} bytes, file has {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return IDX_DTYPES[code], dims, header_len


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or raw.

    Args:
        path: the file. Compression is detected from the content (magic ``1f 8b``), not the name.

    Returns:
        A writable array of shape ``dims`` in native byte order (uint8 for the MNIST files).

    Raises:
        DataError: the file is missing or unreadable, is not valid gzip, has a bad magic number or
            type code, or its payload is shorter or longer than the header's dims require.
    """
    path = Path(path)
    _check_regular_file(path, "IDX file")
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            stream = _IdxStream(raw, path)
            head = stream.read(4)
            if len(head) == 4:
                head += stream.read(4 * head[3])
            dtype, dims, header_len = _parse_idx_header(head, path)
            expected = math.prod(dims) * dtype.itemsize
            if not stream.compressed and size - header_len != expected:  # known without reading
                _payload_error(path, dims, dtype, expected, size - header_len)
            check_memory(2 * expected, f"{path}: IDX dims {dims} of {dtype.name}")
            data = stream.read(expected)
            if len(data) < expected:
                _payload_error(path, dims, dtype, expected, len(data))
            extra, counted = stream.count_rest()
            if extra:
                _payload_error(path, dims, dtype, expected, expected + extra, exact=counted)
    except OSError as err:
        raise DataError(f"cannot read IDX file {path}: {err.strerror or err}") from err
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # copies: writable, native byte order


def _payload_error(
    path: Path, dims: tuple[int, ...], dtype: np.dtype, expected: int, actual: int, exact: bool = True
) -> None:
    kind = "truncated" if actual < expected else "too long"
    found = f"{actual}" if exact else f"more than {actual}"
    raise DataError(
        f"{path}: IDX payload {kind}: dims {dims} of {dtype.name} need {expected} bytes, found {found}"
    )


def find_file(data_dir: Path, stem: str) -> Path | None:
    """Finds ``stem`` or ``stem.gz`` in ``data_dir``.

    Args:
        data_dir: the folder to look in.
        stem: the file name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.

    Returns:
        The first of ``data_dir/stem`` and ``data_dir/stem.gz`` that is a file, or None.
    """
    for name in (stem, f"{stem}.gz"):
        candidate = Path(data_dir) / name
        if candidate.is_file():
            return candidate
    return None


def _copy_with_md5(url: str, out: BinaryIO) -> str:
    """Streams ``url`` into the open binary file ``out`` and returns the md5 hex digest."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        while chunk := response.read(_CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _check_download(url: str, tmp: Path, md5: str | None, actual: str, verify: Verifier | None) -> None:
    """Raises DataError when the downloaded ``tmp`` fails its md5 or its structural check."""
    if md5 is not None and actual != md5.lower():
        raise DataError(f"md5 mismatch for {url}: expected {md5}, got {actual}; the file was discarded")
    if verify is not None:
        try:
            verify(tmp)
        except DataError as err:
            raise DataError(
                f"the file downloaded from {url} failed its check ({err}); it was discarded"
            ) from err


def download(url: str, dest: Path, md5: str | None, verify: Verifier | None = None) -> Path:
    """Downloads ``url`` to ``dest`` atomically, checking its md5 and/or its structure.

    The bytes go to a temporary file in ``dest``'s folder, which is moved into place with
    ``os.replace`` only when its checks pass, so ``dest`` is never left half-written.

    Args:
        url: any URL urllib opens (``https://``, ``http://``, ``file://``).
        dest: where the file should end up; its folder is created if needed.
        md5: the expected md5 hex digest of the downloaded bytes, or None when no checksum is
            published (then pass ``verify``).
        verify: called with the downloaded temporary file; raises DataError when its content is
            wrong (e.g. missing keys or wrong shapes).

    Returns:
        ``dest``.

    Raises:
        DataError: the download failed (network error, timeout after ~30 s, missing URL), the md5
            did not match, or ``verify`` rejected the file. No temporary file is left behind.
    """
    assert md5 is not None or verify is not None, "a download needs an md5 or a verify function"
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create download folder {dest.parent}: {err.strerror or err}") from err
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        logger.info("downloading %s -> %s", url, dest)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _copy_with_md5(url, out)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DataError(
                f"download of {url} failed ({err}); without network access, put {dest.name} into "
                f"{dest.parent} yourself, or point --data-dir at a folder that holds it"
            ) from err
        _check_download(url, tmp, md5, actual, verify)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_any(urls: Sequence[str], dest: Path, md5: str | None, verify: Verifier | None = None) -> Path:
    """Tries :func:`download` from each URL in turn (mirrors) until one succeeds.

    Args:
        urls: candidate URLs for the same file, best first.
        dest: where the file should end up.
        md5: the expected md5 hex digest, or None (then ``verify`` checks the file).
        verify: structural check of the downloaded file (see :func:`download`).

    Returns:
        ``dest``.

    Raises:
        DataError: every URL failed; the message lists each failure.
    """
    failures = []
    for url in urls:
        try:
            return download(url, dest, md5, verify)
        except DataError as err:
            logger.warning("%s", err)
            failures.append(str(err))
    raise DataError(f"could not download {dest.name} from any mirror: " + "; ".join(failures))
