"""Training at 50k, 200k and a million exemplars on one machine, and one process against two.

For each N the exemplars are real Fashion-MNIST training images and, beyond its 60,000, distinct shifted
copies of them (every image moved by (dx, dy) in [-2, 2]^2 \\ {0}), held once as uint8 in a memory-mapped
``.npy`` (``ExemplarStore.from_npy``). The model is the paper's MLP VAE with the exemplar prior, k = 10,
M = N/2, ``--search ivf``. Each N runs alone in a child process, which measures:

* the cache refresh (all N exemplars encoded), the IVF index build (cold: the first epoch; warm: later
  epochs, from the previous epoch's centroids) and one validation pass (10,000 images scored against the
  full prior over N codes) -- the per-epoch work outside the steps;
* the training step (median of timed steps after a warm-up, each step read on the host as training does);
* the peak resident memory (VmHWM) of the whole child.

An epoch is estimated as ceil(N / B) steps plus the refresh, the warm index build and validation.
``--compare-processes`` also times the step at the smallest N in one process (all cores) and in two
processes (torchrun, gloo, one core each): on a 2-core CPU that measures the overhead of the collectives,
not a speed-up.

    .venv/bin/python benchmarks/bench_scale.py --sizes 50000 200000 1000000 --compare-processes --write
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exemplar_vae import distributed
from exemplar_vae.config import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.data import DataSplits, ExemplarStore, load_dataset
from exemplar_vae.io import atomic_write_text
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.runs import build_model
from exemplar_vae.training import Trainer
from exemplar_vae.training.checkpoint import load_checkpoint
from exemplar_vae.validation import validate

HERE = Path(__file__).resolve().parent
SHIFTS = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3) if (dx, dy) != (0, 0)]


def shifted_images(n: int, path: Path) -> Path:
    """A uint8 [n, 784] .npy of Fashion-MNIST training images, then shifted copies (made once)."""
    if path.is_file() and np.load(path, mmap_mode="r").shape[0] >= n:
        return path
    train = load_dataset("fashion-mnist")
    assert isinstance(train.train_x, torch.Tensor) and train.val_grey is not None  # in memory, grey
    base = np.concatenate([train.train_x.numpy(), train.val_grey.numpy()])  # [60000, 784] grey
    base = np.rint(base * 255).astype(np.uint8).reshape(-1, 28, 28)
    if n > base.shape[0] * (1 + len(SHIFTS)):
        raise SystemExit(f"at most {base.shape[0] * (1 + len(SHIFTS))} distinct images, asked for {n}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 784))
    for block, start in enumerate(range(0, n, base.shape[0])):
        rows = min(base.shape[0], n - start)
        images = base[:rows]
        if block > 0:  # a shifted copy, zeros moved in at the border
            dx, dy = SHIFTS[block - 1]
            images = np.roll(images, (dy, dx), axis=(1, 2))
            if dy > 0:
                images[:, :dy] = 0
            elif dy < 0:
                images[:, dy:] = 0
            if dx > 0:
                images[:, :, :dx] = 0
            elif dx < 0:
                images[:, :, dx:] = 0
        out[start : start + rows] = images.reshape(rows, 784)
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def peak_rss_gib() -> float:
    """Peak resident memory of this process (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return math.nan


def splits(n: int, images: Path) -> DataSplits:
    """N memory-mapped exemplars for training; Fashion-MNIST's validation and test images."""
    fashion = load_dataset("fashion-mnist")
    store = ExemplarStore(np.load(images, mmap_mode="r")[:n])
    return DataSplits(
        name=f"fashion-mnist-shifted-{n}", image_shape=(1, 28, 28), train_x=store,
        train_y=torch.full((n,), -1, dtype=torch.int64), val_x=fashion.val_x, val_y=fashion.val_y,
        test_x=fashion.test_x, test_y=fashion.test_y, binary=True,
    )  # fmt: skip


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The child's job: one N, everything timed in this process."""
    distributed.start("cpu")
    data = splits(args.one, Path(args.images))
    config = RunConfig(
        data=DataConfig("fashion-mnist"), model=ModelConfig(),
        prior=PriorConfig(name="exemplar", knn=10, search="ivf", nprobe=16),
        train=TrainConfig(batch_size=args.batch_size, seed=1, device="cpu"),
    )  # fmt: skip
    config = validate(config, data.num_train)
    torch.manual_seed(1)
    model = build_model(config, data, "cpu")
    if args.weights is not None:  # a trained encoder retrieves realistic unions (~1,000 exemplars a step)
        model.load_state_dict(load_checkpoint(args.weights, "best", model=model).model)
    prior = model.prior
    assert isinstance(prior, ExemplarPrior)
    trainer = Trainer(model, data, config, progress=False)
    model.train()
    start = time.perf_counter()
    prior.refresh(model.encoder)
    refresh_s = time.perf_counter() - start
    batches = trainer.sampler.batches(1)  # the first step builds the index (cold) and measures its recall
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        trainer.step(batches[i], 1.0, epoch=1, step=i).tolist()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[args.warmup :])
    cold_s = prior.searcher.last_build_seconds
    union = prior.retrieve(
        model.encode(trainer.train_store.gather(batches[0]))[0], batches[0], prior.draw_subset()
    )
    result: dict[str, Any] = {
        "n": args.one,
        "world": distributed.world_size(),
        "step_s": step_s,
        "union": len(union),
    }
    if args.steps_only:
        return result
    prior.refresh(model.encoder)  # the next epoch's cache (new weights), then its warm index
    prior.searcher.index(prior.cache.get())
    warm_s = prior.searcher.last_build_seconds
    assert warm_s is not None  # the index was just built
    start = time.perf_counter()
    trainer.validate()  # refreshes the cache for the current weights, then the full prior on 10k images
    validate_s = time.perf_counter() - start - refresh_s
    steps_per_epoch = len(batches)
    epoch_s = steps_per_epoch * step_s + refresh_s + warm_s + validate_s
    result.update(
        threads=torch.get_num_threads(), refresh_s=refresh_s, index_cold_s=cold_s, index_warm_s=warm_s,
        validate_s=validate_s, steps_per_epoch=steps_per_epoch, epoch_s=epoch_s,
        outside_fraction=(refresh_s + warm_s) / epoch_s, recall=prior.searcher.recall,
        store_mapped_gib=prior.store.mapped_bytes / 2**30, peak_rss_gib=peak_rss_gib(),
    )  # fmt: skip
    return result


