"""exemplar_vae.functional against the float64 references in tests/reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
import torch
from torch.testing import assert_close

from exemplar_vae import functional as F


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_normal_diag(dtype: torch.dtype) -> None:
    g = gen(0)
    x = 3 * torch.randn(7, 5, 4, generator=g, dtype=dtype)
    mean = torch.randn(5, 4, generator=g, dtype=dtype)  # broadcast over the leading axis
    log_var = torch.empty(7, 5, 4, dtype=dtype).uniform_(-6.0, 2.0, generator=g)
    out = F.log_normal_diag(x, mean, log_var)
    assert out.shape == (7, 5) and out.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    assert_close(out.double(), t64(ref.log_normal_diag(x, mean, log_var)), **tol)


def test_log_normal_standard_is_diag_with_unit_variance() -> None:
    x = 4 * torch.randn(11, 3, generator=gen(1), dtype=torch.float64)
    out = F.log_normal_standard(x)
    assert_close(out, t64(ref.log_normal_standard(x)), rtol=1e-12, atol=1e-12)
    assert_close(out, t64(ref.log_normal_diag(x, np.zeros(3), np.zeros(3))), rtol=1e-12, atol=1e-12)


def test_log_bernoulli_logits_including_saturated_logits() -> None:
    g = gen(2)
    logits = 5 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    logits[0, :3] = torch.tensor([60.0, -60.0, 0.0], dtype=torch.float64)  # saturated sigmoid
    x = (torch.rand(6, 9, generator=g) < 0.5).double()
    x[0, :3] = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)  # log p ~ -60, -60, -log 2
    out = F.log_bernoulli_logits(x, logits)
    assert_close(out, t64(ref.log_bernoulli_logits(x, logits)), rtol=1e-12, atol=1e-10)
    # soft targets (cross-entropy) and a target broadcast over samples: [D] against [S, D]
    soft = torch.rand(9, generator=g, dtype=torch.float64)
    out = F.log_bernoulli_logits(soft, logits)
    assert out.shape == (6,)
    assert_close(out, t64(ref.log_bernoulli_logits(soft, logits)), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_bernoulli_logits_samples_of_a_batch(dtype: torch.dtype) -> None:
    """logits [S, B, D] (and [T, S, B, D]) of inputs x [B, D], the evaluation layout: per-sample sums."""
    g = gen(4)
    logits = 8 * torch.randn(3, 5, 4, 11, generator=g, dtype=torch.float64)
    logits[0, 0, 0, :2] = torch.tensor([45.0, -45.0], dtype=torch.float64)
    x = (torch.rand(4, 11, generator=g) < 0.5).double()
    for lg in (logits, logits[0]):
        expect = np.stack([ref.log_bernoulli_logits(x.numpy(), row) for row in lg.reshape(-1, 4, 11).numpy()])
        out = F.log_bernoulli_logits(x.to(dtype), lg.to(dtype))
        assert out.shape == lg.shape[:-1] and out.dtype == dtype
        tol = 1e-10 if dtype == torch.float64 else 2e-4
        assert_close(
            out.double(),
            t64(expect.reshape(lg.shape[:-1])),
            rtol=1e-6 if dtype == torch.float32 else 1e-12,
            atol=tol,
        )
    mixed = F.log_bernoulli_logits(x.float(), logits)  # float32 targets, float64 logits
    assert mixed.dtype == torch.float64 and mixed.shape == logits.shape[:-1]


def test_squared_distances_float64_matches_direct_difference() -> None:
    g = gen(3)
    a = torch.randn(13, 7, generator=g, dtype=torch.float64)
    b = torch.randn(17, 7, generator=g, dtype=torch.float64)
    b[:5] = a[:5]  # exact zeros on part of the diagonal
    out = F.squared_distances(a, b)
    assert out.shape == (13, 17)
    assert_close(out, t64(ref.squared_distances(a, b)), rtol=1e-12, atol=1e-12)
    assert (out >= 0).all()


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_squared_distances_float32_error_with_large_codes(dim: int) -> None:
    """Codes of norm ~10, half of them 0.01 apart: the expansion ||a||^2 + ||b||^2 - 2ab in float32.

    Max absolute error seen against the float64 direct difference (seed 0): 9.4e-5 (d=2), 4.9e-5 (d=16),
    6.9e-5 (d=64), i.e. ~1e-6 * ||a||^2 (the docstring's "about 1e-7 * ||a||^2" is ~10x optimistic).
    Clamping keeps every output >= 0 even where the true distance (~1e-4) is below the error.
    """
    g = gen(0)
    a = torch.randn(200, dim, generator=g)
    a = 10 * a / a.norm(dim=1, keepdim=True)  # [200, d], norm 10
    near = a[:100] + 0.01 * torch.randn(100, dim, generator=g)
    far = 10 * torch.randn(100, dim, generator=g) / dim**0.5
    b = torch.cat([near, far])  # [200, d]
    out = F.squared_distances(a, b)
    assert out.dtype == torch.float32 and (out >= 0).all()
    exact = t64(ref.squared_distances(a, b))
    err = (out.double() - exact).abs().max().item()
    assert err < 2e-4, f"max abs error {err:.3g} for codes of norm 10"
    # the float64 path has no such error
    assert_close(F.squared_distances(a.double(), b.double()), exact, rtol=0, atol=1e-11)


def test_isotropic_log_kernel() -> None:
    g = gen(4)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    c = torch.randn(5, 3, generator=g, dtype=torch.float64)
    for lv in (-6.0, -0.3, 2.0):
        log_var = torch.tensor(lv, dtype=torch.float64)
        out = F.isotropic_log_kernel(t64(ref.squared_distances(z, c)), log_var, 3)  # [6, 5]
        expect = np.stack([ref.log_normal_diag(z, c[j], np.full(3, lv)) for j in range(5)], axis=1)
        assert_close(out, t64(expect), rtol=1e-12, atol=1e-10)


def test_leave_one_out_mask() -> None:
    query = torch.tensor([3, 0, 7, 7, 12])
    comp = torch.tensor([7, 3, 5, 12, 0, 9])
    out = F.leave_one_out_mask(query, comp)
    assert out.dtype == torch.bool and out.shape == (5, 6)
    assert torch.equal(out, torch.from_numpy(ref.leave_one_out_mask(query.numpy(), comp.numpy())))
    assert out.sum().item() == 5  # every query appears exactly once among the components


def _log_terms() -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(5)
    terms = 10 * torch.randn(6, 8, generator=g, dtype=torch.float64) - 50
    mask = torch.rand(6, 8, generator=g) < 0.4
    mask[0] = False
    mask[1, 1:] = True  # one kept component
    return terms, mask


def test_masked_log_mean_exp_without_mask() -> None:
    terms, _ = _log_terms()
    out = F.masked_log_mean_exp(terms, None)
    assert_close(out, t64(ref.masked_log_mean_exp(terms)), rtol=1e-12, atol=1e-12)
    assert_close(out, t64(ref.log_mean_exp(terms, axis=1)), rtol=1e-12, atol=1e-12)


def test_masked_log_mean_exp_divides_by_kept_count() -> None:
    terms, mask = _log_terms()
    out = F.masked_log_mean_exp(terms, mask)
    assert_close(out, t64(ref.masked_log_mean_exp(terms, mask)), rtol=1e-12, atol=1e-12)
    assert_close(out[1], terms[1, 0])  # a single kept component is its own mean


@pytest.mark.parametrize("kind", ["int", "tensor"])
def test_masked_log_mean_exp_with_explicit_count(kind: str) -> None:
    terms, mask = _log_terms()
    counts = [20.0, 13.0, 9.0, 8.0, 30.0, 11.0]
    count = 20 if kind == "int" else torch.tensor(counts, dtype=torch.float64)
    out = F.masked_log_mean_exp(terms, mask, count)
    expect = ref.masked_log_mean_exp(terms, mask, 20 if kind == "int" else counts)
    assert_close(out, t64(expect), rtol=1e-12, atol=1e-12)
    # a larger normaliser gives a lower bound on the kept-count mixture
    assert (out <= F.masked_log_mean_exp(terms, mask) + 1e-12).all()


def test_masked_log_mean_exp_all_masked_row_is_minus_inf() -> None:
    """A row with no component left is -inf (the docstring's promise), not NaN, with or without a count."""
    terms, mask = _log_terms()
    mask[2] = True
    expect = t64(ref.masked_log_mean_exp(terms, mask))
    assert expect[2] == -math.inf
    with_count = F.masked_log_mean_exp(terms, mask, 8)
    assert with_count[2] == -math.inf
    out = F.masked_log_mean_exp(terms, mask)
    assert not torch.isnan(out).any(), f"NaN for a fully masked row: {out}"
    assert_close(out, expect, rtol=1e-12, atol=1e-12)


def test_masked_log_mean_exp_float32_with_mask() -> None:
    terms, mask = _log_terms()
    out = F.masked_log_mean_exp(terms.float(), mask)
    assert out.dtype == torch.float32
    assert_close(out.double(), t64(ref.masked_log_mean_exp(terms, mask)), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_log_mean_exp(dim: int) -> None:
    x = 300 * torch.randn(5, 7, generator=gen(6), dtype=torch.float64)  # exp would overflow
    out = F.log_mean_exp(x, dim)
    assert_close(out, t64(ref.log_mean_exp(x, axis=dim)), rtol=1e-12, atol=1e-10)
    assert torch.isfinite(out).all()


def test_reparameterize() -> None:
    g = gen(7)
    mean = torch.randn(4, 3, generator=g, dtype=torch.float64)
    log_var = torch.empty(4, 3, dtype=torch.float64).uniform_(-6, 2, generator=g)
    eps = torch.randn(10, 4, 3, generator=g, dtype=torch.float64)
    out = F.reparameterize(mean, log_var, eps)
    expect = ref.as64(mean) + np.sqrt(np.exp(ref.as64(log_var))) * ref.as64(eps)
    assert_close(out, t64(expect), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("epoch", "warmup", "expected"),
    [
        (1, 10, 0.1),
        (5, 10, 0.5),
        (9, 10, 0.9),
        (10, 10, 1.0),
        (25, 10, 1.0),
        (1, 1, 1.0),
        (3, 0, 1.0),
        (3, -1, 1.0),
    ],
)
def test_kl_warmup(epoch: int, warmup: int, expected: float) -> None:
    assert F.kl_warmup(epoch, warmup) == pytest.approx(expected, rel=1e-12)
    assert F.kl_warmup(epoch, warmup) == pytest.approx(ref.kl_warmup(epoch, warmup), rel=1e-12)


def test_kl_warmup_is_monotone_and_reaches_one() -> None:
    betas = [F.kl_warmup(e, 100) for e in range(1, 151)]
    assert all(b1 <= b2 for b1, b2 in zip(betas, betas[1:], strict=False))
    assert betas[0] == pytest.approx(0.01) and betas[99] == 1.0 and betas[-1] == 1.0


@pytest.mark.parametrize(
    ("nats", "dims"), [(784 * math.log(2.0), 784), (80.0, 784), (3000.0, 3072), (0.0, 5)]
)
def test_bits_per_dim(nats: float, dims: int) -> None:
    assert F.bits_per_dim(nats, dims) == pytest.approx(ref.bits_per_dim(nats, dims), rel=1e-12)
    if nats == 784 * math.log(2.0):
        assert F.bits_per_dim(nats, dims) == pytest.approx(1.0, rel=1e-12)
