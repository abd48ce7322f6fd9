"""Ablations of the exemplar prior: leave-one-out, exemplar subsampling (M/N) and retrieval (k), one command.

Section 5.1 of the paper (Norouzi et al., NeurIPS 2020) varies the exemplar prior's three regularisers
around the configuration it recommends: leave-one-out on, M = N/2 exemplars per minibatch, k = 10
retrieved neighbours. ``plan_ablation`` builds that grid one factor at a time around a base configuration,
``run_ablation`` trains and evaluates every point (resumably: each point is an ordinary run folder), and
``ablation_table`` writes the results as one markdown table with the budget stated above it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exemplar_vae import pipeline
from exemplar_vae.config import EvalConfig, RunConfig, TrainConfig
from exemplar_vae.data import DataSplits
from exemplar_vae.errors import ConfigError
from exemplar_vae.io import EVALUATION, atomic_write_text, read_metrics
from exemplar_vae.report import std_error_text
from exemplar_vae.rundir import start_over
from exemplar_vae.runs import load_run_config, prepare, resolve_device
from exemplar_vae.training.checkpoint import has_checkpoint
from exemplar_vae.validation import validate

logger = logging.getLogger(__name__)

LOO_VALUES = (True, False)
M_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
KS = (1, 5, 10, 50)
TABLE, RESULTS = "ablation.md", "ablation.json"


@dataclass(frozen=True)
class AblationPoint:
    """One configuration of the grid.

    Attributes:
        name: folder name under the ablation's output folder ("base", "loo=off", "M=0.25N", "k=5").
        factor: what is varied ("base", "leave-one-out", "M/N", "k").
        setting: the varied value as shown in the table.
        config: the fully resolved run configuration (M set).
        note: why the point deviates from the plain grid (a clamped k), or "".
    """

    name: str
    factor: str
    setting: str
    config: RunConfig
    note: str = ""


@dataclass(frozen=True)
class AblationPlan:
    """The grid around a base point, with notes on the grid values that were left out or changed."""

    num_train: int
    points: list[AblationPoint]
    notes: list[str] = field(default_factory=list)


def _check_values(loo: Sequence[bool], m_fractions: Sequence[float], ks: Sequence[int]) -> None:
    for value in loo:
        if not isinstance(value, bool):
            raise ConfigError(f"leave-one-out settings must be True or False, got {value!r}")
    for f in m_fractions:
        if not (isinstance(f, (int, float)) and math.isfinite(f) and 0 < f <= 1):
            raise ConfigError(f"--m-fractions: each M/N must be in (0, 1], got {f!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"--ks: each k must be an integer >= 1, got {k!r}")


def _exemplars(fraction: float, num_train: int) -> int:
    """M = max(2, floor(f * N)).

    Rounded down as the default M = N // 2 is (so M/N = 0.5 is the default point for any N), and at least
    two so that leave-one-out always leaves an exemplar; the 1e-9 absorbs float error in f * N.
    """
    return min(num_train, max(2, math.floor(fraction * num_train + 1e-9)))


def plan_ablation(
    base: RunConfig,
    loo: Sequence[bool] = LOO_VALUES,
    m_fractions: Sequence[float] = M_FRACTIONS,
    ks: Sequence[int] = KS,
    num_train: int | None = None,
) -> AblationPlan:
    """The exemplar prior varied one factor at a time around ``base``.

    The base point is ``base`` itself (M = its ``prior.exemplars``, N/2 when unset; k = ``prior.knn``;
    leave-one-out as set, on by default). Each factor's values that coincide with another point are left
    out, so the base appears once. A k larger than the base M is left out; an M/N point whose M is smaller
    than the base k keeps the point with k clamped to M. Both are recorded in ``notes``.

    Args:
        base: an exemplar-prior run configuration.
        loo: leave-one-out settings to try.
        m_fractions: M/N values in (0, 1]; M = max(2, floor(f * N)).
        ks: numbers of retrieved neighbours, each >= 1.
        num_train: N, the training-set size; None loads the data (``prepare``) to find it.

    Raises:
        ConfigError: a value out of range or a base configuration that is invalid or not an exemplar prior.
    """
    _check_values(loo, m_fractions, ks)
    if base.prior.name != "exemplar":
        raise ConfigError(
            f"ablations vary the exemplar prior; the base config's prior is '{base.prior.name}'"
        )
    if num_train is None:
        base, data = prepare(base)
        num_train = data.num_train
    base = validate(base, num_train)
    p = base.prior
    assert p.exemplars is not None  # resolved by validate
    base_m, base_k, base_loo = p.exemplars, p.knn, p.leave_one_out

    def point(
        name: str, factor: str, setting: str, m: int, k: int, lo: bool, note: str = ""
    ) -> AblationPoint:
        prior = dataclasses.replace(p, exemplars=m, knn=k, leave_one_out=lo)
        return AblationPoint(
            name, factor, setting, validate(dataclasses.replace(base, prior=prior), num_train), note
        )

    def on_off(flag: bool) -> str:
        return "on" if flag else "off"

    base_setting = f"LOO {on_off(base_loo)}, M/N={base_m / num_train:.3g}, k={base_k}"
    points = [point("base", "base", base_setting, base_m, base_k, base_loo)]
    notes: list[str] = []
    as_base: list[str] = []  # grid points equal to the base: shown once, as the base row
    seen: dict[tuple[int | None, int, bool], str] = {(base_m, base_k, base_loo): "base"}

    def add(candidate: AblationPoint) -> None:
        q = candidate.config.prior
        key = (q.exemplars, q.knn, q.leave_one_out)
        if key in seen:
            if seen[key] == "base":
                as_base.append(candidate.name)
            else:
                notes.append(f"{candidate.name} left out: same configuration as {seen[key]}")
            return
        seen[key] = candidate.name
        points.append(candidate)
        if candidate.note:
            notes.append(f"{candidate.name}: {candidate.note}")

    for lo in dict.fromkeys(loo):
        add(point(f"loo={on_off(lo)}", "leave-one-out", on_off(lo), base_m, base_k, lo))
    for f in dict.fromkeys(m_fractions):
        m = _exemplars(f, num_train)
        k, note = base_k, ""
        if base_k > m:
            k, note = m, f"k clamped from {base_k} to M={m}"
        add(point(f"M={f:g}N", "M/N", f"{f:g}", m, k, base_loo, note))
    for k in dict.fromkeys(ks):
        if k > base_m:
            notes.append(f"k={k} left out: larger than the base M={base_m} (N={num_train})")
            continue
        add(point(f"k={k}", "k", str(k), base_m, k, base_loo))
    if as_base:
        notes.insert(0, f"{', '.join(as_base)}: the base point (one row)")
    for note in notes:
        logger.info("ablation grid: %s", note)
    return AblationPlan(num_train, points, notes)


def ablation_grid(
    base: RunConfig,
    loo: Sequence[bool] = LOO_VALUES,
    m_fractions: Sequence[float] = M_FRACTIONS,
    ks: Sequence[int] = KS,
    num_train: int | None = None,
) -> list[tuple[str, RunConfig]]:
    """(name, resolved config) for every point of ``plan_ablation``; the base point first, named "base"."""
    return [(pt.name, pt.config) for pt in plan_ablation(base, loo, m_fractions, ks, num_train).points]


# -- running ------------------------------------------------------------------------------------------


def _finished(history: list[dict[str, Any]], epochs: int, warmup: int, patience: int) -> bool:
    """Whether a run with these metric lines has nothing left to train: all epochs, or stopped early."""
    if not history:
        return False
    last = history[-1]["epoch"]
    best = min(history, key=lambda m: m["val_loss"])["epoch"]
    bad = max(0, last - max(best, warmup))  # the loop's bad-epoch counter, held during warm-up
    return last >= epochs or (patience > 0 and bad >= patience)


def _same_run(saved: RunConfig, wanted: RunConfig) -> bool:
    """Same data, networks, prior and training, up to the number of epochs and the device."""

    def loose(t: TrainConfig) -> TrainConfig:
        return dataclasses.replace(t, epochs=0, device="cpu")

    return (saved.data, saved.model, saved.prior) == (wanted.data, wanted.model, wanted.prior) and (
        loose(saved.train) == loose(wanted.train)
    )


def _train_point(config: RunConfig, run_dir: Path, data: DataSplits, progress: bool) -> bool:
    """Train the run in ``run_dir``, resuming from its last checkpoint; returns whether any epoch was run."""
    t = config.train
    if has_checkpoint(run_dir, "last"):
        saved = load_run_config(run_dir)  # run_ablation checked it is this point's run
        if _finished(read_metrics(run_dir), t.epochs, t.warmup, t.early_stopping):
            return False
        resumed = dataclasses.replace(
            saved, train=dataclasses.replace(saved.train, epochs=t.epochs, device=t.device)
        )
        logger.info("ablation %s: resuming", run_dir.name)
        pipeline.train(resumed, run_dir, resume=True, progress=progress, data=data)
        return True
    start_over(run_dir)  # what a run stopped before its first checkpoint left (rundir; any config)
    logger.info("ablation %s: training", run_dir.name)
    pipeline.train(config, run_dir, progress=progress, data=data)
    return True


def _evaluation_matches(ev: dict[str, Any], samples: int, examples: int, candidates: int | None) -> bool:
    return (
        ev.get("samples") == samples and ev.get("examples") == examples and ev.get("candidates") == candidates
    )


def run_ablation(
    base: RunConfig,
    out_dir: str | Path,
    loo: Sequence[bool] = LOO_VALUES,
    m_fractions: Sequence[float] = M_FRACTIONS,
    ks: Sequence[int] = KS,
    samples: int = 1000,
    limit: int | None = 1000,
    candidates: int | None = 1000,
    progress: bool = True,
    resume: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate every point of the ablation grid; write OUT_DIR/ablation.md and ablation.json.

    Each point is a run folder OUT_DIR/NAME (``pipeline.train``), scored on the first ``limit`` test images
    with ``samples`` importance samples (``pipeline.evaluate_run``; the exemplar prior truncated to the
    ``candidates`` exemplars nearest each test point, None = all N). Re-running continues where it
    stopped: a point with a current evaluation.json is skipped, one with a last checkpoint resumes from it.

    Args:
        base: the base configuration (the budget: dataset, train size, epochs, warm-up, seed, device).
        out_dir: folder for the run folders and the table.
        loo, m_fractions, ks: the grid (``plan_ablation``).
        samples: S, importance samples per test image.
        limit: test images scored (None: all).
        candidates: exemplars kept per test point at evaluation (None: all).
        progress: show progress bars.
        resume: continue runs already in ``out_dir``; False refuses to touch them.

    Returns:
        One row per point (``ablation_table``'s input), base first.

    Raises:
        ConfigError: bad grid or evaluation values, or an ``out_dir`` holding different runs, before any
            file is written.
    """
    out_dir = Path(out_dir)
    for what, value in (("--samples", samples), ("--limit", limit), ("--candidates", candidates)):
        if value is not None and value < 1:
            raise ConfigError(f"{what} must be at least 1, got {value}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")
    _check_values(loo, m_fractions, ks)
    resolve_device(base.train.device)
    base, data = prepare(base)
    plan = plan_ablation(base, loo, m_fractions, ks, data.num_train)
    for pt in plan.points:  # refuse a folder of other runs before training anything
        run_dir = out_dir / pt.name
        if has_checkpoint(run_dir, "last"):
            if not resume:
                raise ConfigError(f"{run_dir} already holds a run; resume it or pick another --out")
            if not _same_run(load_run_config(run_dir), pt.config):
                raise ConfigError(f"{run_dir} holds a run with a different configuration; pick another --out")
    examples = data.test_x.shape[0] if limit is None else min(limit, data.test_x.shape[0])
    truncated = candidates if candidates is not None and candidates < data.num_train else None
    rows = []
    for pt in plan.points:
        run_dir = out_dir / pt.name
        trained = _train_point(pt.config, run_dir, data, progress)
        eval_path = run_dir / EVALUATION
        ev = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
        if trained or not _evaluation_matches(ev, samples, examples, truncated):
            logger.info("ablation %s: evaluating", pt.name)
            settings = EvalConfig(samples=samples, limit=limit, candidates=candidates)
            ev = pipeline.evaluate_run(run_dir, settings, device=pt.config.train.device, progress=progress)
        else:
            logger.info("ablation %s: already trained and evaluated", pt.name)
        rows.append(_row(pt, run_dir, ev))
    budget = budget_text(base, plan.num_train, samples, examples, truncated)
    atomic_write_text(out_dir / TABLE, ablation_table(rows, budget, plan.notes))
    results = {"budget": budget, "notes": plan.notes, "rows": rows}
    atomic_write_text(out_dir / RESULTS, json.dumps(results, indent=2) + "\n")
    return rows


