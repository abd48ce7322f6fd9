"""Speed of training and evaluation per prior, on real Fashion-MNIST with the paper's MLP VAE.

What it measures, all in one process so that the ratios compare like with like:

1. Training step time per prior (batch 100, gated MLP 2x300, z = 40): the median over ``--steps`` steps,
   after ``--warmup`` warm-up steps, of one iteration of ``Trainer.train_epoch`` (dynamic binarisation,
   ``model(x, index, beta)``, backward, AdamNormGrad step). The steps are run by the library's own
   ``Trainer.train_epoch`` on the first batches of its sampler, and timed between the ends of consecutive
   optimiser steps (an optimiser post-step hook), so no training math is repeated here. Priors: Gaussian;
   MoG and VampPrior with K = 500; the exemplar prior with retrieval augmented training (k = 10, M = N/2,
   its cache refreshed at the start of the epoch as the loop does) and exact (k = 0, M = N/2, fewer steps:
   ``--exact-steps``). For the kNN exemplar prior also: the cache refresh (encoding all N training
   images), one ``Trainer.validate()`` pass with and without the refresh that precedes it in ``fit``, and
   the number of distinct exemplars retrieved for one batch.
2. Evaluation time per test point of the importance-sampled log-likelihood
   (``objectives.importance_sampled_log_likelihood``) at S = ``--samples`` for the Gaussian and the exemplar
   prior (all N training images as exemplars, eval mode), extrapolated to the whole test set.

The models are untrained (random initialisation; the training rows then take a few optimiser steps).
Timings do not depend on the weights, except that the kNN prior's cost grows with the number of distinct
exemplars retrieved for a batch (reported).

Run (a few minutes with the defaults on 2 idle CPU cores; the last line is a smoke run):

    .venv/bin/python benchmarks/bench_train_eval.py                # report on stdout
    .venv/bin/python benchmarks/bench_train_eval.py --write        # ... also benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_train_eval.py --steps 2 --exact-steps 1 --eval-points 1 --samples 50

Progress goes to stderr; the markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from exemplar_vae import (
    DataConfig,
    DataSplits,
    ModelConfig,
    PriorConfig,
    RunConfig,
    TrainConfig,
    load_dataset,
)
from exemplar_vae.config import validate
from exemplar_vae.data import dynamic_binarize
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives import importance_sampled_log_likelihood
from exemplar_vae.pipeline import build_model
from exemplar_vae.training.loop import BatchSampler, Trainer

logger = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# -- helpers -----------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by one call of ``fn``."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class FirstBatches(BatchSampler):
    """The first ``count`` batches of another sampler's epoch: a short epoch for ``Trainer.train_epoch``."""

    def __init__(self, base: BatchSampler, count: int) -> None:
        super().__init__(base.n, base.batch_size, base.seed, base.rank, base.world_size)
        self.count = count

    def batches(self, epoch: int) -> list[Tensor]:
        full = super().batches(epoch)
        if len(full) < self.count:
            raise SystemExit(f"asked for {self.count} batches but an epoch has only {len(full)}")
        return full[: self.count]

    def __len__(self) -> int:
        return self.count


def machine_lines(device: torch.device) -> list[str]:
    """Date, CPU (or GPU), cores, torch version, threads, load: the context every figure was taken in."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import faiss  # type: ignore[import-untyped]

        knn = f"faiss {faiss.__version__}"
    except ImportError:
        knn = "torch (faiss not installed)"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu}, {cores} cores available; load average (1, 5, 15 min) at start: {load}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads (`torch.get_num_threads()`), "
        f"device {device}; kNN search: {knn}; Python {platform.python_version()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    if hasattr(os, "getloadavg") and cores and os.getloadavg()[0] > 0.5 * cores:
        lines.append(
            f"- **warning: the machine was busy at start (1-min load {os.getloadavg()[0]:.1f} on {cores} "
            "cores); other processes disturb these timings**"
        )
    lines.append(f"- command: `{shlex.join(sys.orig_argv)}`")
    return lines


def run_config(prior: PriorConfig, args: argparse.Namespace, num_train: int) -> RunConfig:
    """The paper's MLP VAE and optimiser with ``prior``, validated against the data (resolves M)."""
    config = RunConfig(
        data=DataConfig("fashion-mnist", args.data_dir),
        model=ModelConfig(),
        prior=prior,
        train=TrainConfig(batch_size=args.batch_size, seed=args.seed, device=str(args.device)),
    )
    return validate(config, num_train)


