"""Importance-sampled log-likelihood (Burda et al. 2016), batched over test points and samples.

    log p(x) ~= log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x),   z_s ~ q(z|x)

The encoder runs once per test point (not once per sample), the decoder and the prior stream over chunks
of samples, and the per-sample log-weights are reduced with logsumexp. The same weights give the
S-sample average ELBO, mean_s log w_s, a lower-variance estimate of the ELBO than one sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from exemplar_vae.functional import log_normal_diag, reparameterize
from exemplar_vae.models.vae import VAE


class LikelihoodEstimate(NamedTuple):
    """Per-example estimates in nats."""

    log_likelihood: Tensor  # [B] log (1/S) sum_s w_s
    elbo: Tensor  # [B] (1/S) sum_s log w_s


def _proposal_terms(
    model: VAE, x: Tensor, num_samples: int, max_rows: int | None, generator: torch.Generator | None
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Chunks of (z [s, B, d], log p(x, z_lower|z) - log q(z, z_lower|x) [s, B] float64, encoder mean [B, d]),
    z ~ q(z|x) the top latent (the one the prior scores); for a one-layer VAE the lower terms are log p(x|z).

    The encoder runs once; the decoder streams over chunks of at most ``max_rows`` codes (None: the
    model's ``evaluation_rows`` for the device: 4,000 for the MLPs on a CPU, 32,000 on a GPU, fewer for
    convolutional decoders)."""
    b = x.shape[0]
    mean, log_var = model.encode(x)  # [B, d]
    rows = max_rows if max_rows is not None else model.evaluation_rows(x.device)
    chunk = max(1, rows // max(1, b))
    lower_generator = _lower_stream(model, generator)
    for start in range(0, num_samples, chunk):
        s = min(chunk, num_samples - start)
        eps = torch.randn((s, b, mean.shape[1]), dtype=mean.dtype, device=mean.device, generator=generator)
        z = reparameterize(mean, log_var, eps)  # [s, B, d]
        log_q = log_normal_diag(z, mean, log_var)  # [s, B]
        lower = model.lower_terms(x, z, lower_generator)  # [s, B] each
        yield z, lower.log_px.double() - lower.kl_lower.double() - log_q.double(), mean


def _lower_stream(model: VAE, generator: torch.Generator | None) -> torch.Generator | None:
    """The generator of the latents below z (the HVAE's z1).

    A model with such latents gets a second stream, seeded with one draw from ``generator``: z and z1 then
    each read their own stream in order, so on a CPU the samples do not depend on how the S samples are
    split into chunks (``max_rows``) -- as long as every chunk holds a multiple of 16 values (torch draws
    normals in blocks of 16 there), e.g. any even number of test points with d = 40. (CPU and GPU
    generators differ, so their samples never match; a model's samples for a seed also differ from those
    of the code before this stream, which drew z1 from the shared one.) A one-layer model draws nothing
    below z and keeps ``generator``."""
    if generator is None or not model.lower_latents:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=generator.device).manual_seed(seed)


@torch.no_grad()
def log_weights(
    model: VAE,
    x: Tensor,
    num_samples: int,
    max_rows: int | None = None,
    generator: torch.Generator | None = None,
    columns: int | None = None,
) -> Tensor:
    """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x) for z_s ~ q(z|x).

    Args:
        model: the VAE, in eval mode (its prior must be ready: ``model.prior.refresh(model.encoder)``).
        x: [B, D] inputs.
        num_samples: S.
        max_rows: bound on B * (samples per chunk), which bounds the decoder's and the prior's memory
            (None: ``model.evaluation_rows(device)``).
        generator: randomness for z.
        columns: score the prior for the first ``columns`` inputs only and return their weights (the
            samples are those of the whole batch, so a few points can be re-scored with another prior
            on exactly the samples they had in a full batch); None: all B.

    Returns:
        [S, B] (or [S, columns]) log-weights (float64).
    """
    out, score_prior = [], None
    c = x.shape[0] if columns is None else columns
    for z, base, mean in _proposal_terms(model, x, num_samples, max_rows, generator):
        if score_prior is None:
            score_prior = model.prior.batch_scorer(mean[:c], model.encoder)  # z [s, c, d] -> log p(z) [s, c]
        out.append(base[:, :c] + score_prior(z[:, :c]).double())
    return torch.cat(out)  # [S, c]


@torch.no_grad()
def log_weight_bounds(
    model: VAE,
    x: Tensor,
    num_samples: int,
    max_rows: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds on the log-weights of ``log_weights`` (same samples for the same generator
    state), from the prior's ``batch_bounds``; equal where the prior is scored exactly.

    All S samples of the batch are drawn first (memory S * B * d codes) and bounded in one call, which
    also receives the rest of each log-weight [S, B], so a bound can spend its refinement on the samples
    that dominate the estimate.

    Returns:
        ([S, B], [S, B]) float64.
    """
    codes, bases, means = [], [], []
    for z, base, mean in _proposal_terms(model, x, num_samples, max_rows, generator):
        codes.append(z)
        bases.append(base)
        means.append(mean)
    z, base = torch.cat(codes), torch.cat(bases)  # [S, B, d], [S, B]: all samples at once
    lo, up = model.prior.batch_bounds(means[0], model.encoder)(z, base)
    return base + lo.double(), base + up.double()


def importance_sampled_log_likelihood(
    model: VAE,
    x: Tensor,
    num_samples: int,
    max_rows: int | None = None,
    generator: torch.Generator | None = None,
) -> LikelihoodEstimate:
    """IWAE estimate of log p(x) and the S-sample ELBO, per example, in nats: [B, D] -> [B] each."""
    w = log_weights(model, x, num_samples, max_rows, generator)  # [S, B]
    return LikelihoodEstimate(torch.logsumexp(w, dim=0) - math.log(num_samples), w.mean(dim=0))
