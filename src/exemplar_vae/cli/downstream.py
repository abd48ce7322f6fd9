"""``exemplar-vae augment | classify``: generative data augmentation and the paper's MLP classifier.

parse -> ``downstream.augment.augment_run`` / ``downstream.classifier.compare_augmentation``; prints the
result (JSON summary, or the markdown table) and optionally writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from exemplar_vae.downstream.augment import OUTPUTS, augment_run
from exemplar_vae.downstream.classifier import classification_table, compare_augmentation
from exemplar_vae.errors import ConfigError
from exemplar_vae.io import atomic_write_text

DEVICE_HELP = "auto (a GPU if there is one), cpu, cuda, cuda:N"
PIXELS_HELP = (
    f"one of {', '.join(OUTPUTS)}: decoder mean rounded to 8 bits (paper, default; stored as uint8), "
    "decoder mean (float32) or a Bernoulli sample (bool)"
)


def add_parsers(sub: Any) -> None:
    """Add the ``augment`` and ``classify`` subcommands to the CLI's subparsers."""
    p = sub.add_parser(
        "augment",
        help="write augmented copies of a run's training images (z ~ r(z|x), decoded) to an .npz file",
        description="For each training image x of the run's dataset, draw --variations codes z ~ r(z|x) = "
        "N(mu(x), (T sigma)^2 I) (the exemplar prior's kernel; q(z|x) for other priors), decode them, and "
        "write x (images), y (labels copied from the source) and source_index to an .npz file that "
        "`--dataset PATH.npz` reads back.",
    )
    p.add_argument("run_dir", type=Path, help="run folder written by train")
    p.add_argument("--out", required=True, type=Path, help=".npz file to write")
    p.add_argument("--variations", type=int, default=1, help="variations per training image (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="multiplies the std of r(z|x) (default 1)")
    p.add_argument("--pixels", default="rounded", help=PIXELS_HELP)
    p.add_argument("--limit", type=int, default=None, help="augment only the first n training images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = sub.add_parser(
        "classify",
        help="the paper's MLP classifier with and without Exemplar VAE augmentation: test error table",
        description="Train the permutation-invariant MLP (2 hidden ReLU layers, label smoothing 0.1, SGD "
        "momentum 0.9, lr decayed linearly to 1%, batch 100) on the grey training images for each seed, "
        "without augmentation and, with --augment, with loss real_weight*CE(real) + (1-real_weight)*CE(one "
        "fresh variation of each image); print the test error (%) mean ± std over seeds as a markdown table.",
    )
    p.add_argument("--dataset", required=True, help="fashion-mnist, mnist, digits, or PATH.npz")
    p.add_argument(
        "--augment", type=Path, default=None, metavar="RUN_DIR",
        help="a run trained on the same dataset whose model augments the data (adds a row)",
    )  # fmt: skip
    p.add_argument("--hidden", type=int, default=1024, help="width of both hidden layers (paper: 1024, 8192)")
    p.add_argument("--seeds", type=int, default=3, help="classifiers per row, seeds 1..n (default 3)")
    p.add_argument("--epochs", type=int, default=100, help="epochs per classifier (paper: 100)")
    p.add_argument("--real-weight", type=float, default=0.4, help="weight of the real data's loss (0.4)")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (0.1)")
    p.add_argument("--batch-size", type=int, default=100, help="real images per step (100)")
    p.add_argument("--temperature", type=float, default=1.0, help="of the augmentation's r(z|x) (default 1)")
    p.add_argument("--pixels", default="rounded", help=f"of the augmented images: {PIXELS_HELP}")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's standard files")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", type=Path, default=None, help="also write the table here, and its JSON beside it")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--work", type=Path, default=None, metavar="DIR",
        help="keep each finished classifier's result here; run again with the same settings to resume",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_augment(args: argparse.Namespace) -> int:
    summary = augment_run(
        args.run_dir, args.out, args.variations, args.temperature, args.pixels, args.limit, args.seed,
        args.device,
    )  # fmt: skip
    print(json.dumps(summary))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.suffix.lower() == ".json":
        raise ConfigError(
            f"--out '{args.out}' gets a .json file written beside it; give it another suffix (.md)"
        )
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    result = compare_augmentation(
        args.dataset, args.augment, args.hidden, args.epochs, range(1, args.seeds + 1), args.real_weight,
        args.lr, args.batch_size, args.temperature, args.pixels, args.data_dir, args.device,
        progress=not args.no_progress, work_dir=args.work,
    )  # fmt: skip
    table = classification_table(result)
    if args.out is not None:
        atomic_write_text(args.out, table)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result) if args.json else table, end="\n" if args.json else "")
    return 0


COMMANDS = {"augment": cmd_augment, "classify": cmd_classify}
# old spellings, hidden, that still work with a warning (see cli.main.DEPRECATED_FLAGS)
DEPRECATED_FLAGS = {
    "augment": {"--per-example": "--variations", "--output": "--pixels"},
    "classify": {"--output": "--pixels"},
}