def fresh_model(prior: PriorConfig, args: argparse.Namespace, data: DataSplits) -> tuple[VAE, RunConfig]:
    torch.manual_seed(args.seed)
    config = run_config(prior, args, data.num_train)
    return build_model(config, data, args.device), config


def prior_label(p: PriorConfig) -> tuple[str, str, str]:
    """(prior, k, M) columns of the tables."""
    if p.name == "exemplar":
        return p.name, str(p.knn) if p.knn else "exact", f"{p.exemplars:,}"
    if p.name in ("mog", "vampprior"):
        return p.name, "-", f"K={p.components}"
    return p.name, "-", "-"


# -- 1. training ---------------------------------------------------------------------------------------
@dataclass
class TrainRow:
    prior: PriorConfig
    step_s: list[float]  # [steps] seconds per timed step
    steps_per_epoch: int
    refresh_s: list[float]  # explicit prior.refresh(encoder) calls (first kNN exemplar row only)
    validate_refresh_s: float | None = None  # validate() after a step: refresh + pass, as fit runs it
    validate_s: float | None = None  # validate() again, cache fresh: the pass alone
    union: int | None = None  # distinct exemplars retrieved for one batch (kNN prior only)

    @property
    def median(self) -> float:
        return statistics.median(self.step_s)


def bench_training(
    prior: PriorConfig, steps: int, args: argparse.Namespace, data: DataSplits, extras: bool
) -> TrainRow:
    """Time ``steps`` training steps of ``Trainer.train_epoch`` after ``args.warmup`` warm-up steps.

    With ``extras`` (the kNN exemplar prior), also time the cache refresh and ``Trainer.validate()``, and
    count the exemplars retrieved for one batch.
    """
    model, config = fresh_model(prior, args, data)
    trainer = Trainer(model, data, config, None, progress=False)
    row = TrainRow(config.prior, [], len(trainer.sampler), [])
    if extras:  # the cache refresh alone: encode all N exemplars
        refresh = model.prior.refresh
        row.refresh_s = [timed(lambda: refresh(model.encoder), args.device) for _ in range(args.repeats)]

    # The loop runs on the first warmup + steps batches; an interval between the ends of two consecutive
    # optimiser steps is one full iteration (binarise, forward, backward, normalise, Adam, .item()s).
    # The epoch-start refresh happens before the first step, so it lies outside every interval.
    trainer.sampler = FirstBatches(trainer.sampler, args.warmup + steps)
    stamps: list[float] = []
    hook = trainer.optimizer.register_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    try:
        trainer.train_epoch(1, beta=1.0)
    finally:
        hook.remove()
    intervals = [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]  # [warmup + steps - 1]
    row.step_s = intervals[args.warmup - 1 :]  # [steps]: steps warmup + 1, ..., warmup + steps
    if not extras:
        return row

    row.validate_refresh_s = timed(trainer.validate, args.device)  # stale after a step: refresh + pass
    row.validate_s = timed(trainer.validate, args.device)  # cache fresh now: the pass alone
    model.train()
    with torch.no_grad():
        idx = trainer.sampler.batches(1)[0].to(args.device)  # [B]
        mean, _ = model.encode(dynamic_binarize(trainer.train_x[idx]))  # [B, d]
        row.union = model.prior.retrieve(mean, idx, model.prior.draw_subset()).numel()
    return row


