"""Run folders through faults: claim one for training, clean what a killed run left, start over a run
that never reached its first checkpoint.

``pipeline.train`` writes a run folder in this order: the folder and its lock (``RUN/.lock``, held while
training), config.json and data.json, then every epoch a metrics.jsonl line followed by the checkpoints
(``exemplar_vae.training.checkpoint``: last.json commits a checkpoint; last.pt for runs written before).
A process killed at any point leaves one of three folders, each of which one command continues:

* no config.json (killed before it was written): ``train`` starts the run (a stale lock is taken over, the
  temporary files of interrupted writes are removed);
* config.json but no checkpoint -- *unfinished* (killed, diverged or out of disk in the first epoch):
  ``train`` with the same configuration starts it again in place; with another configuration it asks for
  ``--restart`` (start it over with the new one) or another ``--out``; ``train --resume`` says to drop
  ``--resume``;
* a checkpoint: ``train --resume`` continues it from there.

docs/reliability.md lists the faults tried and the tests that try them.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from exemplar_vae.config import RunConfig
from exemplar_vae.errors import CheckpointError, ConfigError
from exemplar_vae.io import (
    CONFIG,
    EVALUATION,
    LAST,
    LEGACY_LAST,
    METRICS,
    WRITE_ERRNOS,
    RunLock,
    WriteFailed,
    read_lock,
    temp_pid,
    temp_target,
)
from exemplar_vae.runs import DATA_RECORD
from exemplar_vae.training.checkpoint import checkpoint_file, checkpoint_names

logger = logging.getLogger(__name__)

CURVES, TENSORBOARD = "curves.png", "tensorboard"

# written only by ``train``, which holds the lock: a temporary file of one of these is a dead writer's
TRAIN_FILES = frozenset({CONFIG, DATA_RECORD, METRICS, *checkpoint_names("best"), *checkpoint_names("last")})
# what a run that never reached its first checkpoint may have left: removed when it starts over (a best
# checkpoint is written before the last one; so are the last one's files before the .json commits them)
UNFINISHED_FILES = (
    CONFIG, DATA_RECORD, METRICS, *checkpoint_names("best"),
    *(name for name in checkpoint_names("last") if name not in (LAST, LEGACY_LAST)), CURVES, EVALUATION, TENSORBOARD,
)  # fmt: skip
# a temporary file of another file (evaluation.json, report pictures: other commands may be writing
# them) is removed once it is this old
TEMP_MAX_AGE_S = 600.0


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether RUN_DIR holds a last checkpoint to resume from (last.json, or the last.pt of an older run)."""
    return checkpoint_file(run_dir, "last") is not None


def unfinished_files(run_dir: str | Path) -> list[str]:
    """The files of a run that stopped before its first checkpoint, as far as RUN_DIR holds them ([] when
    it holds a checkpoint, or none of them)."""
    run_dir = Path(run_dir)
    if has_checkpoint(run_dir) or not run_dir.is_dir():
        return []
    return [name for name in UNFINISHED_FILES if (run_dir / name).exists()]


def is_unfinished(run_dir: str | Path) -> bool:
    """Whether RUN_DIR holds a run that was started (config.json, metrics or checkpoint weights written)
    and stopped before its first checkpoint."""
    left = set(unfinished_files(run_dir))
    return bool(left - {CURVES, EVALUATION, TENSORBOARD})


def check_folder(run_dir: str | Path, resume: bool = False, restart: bool = False) -> None:
    """What ``train`` can say about RUN_DIR before loading anything (the lock aside:
    ``io.check_run_lock``): nothing to resume, a run already there.

    Raises:
        ConfigError: the folder holds a run with a checkpoint and ``resume`` was not asked for.
        CheckpointError: ``resume`` with no checkpoint (saying what to do when the run stopped in its
            first epoch).
    """
    run_dir = Path(run_dir)
    if resume:
        if has_checkpoint(run_dir):
            return
        if is_unfinished(run_dir):
            raise CheckpointError(
                f"{run_dir} has no checkpoint yet (it stopped in its first epoch): run the same train command "
                "without --resume to start it again"
            )
        raise CheckpointError(
            f"cannot resume: no checkpoint ({LAST}) in {run_dir}: nothing was trained there"
        )
    if has_checkpoint(run_dir):
        if restart:
            raise ConfigError(
                f"{run_dir} holds a run with a checkpoint; --restart only starts over a run that stopped before "
                "its first checkpoint: pass --resume to continue it, or pick another --out"
            )
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or pick another --out"
        )


def config_differences(saved: RunConfig, wanted: RunConfig) -> list[str]:
    """``section.name: saved -> wanted`` for every setting that differs (the device does not count)."""
    a, b = saved.to_dict(), wanted.to_dict()
    out = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for name in sorted(set(sa) | set(sb)):
            if (section, name) != ("train", "device") and sa.get(name) != sb.get(name):
                out.append(f"{section}.{name}: {sa.get(name)!r} -> {sb.get(name)!r}")
    return out


