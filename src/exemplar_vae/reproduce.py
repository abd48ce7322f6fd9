"""Reproduce rows of the paper's density-estimation table: presets -> training runs -> a markdown table.

A preset (``presets/paper/<dataset>-<arch>-<prior>.json``, one per row of Table 1 of Norouzi et al. 2020)
holds the row's run configuration (the paper's hyperparameters) and the paper's figure. ``reproduce``
trains each requested row for several seeds, evaluates every run by importance sampling (S = 5000 by
default), and writes a table ``mean ± std`` over seeds beside the paper's number.

Runs live in ``OUT/<preset>/seed<k>``. A run that has finished training is not trained again, an
interrupted one is resumed from its last checkpoint, and an evaluation with the same settings is reused, so
re-running the same command continues where it stopped. A budget (fewer epochs, fewer training or test
images, fewer samples) is recorded in the table beside the results: figures are only comparable with
the paper's at the paper's budget.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exemplar_vae.config import EvalConfig, RunConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.io import CONFIG, EVALUATION, atomic_write_json, atomic_write_text
from exemplar_vae.pipeline import evaluate_run, train
from exemplar_vae.rundir import start_over
from exemplar_vae.runs import load_run_config
from exemplar_vae.training.checkpoint import checkpoint_file, has_checkpoint
from exemplar_vae.validation import validate

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets" / "paper"
DONE = "reproduce_done.json"  # written in a run folder once its training has finished
RUN_KEYS = ("log_likelihood", "log_likelihood_std_error", "elbo", "bits_per_dim", "examples")


@dataclass(frozen=True)
class Preset:
    """One row of the paper's table: its configuration and the paper's figure."""

    name: str  # "<dataset>-<arch>-<prior>"
    row: str  # the row's label in the paper, e.g. "Exemplar VAE"
    config: RunConfig
    paper_mean: float
    paper_std: float
    notes: str = ""


@dataclass(frozen=True)
class Budget:
    """What a reproduction may spend; None keeps the preset's (the paper's) value.

    Attributes:
        epochs: maximum epochs per run (the paper: 2000 with early stopping).
        warmup: KL warm-up epochs (the paper: 100); by default min(100, epochs // 4) when ``epochs``
            is given, so a short run still reaches beta = 1.
        early_stopping: patience after warm-up (the paper: 50; 0 disables it).
        train_size: keep the first N training images.
        knn: override k of the exemplar prior (0 = exact prior over M exemplars).
        search: retrieval search of exemplar rows with k > 0 ("exact" or "ivf", see
            ``PriorConfig.search``); None keeps the preset's (exact).
        test_limit: evaluate on the first n test images (None: all).
        samples: importance samples per test image (the paper: 5000).
        candidates: exemplar prior: score each test image against its K nearest exemplars (a lower bound,
            see ``evaluation.evaluate_density``); None: all N (exact, far slower; docs/speed.md).
        device: "auto", "cpu", "cuda", ...
        amp: mixed precision for training ("off", "bf16", "fp16").
    """

    epochs: int | None = None
    warmup: int | None = None
    early_stopping: int | None = None
    train_size: int | None = None
    knn: int | None = None
    search: str | None = None
    test_limit: int | None = None
    samples: int = 5000
    candidates: int | None = 1000
    device: str = "auto"
    amp: str = "off"

    def describe(self, preset_warmup: int = 100) -> str:
        """A one-line description for the table (``preset_warmup``: the presets' own KL warm-up)."""
        parts = ["paper protocol" if self.epochs is None else f"at most {self.epochs} epochs"]
        if self.warmup is not None or self.epochs is not None:
            parts.append(f"warm-up {self.effective_warmup(preset_warmup)}")
        if self.early_stopping is not None:
            parts.append(f"early stopping {self.early_stopping or 'off'}")
        if self.train_size is not None:
            parts.append(f"first {self.train_size} training images")
        if self.knn is not None:
            parts.append(f"k = {self.knn}")
        if self.search is not None and self.search != "exact":
            parts.append(f"{self.search} retrieval search")
        parts.append(f"test {'all' if self.test_limit is None else f'first {self.test_limit}'} images")
        parts.append(f"S = {self.samples}")
        parts.append(
            "exemplar prior scored exactly"
            if self.candidates is None
            else f"exemplar prior truncated to the {self.candidates} exemplars nearest each test image (lower bound)"
        )
        return ", ".join(parts)

    def effective_warmup(self, paper_warmup: int) -> int:
        if self.warmup is not None:
            return self.warmup
        if self.epochs is not None:
            return min(paper_warmup, max(1, self.epochs // 4))
        return paper_warmup


@dataclass
class RowResult:
    """The runs of one preset."""

    preset: Preset
    runs: list[dict[str, Any]] = field(default_factory=list)  # one evaluation summary per seed

    @property
    def values(self) -> list[float]:
        return [r["log_likelihood"] for r in self.runs]


# -- presets -------------------------------------------------------------------------------------------
def _read_preset(path: Path) -> Preset:
    try:
        doc = json.loads(path.read_text())
        config = RunConfig.from_dict(doc["config"])
        paper = doc["paper"]
        return Preset(path.stem, doc["row"], config, float(paper["log_likelihood"]), float(paper["std"]),
                      doc.get("notes", ""))  # fmt: skip
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"preset {path} is not a valid preset file: {e}") from e


def list_presets(folder: Path = PRESET_DIR) -> list[Preset]:
    """Every preset in ``folder``, sorted by name."""
    return [_read_preset(p) for p in sorted(folder.glob("*.json"))]


def find_presets(
    datasets: list[str], archs: list[str], priors: list[str], folder: Path = PRESET_DIR
) -> list[Preset]:
    """The presets for every (dataset, arch, prior) combination, in that order.

    Raises:
        ConfigError: a combination has no preset (the message lists what exists).
    """
    if not Path(folder).is_dir():
        raise ConfigError(f"preset folder {folder} does not exist")
    available = {p.name: p for p in list_presets(folder)}
    wanted = [f"{d}-{a}-{p}" for d in datasets for a in archs for p in priors]
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ConfigError(
            f"no paper preset for {', '.join(missing)}; available (dataset-arch-prior): {', '.join(available)}"
        )
    return [available[w] for w in wanted]


def apply_budget(config: RunConfig, budget: Budget, seed: int) -> RunConfig:
    """The preset's configuration with the budget's overrides and the run's seed."""
    t, p, d = config.train, config.prior, config.data
    train = dataclasses.replace(
        t,
        epochs=budget.epochs if budget.epochs is not None else t.epochs,
        warmup=budget.effective_warmup(t.warmup),
        early_stopping=budget.early_stopping if budget.early_stopping is not None else t.early_stopping,
        seed=seed,
        device=budget.device,
        amp=budget.amp,
    )
    prior = dataclasses.replace(p, knn=budget.knn) if budget.knn is not None else p
    if budget.search is not None and prior.name == "exemplar" and prior.knn > 0:  # retrieval rows only
        prior = dataclasses.replace(prior, search=budget.search)
    data = dataclasses.replace(d, train_size=budget.train_size) if budget.train_size is not None else d
    return validate(dataclasses.replace(config, data=data, prior=prior, train=train))


# -- runs ----------------------------------------------------------------------------------------------
def _comparable(config: RunConfig) -> RunConfig:
    """The parts of a configuration that identify a run (not the device, not the resolved M = N/2)."""
    return dataclasses.replace(
        config,
        prior=dataclasses.replace(config.prior, exemplars=None),
        train=dataclasses.replace(config.train, device="auto"),
    )


def _train_run(config: RunConfig, run_dir: Path, progress: bool) -> None:
    """Train, resume an interrupted run, or skip a finished one."""
    done = run_dir / DONE
    if not has_checkpoint(run_dir, "last") and (run_dir / CONFIG).is_file():
        # interrupted before its first checkpoint: nothing to resume; start again if it is the same run
        if _comparable(load_run_config(run_dir)) != _comparable(config):
            raise ConfigError(
                f"{run_dir} holds a run with a different configuration; pick another --out or remove it"
            )
        start_over(run_dir, also=(DONE,))  # its files, a best checkpoint, an evaluation of it (rundir)
    if has_checkpoint(run_dir, "last"):
        saved = load_run_config(run_dir)
        if _comparable(saved) != _comparable(config):
            raise ConfigError(
                f"{run_dir} holds a run with a different configuration; pick another --out or remove it"
            )
        if done.is_file():
            logger.info("%s: trained already", run_dir)
            return
        logger.info("%s: resuming", run_dir)
        resumed = dataclasses.replace(
            saved, train=dataclasses.replace(saved.train, device=config.train.device)
        )
        _, result = train(resumed, run_dir, resume=True, progress=progress)
    else:
        _, result = train(config, run_dir, progress=progress)
    summary = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early}  # fmt: skip
    atomic_write_text(done, json.dumps(summary) + "\n")


def _evaluate_run(run_dir: Path, budget: Budget, check_exact: int, progress: bool) -> dict[str, Any]:
    """The run's evaluation at the budget's settings; reused when RUN_DIR/evaluation.json has the same
    settings and was made from the current best checkpoint (the mtime of the file that commits it)."""
    path = run_dir / EVALUATION
    best = checkpoint_file(run_dir, "best")  # best.json, or best.pt of an older run
    settings = {
        "samples": budget.samples, "test_limit": budget.test_limit, "check_exact": check_exact,
        "candidates": budget.candidates,
        "checkpoint_mtime_ns": best.stat().st_mtime_ns if best is not None else None,
    }  # fmt: skip
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("reproduce_settings") == settings:
            return old
    config = EvalConfig(
        samples=budget.samples, split="test", limit=budget.test_limit, check_exact=check_exact,
        candidates=budget.candidates,
    )  # fmt: skip
    result = evaluate_run(run_dir, config, device=budget.device, progress=progress)
    result["reproduce_settings"] = settings
    atomic_write_json(path, result)
    return result


def reproduce(
    presets: list[Preset],
    seeds: int,
    out: str | Path,
    budget: Budget = Budget(),
    check_exact: int = 0,
    progress: bool = True,
) -> list[RowResult]:
    """Train and evaluate ``seeds`` runs of each preset; writes OUT/reproduce.md and OUT/reproduce.json.

    Args:
        presets: rows to run (``find_presets``).
        seeds: runs per row (seeds 1..seeds).
        out: folder for the runs and the table.
        budget: what to spend (default: the paper's protocol).
        check_exact: exemplar prior: re-score this many test points with the full prior (truncation error).
        progress: progress bars.

    Returns:
        One ``RowResult`` per preset.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if budget.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {budget.samples}")
    if budget.test_limit is not None and budget.test_limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {budget.test_limit}")
    if check_exact < 0:
        raise ConfigError(f"--check-exact must be >= 0, got {check_exact}")
    if budget.candidates is not None and budget.candidates < 1:
        raise ConfigError(
            f"--candidates must be at least 1 (0 on the command line: all), got {budget.candidates}"
        )
    out = Path(out)
    configs = [
        [apply_budget(p.config, budget, seed) for seed in range(1, seeds + 1)] for p in presets
    ]  # fail early
    rows = []
    for preset, seed_configs in zip(presets, configs):
        row = RowResult(preset)
        for seed, config in enumerate(seed_configs, start=1):
            run_dir = out / preset.name / f"seed{seed}"
            logger.info("%s seed %d -> %s", preset.name, seed, run_dir)
            _train_run(config, run_dir, progress)
            result = _evaluate_run(run_dir, budget, check_exact, progress)
            row.runs.append({"seed": seed, "run_dir": str(run_dir), **{k: result[k] for k in RUN_KEYS}})
        rows.append(row)
        write_outputs(rows, budget, out)  # after every row: a partial table survives an interruption
    return rows


def collect(presets: list[Preset], seeds: int, out: str | Path) -> list[RowResult]:
    """The rows as far as they exist: every seed folder of OUT whose run has an evaluation.json (nothing is
    trained or evaluated). Seeds without one are left out, so a row may hold fewer runs than asked."""
    rows = []
    for preset in presets:
        row = RowResult(preset)
        for seed in range(1, seeds + 1):
            path = Path(out) / preset.name / f"seed{seed}" / "evaluation.json"
            if path.is_file():
                result = json.loads(path.read_text())
                row.runs.append(
                    {"seed": seed, "run_dir": str(path.parent), **{k: result[k] for k in RUN_KEYS}}
                )
        if row.runs:
            rows.append(row)
    return rows


# -- the table -----------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def format_table(rows: list[RowResult], budget: Budget) -> str:
    """Markdown: one line per preset, ``mean ± std`` over seeds beside the paper's ``mean ± std``."""
    warmups = sorted({r.preset.config.train.warmup for r in rows}) or [100]
    lines = [
        f"Budget: {budget.describe(warmups[0])}.",
        "",
        "| dataset | model | runs | test log-likelihood (nats) | paper (5 runs) | difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.preset.config
        mean, std = mean_std(r.values)
        ours = f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"
        paper = f"{r.preset.paper_mean:.2f} ± {r.preset.paper_std:.2f}"
        lines.append(
            f"| {c.data.dataset} | {r.preset.row} | {len(r.values)} | {ours} | {paper} | "
            f"{mean - r.preset.paper_mean:+.2f} |"
        )
    lines += [
        "",
        "Log-likelihoods are importance-sampled (IWAE bound) on the test images; std is over seeds.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[RowResult], budget: Budget, out: Path) -> None:
    """OUT/reproduce.md (the table) and OUT/reproduce.json (every run's figures), written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "reproduce.md", format_table(rows, budget))
    doc = {
        "budget": dataclasses.asdict(budget),
        "rows": [{"preset": r.preset.name, "paper": [r.preset.paper_mean, r.preset.paper_std], "runs": r.runs}
                 for r in rows],
    }  # fmt: skip
    atomic_write_text(out / "reproduce.json", json.dumps(doc, indent=2) + "\n")
