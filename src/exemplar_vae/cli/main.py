"""``exemplar-vae train | evaluate | generate | report | table``: parse -> config -> Python API
(``exemplar_vae.pipeline``, ``exemplar_vae.report``); the other subcommands live in their own modules.

Exit status: 0 done; 2 bad usage (argparse) or bad input (every ``ExemplarVAEError``: ``ConfigError``,
``DataError``, ``CheckpointError``), printed as one ``error: ...`` line; 1 a run that started and failed
(``errors.RunFailed``, e.g. training diverged, or a write the file system refused: no space left, quota,
read-only, permission -- ``error: no space left on device writing PATH``); 130 interrupted.

One flag means one thing in every subcommand (``tests/test_cli_options.py`` checks every registered
subcommand): ``--out`` is where the output goes, ``--limit n`` the first n examples the command works
through, ``--seeds n`` seeds 1..n, ``--exemplars M`` train's exemplars per step and ``--extra-exemplars FILE``
images added to a trained model's exemplar set. ``-q`` works before or after the subcommand; progress bars
show only on a terminal, without ``-q`` or ``--no-progress``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from exemplar_vae import __version__, distributed, errors, pipeline, report
from exemplar_vae.cli import ablate, downstream, explain, explore, export, reproduce
from exemplar_vae.compiling import COMPILE_MODES
from exemplar_vae.config import EvalConfig, RunConfig
from exemplar_vae.errors import ExemplarVAEError
from exemplar_vae.io import atomic_write_text, write_failed
from exemplar_vae.models.build import ARCHITECTURES
from exemplar_vae.priors import PRIORS
from exemplar_vae.runs import load_run_config
from exemplar_vae.training.loop import (
    AMP_DTYPES,
    RESUMABLE_CHANGES,
    RESUMABLE_PRIOR_CHANGES,
)

logger = logging.getLogger("exemplar_vae")


class _Off:
    """What ``--grad-tolerance off`` parses to: the setting switched off (its config value None). A class
    of its own, so that "off" as the plain value of other flags (--compile, --amp) is left alone."""

    def __repr__(self) -> str:
        return "off"


OFF = _Off()


def _tolerance(text: str) -> float | _Off:
    """--grad-tolerance: a number, or "off" (at --resume, back to all M exemplars with gradient)."""
    if text == "off":
        return OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or off, got {text!r}") from None


# CLI flag -> (config section, field, parser, help); None defaults mean "not given: keep the config's
# value".
TRAIN_FLAGS: dict[str, tuple[str, str, Callable[[str], Any], str]] = {
    "--dataset": (
        "data",
        "dataset",
        str,
        "fashion-mnist, mnist, omniglot, celeba, digits, PATH.npz, or a folder of images",
    ),
    "--data-dir": ("data", "data_dir", str, "folder with the dataset's standard files"),
    "--train-size": ("data", "train_size", int, "keep only the first N training images"),
    "--arch": (
        "model",
        "arch",
        str,
        f"network: {', '.join(ARCHITECTURES)} (the prior scores the top latent)",
    ),
    "--latent-dim": ("model", "latent_dim", int, "size of z, or of z1 and z2 (paper: 40)"),
    "--hidden": ("model", "hidden", int, "width of the gated hidden layers (paper: 300)"),
    "--prior": ("prior", "name", str, f"one of {', '.join(PRIORS)}"),
    "--components": ("prior", "components", int, "K pseudo-inputs / mixture components (paper: 500)"),
    "--exemplars": ("prior", "exemplars", int, "M exemplars drawn per minibatch (default N/2)"),
    "--knn": ("prior", "knn", int, "k neighbours for retrieval augmented training; 0 = exact prior over M"),
    "--search": (
        "prior",
        "search",
        str,
        "retrieval search: exact (flat search of the M-subset, default) or ivf (approximate faiss IVF index "
        "rebuilt each epoch; recall logged as search_recall)",
    ),
    "--nprobe": ("prior", "nprobe", int, "inverted lists visited per query with --search ivf (default 16)"),
    "--grad-tolerance": (
        "prior",
        "grad_tolerance",
        _tolerance,
        "exact prior (--knn 0): encode the M exemplars without gradient and re-encode with gradient only "
        "those carrying all but this much of each point's responsibility, e.g. 1e-3 (same value; the encoder "
        "gradient through the others is left out; off: all M with gradient, the default)",
    ),
    "--subsample": (
        "prior",
        "subsample",
        int,
        "VampPrior: K' of the K pseudo-inputs drawn at random per training step, weight 1/K' each "
        "(evaluation uses all K; default: all K every step)",
    ),
    "--epochs": ("train", "epochs", int, "maximum epochs (paper: 2000 with early stopping)"),
    "--warmup": ("train", "warmup", int, "epochs of linear KL warm-up (paper: 100)"),
    "--early-stopping": (
        "train",
        "early_stopping",
        int,
        "patience in epochs after warm-up; 0 = off (paper: 50)",
    ),
    "--batch-size": ("train", "batch_size", int, "minibatch size, over all processes (paper: 100)"),
    "--max-steps": ("train", "max_steps", int, "stop after this many optimiser steps (resumable)"),
    "--lr": ("train", "lr", float, "learning rate (paper: 5e-4)"),
    "--optimizer": ("train", "optimizer", str, "adamnormgrad (paper, default) or adam"),
    "--seed": ("train", "seed", int, "random seed"),
    "--device": ("train", "device", str, "auto, cpu, cuda, cuda:N"),
    "--amp": (
        "train",
        "amp",
        str,
        f"mixed precision for training steps: {', '.join(AMP_DTYPES)} (default off)",
    ),
    "--on-divergence": (
        "train",
        "divergence",
        str,
        "when the training loss diverges (above 10x its lowest 5-step mean for 5 steps in a row): stop "
        "(default; exit 1) or warn (log it and train on); a NaN/inf loss always stops",
    ),
    "--compile": (
        "train",
        "compile",
        str,
        "on: torch.compile the training step's loss, forward and backward (off: default); without a C++ "
        "compiler it trains eagerly after a warning",
    ),
}


DEVICE_HELP = "auto (a GPU if there is one), cpu, cuda, cuda:N"
QUIET_HELP = "only warnings and results: no info logs, no progress bars (before or after the subcommand)"
NO_PROGRESS_HELP = "no progress bars (there are none anyway when stderr is not a terminal, or with -q)"

# Renamed flags whose old spelling still works, hidden from --help, with a warning: command -> {old: new}.
# Subcommand modules may add theirs as ``DEPRECATED_FLAGS``. evaluate/generate --exemplars FILE is not
# kept: --exemplars is train's M, an int (the images are --extra-exemplars FILE).
DEPRECATED_FLAGS: dict[str, dict[str, str]] = {"evaluate": {"--add-val-exemplars": "--with-val"}}
DEPRECATED_USED = "deprecated_flags_used"  # the namespace attribute listing the old spellings given


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


class _DeprecatedFlag(argparse.Action):
    """The old spelling of a renamed flag: sets the new flag's value; main() logs a warning."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        used = getattr(namespace, DEPRECATED_USED, [])
        setattr(namespace, DEPRECATED_USED, [*used, f"{option_string} is deprecated; use {self.new}"])


