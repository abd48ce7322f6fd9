"""Diagonal Gaussian mixtures, shared by the mixture-of-Gaussians prior and the VampPrior."""

from __future__ import annotations

import torch
from torch import Tensor

from exemplar_vae.functional import LOG_2PI


def diag_mixture_log_prob(z: Tensor, means: Tensor, log_vars: Tensor, max_elements: int = 2**24) -> Tensor:
    """log (1/K) sum_k N(z; means_k, diag exp(log_vars_k)), equal weights.

    The quadratic form is expanded into matrix products, computed in float64: with encoder log-variances
    down to -6 the terms reach 1/var = 400 and float32 cancellation would cost ~1e-3 nats.

    Args:
        z: [B, d] codes.
        means: [K, d] component means.
        log_vars: [K, d] component log-variances.
        max_elements: rows are processed in chunks so that a [rows, K] block stays below this size.

    Returns:
        [B] log-densities in nats, in z's dtype.
    """
    z64, m64, lv64 = z.double(), means.double(), log_vars.double()
    prec = torch.exp(-lv64)  # [K, d]
    const = -0.5 * (z.shape[-1] * LOG_2PI + lv64.sum(-1) + (m64.pow(2) * prec).sum(-1))  # [K]
    rows = max(1, max_elements // max(1, means.shape[0]))
    out = []
    for zc in z64.split(rows):
        quad = -0.5 * (zc.pow(2) @ prec.T) + zc @ (m64 * prec).T  # [b, K]
        out.append(torch.logsumexp(quad + const, dim=-1))
    return (torch.cat(out) - torch.log(torch.tensor(float(means.shape[0]), dtype=torch.float64))).to(z.dtype)


def sample_diag_mixture(
    n: int,
    means: Tensor,
    log_vars: Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Draw n codes from an equal-weight diagonal Gaussian mixture, each component's standard deviation
    multiplied by ``temperature``: [n, d]."""
    k = torch.randint(means.shape[0], (n,), device=means.device, generator=generator)  # [n]
    eps = torch.randn(n, means.shape[1], device=means.device, dtype=means.dtype, generator=generator)
    return means[k] + temperature * torch.exp(0.5 * log_vars[k]) * eps
