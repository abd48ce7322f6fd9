"""Run folders through faults: killed processes, two trainers on one folder, stale locks and temporary
files, a full disk, a damaged checkpoint, the umask (docs/reliability.md lists them with their commands).

Each killed run is continued with the command the folder's state calls for (``train`` again, or ``train
--resume``) and must end as the uninterrupted run did: the same weights (``runs.load_run``, whatever the
checkpoint format) and the same metrics.jsonl. Subprocesses run ``python -m exemplar_vae train`` and are
killed with SIGKILL when the files they write show they reached the point wanted (no callback in the
code under test); the continuations run in this process (``cli.main.main``), which is faster.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from exemplar_vae import rundir
from exemplar_vae.cli.main import main
from exemplar_vae.errors import ConfigError, RunFailed
from exemplar_vae.io import (
    CONFIG,
    LOCK,
    RunLock,
    WriteFailed,
    atomic_write_text,
    check_run_lock,
    read_lock,
    read_metrics,
)
from exemplar_vae.runs import load_run
from exemplar_vae.training.loop import Trainer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL, /proc and umask semantics of Linux")

# a tiny run: 3 epochs of 3 steps on 300 digits; the first checkpoint comes after epoch 1
ARGS = ["train", "--dataset", "digits", "--train-size", "300", "--hidden", "16", "--latent-dim", "4",
        "--epochs", "3", "--warmup", "1", "--seed", "3", "--prior", "gaussian", "--device", "cpu",
        "--no-progress"]  # fmt: skip
LOSSES = ("train_loss", "train_rec", "train_kl", "val_loss", "val_rec", "val_kl")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as this process (conftest)


def spawn(out: Path, *extra: str, umask: int | None = None) -> subprocess.Popen[str]:
    """``python -m exemplar_vae -q train ... --out OUT`` in a new process."""
    return subprocess.Popen(
        [sys.executable, "-m", "exemplar_vae", "-q", *ARGS, "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,  # noqa: PLW1509
    )  # fmt: skip


def kill_when(proc: subprocess.Popen[str], reached: Callable[[], bool], timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``reached()``; False when it ended before that."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if reached():
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return True
        if proc.poll() is not None:
            proc.communicate()
            return False
        time.sleep(0.002)
    proc.kill()
    proc.communicate()
    raise AssertionError("the run never reached the point to kill it at")


def killed_at(run: Path, reached: Callable[[], bool], wanted: Callable[[], bool]) -> None:
    """Run a fresh ``train`` into RUN and kill it at ``reached``; again (up to 3 tries) when the folder it
    left is not ``wanted`` (a busy machine may let the run go past the point before the kill lands)."""
    for _ in range(3):
        shutil.rmtree(run, ignore_errors=True)
        if kill_when(spawn(run), reached) and wanted():
            return
    pytest.fail(f"could not kill a run at the point wanted in 3 tries ({rundir.describe(run)})")


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_same_run(run: Path, reference: Path) -> None:
    """The same epochs and losses in metrics.jsonl, the same best weights, no lock or temporary file left."""
    got, want = read_metrics(run), read_metrics(reference)
    assert [m["epoch"] for m in got] == [m["epoch"] for m in want] == [1, 2, 3]
    for a, b in zip(got, want, strict=True):
        assert {k: a[k] for k in LOSSES} == {k: b[k] for k in LOSSES}
    mine, theirs = (
        load_run(run, device="cpu")[0].state_dict(),
        load_run(reference, device="cpu")[0].state_dict(),
    )
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    assert not (run / LOCK).exists()
    assert rundir.describe(run)["temp_files"] == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, trained in a process whose umask is 002."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    proc = spawn(out, umask=0o002)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


# -- killed processes ------------------------------------------------------------------------------------


def test_killed_before_config_json_trains_again(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    killed_at(run, lambda: (run / LOCK).exists(), lambda: not rundir.has_checkpoint(run))  # config.json next
    assert cli([*ARGS, "--out", str(run)], capsys)[0] == 0  # the dead process's lock is taken over
    assert_same_run(run, reference)


def test_killed_in_the_first_epoch_restarts_in_place(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    killed_at(run, lambda: (run / CONFIG).exists(), lambda: not rundir.has_checkpoint(run))
    assert (run / CONFIG).is_file()
    assert read_lock(run) is not None  # the killed process's lock is still there
    before = snapshot(run)

    code, _, err = cli(["train", "--out", str(run), "--resume", "--no-progress"], capsys)
    assert code == 2
    assert (
        f"{run} has no checkpoint yet (it stopped in its first epoch): run the same train command without --resume"
        in err
    )
    code, _, err = cli([*ARGS, "--out", str(run), "--lr", "0.01"], capsys)  # another configuration
    assert code == 2 and "stopped before its first checkpoint" in err and "--restart" in err
    assert "train.lr" in err
    assert snapshot(run) == before  # refused before anything was written

    caplog.set_level("INFO", logger="exemplar_vae")
    assert cli([*ARGS, "--out", str(run)], capsys)[0] == 0
    assert f"restarting {run}: it stopped before its first checkpoint" in caplog.text
    assert_same_run(run, reference)


def test_killed_after_a_checkpoint_resumes(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    killed_at(run, lambda: rundir.has_checkpoint(run), lambda: True)
    code, _, err = cli([*ARGS, "--out", str(run)], capsys)
    assert code == 2 and "already holds a run; pass --resume" in err
    assert cli(["train", "--out", str(run), "--resume", "--no-progress"], capsys)[0] == 0
    assert_same_run(run, reference)


def test_an_error_after_config_json_leaves_a_run_that_starts_over(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    for error, status in ((RunFailed("the loss diverged (injected)"), 1), (KeyboardInterrupt(), 130)):

        def fail(self: Trainer, error: BaseException = error) -> None:
            raise error

        monkeypatch.setattr(Trainer, "fit", fail)
        assert cli([*ARGS, "--out", str(run)], capsys)[0] == status
        assert (run / CONFIG).is_file() and not (run / LOCK).exists()  # the lock goes, also on errors
    monkeypatch.undo()
    config = (run / CONFIG).read_bytes()
    code, _, err = cli([*ARGS, "--out", str(run), "--seed", "4"], capsys)
    assert code == 2 and "--restart" in err and (run / CONFIG).read_bytes() == config
    assert cli([*ARGS, "--out", str(run), "--seed", "4", "--restart"], capsys)[0] == 0
    assert json.loads((run / CONFIG).read_text())["train"]["seed"] == 4
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]
    code, _, err = cli([*ARGS, "--out", str(run), "--restart"], capsys)  # never over a checkpoint
    assert code == 2 and "--restart only starts over a run that stopped before its first checkpoint" in err


# -- two trainers, stale locks, temporary files ---------------------------------------------------------


def test_a_second_train_on_a_folder_being_trained_is_refused(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    first = spawn(run)
    deadline = time.monotonic() + 120
    while not ((read_lock(run) or {}).get("pid") and (run / CONFIG).exists()):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never started training"
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)  # it holds the folder for as long as the others try
    try:
        for argv in ([*ARGS, "--out", str(run)], ["train", "--out", str(run), "--resume", "--no-progress"]):
            code, _, err = cli(argv, capsys)
            assert code == 2, err
            assert f"{run} is being trained by pid {first.pid} on {socket.gethostname()} since " in err
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_same_run(run, reference)  # every epoch once: the second process wrote nothing


def _claim_and_hold(
    folder: str, go: multiprocessing.synchronize.Event, results: multiprocessing.Queue
) -> None:
    go.wait()
    try:
        with RunLock.claim(folder):
            results.put("claimed")
            time.sleep(0.5)
    except ConfigError as err:
        results.put(str(err))


def test_of_processes_claiming_a_folder_at_once_one_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_and_hold, args=(str(tmp_path), go, results)) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert outcomes.count("claimed") == 1, outcomes
    assert all("is being trained by" in o for o in outcomes if o != "claimed")
    assert not (tmp_path / LOCK).exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_and_temporary_files_are_cleared_when_the_folder_is_claimed(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    pid = dead_pid()
    lock = {"pid": pid, "host": socket.gethostname(), "started": "earlier", "time": time.time() - 60}
    (run / LOCK).write_text(json.dumps(lock))
    # killed writes: of the run's files (whoever made them), and any of the dead trainer's
    stale = [
        ".config.json.123-ab.tmp",
        ".last.safetensors.99-cd.tmp",
        ".best.pt.k2j3h4.tmp",
        f".curves.png.{pid}-0a.tmp",
    ]
    for name in stale:
        (run / name).write_bytes(b"half")
    old, young = run / ".evaluation.json.7-ef.tmp", run / ".samples.png.8-01.tmp"  # other commands' writes
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    mine = run / "notes.txt"  # not the run's: left alone
    mine.write_text("mine")

    caplog.set_level("INFO", logger="exemplar_vae")
    assert cli([*ARGS, "--out", str(run)], capsys)[0] == 0
    assert f"taking over its lock from pid {pid}" in caplog.text and "that process is gone" in caplog.text
    left = {p.name for p in run.iterdir()}
    assert not left & {*stale, old.name} and young.name in left and mine.read_text() == "mine"
    young.unlink()
    assert_same_run(run, reference)


def test_a_live_or_foreign_lock_is_not_taken_over(tmp_path: Path) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now", "time": time.time()}
    (tmp_path / LOCK).write_text(json.dumps(holder))  # a live pid that holds no file lock (older tool)
    with pytest.raises(ConfigError, match=f"being trained by pid {os.getpid()}"):
        RunLock.claim(tmp_path)
    (tmp_path / LOCK).write_text(json.dumps({**holder, "pid": dead_pid(), "host": "elsewhere.example"}))
    with pytest.raises(ConfigError, match="on elsewhere.example since now; wait for it") as err:
        check_run_lock(tmp_path)
    assert f"remove {tmp_path / LOCK}" in str(err.value)
    # a pid now used by a process that started after the lock was written: the lock's process is gone
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK).write_text(json.dumps({**holder, "pid": sleeper.pid, "time": time.time() - 3600}))
        with RunLock.claim(tmp_path) as lock:
            assert read_lock(tmp_path) == lock.info and lock.info["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (tmp_path / LOCK).exists()


# -- writes the file system refuses -----------------------------------------------------------------------


def fail_writes(monkeypatch: pytest.MonkeyPatch, when: Callable[[str], bool]) -> None:
    """Make ``os.fsync`` of a file whose name passes ``when`` fail with ENOSPC (as a full disk does)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if when(Path(os.readlink(f"/proc/self/fd/{fd}")).name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_fails_the_run_cleanly_and_it_resumes(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    # the second epoch's last checkpoint cannot be written
    fail_writes(monkeypatch, lambda name: name.startswith(".last") and rundir.has_checkpoint(run))
    code, out, err = cli([*ARGS, "--out", str(run)], capsys)
    monkeypatch.undo()
    assert code == 1 and out == ""
    assert err.startswith(f"error: no space left on device writing {run}/last") and len(err.splitlines()) == 1
    assert f"continue it with `exemplar-vae train --out {run} --resume`" in err
    assert rundir.describe(run)["temp_files"] == [] and not (run / LOCK).exists()
    assert cli(["train", "--out", str(run), "--resume", "--no-progress"], capsys)[0] == 0
    assert_same_run(run, reference)


def test_a_full_disk_before_the_first_checkpoint_says_to_train_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    fail_writes(monkeypatch, lambda name: name.startswith(f".{CONFIG}."))
    code, _, err = cli([*ARGS, "--out", str(run)], capsys)
    assert code == 1
    assert err == (
        f"error: no space left on device writing {run / CONFIG}; {run} has no checkpoint yet: once the file "
        "system takes writes again, run the same train command to start it over\n"
    )
    assert sorted(p.name for p in run.iterdir()) == []  # no temporary file, no lock


def test_other_refused_writes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import exemplar_vae.pipeline

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "x"))

    monkeypatch.setattr(exemplar_vae.pipeline, "train", full)
    assert cli([*ARGS, "--out", str(tmp_path / "run")], capsys) == (
        1, "", f"error: disk quota exceeded writing {tmp_path / 'x'}\n"
    )  # fmt: skip
    with pytest.raises(WriteFailed, match="permission denied writing") as err:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        try:
            if os.geteuid() == 0:  # root writes anywhere: refuse as a read-only folder would
                monkeypatch.setattr(os, "open", _refuse(os.open))
            atomic_write_text(folder / "f.txt", "x")
        finally:
            folder.chmod(0o700)
    assert isinstance(err.value, OSError) and err.value.errno == errno.EACCES
    assert list((tmp_path / "ro").iterdir()) == []


def _refuse(real: Callable[..., int]) -> Callable[..., int]:
    def refuse(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, flags, *args, **kwargs)

    return refuse


# -- a damaged checkpoint, metrics cut short, file modes --------------------------------------------------


def test_resume_from_a_truncated_checkpoint_writes_nothing(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for path in run.iterdir():
        if path.name.startswith("last"):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = snapshot(run)
    code, _, err = cli(["train", "--out", str(run), "--resume", "--epochs", "4", "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: ") and "last" in err
    assert snapshot(run) == before  # config.json byte for byte, and no lock left


def test_metrics_cut_short_by_a_crash_are_read_without_their_last_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_metrics(tmp_path) == [{"epoch": 1}, {"epoch": 2}]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError):  # damage inside the file is not a crash's: it is an error
        read_metrics(tmp_path)


def test_written_files_follow_the_umask(reference: Path, tmp_path: Path) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in reference.iterdir()}
    assert {"config.json", "data.json", "metrics.jsonl", "curves.png"} <= set(modes) and len(modes) > 5
    assert modes == dict.fromkeys(modes, 0o664), modes  # umask 002: the group may read and write the run
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