def _add_deprecated_flag(p: argparse.ArgumentParser, old: str, new: str) -> None:
    target = p._option_string_actions[new]
    shape: dict[str, Any] = {"nargs": 0, "const": target.const}  # a switch (store_true, store_const)
    if target.nargs != 0:
        shape = {"nargs": target.nargs, "type": target.type, "choices": target.choices}
        shape["metavar"] = target.metavar
    p.add_argument(
        old, action=_DeprecatedFlag, new=new, dest=target.dest, default=argparse.SUPPRESS,
        help=argparse.SUPPRESS, **shape,
    )  # fmt: skip


def deprecated_flags() -> dict[str, dict[str, str]]:
    """Every subcommand's hidden old spellings: command -> {old flag: new flag}."""
    merged = {cmd: dict(flags) for cmd, flags in DEPRECATED_FLAGS.items()}
    for module in _subcommand_modules():
        for cmd, flags in getattr(module, "DEPRECATED_FLAGS", {}).items():
            merged.setdefault(cmd, {}).update(flags)
    return merged


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of every subcommand (aliases included), by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exemplar-vae",
        description="Exemplar VAEs: train, evaluate and sample VAEs with exemplar, VampPrior, MoG or Gaussian priors.",
    )
    parser.add_argument("--version", action="version", version=f"exemplar-vae {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(
        dest="command", required=True, help="what to do; `exemplar-vae COMMAND --help` lists its options"
    )

    p = sub.add_parser("train", help="train a model; writes config.json, metrics.jsonl, checkpoints")
    p.add_argument("--out", required=True, type=Path, help="run folder to create (or to --resume)")
    p.add_argument("--config", type=Path, help="a config.json to start from (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--restart", action="store_true",
        help="start over the run in --out that stopped before its first checkpoint, with this command's "
        "configuration (without it, only the same configuration starts it over)",
    )  # fmt: skip
    p.add_argument("--no-leave-one-out", action="store_true", help="let a training point be its own exemplar")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument(
        "--tensorboard", action="store_true",
        help="also log every epoch's metrics to OUT/tensorboard (needs the tensorboard extra)",
    )  # fmt: skip
    p.add_argument(
        "--binarize", action=argparse.BooleanOptionalAction, default=None,
        help="binary data with dynamic binarisation and a Bernoulli likelihood, or (--no-binarize) 8-bit "
        "values with a discretised logistic; default: the dataset's own (MNIST family, Omniglot: binarised; "
        "CelebA: 8-bit; .npz and folders: binarised)",
    )  # fmt: skip
    for flag, (_, _, typ, help_) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=help_)

    p = sub.add_parser("evaluate", help="test ELBO and importance-sampled log-likelihood (nats per example)")
    p.add_argument("run_dir", type=Path, help="run folder written by train")
    p.add_argument("--samples", type=int, default=5000, help="importance samples per example (default 5000)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="split to score (default test)")
    p.add_argument("--limit", type=int, default=None, help="score only the first n examples of the split")
    p.add_argument("--batch-size", type=int, default=100, help="test points scored together (default 100)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default 0)")
    p.add_argument(
        "--candidates", type=int, default=1000,
        help="exemplar prior: score each test point against the K exemplars nearest its encoder mean "
        "(a lower bound; default 1000); 0 = all N exemplars (exact, slow)",
    )  # fmt: skip
    p.add_argument(
        "--check-exact", type=int, default=10,
        help="with truncation, re-score the first n test points with the full prior and the same samples "
        "and report the truncation error (default 10; 0 = off); an error above --certify-tolerance re-scores "
        "with 4x the candidates until within it, or with the full prior (see --no-escalate)",
    )  # fmt: skip
    p.add_argument(
        "--no-escalate", action="store_true",
        help="keep the truncated value even when the --check-exact points show an error above the tolerance "
        "(default: re-score with more candidates)",
    )  # fmt: skip
    p.add_argument(
        "--certify", action="store_true",
        help="with truncation, bound every test point's truncation error from above (a ball tree over the "
        "exemplar codes, refined until the bound is below --certify-tolerance) and report the bounds",
    )  # fmt: skip
    p.add_argument(
        "--certify-tolerance", type=float, default=0.01,
        help="certified bound per test point to aim for, nats (default 0.01)",
    )  # fmt: skip
    p.add_argument(
        "--certify-budget", type=float, default=0.5,
        help="at most this fraction of the N exemplars evaluated exactly per test point (default 0.5)",
    )  # fmt: skip
    p.add_argument(
        "--compile", choices=COMPILE_MODES, default="off",
        help="on: torch.compile the decoder and likelihood (off: default); without a C++ compiler it runs "
        "eagerly after a warning",
    )  # fmt: skip
    p.add_argument(
        "--extra-exemplars", type=Path, default=None, metavar="EXTRA.npz",
        help="exemplar prior: add the images (array x) of this .npz file to the exemplar set, no retraining",
    )  # fmt: skip
    p.add_argument(
        "--with-val", action="store_true",
        help="exemplar prior: add the validation images (grey) to the exemplar set",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=None, help="write the JSON here (default RUN_DIR/evaluation.json)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = sub.add_parser(
        "generate", help="PNG grid of prior samples, exemplar variations, cyclic chains or interpolations"
    )
    p.add_argument("run_dir", type=Path, help="run folder written by train")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument(
        "--n", type=int, default=64, help="samples, or rows with --from-exemplars/--cyclic/--interpolate"
    )
    p.add_argument("--from-exemplars", action="store_true", help="rows of exemplar + variations from r(z|x)")
    p.add_argument("--variations", type=int, default=10, help="variations per exemplar (default 10)")
    p.add_argument(
        "--cyclic", type=int, default=None, metavar="STEPS",
        help="rows of cyclic generation: uniform noise, then STEPS times x <- decoder mean of z ~ r(z|x)",
    )  # fmt: skip
    p.add_argument(
        "--interpolate", action="store_true",
        help="rows: exemplar a, --steps decoded points on the latent line from mu(a) to mu(b), exemplar b",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=10, help="points per interpolation row (default 10)")
    p.add_argument(
        "--class", dest="class_label", type=int, default=None, metavar="LABEL",
        help="samples from the training images of one class only (the Parzen window over them)",
    )  # fmt: skip
    p.add_argument(
        "--from-images", type=Path, default=None, metavar="NPZ_OR_FOLDER",
        help="samples around these images only (an .npz with array x, or a folder of images), no retraining",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=float, default=1.0,
        help="multiplies the sampling std of the prior (or of r(z|x) for the row layouts); default 1",
    )  # fmt: skip
    p.add_argument(
        "--extra-exemplars", type=Path, default=None, metavar="EXTRA.npz",
        help="exemplar prior: add these images (array x) to the exemplar set; exemplar rows and pairs are "
        "then drawn from them",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p = sub.add_parser("report", help="samples.png, exemplars.png, curves.png and report.md in a run folder")
    p.add_argument("run_dir", type=Path, help="run folder written by train")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed of the pictures (default 0)")
    p = sub.add_parser("table", help="markdown table of evaluated runs (from their evaluation.json)")
    p.add_argument("run_dirs", type=Path, nargs="+", help="run folders that hold an evaluation.json")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    for module in _subcommand_modules():
        module.add_parsers(sub)
    for p in {id(p): p for p in sub.choices.values()}.values():  # -q after the subcommand too; SUPPRESS:
        if "-q" not in p._option_string_actions:  # absent, it does not overwrite a -q given before it
            p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    for command, flags in deprecated_flags().items():
        for old, new in flags.items():
            _add_deprecated_flag(sub.choices[command], old, new)
    return parser


# Further subcommands live in their own modules, each with ``add_parsers(sub)`` (adds its parsers) and
# ``COMMANDS`` (name -> function(args) -> exit code); optionally ``DEPRECATED_FLAGS`` (see above).
SUBCOMMAND_MODULES = (downstream, explore, explain, export, ablate, reproduce)


def _subcommand_modules() -> list[Any]:
    return list(SUBCOMMAND_MODULES)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults (or --config / the saved config on --resume), overridden by the flags that were given."""
    if args.resume:
        if not (Path(args.out) / "config.json").is_file():
            raise ExemplarVAEError(
                f"{args.out} holds no run to resume (no config.json): run the same train command without "
                "--resume to start it"
            )
        base = load_run_config(args.out)
    elif args.config is not None:
        base = RunConfig.load(args.config)
    else:
        base = RunConfig()
    sections: dict[str, Any] = {
        "data": base.data,
        "model": base.model,
        "prior": base.prior,
        "train": base.train,
    }
    given: dict[str, dict[str, Any]] = {k: {} for k in sections}
    for flag, (section, name, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, _dest(flag))
        if value is not None:
            given[section][name] = None if value is OFF else value
    if args.no_leave_one_out:
        given["prior"]["leave_one_out"] = False
    if args.binarize is not None:
        given["data"]["binarize"] = args.binarize
    if args.resume:
        allowed = RESUMABLE_CHANGES | RESUMABLE_PRIOR_CHANGES
        flags = {(s, n): f for f, (s, n, _, _) in TRAIN_FLAGS.items()}
        flags[("prior", "leave_one_out")], flags[("data", "binarize")] = "--no-leave-one-out", "--binarize"
        changed = sorted(flags[(s, n)] for s, names in given.items() for n in names if n not in allowed)
        if changed:
            raise ExemplarVAEError(
                f"--resume continues the saved configuration; only --epochs, --early-stopping, --max-steps, "
                f"--on-divergence, --compile, --grad-tolerance and --device may change (got "
                f"{', '.join(changed)})"
            )
    new = {k: replace(v, **given[k]) for k, v in sections.items()}
    return RunConfig(**new)


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    _, result = pipeline.train(
        config, args.out, resume=args.resume, progress=not args.no_progress, tensorboard=args.tensorboard,
        restart=args.restart,
    )  # fmt: skip
    summary = {
        "run_dir": str(args.out),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
    }
    if distributed.is_main():
        print(json.dumps(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = EvalConfig(
        samples=args.samples, batch_size=args.batch_size, candidates=args.candidates or None,
        check_exact=args.check_exact, escalate=not args.no_escalate, certify=args.certify,
        tolerance=args.certify_tolerance,
        budget=args.certify_budget, seed=args.seed, split=args.split, limit=args.limit,
        compile=args.compile,
    )  # fmt: skip
    result = pipeline.evaluate_run(
        args.run_dir, config, args.device, progress=not args.no_progress,
        extra_exemplars=args.extra_exemplars, add_val_exemplars=args.with_val, out=args.out,
    )  # fmt: skip
    if not distributed.is_main():
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['prior']} prior on {result['dataset']} ({result['split']}, {result['examples']} examples, "
            f"S={result['samples']}): log-likelihood {result['log_likelihood']:.2f} "
            f"± {report.std_error_text(result['log_likelihood_std_error'])} nats, ELBO {result['elbo']:.2f} nats, "
            f"{result['bits_per_dim']:.4f} bits/dim ({result['seconds']:.1f}s)"
        )
        cert = result.get("certified")
        if cert:
            print(
                f"certified: the full-prior estimate is at most {cert['mean_bound']:.2e} nats above the reported "
                f"one on average ({cert['max_bound']:.2e} at most; {100 * cert['fraction_below_tolerance']:.1f}% of "
                f"test points within {cert['tolerance']:g} nats; "
                f"{cert.get('exemplars_evaluated_per_point', 0):.0f} exemplars evaluated exactly per point)"
            )
        check = result.get("truncation_check")
        if check:
            print(
                f"prior truncated to the {result['candidates']} exemplars nearest each test point; against the "
                f"full prior on {check['points']} points with the same samples: mean error "
                f"{check['mean_error']:.2e}, max {check['max_error']:.2e} nats ({check['exact_seconds']:.1f}s)"
            )
        if result.get("escalated"):
            print(
                f"{result['escalated']['reason']}: re-scored ({result['prior_eval']}; first truncated "
                f"estimate {result['escalated']['truncated_log_likelihood']:.2f} nats)"
            )
        if result.get("extra_exemplars"):
            print(
                f"exemplar set: {result['train_examples']} training + {result['extra_exemplars']} extra images "
                f"({', '.join(result['extra_exemplar_sources'])})"
            )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    path = pipeline.generate_pictures(
        args.run_dir, args.out, args.n, args.from_exemplars, args.variations, args.device, args.seed,
        extra_exemplars=args.extra_exemplars, temperature=args.temperature, cyclic=args.cyclic,
        interpolate=args.interpolate, steps=args.steps, class_label=args.class_label,
        from_images=args.from_images,
    )  # fmt: skip
    print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(f"wrote {report.write_report(args.run_dir, args.device, args.seed)}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    table = report.results_table(args.run_dirs)
    if args.out is not None:
        atomic_write_text(args.out, table)
    print(table, end="")
    return 0


COMMANDS = {
    "table": cmd_table,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "generate": cmd_generate,
    "report": cmd_report,
}


# errors that only a write can cause: printed as one line, exit status 1 (io.WriteFailed is printed the same)
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    launch = distributed.Launch.from_env()  # under torchrun only rank 0 logs progress and prints results
    logging.basicConfig(
        level=logging.WARNING if args.quiet or launch.rank > 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for warning in getattr(args, DEPRECATED_USED, []):
        logger.warning(warning)
    # progress bars only on a terminal, and neither with -q nor with --no-progress (every command reads
    # args.no_progress, whether or not it has the flag)
    args.no_progress = (
        getattr(args, "no_progress", False) or args.quiet or launch.rank > 0 or not sys.stderr.isatty()
    )
    commands = dict(COMMANDS)
    for module in _subcommand_modules():
        commands.update(module.COMMANDS)
    run_failed = getattr(errors, "RunFailed", None)  # a run that started and failed: exit status 1
    try:
        return commands[args.command](args)
    except ExemplarVAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if run_failed is not None and isinstance(e, run_failed) else 2
    except OSError as e:  # a write the file system refused outside io.atomic_write (that one is a RunFailed)
        if e.errno not in SPACE_ERRNOS:
            raise
        print(f"error: {write_failed(e, e.filename or 'a file')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.stop()


def entry() -> None:
    """The ``exemplar-vae`` command (and ``python -m exemplar_vae``): ``main()``'s status as the exit status.

    A process of a torchrun launch leaves with ``os._exit`` once its logs and streams are flushed: in the
    interpreter's teardown torch's gloo threads sometimes abort the process (SIGABRT, "terminate called
    without an active exception", after the run is complete and the process group destroyed), which
    torchrun would report as a failed launch."""
    status = main()
    if distributed.Launch.from_env().distributed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
