"""Speed of training and evaluation of the Exemplar VAE against FLOP floors, on real Fashion-MNIST.

Everything is measured in one run, so that the ratios compare like with like:

0. Machine rates: GFLOP/s of float32 matrix products of the decoder's shapes and of a large square one.
   Decoder and encoder FLOPs are counted from the model's ``nn.Linear`` layers (2 x in x out per row; the
   gates' element-wise work is left out, so the floors are lower bounds). (``rates.py``)
1. Training step time per prior (batch 100, gated MLP 2x300, z = 40): the median over ``--steps`` steps of
   one iteration of ``Trainer.train_epoch``'s loop (``Trainer.step`` and reading the loss terms, after
   ``--warmup`` steps), against its FLOP floor: the batch's forward + backward (3x the forward FLOPs)
   plus what the prior adds (VampPrior: its K pseudo-inputs through the encoder; exemplar prior with
   k > 0: the retrieved union re-encoded with gradient, mean path only). Epoch time = steps x median + the
   cache refresh, against the same floors. The kNN search of one batch is timed apart (exact search:
   recall 1). The rows (and an official-code-style step) are timed interleaved in ``--rounds`` rounds
   with the matmul rate measured between rounds, so that ratios between rows, and each step against the
   rate measured around it, compare the machine in one state. (``train_rows.py``)
2. Evaluation at the paper's protocol (10k test points, S = 5000, all N = 50k training images as
   exemplars): ``evaluate_density`` with the prior truncated to the K = 1000 exemplars nearest each test
   point, timed on ``--eval-points`` test points and extrapolated, against the decoder-FLOP floor
   (10k x S x decoder FLOPs / decoder-shaped matmul rate). Beside it, on a few points with the same
   importance samples: the brute force at matrix-product speed (the full prior over all N, float32
   blocks), which also gives the truncation error of the default; an official-code-style brute force (one
   test point at a time, the encoder re-run on all S copies, the full prior in float64); and the
   certified evaluation (``certify=True``), with how often it certifies below 0.01 nats. (``eval_rows.py``)
3. Peak memory (peak RSS, VmHWM) of the evaluation and of training steps, each run in a child process.
   (``memory.py``)

The markdown report is assembled in ``report.py``. With ``--run RUN_DIR`` (default runs/fashion/exemplar
when it exists) the evaluation uses that trained exemplar model, so the truncation error and the
certificates are those of a trained model; otherwise an untrained one. Training rows use fresh models
(cost does not depend on the weights), except the exemplar rows and the official-style step, which load
that run's weights: the number of exemplars retrieved and re-encoded per step is ~130 for an untrained
encoder and ~1000 for a trained one, and the exact prior with a gradient tolerance re-encodes all M while
the kernel is wide (untrained) and a few thousand with the trained one.

Run (about 5-10 minutes with the defaults on 2 CPU cores; ``--quick`` is a smoke run on tiny sizes):

    .venv/bin/python benchmarks/bench_train_eval.py                # report on stdout
    .venv/bin/python benchmarks/bench_train_eval.py --write        # ... also benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_train_eval.py --quick --dataset digits

Progress goes to stderr; the markdown report goes to stdout. The modules of this folder import each other
as siblings: run the script by its path (its folder is then first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from common import exemplar_count, fresh_model
from eval_rows import bench_evaluation, evaluation_model
from memory import bench_memory, memory_job
from rates import measure_rates
from report import (
    RESULTS,
    evaluation_report,
    full_report,
    machine_lines,
    memory_report,
    rates_report,
    training_report,
    write_results,
)
from train_rows import bench_training

from exemplar_vae import DataSplits, PriorConfig, load_dataset
from exemplar_vae.training.checkpoint import has_checkpoint

logger = logging.getLogger("bench")

TRAINED_RUN = Path(__file__).resolve().parents[1] / "runs" / "fashion" / "exemplar"

# the tiny sizes of ``--quick``: a smoke run (what tests/test_bench.py runs)
QUICK = dict(
    steps=2, exact_steps=1, rounds=2, warmup=1, repeats=1, components=10, candidates=100, samples=50, eval_points=4,
    eval_batch=2, check_points=2, official_points=1, certify_points=2, square=256, chunk_rows=2000,
    no_compile=True,
)  # fmt: skip

# sizes that must be at least 1
POSITIVE = (
    "steps", "exact_steps", "rounds", "repeats", "components", "knn", "batch_size", "samples",
    "eval_points", "eval_batch", "check_points", "official_points", "certify_points",
)  # fmt: skip


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed training steps per prior (default 30)")
    p.add_argument(
        "--exact-steps", type=int, default=12, help="timed steps for the exact exemplar prior (default 12)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per prior (default 3)")
    p.add_argument(
        "--rounds", type=int, default=6, help="training rows are timed interleaved, in this many rounds (6)"
    )
    p.add_argument("--repeats", type=int, default=3, help="exemplar cache refreshes timed (default 3)")
    p.add_argument("--components", type=int, default=500, help="K for MoG and VampPrior (default 500)")
    p.add_argument("--knn", type=int, default=10, help="k for retrieval augmented training (default 10)")
    p.add_argument("--nprobe", type=int, default=16, help="lists probed by the IVF search row (default 16)")
    p.add_argument(
        "--candidates", type=int, default=1000, help="K of the truncated evaluation (default 1000)"
    )
    p.add_argument("--exemplars", type=int, default=None, help="M exemplars per training step (default N/2)")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size (default 100)")
    p.add_argument("--samples", type=int, default=5000, help="importance samples S (default 5000)")
    p.add_argument("--eval-points", type=int, default=200, help="test points of the default path (200)")
    p.add_argument("--eval-batch", type=int, default=100, help="test points per batch (default 100)")
    p.add_argument("--check-points", type=int, default=10, help="points of the matmul brute force (10)")
    p.add_argument("--official-points", type=int, default=1, help="points of the official style (1)")
    p.add_argument("--official-chunk", type=int, default=500, help="official style: samples per pass")
    p.add_argument("--certify-points", type=int, default=20, help="points of the certified path (20)")
    p.add_argument("--square", type=int, default=2048, help="size of the square matmul (default 2048)")
    p.add_argument(
        "--chunk-rows", type=int, default=None,
        help="rows of the decoder-shaped matmul (default: the model's evaluation chunk on the device)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="folder with the data files (default search path)")
    p.add_argument(
        "--run", default=None,
        help=f"trained exemplar run for the evaluation (default {TRAINED_RUN} if it exists; 'none': untrained)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, batches and samples (0)")
    p.add_argument(
        "--grad-tolerance", type=float, default=1e-3,
        help="the exact prior row with a gradient tolerance (PriorConfig.grad_tolerance; default 1e-3)",
    )  # fmt: skip
    p.add_argument(
        "--no-compile", action="store_true",
        help="skip the compiled rows (training steps and evaluation through torch.compile)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (overrides the sizes)")
    p.add_argument("--no-memory", action="store_true", help="skip the child processes measuring RSS")
    p.add_argument("--memory-job", choices=("eval", "train"), help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true", help=f"also write the report to {RESULTS}")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argument_parser()
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    for key in POSITIVE:
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.warmup < 1:
        p.error(f"--warmup must be at least 1 (the first step starts the clock), got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.run is None and args.dataset == "fashion-mnist" and has_checkpoint(TRAINED_RUN, "best"):
        args.run = str(TRAINED_RUN)
    if args.run in ("none", ""):
        args.run = None
    args.device = torch.device(args.device)
    return args


def training_priors(args: argparse.Namespace, data: DataSplits) -> list[tuple[PriorConfig, int, str]]:
    """The training rows' priors, their timed steps and ``TrainConfig.compile``: Gaussian, MoG,
    VampPrior, the exemplar prior with the exact and the IVF kNN search, and the exact exemplar prior
    (k = 0, fewer steps: it is slow), all eager; the exact prior with ``--grad-tolerance``; then (unless
    ``--no-compile``) the Gaussian, both kNN rows and the exact prior with the tolerance compiled."""
    m = exemplar_count(args, data)
    knn = PriorConfig("exemplar", exemplars=m, knn=args.knn)
    ivf = PriorConfig("exemplar", exemplars=m, knn=args.knn, search="ivf", nprobe=args.nprobe)
    sparse = PriorConfig("exemplar", exemplars=m, knn=0, grad_tolerance=args.grad_tolerance)
    rows = [
        (PriorConfig("gaussian"), args.steps, "off"),
        (PriorConfig("mog", components=args.components), args.steps, "off"),
        (PriorConfig("vampprior", components=args.components), args.steps, "off"),
        (knn, args.steps, "off"),
        (ivf, args.steps, "off"),
        (PriorConfig("exemplar", exemplars=m, knn=0), args.exact_steps, "off"),
        (sparse, args.exact_steps, "off"),
    ]
    if not args.no_compile:
        rows += [
            (PriorConfig("gaussian"), args.steps, "on"),
            (knn, args.steps, "on"),
            (ivf, args.steps, "on"),
            (sparse, args.exact_steps, "on"),
        ]
    return rows


def memory_section(raw: list[str], args: argparse.Namespace, data: DataSplits) -> list[str]:
    """The peak-memory lines, measured in child processes run with the same options (none with
    ``--no-memory``)."""
    if args.no_memory:
        return []
    pass_on = [a for a in raw if a not in ("--write",)]
    logger.info("memory: evaluation and training in child processes")
    eval_rss, train_rss = bench_memory("eval", pass_on), bench_memory("train", pass_on)
    return memory_report(eval_rss, train_rss, args, exemplar_count(args, data))


def main(argv: list[str] | None = None) -> None:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_job:
        print(json.dumps(memory_job(args.memory_job, args)))
        return
    header = machine_lines(args.device)  # load average before the benchmark loads the machine
    start = time.perf_counter()

    logger.info("loading %s", args.dataset)
    data = load_dataset(args.dataset, args.data_dir)
    model, _ = fresh_model(PriorConfig("gaussian"), args, data)
    if args.chunk_rows is None:
        args.chunk_rows = model.evaluation_rows(args.device)
    rates = measure_rates(model, args.chunk_rows, args.square, data.data_dim, args.candidates)
    rows = bench_training(training_priors(args, data), args, data, rates)
    eval_model, label = evaluation_model(args, data)
    evaluation = bench_evaluation(eval_model, label, args, data, rates)
    del eval_model
    memory_lines = memory_section(raw, args, data)

    sections = [
        rates_report(rates, args),
        training_report(rows, rates, args, data),
        evaluation_report(evaluation, rates, args, data),
    ]
    report = full_report(header, data, time.perf_counter() - start, sections, memory_lines)
    print(report)
    if args.write:
        write_results(report)
        logger.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
