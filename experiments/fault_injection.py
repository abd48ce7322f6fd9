"""Kill `exemplar-vae train` at random moments and check that the command the folder calls for finishes the
run as if nothing had happened.

    .venv/bin/python experiments/fault_injection.py 8 --seed 0

One uninterrupted reference run is trained first and timed. Then, N times: a fresh run is started, killed
with SIGKILL at a random point -- one in ten while it starts up (imports, data, checks: a delay drawn
uniformly below the time the reference took to claim its folder), the others a delay drawn uniformly from
[0, 1.2 x the time the reference took from its claim to its last epoch's checkpoint] after the run's own
lock appears -- and continued with what its
folder calls for (``exemplar_vae.rundir``): ``train --resume`` when it holds a checkpoint, the same
``train`` command otherwise (an unfinished run starts over in place, a stale lock is taken over). The
point *held* when the continued run has the reference's metrics.jsonl losses and best weights exactly, and
no lock or temporary file is left. Prints a markdown table (docs/reliability.md holds one).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from exemplar_vae import rundir
from exemplar_vae.io import LOCK, read_metrics
from exemplar_vae.runs import load_run

ARGS = ["train", "--dataset", "digits", "--train-size", "300", "--hidden", "16", "--latent-dim", "4",
        "--warmup", "1", "--seed", "3", "--prior", "gaussian", "--device", "cpu", "--no-progress"]  # fmt: skip
LOSSES = ("train_loss", "train_rec", "train_kl", "val_loss", "val_rec", "val_kl")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def command(out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exemplar_vae",
        "-q",
        *ARGS,
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        *extra,
    ]


def differences(run: Path, reference: Path) -> list[str]:
    """What differs between a continued run and the reference ([] when they are the same run)."""
    problems = []
    got, want = read_metrics(run), read_metrics(reference)
    if [m["epoch"] for m in got] != [m["epoch"] for m in want]:
        problems.append(f"epochs {[m['epoch'] for m in got]}")
    elif any({k: a[k] for k in LOSSES} != {k: b[k] for k in LOSSES} for a, b in zip(got, want, strict=True)):
        problems.append("losses differ")
    try:
        mine, theirs = (
            load_run(run, device="cpu")[0].state_dict(),
            load_run(reference, device="cpu")[0].state_dict(),
        )
        if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
            problems.append("weights differ")
    except Exception as err:  # noqa: BLE001 - reported in the table
        problems.append(f"load_run: {type(err).__name__}: {err}")
    left = rundir.describe(run)
    if (run / LOCK).exists():
        problems.append("lock left")
    if left["temp_files"]:
        problems.append(f"temp files left: {left['temp_files']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n", type=int, help="kill points to try")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays (default 0)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the run (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temp folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fault-injection-"))
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    reference = out / "reference"
    start = time.monotonic()
    proc = subprocess.Popen(command(reference, args.epochs), env=ENV, stdout=subprocess.DEVNULL)
    claimed = trained = (
        None  # when the folder was claimed (before: imports, data), when the last epoch was written
    )
    while proc.poll() is None:
        now = time.monotonic() - start
        if claimed is None and (reference / LOCK).exists():
            claimed = now
        if (
            trained is None
            and len(read_metrics(reference)) >= args.epochs
            and rundir.has_checkpoint(reference)
        ):
            trained = now
        time.sleep(0.002)
    duration = time.monotonic() - start
    if proc.returncode != 0 or claimed is None:
        print(f"the reference run failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    window = 1.2 * ((trained or duration) - claimed)
    print(f"reference run: {duration:.1f}s, {args.epochs} epochs (folder claimed at {claimed:.1f}s, trained at "
          f"{trained or duration:.1f}s); runs in {out}")  # fmt: skip
    print(f"kill points: 1 in 10 while the process starts up, 9 in 10 within {window:.2f}s of its claim\n")
    print("| # | killed at | folder left | continued with | result |")
    print("|---|---|---|---|---|")
    held = 0
    for i in range(1, args.n + 1):
        run = out / f"run{i}"
        x = rng.random()
        proc = subprocess.Popen(
            command(run, args.epochs), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if x < 0.1:  # during start-up (imports, data, checks): nothing written yet, or the claim
            delay = x / 0.1 * claimed
            when = f"start + {delay:.2f}s"
            time.sleep(delay)
        else:  # after the claim: config.json, the first epoch, checkpoints, the end
            delay = (x - 0.1) / 0.9 * window
            when = f"claim + {delay:.2f}s"
            while proc.poll() is None and not (run / LOCK).exists():
                time.sleep(0.002)
            time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = rundir.describe(run)
        epochs = len(read_metrics(run)) if run.is_dir() else 0
        left = state["state"] + (f", {epochs} epoch line(s)" if epochs else "")
        left += ", stale lock" if state["lock"] is not None else ""
        left += f", {len(state['temp_files'])} temp file(s)" if state["temp_files"] else ""
        if not killed:
            how, result = "nothing (it had finished)", subprocess.CompletedProcess([], 0, "", "")
        elif state["state"] == "checkpointed":
            how = "`train --resume`"
            result = subprocess.run(
                command(run, args.epochs)[:5] + ["--out", str(run), "--resume", "--no-progress"],
                env=ENV, capture_output=True, text=True,
            )  # fmt: skip
        else:
            how = "the same `train`"
            result = subprocess.run(command(run, args.epochs), env=ENV, capture_output=True, text=True)
        problems = [f"exit {result.returncode}: {result.stderr.strip()[-200:]}"] if result.returncode else []
        problems += differences(run, reference) if not problems else []
        held += not problems
        verdict = "held" if not problems else "FAILED: " + "; ".join(problems)
        print(
            f"| {i} | {when}{'' if killed else ' (had finished)'} | {left} | {how} | {verdict} |",
            flush=True,
        )
    print(f"\n{held}/{args.n} held")
    return 0 if held == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
