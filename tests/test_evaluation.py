"""Evaluation: the truncated exemplar prior is a lower bound on the full one, and its check is right."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import pytest
import reference as ref
import torch

from exemplar_vae.config import EvalConfig
from exemplar_vae.evaluation import PriorScoring, evaluate_density
from exemplar_vae.evaluation.truncation import candidate_log_prob
from exemplar_vae.models.decoders import MLPDecoder
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.vae import VAE
from exemplar_vae.priors.exemplar import ExemplarPrior, streaming_exemplar_log_prob

# the full prior, 200 samples, batches of 10 (settings below are replacements of this one)
EXACT = EvalConfig(samples=200, batch_size=10, candidates=None, check_exact=0, escalate=False)


def tiny_model(
    n: int = 300, d_x: int = 12, latent: int = 3, log_var: float = -1.0
) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    exemplars = torch.rand(n, d_x)
    prior = ExemplarPrior(exemplars, latent, knn=0)
    with torch.no_grad():
        prior.log_var.fill_(log_var)
    model = VAE(MLPEncoder(d_x, 16, latent), MLPDecoder(latent, 16, d_x), prior, (1, 1, d_x))
    x = torch.bernoulli(torch.rand(25, d_x), generator=torch.Generator().manual_seed(1))
    return model, x


def test_candidate_log_prob_matches_float64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(7, 30, 4, generator=g)  # [B, K, d]
    z = torch.randn(11, 7, 4, generator=g)  # [S, B, d]
    got = candidate_log_prob(z, centers, torch.tensor(-0.5), num_total=1000)
    for b in range(7):
        expect = ref.isotropic_exemplar_log_prob(z[:, b].double().numpy(), centers[b].double().numpy(), -0.5)
        expect = expect + math.log(30) - math.log(1000)  # reference averages over the 30 given centers
        torch.testing.assert_close(got[:, b].double(), torch.from_numpy(expect), rtol=0, atol=1e-4)


def test_candidate_log_prob_far_samples_fall_back_to_a_shifted_log_sum_exp() -> None:
    """Samples far from every candidate (float32 kernels underflow to 0) are scored like the float64
    reference, mixed in one call with samples near the candidates."""
    g = torch.Generator().manual_seed(5)
    centers = torch.randn(3, 20, 4, generator=g)  # [B, K, d]
    z = torch.randn(6, 3, 4, generator=g)  # [S, B, d]
    z[::2, :2] += (
        25.0  # every other sample of points 0, 1: exp(-|z - c|^2 / 2s^2) ~ exp(-2000), far below float32
    )
    got = candidate_log_prob(z, centers, torch.tensor(-1.0), num_total=20)
    assert torch.isfinite(got).all()
    for b in range(3):
        expect = ref.isotropic_exemplar_log_prob(z[:, b].double().numpy(), centers[b].double().numpy(), -1.0)
        torch.testing.assert_close(got[:, b].double(), torch.from_numpy(expect), rtol=2e-6, atol=1e-4)


def test_streaming_matches_float64_reference_at_realistic_scale() -> None:
    g = torch.Generator().manual_seed(1)
    centers = 3.0 * torch.randn(2000, 40, generator=g)
    z = centers[:50] + 0.3 * torch.randn(50, 40, generator=g)
    got = streaming_exemplar_log_prob(z, centers, torch.tensor(math.log(0.1)), max_elements=5000)
    expect = ref.isotropic_exemplar_log_prob(z.double().numpy(), centers.double().numpy(), math.log(0.1))
    torch.testing.assert_close(got.double(), torch.from_numpy(expect), rtol=0, atol=2e-3)


def test_truncated_evaluation_is_a_lower_bound_and_its_check_is_exact() -> None:
    model, x = tiny_model()
    exact = evaluate_density(model, x, EXACT, progress=False)
    assert exact["prior_eval"] == "exact"
    for k in (5, 50):
        trunc = evaluate_density(model, x, replace(EXACT, candidates=k, check_exact=25), progress=False)
        assert trunc["prior_eval"] == "truncated" and trunc["candidates"] == k
        assert trunc["log_likelihood"] <= exact["log_likelihood"] + 1e-5
        check = trunc["truncation_check"]
        assert check["points"] == 25
        # same samples: the check's mean error is the gap between the two full-set means
        gap = exact["log_likelihood"] - trunc["log_likelihood"]
        assert math.isclose(check["mean_error"], gap, rel_tol=1e-4, abs_tol=1e-6)
        assert check["min_error"] >= -1e-5
    assert (
        evaluate_density(model, x, replace(EXACT, samples=50, candidates=5), progress=False)["log_likelihood"]
        < exact["log_likelihood"] - 1e-3
    )
    # candidates covering the whole set fall back to the exact prior
    same = evaluate_density(model, x, replace(EXACT, candidates=300), progress=False)
    assert same["prior_eval"] == "exact" and same["log_likelihood"] == exact["log_likelihood"]


def _snapshot(value: Any, depth: int = 0) -> Any:
    """A comparable copy: tensors cloned, plain objects as their attributes (two levels deep)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().clone())
    if isinstance(value, dict):
        return {k: _snapshot(v, depth) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool, type(None), tuple)) or depth >= 2:
        return copy.copy(value)
    if isinstance(value, torch.nn.Module):
        return ("module", id(value))
    if hasattr(value, "__dict__"):
        return (type(value).__name__, {k: _snapshot(v, depth + 1) for k, v in vars(value).items()})
    return copy.copy(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and len(a) == 2 and a[0] == "tensor":
        return isinstance(b, tuple) and b[0] == "tensor" and torch.equal(a[1], b[1])
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return (
            isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


def _settings_of(module: torch.nn.Module) -> dict[str, Any]:
    """Every attribute of a module and of the plain objects it holds, tensors by value, caches aside."""
    return {
        k: _snapshot(v) for k, v in vars(module).items() if k != "cache"
    }  # the cache is refreshed on purpose


@pytest.mark.parametrize("certify", [False, True])
def test_evaluation_leaves_the_prior_as_it_found_it(certify: bool) -> None:
    """Evaluation settings travel in the EvalConfig: nothing is written onto the prior (only its cache is
    refreshed), whatever the settings."""
    model, x = tiny_model()
    model.eval()
    model.prior.refresh(model.encoder)
    before = _settings_of(model.prior)
    evaluate_density(model, x, replace(EXACT, candidates=5, check_exact=7, certify=certify), progress=False)
    after = _settings_of(model.prior)
    assert before.keys() == after.keys()
    for name in before:
        assert _same(before[name], after[name]), name


@pytest.mark.parametrize("points", [1, 13, 25])
def test_check_exact_scores_exactly_the_requested_points_on_their_own_samples(points: int) -> None:
    """--check-exact n re-scores n points (not whole batches) on the samples of the truncated pass."""
    from exemplar_vae.evaluation.density import _score

    model, x = tiny_model()
    model.eval()
    model.prior.refresh(model.encoder)
    settings = replace(EXACT, samples=100, candidates=5, check_exact=points)
    full, trunc = PriorScoring(model.prior, model.encoder), PriorScoring(model.prior, model.encoder, 5)
    exact_ll, _, _ = _score(model, x, settings, full, progress=False, certify=False)  # per point, full prior
    trunc_ll, _, _ = _score(model, x, settings, trunc, progress=False, certify=False)
    check = evaluate_density(model, x, settings, progress=False)
    got = check["truncation_check"]
    diff = (exact_ll - trunc_ll)[:points].double()
    assert got["points"] == points
    assert math.isclose(got["mean_error"], float(diff.mean()), rel_tol=1e-5, abs_tol=1e-7)
    assert math.isclose(got["max_error"], float(diff.max()), rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("case", ["spread", "wide_sigma", "duplicates", "ties", "narrow_sigma"])
def test_certified_bounds_contain_the_full_prior(case: str) -> None:
    """lower <= full-prior log p(z) <= upper for every code, in adversarial set-ups too."""
    g = torch.Generator().manual_seed(3)
    d, n = 4, 600
    codes = torch.randn(n, d, generator=g) * (0.2 if case == "narrow_sigma" else 1.0)
    if case == "duplicates":
        codes[300:] = codes[:300]  # every exemplar twice
    if case == "ties":
        codes = torch.round(codes * 2) / 2  # many equal distances
    log_var = {"wide_sigma": 3.0, "narrow_sigma": -5.0}.get(case, -1.0)
    prior = ExemplarPrior(torch.zeros(n, 1), d, knn=0)
    prior.cache.codes = codes
    prior.eval()
    with torch.no_grad():
        prior.log_var.fill_(log_var)
    mean = codes[:6] + 0.1 * torch.randn(6, d, generator=g)
    z = mean.unsqueeze(0) + 0.5 * torch.randn(30, 6, d, generator=g)  # [S, B, d]
    lower, upper = PriorScoring(prior, None, 40).bounds(mean)(z)  # type: ignore[arg-type]
    expect = ref.isotropic_exemplar_log_prob(
        z.reshape(-1, d).double().numpy(), codes.double().numpy(), log_var
    )
    full = torch.from_numpy(expect).reshape(30, 6)
    assert (lower.double() <= full + 1e-4).all()
    assert (upper >= full - 1e-9).all()
    if case == "wide_sigma":  # with a kernel this wide the dropped mass is tight to bound
        assert (upper - full).max() < 0.5


def test_certified_evaluation_brackets_the_exact_estimate() -> None:
    model, x = tiny_model()
    exact = evaluate_density(model, x, EXACT, progress=False)
    cert = evaluate_density(model, x, replace(EXACT, candidates=30, certify=True), progress=False)
    c = cert["certified"]
    assert cert["log_likelihood"] <= exact["log_likelihood"] + 1e-5 <= c["log_likelihood_upper"] + 2e-5
    gap = exact["log_likelihood"] - cert["log_likelihood"]
    assert c["mean_bound"] >= gap - 1e-5 and c["max_bound"] >= c["mean_bound"]
    assert 0.0 <= c["fraction_below_0.01"] <= 1.0
    plain = evaluate_density(model, x, replace(EXACT, candidates=30), progress=False)
    assert (
        plain["log_likelihood"] == pytest.approx(cert["log_likelihood"], abs=1e-9)
        and "certified" not in plain
    )


def test_a_wide_kernel_escalates_until_the_check_is_within_the_tolerance() -> None:
    """With a kernel so wide that the nearest candidates miss much of the mass, the default evaluation's
    check sees the error and scores again with 4x the candidates (then the full prior, past N/4), on the
    same samples; the report says what it used. A truncation within tolerance stands."""
    model, x = tiny_model(log_var=3.0)
    exact = evaluate_density(model, x, EXACT, progress=False)
    got = evaluate_density(
        model, x, replace(EXACT, candidates=5, check_exact=10, escalate=True), progress=False
    )
    tried = got["escalated"]["tried"]
    assert tried[0]["candidates"] == 5 and tried[0]["max_error"] > 0.01
    assert [t["candidates"] for t in tried[1:]] == [20]  # 80 >= 300 / 4: then the full prior
    assert got["prior_eval"] == "exact (escalated)"
    assert exact["log_likelihood"] - got["escalated"]["truncated_log_likelihood"] > 0.01
    assert got["log_likelihood"] == pytest.approx(exact["log_likelihood"], abs=1e-6)
    # one exemplar of 300 dropped: an error below a tolerance of 0.1, so the truncated value stands
    settings = replace(EXACT, candidates=299, check_exact=10, escalate=True, tolerance=0.1)
    kept = evaluate_density(model, x, settings, progress=False)
    assert kept["prior_eval"] == "truncated" and kept["truncation_check"]["max_error"] <= 0.1
