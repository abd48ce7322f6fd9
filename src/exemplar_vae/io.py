"""Files at the ground floor: atomic writes and the run-folder file names.

Every module that writes a file imports from here (data caches, configs, pictures, checkpoints,
reports), so nothing low in the package has to import training to write safely.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# the files of a run folder
CONFIG, METRICS, BEST, LAST, EVALUATION = (
    "config.json",
    "metrics.jsonl",
    "best.pt",
    "last.pt",
    "evaluation.json",
)

# the files of a self-contained model folder (``VAE.save_pretrained``, ``exemplar_vae.from_pretrained``)
PRETRAINED_CONFIG, PRETRAINED_WEIGHTS, PRETRAINED_EXEMPLARS = (
    "config.json",
    "model.safetensors",
    "exemplars.safetensors",
)
PRETRAINED_FORMAT_VERSION = 1  # the "format_version" of such a folder's config.json


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it into place.

    A reader sees the old file or the new one, never half of one; on any error the temporary file is
    removed. ``write`` may stream (e.g. ``np.save`` of a large array).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write`` of a bytes payload."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, doc: Any) -> None:
    """``atomic_write_text`` of an indented JSON document."""
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def sha256_bytes(data: bytes) -> str:
    """The SHA-256 of ``data``, as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in blocks, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_version() -> str:
    """exemplar-vae's version (for stamping written files): ``exemplar_vae.__version__``, read from the
    package already imported (this ground floor imports nothing above it), else the installed
    distribution's; "unknown" when neither is there."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    found = getattr(sys.modules.get("exemplar_vae"), "__version__", None)
    if isinstance(found, str):
        return found
    try:
        return version("exemplar-vae")
    except PackageNotFoundError:
        return "unknown"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-empty line ([] when there is no file)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch lines of RUN_DIR/metrics.jsonl ([] before the first epoch)."""
    return read_jsonl(Path(run_dir) / METRICS)
