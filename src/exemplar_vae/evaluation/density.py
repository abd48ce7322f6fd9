"""Test-set density estimation: importance-sampled log-likelihood and ELBO, in nats per example.

``evaluate_density(model, x, config)`` scores ``x`` as an ``EvalConfig`` says: S importance samples per
point, the exemplar prior truncated to the nearest candidates (``evaluation.truncation``), optionally
checked against the full prior on a few points and certified (``evaluation.certify``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from exemplar_vae import distributed
from exemplar_vae.compiling import Compiled
from exemplar_vae.config import EvalConfig
from exemplar_vae.errors import CheckpointError, RunFailed
from exemplar_vae.evaluation.certify import CertifyStats
from exemplar_vae.evaluation.scoring import PriorScoring
from exemplar_vae.functional import bits_per_dim, log_mean_exp
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.likelihood import (
    ChunkTerms,
    chunk_terms_for,
    importance_sampled_log_likelihood,
    log_weight_bounds,
    log_weights,
)
from exemplar_vae.validation import validate_eval

logger = logging.getLogger(__name__)


def decoder_terms(model: VAE, config: EvalConfig) -> Compiled:
    """The decoder's part of the importance weights (``objectives.likelihood.chunk_terms_for``), compiled
    when ``config.compile`` is "on". A model with latents below z draws them from a generator inside the
    chunk and is evaluated eagerly."""
    wanted = config.compile == "on"
    if wanted and model.lower_latents:
        logger.info("the decoder terms of a model with latents below z are not compiled")
        wanted = False
    return Compiled(chunk_terms_for(model), "the evaluation's decoder and likelihood", wanted, model.device)


@torch.no_grad()
def evaluate_density(
    model: VAE, x: Tensor, config: EvalConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Mean importance-sampled log-likelihood and S-sample ELBO of ``x`` under ``model``.

    The model is switched to eval mode and its prior refreshed (for the exemplar prior: the whole exemplar
    set, no leave-one-out). ``config.split`` and ``config.limit`` are for ``evaluate_run``; here every row
    of ``x`` is scored.

    Args:
        model: the trained VAE.
        x: [n, D] test inputs.
        config: (None: ``EvalConfig()``, the CLI's defaults) samples, batch size, seed, and for a kernel-mixture prior (the exemplar prior) the
            truncation: ``candidates`` (None: the full prior), ``check_exact`` (re-score the first n points
            with the full prior and the same samples: exactly n points, the full prior is scored only for
            them), ``certify`` (bound every point's truncation error from above, refining until
            ``tolerance`` nats or ``budget`` x N exact evaluations per point; replaces the plain pass).
        progress: show a tqdm bar.

    Returns:
        {"log_likelihood", "elbo" (nats, negative), "log_likelihood_std_error" (None for one example),
         "bits_per_dim",
         "samples", "examples", "seconds", "prior_eval", and with truncation "candidates",
         "truncation_check" {"points", "max_error", "mean_error", "min_error", "exact_seconds"} and
         (``certify``) "certified" {"mean_bound", "max_bound", "fraction_below_0.01", "tolerance",
         "fraction_below_tolerance", "log_likelihood_upper", "exemplars_evaluated_per_point",
         "nodes_per_point", "bound_seconds"}}.

    Raises:
        CheckpointError: a weight of ``model`` is NaN or infinite (checked before scoring).
        RunFailed: the log-likelihood or the ELBO came out NaN or infinite.
    """
    config = validate_eval(config if config is not None else EvalConfig())
    check_finite_weights(model)
    model.eval()
    model.prior.refresh(model.encoder)
    scoring = PriorScoring(model.prior, model.encoder, config.candidates, config.tolerance, config.budget)
    x = x.to(model.device)
    start = time.perf_counter()
    terms = decoder_terms(model, config)
    ll, elbo, upper = _score(
        model, x, config, scoring, progress, config.certify and scoring.truncating, terms
    )
    n = ll.shape[0]
    mean_ll, mean_elbo = float(ll.mean()), float(elbo.mean())
    _check_finite_result(ll, elbo, mean_ll, mean_elbo)
    result: dict[str, Any] = {
        "log_likelihood": mean_ll,
        "elbo": mean_elbo,
        # one example has no spread to estimate: null in the JSON, not NaN (which is not JSON)
        "log_likelihood_std_error": float(ll.std() / math.sqrt(n)) if n > 1 else None,
        "bits_per_dim": bits_per_dim(-mean_ll, x.shape[1]),
        "samples": config.samples,
        "examples": n,
        "seconds": round(time.perf_counter() - start, 3),
        "prior_eval": "truncated" if scoring.truncating else "exact",
    }
    if scoring.truncating:
        result["candidates"] = config.candidates
        if upper is not None:
            gap = (upper - ll).double()  # [n] certified bound on each point's truncation error
            result["certified"] = _certified(gap, upper, config.tolerance, scoring.stats.summed_over_ranks())
        if config.check_exact > 0:
            result["truncation_check"] = _check_truncation(model, x, ll, config, terms)
            if (
                config.escalate
                and not config.certify
                and result["truncation_check"]["max_error"] > config.tolerance
            ):
                result = _escalate(model, x, config, result, progress, terms)
    result["compile"] = {"mode": config.compile, **terms.report()}
    return result


