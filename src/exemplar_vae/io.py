"""Files at the ground floor: atomic writes and the run-folder file names.

Every module that writes a file imports from here (data caches, configs, pictures, checkpoints,
reports), so nothing low in the package has to import training to write safely.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from exemplar_vae.errors import ConfigError, RunFailed

logger = logging.getLogger(__name__)

# the files of a run folder
CONFIG, METRICS, EVALUATION = "config.json", "metrics.jsonl", "evaluation.json"
# its two checkpoints (``exemplar_vae.training.checkpoint``): safetensors files, then a JSON document that
# commits them (written last: a checkpoint exists once its .json is there). BEST and LAST are those
# documents; ``checkpoint.has_checkpoint``/``checkpoint_file`` also find the legacy files of older runs.
BEST, BEST_WEIGHTS = "best.json", "best.safetensors"  # the weights of the best validation epoch
LAST, LAST_WEIGHTS, LAST_OPTIMIZER = "last.json", "last.safetensors", "last-optimizer.safetensors"
LEGACY_BEST, LEGACY_LAST = "best.pt", "last.pt"  # torch.save checkpoints of runs written before
# a checkpoint's safetensors file is first written as NAME + PENDING and renamed to NAME after the .json
# commit; the loader reads a PENDING file whose SHA-256 the .json records (a save stopped in between)
PENDING = ".pending"
CHECKPOINT_FORMAT_VERSION = 1  # the "format_version" of best.json and last.json

# the files of a self-contained model folder (``VAE.save_pretrained``, ``exemplar_vae.from_pretrained``)
PRETRAINED_CONFIG, PRETRAINED_WEIGHTS, PRETRAINED_EXEMPLARS = (
    "config.json",
    "model.safetensors",
    "exemplars.safetensors",
)
PRETRAINED_FORMAT_VERSION = 1  # the "format_version" of such a folder's config.json


# the errors that mean "this file system will not take the write": disk full, quota, read-only, no permission
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class WriteFailed(RunFailed, OSError):
    """Writing ``filename`` failed on the file system's side (disk full, quota, read-only, permission).

    An ``OSError`` (``errno``, ``strerror``, ``filename`` = the file that was being written, not a temporary
    one), so code that catches OSError still does; also a ``RunFailed``, so the CLI prints it as one line
    (``error: no space left on device writing PATH``) and exits with status 1."""

    hint = ""  # what to do about it, when the caller knows (``rundir.write_failure``)

    def __str__(self) -> str:
        reason = (self.strerror or "write failed").lower()
        return f"{reason} writing {self.filename}" + (f"; {self.hint}" if self.hint else "")


def write_failed(err: OSError, path: str | Path) -> OSError:
    """``err`` as a ``WriteFailed`` naming ``path`` when its errno is one of ``WRITE_ERRNOS`` (else ``err``)."""
    if isinstance(err, WriteFailed) or err.errno not in WRITE_ERRNOS:
        return err
    return WriteFailed(err.errno, err.strerror or os.strerror(err.errno), str(path))


def _raise_write_failed(err: OSError, path: str | Path) -> NoReturn:
    """Raise ``write_failed(err, path)`` (from ``err``), or ``err`` itself when it is no such error."""
    failed = write_failed(err, path)
    if failed is err:
        raise err
    raise failed from err


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.PID-RANDOM.tmp`` (``temp_target`` reads NAME back)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def temp_target(name: str) -> str | None:
    """The file a temporary file named ``name`` (``.NAME.XXXX.tmp``, this module's or ``mkstemp``'s of
    older versions) was about to replace; None for any other name."""
    if not (name.startswith(".") and name.endswith(".tmp")) or name.count(".") < 3:
        return None
    return name[1:-4].rsplit(".", 1)[0] or None


def temp_pid(name: str) -> int | None:
    """The pid of the process that made the temporary file ``name`` (``.NAME.PID-RANDOM.tmp``); None for
    names without one (``mkstemp``'s, of older versions)."""
    if temp_target(name) is None:
        return None
    head = name[:-4].rsplit(".", 1)[1].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it into place.

    A reader sees the old file or the new one, never half of one; on any error the temporary file is
    removed (a temporary file left by a killed process, ``.NAME.PID-RANDOM.tmp``, is removed when its run
    folder is next claimed: ``exemplar_vae.rundir``). ``write`` may stream (e.g. ``np.save`` of a large
    array). The file gets the mode ``open`` would give it (0o666 less the umask), whatever it replaces.

    Raises:
        WriteFailed: the file system refused the write (disk full, quota, read-only, permission); the old
            file, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = temp_name(path)
            try:  # 0o666: the kernel applies the umask (and a default ACL), as for any new file
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:
                continue
    except OSError as err:
        _raise_write_failed(err, path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError):
            _raise_write_failed(err, path)
        raise
    _fsync_dir(path.parent)


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
    """The JSON objects of a JSON-lines file, one per non-empty line ([] when there is no file).

    A last line cut short (no newline, not valid JSON: its writer was killed, or the disk filled, in the
    middle of appending it) is left out with a warning; any other bad line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except ValueError:
            logger.warning("%s: ignoring its last line, cut short: %.60r", path, lines[-1])
            lines.pop()
    return [json.loads(line) for line in lines if line.strip()]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch lines of RUN_DIR/metrics.jsonl ([] before the first epoch)."""
    return read_jsonl(Path(run_dir) / METRICS)


# ------------------------------------------------------------------------------- the run-folder lock
LOCK = ".lock"  # RUN/.lock: {"pid", "host", "started", "time"} of the process that trains the run

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid alone tells a stale lock
    fcntl = None  # type: ignore[assignment]

STALE_SLACK_S = 2.0  # a pid whose process started this long after the lock was written is another process


def _flock(fd: int) -> bool:
    """Take an exclusive advisory lock on ``fd`` without waiting. True when taken (or when the file system
    cannot lock: then the pid decides), False when another process holds it. The kernel drops the lock
    when its process dies, however it dies."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # e.g. ENOLCK on a network file system without locking
        return True
    return True


def pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` runs on this machine (None: cannot tell)."""
    if os.name == "nt" or pid <= 0:  # pragma: no cover - os.kill(pid, 0) would kill on Windows
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return None
    return True


def process_start_time(pid: int) -> float | None:
    """The Unix time at which process ``pid`` started (Linux ``/proc``); None elsewhere or when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, in clock ticks after boot (fields[0] is field 3)
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _lock_info() -> dict[str, Any]:
    now = time.time()
    started = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now))
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "time": now}


def _read_lock_fd(fd: int) -> dict[str, Any]:
    """The lock document read from ``fd`` ({} when empty or unreadable: its writer died before writing)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def read_lock(folder: str | Path) -> dict[str, Any] | None:
    """FOLDER/.lock's document: None when there is no lock, {} when it cannot be read."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        return _read_lock_fd(fd)
    finally:
        os.close(fd)


def lock_is_stale(info: dict[str, Any]) -> bool:
    """Whether a lock (whose file lock could be taken) was left by a process that is gone: one on this
    host whose pid is dead or now belongs to a later process, or one that died before writing it. A lock
    of another host is never stale here (its pid cannot be checked from this machine)."""
    pid = info.get("pid")
    if not isinstance(pid, int):
        return True
    if info.get("host") != socket.gethostname():
        return False
    alive = pid_alive(pid)
    if alive is None:
        return False
    if not alive:
        return True
    start, written = process_start_time(pid), info.get("time")
    return start is not None and isinstance(written, (int, float)) and start > written + STALE_SLACK_S


def _busy(folder: Path, info: dict[str, Any]) -> ConfigError:
    if info.get("pid") is None:
        who = "another process (it is claiming the folder now)"
    else:
        who = f"pid {info.get('pid')} on {info.get('host', '?')} since {info.get('started', '?')}"
    return ConfigError(
        f"{folder} is being trained by {who}; wait for it to finish (or stop it), or pick another --out "
        f"(if that process is gone for sure, remove {folder / LOCK})"
    )


def check_run_lock(folder: str | Path) -> None:
    """Raise when a live process holds FOLDER/.lock (nothing when there is no lock or a stale one); a
    check before the work, without claiming (``RunLock.claim`` claims, atomically).

    Raises:
        ConfigError: ``FOLDER is being trained by pid P on HOST since T; ...``.
    """
    folder = Path(folder)
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:  # none (or unreadable: claiming will say so)
        return
    try:
        info = _read_lock_fd(fd)
        if not _flock(fd) or not lock_is_stale(info):
            raise _busy(folder, info)
    finally:
        os.close(fd)  # drops the file lock taken to look


class RunLock:
    """A claimed run folder: FOLDER/.lock, created with O_CREAT | O_EXCL and held (``flock``) until
    ``release``; the document says who holds it: {"pid", "host", "started", "time"}.

    ``RunLock.claim(folder)`` takes a stale lock over (its process is gone: ``lock_is_stale``) with a log
    line and refuses a live one. Use as a context manager, or call ``release`` in a ``finally``.
    """

    def __init__(self, path: Path, fd: int, info: dict[str, Any]) -> None:
        self.path, self.info = path, info
        self._fd: int | None = fd
        self.took_over: dict[str, Any] | None = None  # the stale lock's document, when one was taken over

    @classmethod
    def claim(cls, folder: str | Path) -> RunLock:
        """Create FOLDER (if needed) and claim it.

        Raises:
            ConfigError: a live process holds the folder.
            WriteFailed: the folder or its lock file cannot be written.
        """
        folder = Path(folder)
        path = folder / LOCK
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _raise_write_failed(err, folder)
        for _ in range(20):
            old: dict[str, Any] | None = None
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                taken = cls._take_over(folder, path)
                if taken is None:  # released or replaced meanwhile: look again
                    continue
                fd, old = taken
                logger.warning(
                    "%s: taking over its lock from pid %s on %s (since %s): that process is gone",
                    folder, old.get("pid", "?"), old.get("host", "?"), old.get("started", "?"),
                )  # fmt: skip
            except OSError as err:
                _raise_write_failed(err, path)
            else:
                if not _flock(fd):  # another claimer took the new file over before it was locked
                    os.close(fd)
                    continue
            lock = cls(path, fd, _lock_info())
            lock.took_over = old
            try:
                data = (json.dumps(lock.info) + "\n").encode()
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError as err:
                lock.release()
                _raise_write_failed(err, path)
            return lock
        raise ConfigError(f"could not claim {folder}: its lock file {path} keeps changing hands; try again")

    @staticmethod
    def _take_over(folder: Path, path: Path) -> tuple[int, dict[str, Any]] | None:
        """The fd (file-locked) and document of ``path`` when it is stale; None when it went away."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        except OSError as err:
            _raise_write_failed(err, path)
        keep = False
        try:
            if not _flock(fd):
                raise _busy(folder, _read_lock_fd(fd))
            try:  # still the file at that path (not one its holder removed while we opened it)?
                now = os.stat(path)
            except FileNotFoundError:
                return None
            mine = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                return None
            info = _read_lock_fd(fd)
            if not lock_is_stale(info):
                raise _busy(folder, info)
            keep = True
            return fd, info
        finally:
            if not keep:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the file lock (idempotent; never raises)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            now, mine = os.stat(self.path), os.fstat(fd)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
