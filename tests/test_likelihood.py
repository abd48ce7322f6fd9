"""Importance-sampled log p(x) and the ELBO against an exact log p(x) from numerical quadrature.

The VAE is small enough to integrate: D = 5 binary pixels (all 2^5 patterns), a 1-D or 2-D latent, an
8-unit MLP encoder and decoder, and each of the Gaussian, mixture-of-Gaussians and exemplar priors. The
exact log p(x) = log int p(x|z) p(z) dz is a Riemann sum on a fine grid over [-12, 12]^d computed by
tests/reference.py with a float64 copy of the decoder.

The encoder's log-variance head is set to a constant 1.8 (q has standard deviation ~2.5, wider than any
posterior here), so the importance weights are bounded and S = 20000 samples pin log p(x) to ~0.01
nats. With the untouched random head, q is sometimes far narrower than the posterior and the estimate
is biased by up to ~0.8 nats at S = 20000 -- a property of the proposal, not of the estimator.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
import reference as ref
import torch
from torch.testing import assert_close

from exemplar_vae.evaluation import PriorScoring
from exemplar_vae.models.decoders import MLPDecoder
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.elbo import elbo_terms
from exemplar_vae.objectives.likelihood import importance_sampled_log_likelihood, log_weights
from exemplar_vae.priors import ExemplarPrior, GaussianPrior, MoGPrior

D, HIDDEN, N_EXEMPLARS = 5, 8, 20
GRID = {1: (1201, 2401), 2: (161, 321)}  # points per axis: (used, finer check)
BOX = 12.0
PRIORS = ["gaussian", "mog", "exemplar"]
CASES = [(p, d) for d in (1, 2) for p in PRIORS]
ALL_X = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))  # [32, 5], every binary pattern
X = ALL_X[[0, 31, 21, 12, 25, 7, 18, 3]]  # [8, 5], the points the estimators are tested on


class Case(NamedTuple):
    model: VAE
    logits_fn: Callable[[np.ndarray], np.ndarray]  # [n, d] -> [n, D] float64 decoder logits
    log_prior_fn: Callable[[np.ndarray], np.ndarray]  # [n, d] -> [n] float64 log p(z)
    exact: np.ndarray  # [32] exact log p(x) of ALL_X
    exact_fine: np.ndarray  # [32] the same on a grid twice as fine


def exact_of(x: torch.Tensor, case: Case) -> np.ndarray:
    """Exact log p(x) of rows of ALL_X, looked up: [B]."""
    rows = [int((ALL_X == xi).all(1).nonzero()) for xi in x]
    return case.exact[rows]


@functools.cache
def build_case(prior_name: str, latent: int) -> Case:
    torch.manual_seed(10 * latent + PRIORS.index(prior_name))
    encoder, decoder = MLPEncoder(D, HIDDEN, latent), MLPDecoder(latent, HIDDEN, D)
    with torch.no_grad():  # a wide proposal: q(z|x) = N(mu(x), e^1.8 I), see the module docstring
        encoder.log_var_head[0].weight.zero_()
        encoder.log_var_head[0].bias.fill_(1.8)
    exemplars = torch.randn(N_EXEMPLARS, D, generator=torch.Generator().manual_seed(latent))
    if prior_name == "gaussian":
        prior = GaussianPrior(latent)
    elif prior_name == "mog":
        prior = MoGPrior(latent, 3)
        with torch.no_grad():
            prior.log_vars.uniform_(-1.0, 0.5)
    else:
        prior = ExemplarPrior(exemplars, latent, num_exemplars=10, knn=0)
        with torch.no_grad():
            prior.log_var.fill_(-0.5)
    model = VAE(encoder, decoder, prior, (1, 1, D)).eval()
    model.prior.refresh(model.encoder)  # the exemplar prior caches its codes; a no-op for the others

    decoder64 = copy.deepcopy(decoder).double()

    def logits_fn(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ref.as64(decoder64(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))))

    if prior_name == "gaussian":
        log_prior_fn = ref.log_normal_standard
    elif prior_name == "mog":
        means, log_vars = ref.as64(prior.means), ref.as64(prior.log_vars)

        def log_prior_fn(z: np.ndarray) -> np.ndarray:
            return ref.diag_mixture_log_prob(z, means, log_vars)

    else:
        with torch.no_grad():
            centers = ref.as64(copy.deepcopy(encoder).double().mean(exemplars.double()))  # [N, d]
        log_var = float(prior.log_var.detach())

        def log_prior_fn(z: np.ndarray) -> np.ndarray:
            return ref.isotropic_exemplar_log_prob(z, centers, log_var)  # all N, no leave-one-out

    points, fine = GRID[latent]
    exact = ref.exact_log_px(ALL_X, logits_fn, log_prior_fn, -BOX, BOX, points, latent)
    exact_fine = ref.exact_log_px(ALL_X, logits_fn, log_prior_fn, -BOX, BOX, fine, latent)
    return Case(model, logits_fn, log_prior_fn, exact, exact_fine)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("prior_name", "latent"), CASES)
def test_quadrature_converges_and_sums_to_one(prior_name: str, latent: int) -> None:
    """The reference itself: two grids agree, and p(x) over all 2^D patterns sums to 1."""
    case = build_case(prior_name, latent)
    np.testing.assert_allclose(case.exact, case.exact_fine, rtol=0, atol=1e-8)
    assert abs(ref.log_mean_exp(case.exact, axis=0) + math.log(2**D)) < 1e-8  # log sum_x p(x) = 0
    assert np.all(case.exact < 0)


@pytest.mark.parametrize(("prior_name", "latent"), CASES)
def test_log_weights_match_brute_force(prior_name: str, latent: int) -> None:
    case = build_case(prior_name, latent)
    s, b = 64, X.shape[0]
    for max_rows in (20000, 5 * b):  # one chunk; chunks of 5 samples (13 draws from the generator)
        out = log_weights(case.model, X, s, max_rows=max_rows, generator=gen(5))
        assert out.shape == (s, b) and out.dtype == torch.float64
        # the same z: q's parameters and the eps the function draws, chunk by chunk, from the same seed
        g = gen(5)
        with torch.no_grad():
            mean, log_var = case.model.encode(X)  # [B, d]
        chunk = max(1, max_rows // b)
        eps = torch.cat(
            [torch.randn((min(chunk, s - i), b, latent), generator=g) for i in range(0, s, chunk)]
        )
        z = mean + torch.exp(0.5 * log_var) * eps  # [S, B, d], float32 like the library's
        expect = ref.log_weights(X, z, mean, log_var, case.logits_fn, case.log_prior_fn)
        assert_close(out, torch.from_numpy(expect), rtol=1e-5, atol=2e-4)

        est = importance_sampled_log_likelihood(case.model, X, s, max_rows=max_rows, generator=gen(5))
        assert_close(
            est.log_likelihood,
            torch.from_numpy(ref.importance_sampled_log_likelihood(expect)),
            rtol=1e-5,
            atol=2e-4,
        )
        assert_close(est.elbo, torch.from_numpy(expect.mean(0)), rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize(("prior_name", "latent"), CASES)
def test_importance_sampling_converges_to_exact_log_px(prior_name: str, latent: int) -> None:
    case = build_case(prior_name, latent)
    exact = exact_of(X, case)  # [B]
    big, elbos, ses = [], [], []
    for seed in range(3):
        est = importance_sampled_log_likelihood(case.model, X, 20000, generator=gen(seed))
        big.append(ref.as64(est.log_likelihood))
        elbos.append(ref.as64(est.elbo))
        # the estimate's standard error (delta method), from the same weights
        w = ref.as64(log_weights(case.model, X, 20000, generator=gen(seed)))  # [S, B]
        ses.append(np.std(np.exp(w - ref.log_mean_exp(w, axis=0)), axis=0) / math.sqrt(w.shape[0]))
    big, elbos, se = np.stack(big), np.stack(elbos), np.stack(ses)  # [3, B]
    err = np.abs(big - exact)
    # the standard error with this proposal is 0.005 .. 0.026 nats (largest: gaussian, d = 2, x = 00111);
    # max error seen 0.063 (2.4 standard errors); mean 0.006 .. 0.016
    assert se.max() < 0.03, se
    assert np.all(err < 4 * se + 1e-3), (err, se)
    assert err.mean() < 0.02, err
    assert np.all(elbos < exact[None, :] - 0.5)  # the ELBO gap here is 1 .. 8 nats (wide q)
    assert np.all(big.mean(0) >= elbos.mean(0))

    small = np.stack(
        [
            ref.as64(
                importance_sampled_log_likelihood(case.model, X, 10, generator=gen(100 + s)).log_likelihood
            )
            for s in range(20)
        ]
    )
    assert np.abs(small - exact).mean() > 10 * err.mean()  # seen: 37x .. 68x


@pytest.mark.parametrize(("prior_name", "latent"), CASES)
def test_iwae_bound_tightens_with_samples_in_expectation(prior_name: str, latent: int) -> None:
    """E[log mean_S w] increases with S and stays below log p(x): S = 1 (ELBO) <= S = 10 <= S = 100 <= exact."""
    case = build_case(prior_name, latent)
    exact = exact_of(X, case)
    w = ref.as64(log_weights(case.model, X, 40000, generator=gen(7)))  # [40000, B]
    means, ses = [], []
    for s in (1, 10, 100):
        est = ref.log_mean_exp(w.reshape(-1, s, X.shape[0]), axis=1)  # [40000 / s, B]
        means.append(est.mean(0))
        ses.append(est.std(0) / math.sqrt(est.shape[0]))
    for (m1, s1), (m2, s2) in zip(zip(means, ses), zip(means[1:], ses[1:]), strict=False):
        assert np.all(m1 < m2 + 3 * (s1 + s2)), (m1, m2)
    assert np.all(means[-1] < exact + 3 * ses[-1])
    assert np.all(means[0] < means[-1])  # the S = 1 -> 100 gain is many standard errors on every point


@pytest.mark.parametrize(("prior_name", "latent"), CASES)
def test_elbo_terms_match_brute_force(prior_name: str, latent: int) -> None:
    case = build_case(prior_name, latent)
    beta = 0.3
    terms = elbo_terms(case.model, X, None, beta, generator=gen(11))
    with torch.no_grad():
        mean, log_var = case.model.encode(X)
    eps = torch.randn(mean.shape, generator=gen(11))
    z = ref.as64(mean + torch.exp(0.5 * log_var) * eps)  # [B, d]
    rec = -ref.log_bernoulli_logits(X, case.logits_fn(z))
    kl = ref.log_normal_diag(z, mean, log_var) - case.log_prior_fn(z)
    assert_close(terms.rec.double(), torch.from_numpy(rec), rtol=1e-5, atol=1e-4)
    assert_close(terms.kl.double(), torch.from_numpy(kl), rtol=1e-5, atol=1e-4)
    assert_close(terms.elbo, -(terms.rec + terms.kl), rtol=0, atol=0)
    assert_close(
        terms.loss.double(), torch.tensor(np.mean(rec + beta * kl), dtype=torch.float64), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize(("prior_name", "latent"), CASES)
def test_expected_elbo_is_below_exact_log_px(prior_name: str, latent: int) -> None:
    case = build_case(prior_name, latent)
    draws = 4000
    with torch.no_grad():
        terms = elbo_terms(case.model, X.repeat(draws, 1), None, 1.0, generator=gen(12))
    elbo = ref.as64(terms.elbo).reshape(draws, X.shape[0])  # [draws, B]
    mean, se = elbo.mean(0), elbo.std(0) / math.sqrt(draws)
    assert np.all(mean + 3 * se < exact_of(X, case)), (mean, exact_of(X, case))
    # the single-sample ELBO and the S-sample one from log_weights estimate the same number
    other = ref.as64(log_weights(case.model, X, draws, generator=gen(13))).mean(0)
    assert np.all(np.abs(mean - other) < 5 * math.sqrt(2) * se + 1e-3), (mean, other)


@pytest.mark.parametrize("latent", [1, 2])
def test_truncated_exemplar_prior_gives_lower_log_weights(latent: int) -> None:
    """A scorer truncated to K candidates scores each test point's codes against its K nearest exemplars
    only: every log-weight (same z) is at most the full-prior one, equal for K = N, and the estimate a
    lower bound."""
    case = build_case("exemplar", latent)
    model = case.model
    full = log_weights(model, X, 2000, generator=gen(14))  # [S, B]
    for k in (1, 3, N_EXEMPLARS):
        scorer = PriorScoring(model.prior, model.encoder, k).scorer
        out = log_weights(model, X, 2000, generator=gen(14), prior_scorer=scorer)
        assert (out <= full + 1e-5).all(), (out - full).max()
        if k == N_EXEMPLARS:
            assert_close(out, full, rtol=0, atol=0)
        est = importance_sampled_log_likelihood(model, X, 20000, generator=gen(15), prior_scorer=scorer)
        assert np.all(ref.as64(est.log_likelihood) < exact_of(X, case) + 0.06)
    one = PriorScoring(model.prior, model.encoder, 1).scorer
    gap = (full - log_weights(model, X, 2000, generator=gen(14), prior_scorer=one)).max()
    assert gap > 1e-3  # one candidate out of 20 does drop mass
