"""The exemplar prior's evaluation at any kernel width: log sigma^2 from -16 to 6.

Against a float64 brute force (every exemplar, direct differences): the truncated prior stays a lower
bound, the full prior is accurate, and the certified interval contains the full prior. Narrow kernels
switch the expanded distances to float64 by ``functional.kernel_dtype``; the last test measures how far
float32 alone would be off, so the rule is seen to matter.
"""

from __future__ import annotations

import math

import pytest
import torch

from exemplar_vae.evaluation import PriorScoring, truncation
from exemplar_vae.functional import KERNEL_TOLERANCE, expansion_error
from exemplar_vae.priors.exemplar import ExemplarPrior, streaming_exemplar_log_prob

LOG_VARS = [-16.0, -12.0, -9.0, -6.0, -3.0, 0.0, 3.0, 6.0]
N, D, B, S = 600, 8, 5, 40


def tolerance(value: torch.Tensor) -> torch.Tensor:
    """KERNEL_TOLERANCE, plus the float32 spacing of results as large as a narrow kernel's (~1e5 nats)."""
    return KERNEL_TOLERANCE + 2.0**-23 * value.abs()


def setting(log_var: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [N, d] spread ~3 away from the origin, test means [B, d] near some of them, and samples
    [S, B, d] drawn around the means at the kernel's own width (plus a little)."""
    g = torch.Generator().manual_seed(seed)
    codes = 4.0 + 3.0 * torch.randn(N, D, generator=g)
    mean = codes[:B] + 0.05 * torch.randn(B, D, generator=g)
    spread = math.exp(0.5 * log_var) + 0.01
    z = mean + spread * torch.randn(S, B, D, generator=g)
    return codes, mean, z


def full64(z: torch.Tensor, codes: torch.Tensor, log_var: float) -> torch.Tensor:
    """log (1/N) sum_n N(z; c_n, s^2 I) with direct float64 differences: [S, B]."""
    sq = (z.double().unsqueeze(-2) - codes.double()).pow(2).sum(-1)  # [S, B, N]
    log_k = -0.5 * sq / math.exp(log_var) - 0.5 * D * (math.log(2 * math.pi) + log_var)
    return torch.logsumexp(log_k, -1) - math.log(N)


def prior_with(codes: torch.Tensor, log_var: float) -> ExemplarPrior:
    prior = ExemplarPrior(torch.zeros(N, 1), D, knn=0)
    prior.cache.codes = codes
    prior.eval()
    with torch.no_grad():
        prior.log_var.fill_(log_var)
    return prior


@pytest.mark.parametrize("log_var", LOG_VARS)
def test_full_prior_is_accurate_at_every_width(log_var: float) -> None:
    codes, _, z = setting(log_var)
    got = streaming_exemplar_log_prob(z.reshape(-1, D), codes, torch.tensor(log_var)).reshape(S, B)
    full = full64(z, codes, log_var)
    assert ((got.double() - full).abs() <= tolerance(full)).all()


@pytest.mark.parametrize("log_var", LOG_VARS)
def test_truncated_prior_stays_a_lower_bound_and_the_interval_holds(log_var: float) -> None:
    codes, mean, z = setting(log_var)
    full = full64(z, codes, log_var)
    scoring = PriorScoring(prior_with(codes, log_var), None, 40, tolerance=0.01, budget=1.0)  # type: ignore[arg-type]
    truncated = scoring.scorer(mean)(z).double()
    assert (truncated <= full + tolerance(full)).all(), (truncated - full).max()
    everything = PriorScoring(prior_with(codes, log_var), None, N - 1).scorer(mean)(z).double()  # type: ignore[arg-type]
    assert (everything <= full + tolerance(full)).all()
    lower, upper = scoring.bounds(mean)(z, None)
    assert (lower.double() <= full + tolerance(full)).all()
    assert (upper >= full - 1e-9).all(), (full - upper).max()


def test_float32_alone_would_break_the_bound_at_narrow_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the float64 switch, a narrow kernel puts the truncated value above the full prior (the
    rounding the rule guards against), and the rule's estimate is above the error measured."""
    log_var = -12.0
    codes, mean, z = setting(log_var)
    full = full64(z, codes, log_var)
    monkeypatch.setattr(truncation, "kernel_dtype", lambda sq, lv, d, dtype=torch.float32: dtype)
    f32 = PriorScoring(prior_with(codes, log_var), None, N - 1).scorer(mean)(z).double()  # type: ignore[arg-type]
    error = float((f32 - full).abs().max())
    assert error > KERNEL_TOLERANCE  # float32 alone is off by more than tolerated here
    centred = torch.cat([z.reshape(-1, D), codes]) - codes[: N - 1].mean(0)
    sq_norm = 2 * float(centred.pow(2).sum(-1).max())
    assert error <= expansion_error(sq_norm, log_var, D, torch.float32)