def check_restart(run_dir: str | Path, config: RunConfig, restart: bool = False) -> bool:
    """Whether RUN_DIR holds an unfinished run that ``train(config)`` starts over (its files are then
    removed by ``clear_unfinished`` once the folder is claimed).

    The run starts over when ``config`` (validated) is the saved one, the device aside, or when
    ``restart`` says to.

    Raises:
        ConfigError: the unfinished run has another configuration (or none readable) and not ``restart``.
    """
    run_dir = Path(run_dir)
    if not is_unfinished(run_dir):
        return False
    if restart:
        return True
    try:
        diff = config_differences(RunConfig.load(run_dir / CONFIG), config)
    except ConfigError as err:
        diff = [f"its {CONFIG} cannot be compared: {err}"]
    if not diff:
        return True
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    raise ConfigError(
        f"{run_dir} holds a run that stopped before its first checkpoint, with another configuration "
        f"({shown}); pass --restart to start it over with the new configuration, or pick another --out"
    )


def clean_temp_files(
    run_dir: str | Path, max_age_s: float = TEMP_MAX_AGE_S, dead_pids: Collection[int] = ()
) -> list[str]:
    """Remove the temporary files that interrupted atomic writes left in RUN_DIR (``.NAME.XXXX.tmp``):
    those of the files only ``train`` writes (call it with the folder claimed), those made by a process of
    ``dead_pids`` (the trainer whose stale lock was taken over: its curves.png, say), and any other older
    than ``max_age_s`` (other commands -- evaluate, report -- may be writing theirs now). Returns the names
    removed."""
    run_dir = Path(run_dir)
    removed = []
    now = time.time()
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return []
    for path in entries:
        target = temp_target(path.name)
        if target is None or not path.is_file():
            continue
        try:
            if (
                target in TRAIN_FILES
                or temp_pid(path.name) in dead_pids
                or now - path.stat().st_mtime > max_age_s
            ):
                path.unlink()
                removed.append(path.name)
        except FileNotFoundError:
            continue
    return sorted(removed)


def claim(run_dir: str | Path) -> RunLock:
    """Claim RUN_DIR for training (``io.RunLock``: created if needed, a stale lock taken over) and remove
    the temporary files that killed writes left there.

    Raises:
        ConfigError: another live process holds it.
        WriteFailed: the folder cannot be written.
    """
    lock = RunLock.claim(run_dir)
    dead = lock.took_over.get("pid") if lock.took_over else None
    try:
        removed = clean_temp_files(run_dir, dead_pids=(dead,) if isinstance(dead, int) else ())
    except BaseException:
        lock.release()
        raise
    if removed:
        logger.info("%s: removed %d temporary file(s) of interrupted writes: %s", run_dir, len(removed),
                    ", ".join(removed))  # fmt: skip
    return lock


def clear_unfinished(run_dir: str | Path, also: tuple[str, ...] = ()) -> list[str]:
    """Remove what a run that stopped before its first checkpoint left in RUN_DIR (``UNFINISHED_FILES``,
    and the names in ``also``), so that it can start over; other files stay. Call it with the folder
    claimed. Returns the names removed.

    Raises:
        ConfigError: RUN_DIR holds a checkpoint (nothing trained is ever removed here).
    """
    run_dir = Path(run_dir)
    if has_checkpoint(run_dir):
        raise ConfigError(f"{run_dir} holds a checkpoint: it is resumed, not started over")
    removed = []
    for name in (*UNFINISHED_FILES, *also):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        logger.info(
            "restarting %s: it stopped before its first checkpoint (removed %s)", run_dir, ", ".join(removed)
        )
    return removed


def start_over(run_dir: str | Path, also: tuple[str, ...] = ()) -> list[str]:
    """``clear_unfinished`` with RUN_DIR claimed for the time it takes (for tools that train many runs:
    ``reproduce``, ``ablation``); nothing when the folder does not exist. Returns the names removed.

    Raises:
        ConfigError: another process trains the folder, or it holds a checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    with claim(run_dir):
        return clear_unfinished(run_dir, also)


def write_failure(run_dir: str | Path, err: OSError) -> OSError:
    """The error to raise when writing into a run folder failed with ``err``: for a full disk, a quota, a
    read-only or forbidden folder (``io.WRITE_ERRNOS``), a ``WriteFailed`` (a ``RunFailed``: the CLI prints
    one line, exit status 1) naming the file and saying how to go on; ``err`` itself otherwise."""
    if err.errno not in WRITE_ERRNOS:
        return err
    run_dir = Path(run_dir)
    failed = WriteFailed(err.errno, err.strerror or "write failed", str(err.filename or run_dir))
    if has_checkpoint(run_dir):
        failed.hint = (
            f"{run_dir} keeps its last checkpoint: once the file system takes writes again, continue it with "
            f"`exemplar-vae train --out {run_dir} --resume`"
        )
    else:
        failed.hint = (
            f"{run_dir} has no checkpoint yet: once the file system takes writes again, run the same train "
            "command to start it over"
        )
    return failed


def describe(run_dir: str | Path) -> dict[str, Any]:
    """Where RUN_DIR stands (for messages and tools): "state" (absent, empty, unfinished, checkpointed),
    the lock's document (None: no lock), and the temporary files in it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        state = "absent"
    elif has_checkpoint(run_dir):
        state = "checkpointed"
    elif is_unfinished(run_dir):
        state = "unfinished"
    else:
        state = "empty"
    temps = sorted(p.name for p in run_dir.iterdir() if temp_target(p.name)) if run_dir.is_dir() else []
    return {"state": state, "lock": read_lock(run_dir), "temp_files": temps}
