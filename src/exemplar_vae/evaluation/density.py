"""Test-set density estimation: importance-sampled log-likelihood and ELBO, in nats per example."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from exemplar_vae.functional import bits_per_dim
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.likelihood import (
    importance_sampled_log_likelihood,
    log_weight_bounds,
    log_weights,
)
from exemplar_vae.priors.exemplar import CertifyStats, ExemplarPrior


@torch.no_grad()
def evaluate_density(
    model: VAE,
    x: Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = True,
    candidates: int | None = None,
    check_exact: int = 0,
    certify: bool = False,
    certify_tolerance: float = 0.01,
    certify_budget: float = 0.5,
) -> dict[str, Any]:
    """Mean importance-sampled log-likelihood and S-sample ELBO of ``x`` under ``model``.

    The model is switched to eval mode and its prior refreshed (for the exemplar prior: the whole exemplar
    set, no leave-one-out).

    Args:
        model: the trained VAE.
        x: [n, D] binary test inputs.
        num_samples: S importance samples per example.
        batch_size: test points scored together.
        seed: seeds the importance samples.
        progress: show a tqdm bar.
        candidates: exemplar prior only: keep the K exemplars nearest each test point's encoder mean
            (a lower bound, much faster); None scores against all N exemplars.
        check_exact: with ``candidates``, also score the first n examples with the full prior and the
            same importance samples (exactly n: the full prior is scored only for them), and report the
            truncation error ("truncation_check").
        certify: with ``candidates``, also bound every point's truncation error from above (a ball tree
            over the exemplar codes bounds the dropped mass, refined where the importance weights need it
            until the bound is below ``certify_tolerance`` nats; replaces the plain pass) and report the
            bounds ("certified": mean and max bound, fraction of points below 0.01 nats and below the
            tolerance, exemplars evaluated exactly per point, seconds spent bounding).
        certify_tolerance: target bound per test point in nats (with ``certify``).
        certify_budget: with ``certify``, at most this fraction of the N exemplars is evaluated exactly
            per test point (beyond the K candidates); a point whose bound is not met by then keeps the
            bound reached.

    Returns:
        {"log_likelihood", "elbo" (nats, negative), "log_likelihood_std_error", "bits_per_dim",
         "samples", "examples", "seconds", "prior_eval", and with truncation "candidates" and
         "truncation_check" {"points", "max_error", "mean_error", "min_error", "exact_seconds"}}.
    """
    model.eval()
    model.prior.refresh(model.encoder)
    prior = model.prior if isinstance(model.prior, ExemplarPrior) else None
    truncating = prior is not None and candidates is not None and candidates < prior.num_total
    if prior is not None and truncating:
        prior.eval_candidates = candidates
        prior.certify_tolerance, prior.certify_budget = certify_tolerance, certify_budget
        prior.certify_stats = CertifyStats()
    x = x.to(model.device)
    start = time.perf_counter()
    ll, elbo, upper = _score(model, x, num_samples, batch_size, seed, progress, certify and truncating)
    n = ll.shape[0]
    mean_ll = float(ll.mean())
    result: dict[str, Any] = {
        "log_likelihood": mean_ll,
        "elbo": float(elbo.mean()),
        "log_likelihood_std_error": float(ll.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "bits_per_dim": bits_per_dim(-mean_ll, x.shape[1]),
        "samples": num_samples,
        "examples": n,
        "seconds": round(time.perf_counter() - start, 3),
        "prior_eval": "truncated" if truncating else "exact",
    }
    if truncating:
        result["candidates"] = candidates
        if upper is not None:
            gap = (upper - ll).double()  # [n] certified bound on each point's truncation error
            result["certified"] = {
                "mean_bound": float(gap.mean()),
                "max_bound": float(gap.max()),
                "fraction_below_0.01": float((gap < 0.01).double().mean()),
                "tolerance": certify_tolerance,
                "fraction_below_tolerance": float((gap <= certify_tolerance).double().mean()),
                "log_likelihood_upper": float(upper.mean()),
            }
            if prior is not None:
                stats = prior.certify_stats
                result["certified"].update(
                    exemplars_evaluated_per_point=stats.evaluated / max(1, stats.points),
                    nodes_per_point=stats.nodes / max(1, stats.points),
                    bound_seconds=round(stats.seconds, 3),
                )
        if check_exact > 0:
            result["truncation_check"] = _check_truncation(
                model, x, ll, num_samples, batch_size, seed, check_exact
            )
        if prior is not None:
            prior.eval_candidates = None
    return result


def _batch_generator(model: VAE, seed: int, batch: int) -> torch.Generator:
    """The importance-sampling noise of batch ``batch``: the scoring pass and the exact re-scoring of
    ``_check_truncation`` draw from it, so they see the same samples."""
    return torch.Generator(device=model.device).manual_seed(seed * 1_000_003 + batch)


def _score(
    model: VAE, x: Tensor, num_samples: int, batch_size: int, seed: int, progress: bool, certify: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-example log-likelihood, ELBO and (``certify``) a certified upper bound on the full-prior
    log-likelihood estimate; batch b's noise comes from seed + b, so any batch can be re-scored with the
    same importance samples."""
    lls, elbos, uppers = [], [], []
    batches = x.split(batch_size)
    for b, xb in enumerate(
        tqdm(batches, desc=f"log-likelihood (S={num_samples})", disable=not progress, leave=False)
    ):
        g = _batch_generator(model, seed, b)
        if certify:
            lo, up = log_weight_bounds(model, xb, num_samples, generator=g)  # [S, B] each
            lls.append(torch.logsumexp(lo, 0) - math.log(num_samples))
            elbos.append(lo.mean(0))
            uppers.append(torch.logsumexp(up, 0) - math.log(num_samples))
        else:
            est = importance_sampled_log_likelihood(model, xb, num_samples, generator=g)
            lls.append(est.log_likelihood)
            elbos.append(est.elbo)
    return torch.cat(lls), torch.cat(elbos), (torch.cat(uppers) if certify else None)


def _check_truncation(
    model: VAE, x: Tensor, truncated_ll: Tensor, num_samples: int, batch_size: int, seed: int, points: int
) -> dict[str, Any]:
    """Re-score the first ``points`` examples with the full prior and the same importance samples.

    The batches are drawn as in the truncated pass (noise seeded per batch), and the full prior is scored
    only for the requested points of each batch. The truncated value can only be lower; the difference is
    the truncation error of those points.
    """
    n = min(x.shape[0], points)
    prior = model.prior
    assert isinstance(prior, ExemplarPrior)
    saved, prior.eval_candidates = prior.eval_candidates, None
    start = time.perf_counter()
    exact = []
    try:
        for b, xb in enumerate(x.split(batch_size)):
            if b * batch_size >= n:
                break
            g = _batch_generator(model, seed, b)
            w = log_weights(model, xb, num_samples, generator=g, columns=min(xb.shape[0], n - b * batch_size))
            exact.append(torch.logsumexp(w, 0) - math.log(num_samples))
    finally:
        prior.eval_candidates = saved
    diff = (torch.cat(exact) - truncated_ll[:n]).double()
    return {
        "points": n,
        "max_error": float(diff.max()),
        "mean_error": float(diff.mean()),
        "min_error": float(diff.min()),
        "exact_seconds": round(time.perf_counter() - start, 3),
    }