def _certified(gap: Tensor, upper: Tensor, tolerance: float, stats: CertifyStats) -> dict[str, Any]:
    """The summary of certified bounds: ``gap`` [n] bounds each point's truncation error, nats."""
    return {
        "mean_bound": float(gap.mean()),
        "max_bound": float(gap.max()),
        "fraction_below_0.01": float((gap < 0.01).double().mean()),
        "tolerance": tolerance,
        "fraction_below_tolerance": float((gap <= tolerance).double().mean()),
        "log_likelihood_upper": float(upper.mean()),
        "exemplars_evaluated_per_point": stats.evaluated / max(1, stats.points),
        "nodes_per_point": stats.nodes / max(1, stats.points),
        "bound_seconds": round(stats.seconds, 3),
    }


def _escalate(
    model: VAE, x: Tensor, config: EvalConfig, first: dict[str, Any], progress: bool, terms: ChunkTerms
) -> dict[str, Any]:
    """The truncation check found an error above the tolerance: the nearest candidates do not hold enough
    of the prior's mass (a wide kernel, e.g. an early model). Score again with 4 times as many candidates,
    checked on the same points, until the check is within the tolerance; past a quarter of the exemplars
    truncating saves little, and the full prior is used (same samples throughout). Reports what it used."""
    n_codes = model.prior.kernel_mixture().centers.shape[0]  # type: ignore[union-attr]
    tried = [(config.candidates, first["truncation_check"]["max_error"])]
    current, start = first, time.perf_counter()
    candidates: int | None = config.candidates
    while True:
        assert candidates is not None
        candidates = candidates * 4 if candidates * 4 < n_codes // 4 else None  # None: the full prior
        logger.warning(
            "the prior truncated to %d candidates was off by up to %.3g nats on the %d points checked "
            "(tolerance %g): scoring again with %s",
            tried[-1][0], tried[-1][1], first["truncation_check"]["points"], config.tolerance,
            f"{candidates} candidates" if candidates else "the full prior over all exemplars",
        )  # fmt: skip
        settings = dataclasses.replace(config, candidates=candidates)
        scoring = PriorScoring(model.prior, model.encoder, candidates)
        ll, elbo, _ = _score(model, x, settings, scoring, progress, False, terms)
        mean_ll, mean_elbo = float(ll.mean()), float(elbo.mean())
        _check_finite_result(ll, elbo, mean_ll, mean_elbo)
        n = ll.shape[0]
        current = dict(first)
        current.update(
            log_likelihood=mean_ll, elbo=mean_elbo,
            log_likelihood_std_error=float(ll.std() / math.sqrt(n)) if n > 1 else None,
            bits_per_dim=bits_per_dim(-mean_ll, x.shape[1]),
            prior_eval="truncated (escalated)" if candidates else "exact (escalated)",
        )  # fmt: skip
        if candidates is None:  # "candidates" and "truncation_check" stay those of the first pass
            break
        current["candidates"] = candidates
        current["truncation_check"] = _check_truncation(model, x, ll, settings, terms)
        tried.append((candidates, current["truncation_check"]["max_error"]))
        if current["truncation_check"]["max_error"] <= config.tolerance:
            break
    current["seconds"] = round(first["seconds"] + time.perf_counter() - start, 3)
    current["escalated"] = {
        "reason": f"the check's largest error with {config.candidates} candidates was "
        f"{tried[0][1]:.3g} nats (> tolerance {config.tolerance:g})",
        "tried": [{"candidates": k, "max_error": e} for k, e in tried],
        "truncated_log_likelihood": first["log_likelihood"],
    }
    return current


