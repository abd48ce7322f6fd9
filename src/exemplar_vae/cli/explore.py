"""``exemplar-vae probe``: kNN classification on a run's encoder means, and a t-SNE map of its codes.

parse -> ``exemplar_vae.pipeline.probe_run``; prints the markdown table (or JSON) and optionally writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from exemplar_vae import pipeline
from exemplar_vae.errors import ConfigError
from exemplar_vae.evaluation import DEFAULT_KS, probe_table
from exemplar_vae.io import atomic_write_text


def add_parsers(sub: Any) -> None:
    """Add the ``probe`` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "probe",
        help="kNN classification accuracy on encoder means (train codes = index, test codes = queries)",
        description="Encode the grey training and test images with a run's best model (encoder means), "
        "classify each test code by a majority vote of its k nearest training codes (Euclidean, faiss; "
        "ties go to the nearest neighbour's class) and print accuracy and error for each k.",
    )
    p.add_argument("run_dir", type=Path, help="run folder written by train")
    p.add_argument(
        "--k", type=int, nargs="+", default=list(DEFAULT_KS),
        help=f"numbers of neighbours (default {' '.join(map(str, DEFAULT_KS))})",
    )  # fmt: skip
    p.add_argument(
        "--with-val", action="store_true", help="put the validation images in the index too (the paper's 60k)"
    )
    p.add_argument(
        "--tsne", type=Path, default=None, metavar="OUT.png", help="also write a t-SNE map of test codes"
    )
    p.add_argument("--tsne-points", type=int, default=2000, help="test codes in the t-SNE map (default 2000)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", type=Path, default=None, help="also write what is printed (table or JSON) here")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="picks the t-SNE points and seeds t-SNE")


def cmd_probe(args: argparse.Namespace) -> int:
    if args.out is not None and args.tsne is not None and args.out.resolve() == args.tsne.resolve():
        raise ConfigError(f"--out and --tsne name the same file '{args.out}'")
    result = pipeline.probe_run(
        args.run_dir, args.k, args.device, include_val=args.with_val, tsne=args.tsne,
        tsne_points=args.tsne_points, seed=args.seed,
    )  # fmt: skip
    text = json.dumps(result) + "\n" if args.json else probe_table(result)
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text, end="")
    return 0


COMMANDS = {"probe": cmd_probe}