def training_report(rows: list[TrainRow], args: argparse.Namespace, data: DataSplits) -> list[str]:
    base = rows[0].median
    per_epoch = rows[0].steps_per_epoch
    out = [
        f"## 1. Training step (batch {args.batch_size}): forward, backward, AdamNormGrad",
        "",
        f"Median over the timed steps, after {args.warmup} warm-up steps, of one iteration of "
        f"`Trainer.train_epoch`. `train s/epoch` = {per_epoch} steps (N = {data.num_train:,}) x median "
        "step, without validation.",
        "",
        "| prior | k | M | steps timed | median ms/step | min ms/step | x Gaussian | train s/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, k, m = prior_label(r.prior)
        out.append(
            f"| {name} | {k} | {m} | {len(r.step_s)} | {1e3 * r.median:.1f} | {1e3 * min(r.step_s):.1f} "
            f"| {r.median / base:.2f} | {r.steps_per_epoch * r.median:.0f} |"
        )
    for r in rows:
        if r.validate_s is None or r.validate_refresh_s is None or r.union is None:
            continue
        out += [
            "",
            f"Exemplar prior (k = {r.prior.knn}, M = {r.prior.exemplars:,}):",
            "",
            f"- cache refresh (`model.prior.refresh(model.encoder)`, encoding all {data.num_train:,} "
            f"training images): median {statistics.median(r.refresh_s):.2f} s over {len(r.refresh_s)} calls "
            f"(min {min(r.refresh_s):.2f} s)",
            f"- one `Trainer.validate()` on the {data.val_x.shape[0]:,} validation images (eval mode: the "
            f"full prior over all {data.num_train:,} exemplars): {r.validate_refresh_s:.2f} s as `fit` runs "
            f"it after an epoch (cache refresh included), {r.validate_s:.2f} s with the cache already fresh",
            f"- retrieval: one batch of {args.batch_size} codes retrieved {r.union} distinct exemplars (at "
            f"most {args.batch_size * (r.prior.knn + 1)}: k + 1 each under leave-one-out), re-encoded with "
            "gradient at every step",
        ]
    return out


# -- 2. evaluation -------------------------------------------------------------------------------------
@dataclass
class EvalRow:
    prior: str
    seconds: float  # total over the timed points
    points: int

    @property
    def per_point(self) -> float:
        return self.seconds / self.points


def bench_evaluation(
    name: str, args: argparse.Namespace, data: DataSplits, candidates: int | None = None
) -> EvalRow:
    """Seconds to score ``args.eval_points`` test points with S importance samples, a batch at a time.

    ``candidates``: exemplar prior truncated to the K exemplars nearest each test point (``evaluate``'s
    default path); None scores against all N exemplars.
    """
    model, _ = fresh_model(PriorConfig(name), args, data)
    model.eval()
    model.prior.refresh(model.encoder)  # exemplar prior: all N training images, no leave-one-out
    if candidates is not None:
        model.prior.eval_candidates = candidates
        name = f"{name} (truncated, K={candidates})"
    elif name == "exemplar":
        name = "exemplar (all N exemplars)"
    x = data.test_x[: args.eval_points].to(args.device)
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    importance_sampled_log_likelihood(model, x[:1], min(args.samples, 100), generator=g)  # warm-up
    total = 0.0
    for xb in x.split(args.eval_batch):
        total += timed(
            lambda xb=xb: importance_sampled_log_likelihood(model, xb, args.samples, generator=g), args.device
        )
    return EvalRow(name, total, x.shape[0])


def evaluation_report(rows: list[EvalRow], args: argparse.Namespace, data: DataSplits) -> list[str]:
    n_test = data.test_x.shape[0]
    base = rows[0].per_point
    out = [
        f"## 2. Evaluation: importance-sampled log-likelihood, S = {args.samples:,}",
        "",
        f"`importance_sampled_log_likelihood(model, x, S)` on the first {rows[0].points} test images, "
        f"{args.eval_batch} per call; the exemplar prior uses all {data.num_train:,} training images "
        "(eval mode, cache refreshed beforehand and not timed).",
        "",
        f"| prior | points timed | s / test point | x Gaussian | est. hours for {n_test:,} test points |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.prior} | {r.points} | {r.per_point:.3f} | {r.per_point / base:.2f} "
            f"| {r.per_point * n_test / 3600:.2f} |"
        )
    return out


# -- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed training steps per prior (default 30)")
    p.add_argument(
        "--exact-steps", type=int, default=5, help="timed steps for the exact exemplar prior (default 5)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per prior (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="exemplar cache refreshes timed (default 3)")
    p.add_argument("--components", type=int, default=500, help="K for MoG and VampPrior (default 500)")
    p.add_argument("--knn", type=int, default=10, help="k for retrieval augmented training (default 10)")
    p.add_argument(
        "--candidates",
        type=int,
        default=1000,
        help="exemplars kept per test point in the truncated evaluation",
    )
    p.add_argument("--exemplars", type=int, default=None, help="M exemplars per training step (default N/2)")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size (default 100)")
    p.add_argument("--samples", type=int, default=5000, help="importance samples S (default 5000)")
    p.add_argument("--eval-points", type=int, default=5, help="test points timed per prior (default 5)")
    p.add_argument("--eval-batch", type=int, default=1, help="test points per likelihood call (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--data-dir", default=None, help="folder with the Fashion-MNIST files (default search path)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds initialisation, batches and samples (default 0)"
    )
    p.add_argument("--write", action="store_true", help=f"also write the report to {RESULTS}")
    args = p.parse_args(argv)
    positive = (
        "steps",
        "exact_steps",
        "repeats",
        "components",
        "knn",
        "batch_size",
        "samples",
        "eval_points",
    )
    for key in (*positive, "eval_batch"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.warmup < 1:
        p.error(f"--warmup must be at least 1 (the first step starts the clock), got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    args.device = torch.device(args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    header = machine_lines(args.device)  # load average before the benchmark loads the machine
    start = time.perf_counter()

    logger.info("loading Fashion-MNIST")
    data = load_dataset("fashion-mnist", args.data_dir)
    m = args.exemplars if args.exemplars is not None else data.num_train // 2
    priors = [
        (PriorConfig("gaussian"), args.steps),
        (PriorConfig("mog", components=args.components), args.steps),
        (PriorConfig("vampprior", components=args.components), args.steps),
        (PriorConfig("exemplar", exemplars=m, knn=args.knn), args.steps),
        (PriorConfig("exemplar", exemplars=m, knn=0), args.exact_steps),
    ]
    train_rows: list[TrainRow] = []
    for prior, steps in priors:
        label = " ".join(prior_label(prior))
        logger.info("training: %s, %d warm-up + %d timed steps", label, args.warmup, steps)
        extras = prior.name == "exemplar" and prior.knn > 0 and not any(r.union for r in train_rows)
        train_rows.append(bench_training(prior, steps, args, data, extras))
    eval_rows = []
    for name, candidates in (("gaussian", None), ("exemplar", None), ("exemplar", args.candidates)):
        logger.info("evaluation: %s prior, %d points at S=%d", name, args.eval_points, args.samples)
        eval_rows.append(bench_evaluation(name, args, data, candidates))

    lines = [
        "# Exemplar VAE: training and evaluation speed",
        "",
        *header,
        f"- data: {data.summary()}; MLP VAE (gated 2x{ModelConfig().hidden}, z = {ModelConfig().latent_dim})",
        f"- total benchmark time: {time.perf_counter() - start:.0f} s",
        "",
        "Every figure below was measured in this one run (same process, machine and load); compare the "
        "ratios, not absolute times from different runs or machines. The models are untrained (random "
        "initialisation, then the timed optimiser steps): cost does not depend on the weights, except the "
        "number of exemplars the kNN prior retrieves.",
        "",
        *training_report(train_rows, args, data),
        "",
        *evaluation_report(eval_rows, args, data),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        RESULTS.write_text(report)
        logger.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