def child(n: int, args: argparse.Namespace, processes: int = 1, steps_only: bool = False) -> dict[str, Any]:
    """Run ``measure`` for ``n`` in a fresh process (or a torchrun launch); its JSON result."""
    cmd = [__file__, "--one", str(n), "--images", str(args.images), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]  # fmt: skip
    if args.weights is not None:
        cmd += ["--weights", str(args.weights)]
    if steps_only:
        cmd.append("--steps-only")
    env = dict(os.environ)
    if processes > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            *cmd,
        ]
        env["OMP_NUM_THREADS"] = "1"
    else:
        cmd = [sys.executable, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the measurement of N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def report(rows: list[dict[str, Any]], procs: dict[str, Any] | None, args: argparse.Namespace) -> str:
    base = rows[0]
    lines = [
        "# Scale: training at 50k to a million exemplars on one machine",
        "",
        f"Command: `python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {os.cpu_count()} cores, torch {torch.__version__}, {rows[0]['threads']} threads. MLP VAE, exemplar "
        f"prior, k = 10, M = N/2, `--search ivf` (nprobe 16), batch {args.batch_size}; exemplars uint8 in a "
        "memory-mapped .npy (Fashion-MNIST training images, beyond 60,000 shifted copies). Step: median of "
        f"{args.steps} steps after {args.warmup}, "
        + (f"starting from the weights of `{args.weights}`" if args.weights else "from a fresh model")
        + ". Epoch: steps x step time + refresh + warm index build + "
        "validation (10,000 images against the full prior over N).",
        "",
        "| N | step (ms) | step / step at first N | exemplars re-encoded / step | refresh (s) "
        "| index cold / warm (s) | validation (s) | epoch (est., s) | refresh + index / epoch | IVF recall "
        "| peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {1000 * r['step_s']:.1f} | {r['step_s'] / base['step_s']:.2f} | {r['union']:,} "
            f"| {r['refresh_s']:.1f} "
            f"| {r['index_cold_s']:.2f} / {r['index_warm_s']:.2f} | {r['validate_s']:.1f} | {r['epoch_s']:.0f} "
            f"| {100 * r['outside_fraction']:.1f}% | {r['recall']:.3f} | {r['peak_rss_gib']:.2f} |"
        )
    if procs is not None:
        lines += [
            "",
            f"One process ({procs['one']['threads'] if 'threads' in procs['one'] else 'all'} threads) against two "
            f"processes (torchrun, gloo, 1 thread each) at N = {procs['n']:,}, the same global batch: "
            f"{1000 * procs['one']['step_s']:.1f} against {1000 * procs['two']['step_s']:.1f} ms per step "
            f"({procs['two']['step_s'] / procs['one']['step_s']:.2f}x). On this machine's cores this measures the "
            "collectives' overhead (union and gradient all-gathers/all-reduces), not a speed-up.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    p.add_argument("--images", type=Path, default=Path.home() / ".cache/exemplar-vae/bench-scale/shifted.npy")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--compare-processes", action="store_true")
    p.add_argument(
        "--weights", type=Path, default=None,
        help="a run folder of the same model (a Fashion-MNIST exemplar run), or its best.json or a legacy .pt "
        "checkpoint, whose best weights "
        "the steps start from (default: a fresh model)",
    )  # fmt: skip
    p.add_argument("--write", action="store_true", help="write benchmarks/SCALE.md")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--steps-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        result = measure(args)
        if distributed.is_main():
            print(json.dumps(result), flush=True)
        distributed.stop()
        return
    shifted_images(max(args.sizes), args.images)
    rows = [child(n, args) for n in sorted(args.sizes)]
    procs = None
    if args.compare_processes:
        n = min(args.sizes)
        procs = {"n": n, "one": child(n, args, 1, True), "two": child(n, args, 2, True)}
        procs["one"]["threads"] = torch.get_num_threads()
    text = report(rows, procs, args)
    print(text)
    if args.write:
        atomic_write_text(HERE / "SCALE.md", text)


if __name__ == "__main__":
    main()