def _row(pt: AblationPoint, run_dir: Path, ev: dict[str, Any]) -> dict[str, Any]:
    """One table row, every number read from the run folder (config.json, metrics.jsonl, evaluation)."""
    config = load_run_config(run_dir)
    history = read_metrics(run_dir)
    best = min(history, key=lambda m: m["val_loss"]) if history else {}
    return {
        "name": pt.name,
        "factor": pt.factor,
        "setting": pt.setting,
        "base": pt.factor == "base",
        "note": pt.note,
        "run_dir": str(run_dir),
        "exemplars": config.prior.exemplars,
        "knn": config.prior.knn,
        "leave_one_out": config.prior.leave_one_out,
        "log_likelihood": ev["log_likelihood"],
        "log_likelihood_std_error": ev["log_likelihood_std_error"],
        "elbo": ev["elbo"],
        "best_val_loss": best.get("val_loss", math.nan),
        "best_epoch": best.get("epoch", 0),
        "epochs": len(history),
        "seconds_per_epoch": sum(m["seconds"] for m in history) / max(1, len(history)),
    }


def budget_text(base: RunConfig, num_train: int, samples: int, examples: int, candidates: int | None) -> str:
    """One line stating what every point of the ablation was given."""
    t = base.train
    prior_eval = (
        f"the prior truncated to the {candidates} exemplars nearest each test point (a lower bound)"
        if candidates is not None
        else "the full exemplar prior"
    )
    return (
        f"Budget: {base.data.dataset}, N = {num_train} training images, epochs {t.epochs} "
        f"(warm-up {t.warmup}, early stopping {t.early_stopping or 'off'}), batch {t.batch_size}, seed {t.seed}; "
        f"test log-likelihood by importance sampling with S = {samples} on {examples} test images, "
        f"{prior_eval}."
    )


def ablation_table(rows: Sequence[dict[str, Any]], budget: str, notes: Sequence[str] = ()) -> str:
    """The rows of ``run_ablation`` as one markdown table (nats per example), the budget line above it."""
    lines = [
        budget,
        "",
        "| factor | setting | M | k | LOO | test log-likelihood (nats) | ELBO (nats) | best val loss "
        "| epochs | s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        factor = "**base**" if r["base"] else r["factor"]
        lines.append(
            f"| {factor} | {r['setting']} | {r['exemplars']} | {r['knn'] or 'exact'} "
            f"| {'on' if r['leave_one_out'] else 'off'} "
            f"| {r['log_likelihood']:.2f} ± {std_error_text(r['log_likelihood_std_error'])} | {r['elbo']:.2f} "
            f"| {r['best_val_loss']:.2f} | {r['epochs']} | {r['seconds_per_epoch']:.1f} |"
        )
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


__all__ = [
    "AblationPlan",
    "AblationPoint",
    "ablation_grid",
    "ablation_table",
    "budget_text",
    "plan_ablation",
    "run_ablation",
]