def check_finite_weights(model: torch.nn.Module) -> None:
    """CheckpointError naming the first parameter of ``model`` that holds a NaN or an infinity: such a
    model (a diverged run, a damaged file) scores nothing but NaN."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise CheckpointError(
                f"the model's weights hold NaN or infinite values (first in {name}): its run diverged or its "
                "checkpoint is damaged; retrain it (with a smaller --lr if it diverged)"
            )


def _check_finite_result(ll: Tensor, elbo: Tensor, mean_ll: float, mean_elbo: float) -> None:
    """RunFailed when the scores are not finite numbers (rather than writing NaN into evaluation.json)."""
    if math.isfinite(mean_ll) and math.isfinite(mean_elbo):
        return
    bad = int((~torch.isfinite(ll) | ~torch.isfinite(elbo)).sum())
    raise RunFailed(
        f"evaluation gave a non-finite result (log-likelihood {mean_ll}, ELBO {mean_elbo}; {bad} of "
        f"{ll.shape[0]} examples not finite): the model's outputs overflow on this data; nothing was written"
    )


@torch.no_grad()
def point_log_likelihoods(
    model: VAE, x: Tensor, config: EvalConfig | None = None, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-point importance-sampled log-likelihood and S-sample ELBO ([n] each, nats), scored as
    ``evaluate_density`` scores them (same samples for the same ``config.seed`` and batch size, whatever
    ``config.candidates``), so runs with different settings can be compared point by point."""
    config = validate_eval(config if config is not None else EvalConfig())
    model.eval()
    model.prior.refresh(model.encoder)
    scoring = PriorScoring(model.prior, model.encoder, config.candidates)
    terms = decoder_terms(model, config)
    ll, elbo, _ = _score(model, x.to(model.device), config, scoring, progress, False, terms)
    return ll, elbo


def _batch_generator(model: VAE, seed: int, batch: int) -> torch.Generator:
    """The importance-sampling noise of batch ``batch``: the scoring pass and the exact re-scoring of
    ``_check_truncation`` draw from it, so they see the same samples."""
    return torch.Generator(device=model.device).manual_seed(seed * 1_000_003 + batch)


def _score(
    model: VAE,
    x: Tensor,
    config: EvalConfig,
    scoring: PriorScoring,
    progress: bool,
    certify: bool,
    terms: ChunkTerms | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-example log-likelihood, ELBO and (``certify``) a certified upper bound on the full-prior
    log-likelihood estimate; batch b's noise has its own generator, so any batch can be re-scored with the
    same importance samples, and a distributed run (each rank a contiguous block of batches, gathered)
    gives the figures of one process."""
    lls, elbos, uppers = [], [], []
    s = config.samples
    batches = x.split(config.batch_size)
    mine = distributed.shard(torch.arange(len(batches))).tolist()
    for b in tqdm(mine, desc=f"log-likelihood (S={s})", disable=not progress, leave=False):
        xb, g = batches[b], _batch_generator(model, config.seed, b)
        if certify:
            lo, up = log_weight_bounds(
                model, xb, s, generator=g, prior_bounds=scoring.bounds, chunk_terms=terms
            )  # [S, B] each
            lls.append(log_mean_exp(lo, 0))
            elbos.append(lo.mean(0))
            uppers.append(log_mean_exp(up, 0))
        else:
            est = importance_sampled_log_likelihood(
                model, xb, s, generator=g, prior_scorer=scoring.scorer, chunk_terms=terms
            )
            lls.append(est.log_likelihood)
            elbos.append(est.elbo)
    empty = x.new_zeros(0, dtype=torch.float64)
    ll = distributed.gather_rows(torch.cat(lls).double() if lls else empty)
    elbo = distributed.gather_rows(torch.cat(elbos).double() if elbos else empty)
    upper = distributed.gather_rows(torch.cat(uppers).double() if uppers else empty) if certify else None
    return ll, elbo, upper


def _check_truncation(
    model: VAE, x: Tensor, truncated_ll: Tensor, config: EvalConfig, terms: ChunkTerms | None = None
) -> dict[str, Any]:
    """Re-score the first ``config.check_exact`` examples with the full prior and the same samples.

    The batches are drawn as in the truncated pass (noise seeded per batch), and the full prior is scored
    only for the requested points of each batch. The truncated value can only be lower; the difference is
    the truncation error of those points.
    """
    n, bs = min(x.shape[0], config.check_exact), config.batch_size
    full = PriorScoring(model.prior, model.encoder)  # no truncation
    start = time.perf_counter()
    batches = x.split(bs)[: math.ceil(n / bs)]  # the batches holding the first n points
    exact = []
    for b in distributed.shard(torch.arange(len(batches))).tolist():
        g = _batch_generator(model, config.seed, b)
        columns = min(batches[b].shape[0], n - b * bs)
        w = log_weights(
            model,
            batches[b],
            config.samples,
            generator=g,
            columns=columns,
            prior_scorer=full.scorer,
            chunk_terms=terms,
        )
        exact.append(log_mean_exp(w, 0).double())
    exact_ll = distributed.gather_rows(torch.cat(exact) if exact else x.new_zeros(0, dtype=torch.float64))
    diff = (exact_ll - truncated_ll[:n]).double()
    return {
        "points": n,
        "max_error": float(diff.max()),
        "mean_error": float(diff.mean()),
        "min_error": float(diff.min()),
        "exact_seconds": round(time.perf_counter() - start, 3),
    }
