"""The evaluation rows at the paper's protocol: the default truncated evaluation, the brute force at
matrix-product speed (which also gives the default's truncation error), the official code's way, and the
certified evaluation.

The default is timed on ``--eval-points`` test points and extrapolated; the others run on a few points,
with the same importance samples where the package draws them.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from common import fresh_model, timed
from rates import Rates
from torch import Tensor

from exemplar_vae import DataSplits, EvalConfig, PriorConfig
from exemplar_vae.evaluation import evaluate_density
from exemplar_vae.functional import log_normal_diag, reparameterize
from exemplar_vae.models.vae import VAE
from exemplar_vae.priors.exemplar import ExemplarPrior, exemplar_log_kernel
from exemplar_vae.runs import load_run

logger = logging.getLogger("bench")


def evaluation_model(args: argparse.Namespace, data: DataSplits) -> tuple[VAE, str]:
    """The trained exemplar model of ``args.run`` if given, else a fresh one; eval mode, cache fresh."""
    if args.run is not None:
        model, _, _ = load_run(args.run, device=str(args.device), data=data, refresh=False)
        label = f"trained model `{args.run}`"
    else:
        model, _ = fresh_model(PriorConfig("exemplar"), args, data)
        label = "untrained model (random initialisation; truncation errors not representative)"
    model.eval()
    model.prior.refresh(model.encoder)
    return model, label


def eval_config(args: argparse.Namespace, samples: int, batch_size: int, **extra: Any) -> EvalConfig:
    """The benchmark's evaluation settings: the prior truncated to ``args.candidates``, samples seeded by
    ``args.seed``, no exact re-scoring unless ``extra`` asks for it (``check_exact``, ``certify``)."""
    settings: dict[str, Any] = {"check_exact": 0, **extra}
    return EvalConfig(
        samples=samples, batch_size=batch_size, candidates=args.candidates, seed=args.seed, **settings
    )


@torch.no_grad()
def official_style_log_likelihood(model: VAE, x: Tensor, num_samples: int, chunk: int, seed: int) -> float:
    """The official code's evaluation of one test point: x repeated S times, the encoder re-run on every
    copy, and the full prior over all N exemplars in float64, ``chunk`` samples at a time. Nats."""
    prior = model.prior
    assert isinstance(prior, ExemplarPrior)
    codes = prior.cache.get().double()  # [N, d]
    log_var = prior.log_var.detach().double()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    for start in range(0, num_samples, chunk):
        xs = x.unsqueeze(0).expand(min(chunk, num_samples - start), -1)  # [n, D]
        mean, lv = model.encode(xs)  # [n, d] each: the encoder runs on every copy
        z = reparameterize(mean, lv, torch.randn(mean.shape, generator=gen, device=x.device))  # [n, d]
        log_px = model.lower_terms(xs, z).log_px.double()  # [n]
        log_pz = torch.logsumexp(exemplar_log_kernel(z, codes, log_var), 1) - math.log(codes.shape[0])
        out.append(log_px + log_pz - log_normal_diag(z, mean, lv).double())
    return float(torch.logsumexp(torch.cat(out), 0) - math.log(num_samples))


@dataclass
class EvalResults:
    model: str
    refresh_s: float
    points: int
    default_s: float  # evaluate_density seconds on `points` test points (refresh excluded)
    default_ll: float
    check_points: int
    check_default_s: float  # default path on the check points
    check_exact_s: float  # matmul brute force on the same points and samples
    check_mean_error: float
    check_max_error: float
    official_points: int
    official_s: float
    official_ll: list[float]
    certify_points: int
    certify_s: float
    certified: dict
    local_gflops: float  # the faster of the rates measured just before and just after the default path
    compiled_s: float | None = None  # the default path compiled, same points, compile time excluded
    compiled_ll: float | None = None
    compile_s: float | None = None  # its compile time
    compiled_local_gflops: float | None = None


def bench_evaluation(
    model: VAE, label: str, args: argparse.Namespace, data: DataSplits, rates: Rates
) -> EvalResults:
    """Every evaluation row on ``model``; the decoder-shaped rate is sampled just before and after the
    default path, which gives its local rate."""
    device, samples = args.device, args.samples
    refresh = timed(lambda: model.prior.refresh(model.encoder), device)
    x = data.test_x.to(device)
    logger.info("evaluation: default path, %d points at S=%d", args.eval_points, samples)
    evaluate_density(model, x[:2], eval_config(args, min(samples, 100), 2), progress=False)  # warm-up
    rates.resample()
    default = evaluate_density(
        model,
        x[: args.eval_points],
        eval_config(args, samples, args.eval_batch, compile="off"),
        progress=False,
    )
    local = rates.resample_around()
    compiled = None
    if not args.no_compile:
        logger.info("evaluation: default path compiled, %d points at S=%d", args.eval_points, samples)
        compiled = evaluate_density(
            model, x[: args.eval_points], eval_config(args, samples, args.eval_batch, compile="on"),
            progress=False,
        )  # fmt: skip
        compiled_local = rates.resample_around()
    logger.info("evaluation: matmul brute force on %d points", args.check_points)
    cp = args.check_points
    check = evaluate_density(model, x[:cp], eval_config(args, samples, cp, check_exact=cp), progress=False)
    logger.info("evaluation: official-style brute force on %d points", args.official_points)
    start = time.perf_counter()
    official = [
        official_style_log_likelihood(model, x[i], samples, args.official_chunk, args.seed)
        for i in range(args.official_points)
    ]
    official_s = time.perf_counter() - start
    logger.info("evaluation: certified, %d points", args.certify_points)
    batch = min(args.eval_batch, args.certify_points)
    cert = evaluate_density(
        model, x[: args.certify_points], eval_config(args, samples, batch, certify=True), progress=False
    )
    tc = check["truncation_check"]
    results = EvalResults(
        label, refresh, default["examples"], default["seconds"], default["log_likelihood"],
        cp, check["seconds"], tc["exact_seconds"], tc["mean_error"], tc["max_error"],
        args.official_points, official_s, official,
        args.certify_points, cert["seconds"], cert["certified"], local,
    )  # fmt: skip
    if compiled is not None and compiled["compile"]["used"]:
        results.compile_s = compiled["compile"]["compile_seconds"]
        results.compiled_s = compiled["seconds"] - results.compile_s
        results.compiled_ll = compiled["log_likelihood"]
        results.compiled_local_gflops = compiled_local
    return results
