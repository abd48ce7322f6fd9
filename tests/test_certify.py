"""Certified truncation bounds: the ball tree, and intervals that always contain the float64 brute force.

The full exemplar prior is recomputed by ``reference.isotropic_exemplar_log_prob`` (float64, one component
at a time); every case checks lower <= full <= upper per sample, with and without importance weights,
including adversarial set-ups (wide and narrow kernels, duplicated exemplars, ties, one candidate).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import reference as ref
import torch

from exemplar_vae.config import EvalConfig
from exemplar_vae.evaluation import PriorScoring, evaluate_density
from exemplar_vae.evaluation.certify import build_code_tree
from exemplar_vae.models.decoders import MLPDecoder
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.likelihood import log_weight_bounds, log_weights
from exemplar_vae.priors.exemplar import ExemplarPrior


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("case", ["spread", "duplicates", "one_point", "ties"])
def test_code_tree_shells_hold_every_member_and_children_partition_parents(case: str) -> None:
    codes = torch.randn(700, 5, generator=gen(0))
    if case == "duplicates":
        codes[350:] = codes[:350]
    if case == "one_point":
        codes[:] = codes[0]  # every code equal: k-means cannot split, halving must
    if case == "ties":
        codes = torch.round(codes)
    tree = build_code_tree(codes, branch=4, leaf_size=16)
    assert sorted(tree.order.tolist()) == list(range(700))
    assert torch.equal(tree.codes, codes.double()[tree.order])
    for j in range(tree.start.numel()):
        s, e = int(tree.start[j]), int(tree.end[j])
        dist = (tree.codes[s:e] - tree.center[j]).norm(dim=1)
        assert dist.max() <= tree.radius[j] and dist.min() >= tree.inner[j]
        c0, nc = int(tree.first_child[j]), int(tree.num_children[j])
        if nc == 0:
            assert e - s <= 16
        else:
            spans = [(int(tree.start[c]), int(tree.end[c])) for c in range(c0, c0 + nc)]
            assert spans[0][0] == s and spans[-1][1] == e
            assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans[:-1], spans[1:], strict=True))


def make_scoring(codes: torch.Tensor, log_var: float, k: int, tol: float, budget: float) -> PriorScoring:
    prior = ExemplarPrior(torch.zeros(codes.shape[0], 1), codes.shape[1], knn=0)
    prior.cache.codes = codes
    prior.eval()
    with torch.no_grad():
        prior.log_var.fill_(log_var)
    return PriorScoring(prior, None, k, tol, budget)  # type: ignore[arg-type]


CASES = {
    # name: (log sigma^2, codes scale, K, tolerance, budget); with budget 1 every exemplar may be summed
    "spread": (-1.0, 1.0, 40, 0.01, 1.0),
    "wide_sigma": (3.0, 1.0, 40, 0.01, 1.0),
    "narrow_sigma": (-5.0, 0.2, 40, 0.01, 1.0),
    "duplicates": (-1.0, 1.0, 40, 0.01, 1.0),
    "ties": (-1.0, 1.0, 40, 0.01, 1.0),
    "one_candidate": (-1.0, 1.0, 1, 0.01, 1.0),
    "half_budget": (-1.0, 1.0, 40, 0.01, 0.5),
    "no_budget": (-1.0, 1.0, 40, 0.01, 0.0),
    "tiny_tolerance": (-1.0, 1.0, 40, 1e-9, 1.0),
}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_certified_interval_contains_float64_full_prior(case: str, weighted: bool) -> None:
    log_var, scale, k, tol, budget = CASES[case]
    g = gen(3)
    n, d, s, b = 800, 6, 40, 5
    codes = scale * torch.randn(n, d, generator=g)
    if case == "duplicates":
        codes[400:] = codes[:400]
    if case == "ties":
        codes = torch.round(codes * 2) / 2
    scoring = make_scoring(codes, log_var, k, tol, budget)
    mean = codes[:b] + 0.1 * torch.randn(b, d, generator=g)  # [B, d]
    z = mean + 0.7 * torch.randn(s, b, d, generator=g)  # [S, B, d]
    log_w = 3.0 * torch.randn(s, b, generator=g, dtype=torch.float64) if weighted else None
    bounds = scoring.bounds(mean)
    lower, upper = bounds(z, log_w)
    full = ref.isotropic_exemplar_log_prob(z.reshape(-1, d), codes, log_var).reshape(s, b)  # [S, B]
    full = torch.from_numpy(full)
    assert (lower.double() <= full + 1e-4).all()
    assert (upper >= full - 1e-9).all(), (full - upper).max()
    if case == "tiny_tolerance":  # refined until every dropped exemplar is summed: tight up to margins
        assert (upper - full).max() < 2e-3
    if budget == 1.0:
        # the refinement met its tolerance: the weighted certified gap exceeds the true one by at most tol
        # (weights exp(log_w), or 1 / kept mass without them; + float32 margins)
        w = log_w if log_w is not None else -lower.double()
        certified = torch.logsumexp(w + upper, 0) - torch.logsumexp(w + lower.double(), 0)  # [B]
        true = torch.logsumexp(w + full, 0) - torch.logsumexp(w + lower.double(), 0)
        assert (certified <= true + tol + 3e-3).all(), (certified, true)


def test_refinement_tightens_the_interval_and_counts_its_work() -> None:
    g = gen(4)
    n, d = 3000, 8
    codes = torch.randn(n, d, generator=g)
    mean = codes[:4] + 0.05 * torch.randn(4, d, generator=g)
    z = mean + 0.5 * torch.randn(30, 4, d, generator=g)
    full = ref.isotropic_exemplar_log_prob(z.reshape(-1, d), codes, -2.0).reshape(30, 4)
    excess = []
    for budget in (0.0, 1.0):
        scoring = make_scoring(codes, -2.0, 50, 1e-3, budget)
        _, upper = scoring.bounds(mean)(z)
        excess.append(float((upper - torch.from_numpy(full)).max()))
        assert scoring.stats.points == 4
        assert (scoring.stats.evaluated > 0) == (budget > 0)
    assert excess[1] < excess[0] and excess[1] < 0.05, excess


def tiny_model(n: int = 400, d_x: int = 12, latent: int = 3) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    prior = ExemplarPrior(torch.rand(n, d_x), latent, knn=0)
    with torch.no_grad():
        prior.log_var.fill_(-1.5)
    model = VAE(MLPEncoder(d_x, 16, latent), MLPDecoder(latent, 16, d_x), prior, (1, 1, d_x))
    x = torch.bernoulli(torch.rand(12, d_x), generator=gen(1))
    return model.eval(), x


def test_every_points_certified_interval_contains_its_full_prior_estimate() -> None:
    model, x = tiny_model()
    prior = model.prior
    assert isinstance(prior, ExemplarPrior)
    prior.refresh(model.encoder)
    exact = torch.logsumexp(log_weights(model, x, 300, generator=gen(5)), 0)  # [B], all N exemplars
    scoring = PriorScoring(prior, model.encoder, 20, budget=1.0)  # every exemplar may be summed
    lo, up = log_weight_bounds(model, x, 300, generator=gen(5), prior_bounds=scoring.bounds)  # same samples
    low, upp = torch.logsumexp(lo, 0), torch.logsumexp(up, 0)
    assert (low <= exact + 1e-5).all() and (exact <= upp + 1e-9).all()
    assert (low < exact - 0.1).any()  # 20 of 400 exemplars: a real truncation error, bracketed
    # the refinement stops within the tolerance of the full-prior estimate, however large the error
    assert (upp - exact).max() <= scoring.tolerance + 1e-3


def test_evaluate_density_reports_certification_work() -> None:
    model, x = tiny_model()
    settings = EvalConfig(samples=200, batch_size=6, candidates=20, check_exact=0)
    res = evaluate_density(
        model, x, replace(settings, certify=True, tolerance=0.02, budget=1.0), progress=False
    )
    cert = res["certified"]
    exact = evaluate_density(model, x, replace(settings, candidates=None), progress=False)
    assert cert["tolerance"] == 0.02
    assert res["log_likelihood"] <= exact["log_likelihood"] <= cert["log_likelihood_upper"]
    assert cert["log_likelihood_upper"] - exact["log_likelihood"] <= 0.02 + 1e-3
    gap = exact["log_likelihood"] - res["log_likelihood"]
    assert cert["mean_bound"] >= gap - 1e-6 and cert["max_bound"] >= cert["mean_bound"]
    assert 0 < cert["exemplars_evaluated_per_point"] <= 400
    assert cert["nodes_per_point"] >= 1 and cert["bound_seconds"] > 0
    assert math.isfinite(cert["log_likelihood_upper"])
    assert np.isclose(
        res["log_likelihood"],
        evaluate_density(model, x, settings, progress=False)["log_likelihood"],
        atol=1e-9,
    )
