"""``exemplar-vae ablate``: the exemplar prior's ablation grid (LOO, M/N, k) as one markdown table.

parse -> base config -> ``exemplar_vae.ablation.run_ablation``; prints the table it wrote to OUT/ablation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exemplar_vae.ablation import KS, M_FRACTIONS, TABLE, run_ablation
from exemplar_vae.config import DataConfig, PriorConfig, RunConfig, TrainConfig


def add_parsers(sub: Any) -> None:
    """Add the ``ablate`` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "ablate",
        help="exemplar prior ablations: leave-one-out on/off, M/N and k, trained, evaluated, one table",
        description="Train and evaluate the exemplar prior varied one factor at a time around the base point "
        "(leave-one-out on, M = N/2, k = --knn). Each point is a run folder OUT/NAME; re-running resumes "
        "unfinished runs and skips evaluated ones. Writes OUT/ablation.md and OUT/ablation.json.",
    )
    p.add_argument("--dataset", required=True, help="fashion-mnist, mnist, digits, or PATH.npz")
    p.add_argument("--out", required=True, type=Path, help="folder for the run folders and the table")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's standard files")
    p.add_argument("--train-size", type=int, default=None, help="keep only the first N training images")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="epochs of linear KL warm-up (default 5)")
    p.add_argument("--knn", type=int, default=10, help="k of the base point (default 10; 0 = exact prior)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="random seed of every run")
    p.add_argument(
        "--samples", type=int, default=1000, help="importance samples per test image (default 1000)"
    )
    p.add_argument("--limit", type=int, default=1000, help="score the first n test images (default 1000)")
    p.add_argument(
        "--candidates", type=int, default=1000,
        help="score each test point against its K nearest exemplars (default 1000); 0 = all N (exact, slow)",
    )  # fmt: skip
    p.add_argument(
        "--m-fractions", type=float, nargs="+", default=list(M_FRACTIONS), metavar="F",
        help="M/N values in (0, 1] (default 0.1 0.25 0.5 1.0)",
    )  # fmt: skip
    p.add_argument(
        "--ks", type=int, nargs="+", default=list(KS), metavar="K", help="k values >= 1 (default 1 5 10 50)"
    )
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_ablate(args: argparse.Namespace) -> int:
    base = RunConfig(
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, train_size=args.train_size),
        prior=PriorConfig(name="exemplar", knn=args.knn, leave_one_out=True),
        train=TrainConfig(epochs=args.epochs, warmup=args.warmup, seed=args.seed, device=args.device),
    )
    run_ablation(
        base, args.out, m_fractions=args.m_fractions, ks=args.ks, samples=args.samples, limit=args.limit,
        candidates=args.candidates or None, progress=not args.no_progress,
    )  # fmt: skip
    print((args.out / TABLE).read_text(), end="")
    return 0


COMMANDS = {"ablate": cmd_ablate}
