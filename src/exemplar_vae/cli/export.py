"""``exemplar-vae export``: a trained run as a self-contained model folder.

parse -> ``exemplar_vae.runs.load_run`` -> ``VAE.save_pretrained``; the folder loads with
``exemplar_vae.from_pretrained`` on any machine, without the dataset or the run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exemplar_vae.errors import ConfigError
from exemplar_vae.io import PRETRAINED_CONFIG, PRETRAINED_EXEMPLARS, PRETRAINED_WEIGHTS
from exemplar_vae.runs import load_run


def add_parsers(sub: Any) -> None:
    """Add the ``export`` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "export",
        help="write a run as a self-contained model folder (config.json, model.safetensors, exemplars)",
        description="Load a trained run (it needs its dataset once, for the exemplar set) and write a folder "
        "that exemplar_vae.from_pretrained loads anywhere without the data or the run folder: config.json "
        "(configuration, image shape, likelihood, SHA-256 of each file), model.safetensors (the weights) "
        "and, for the exemplar prior, exemplars.safetensors (the exemplar set).",
    )
    p.add_argument("run_dir", type=Path, help="a run folder written by 'exemplar-vae train'")
    p.add_argument("--out", required=True, type=Path, help="folder to write (must be new or empty)")
    p.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)"
    )
    p.add_argument("--force", action="store_true", help="write into an existing non-empty folder")


def cmd_export(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder or pass --force")
    model, _, config = load_run(args.run_dir, checkpoint=args.checkpoint, device="cpu", refresh=False)
    model.config = config  # the run's whole configuration, data and training sections included
    model.save_pretrained(out)
    files = [n for n in (PRETRAINED_CONFIG, PRETRAINED_WEIGHTS, PRETRAINED_EXEMPLARS) if (out / n).is_file()]
    print(f"wrote {out} ({', '.join(files)}) from the {args.checkpoint} checkpoint of {args.run_dir}")
    return 0


COMMANDS = {"export": cmd_export}
