"""Importance-sampled log-likelihood (Burda et al. 2016), batched over test points and samples.

    log p(x) ~= log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x),   z_s ~ q(z|x)

The encoder runs once per test point (not once per sample), the decoder and the prior stream over chunks
of samples, and the per-sample log-weights are reduced with logsumexp. The same weights give the
S-sample average ELBO, mean_s log w_s, a lower-variance estimate of the ELBO than one sample.

How log p(z) is scored is passed in (``prior_scorer``, ``prior_bounds``): by default the prior's own
``log_prob``; evaluation may pass a truncated scorer with certified bounds (``evaluation/``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from exemplar_vae.functional import log_mean_exp, log_normal_diag, reparameterize
from exemplar_vae.interfaces import Encoder
from exemplar_vae.models.vae import VAE
from exemplar_vae.priors import Prior

# z [S, B, d] (column b drawn for test point b) -> log p(z) [S, B]
Scorer = Callable[[Tensor], Tensor]
# (z [S, B, d], rest of each log-weight [S, B] or None) -> (lower, upper) bounds on log p(z), [S, B] each
Bounds = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]


def exact_prior_scorer(prior: Prior, encoder: Encoder) -> Callable[[Tensor], Scorer]:
    """mean [B, d] -> a ``Scorer`` that scores every code with ``prior.log_prob`` (the mean is not needed:
    the prior is scored in full)."""

    def for_batch(mean: Tensor) -> Scorer:
        def score(z: Tensor) -> Tensor:
            return prior.log_prob(z.reshape(-1, z.shape[-1]), encoder).reshape(z.shape[:-1])

        return score

    return for_batch


def exact_prior_bounds(prior: Prior, encoder: Encoder) -> Callable[[Tensor], Bounds]:
    """mean [B, d] -> ``Bounds`` returning the exact value twice."""
    scorer = exact_prior_scorer(prior, encoder)

    def for_batch(mean: Tensor) -> Bounds:
        score = scorer(mean)

        def bounds(z: Tensor, log_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
            value = score(z)
            return value, value

        return bounds

    return for_batch


class LikelihoodEstimate(NamedTuple):
    """Per-example estimates in nats."""

    log_likelihood: Tensor  # [B] log (1/S) sum_s w_s
    elbo: Tensor  # [B] (1/S) sum_s log w_s


# (x [B, D], encoder mean [B, d], log-variance [B, d], noise [s, B, d], generator of the latents below z)
#   -> (z [s, B, d], log p(x, z_lower|z) - log q(z, z_lower|x) [s, B] float64): the decoder's part of one
#   chunk of importance weights (``chunk_terms``; evaluation may pass a compiled one)
ChunkTerms = Callable[[Tensor, Tensor, Tensor, Tensor, torch.Generator | None], tuple[Tensor, Tensor]]


def chunk_terms_for(model: VAE) -> ChunkTerms:
    """The eager ``ChunkTerms`` of ``model``: z = mean + exp(log_var / 2) * noise, the lower terms
    (decoder and likelihood) and log q(z|x). A pure function of its tensors for a one-layer model, so
    ``torch.compile`` can fuse it (``evaluation`` does, see ``compiling``)."""

    def terms(
        x: Tensor, mean: Tensor, log_var: Tensor, eps: Tensor, lower_generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        z = reparameterize(mean, log_var, eps)  # [s, B, d]
        log_q = log_normal_diag(z, mean, log_var)  # [s, B]
        lower = model.lower_terms(x, z, lower_generator)  # [s, B] each
        return z, lower.log_px.double() - lower.kl_lower.double() - log_q.double()

    return terms


def _proposal_terms(
    model: VAE,
    x: Tensor,
    num_samples: int,
    max_rows: int | None,
    generator: torch.Generator | None,
    chunk_terms: ChunkTerms | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Chunks of (z [s, B, d], log p(x, z_lower|z) - log q(z, z_lower|x) [s, B] float64, encoder mean [B, d]),
    z ~ q(z|x) the top latent (the one the prior scores); for a one-layer VAE the lower terms are log p(x|z).

    The encoder runs once; the decoder streams over chunks of at most ``max_rows`` codes (None: the
    model's ``evaluation_rows`` for the device: 4,000 for the MLPs on a CPU, 32,000 on a GPU, fewer for
    convolutional decoders), each through ``chunk_terms`` (None: ``chunk_terms_for(model)``)."""
    b = x.shape[0]
    mean, log_var = model.encode(x)  # [B, d]
    rows = max_rows if max_rows is not None else model.evaluation_rows(x.device)
    chunk = max(1, rows // max(1, b))
    lower_generator = _lower_stream(model, generator)
    terms = chunk_terms if chunk_terms is not None else chunk_terms_for(model)
    for start in range(0, num_samples, chunk):
        s = min(chunk, num_samples - start)
        eps = torch.randn((s, b, mean.shape[1]), dtype=mean.dtype, device=mean.device, generator=generator)
        z, base = terms(x, mean, log_var, eps, lower_generator)  # [s, B, d], [s, B]
        yield z, base, mean


def _lower_stream(model: VAE, generator: torch.Generator | None) -> torch.Generator | None:
    """The generator of the latents below z (the HVAE's z1).

    A model with such latents gets a second stream, seeded with one draw from ``generator``: z and z1 then
    each read their own stream in order, so on a CPU the samples do not depend on how the S samples are
    split into chunks (``max_rows``) -- as long as every chunk holds a multiple of 16 values (torch draws
    normals in blocks of 16 there), e.g. any even number of test points with d = 40. (CPU and GPU
    generators differ, so their samples never match.) A one-layer model draws nothing below z and keeps
    ``generator``."""
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
    prior_scorer: Callable[[Tensor], Scorer] | None = None,
    chunk_terms: ChunkTerms | None = None,
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
        prior_scorer: encoder means [c, d] -> ``Scorer`` of log p(z); None: ``exact_prior_scorer``.
        chunk_terms: the decoder's part of each chunk (None: ``chunk_terms_for(model)``, eager).

    Returns:
        [S, B] (or [S, columns]) log-weights (float64).
    """
    scorer_for = prior_scorer if prior_scorer is not None else exact_prior_scorer(model.prior, model.encoder)
    out, score_prior = [], None
    c = x.shape[0] if columns is None else columns
    for z, base, mean in _proposal_terms(model, x, num_samples, max_rows, generator, chunk_terms):
        if score_prior is None:
            score_prior = scorer_for(mean[:c])  # z [s, c, d] -> log p(z) [s, c]
        out.append(base[:, :c] + score_prior(z[:, :c]).double())
    return torch.cat(out)  # [S, c]


@torch.no_grad()
def log_weight_bounds(
    model: VAE,
    x: Tensor,
    num_samples: int,
    max_rows: int | None = None,
    generator: torch.Generator | None = None,
    prior_bounds: Callable[[Tensor], Bounds] | None = None,
    chunk_terms: ChunkTerms | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds on the log-weights of ``log_weights`` (same samples for the same generator
    state), from ``prior_bounds`` (encoder means [B, d] -> ``Bounds``; None: the exact prior, equal bounds).

    All S samples of the batch are drawn first (memory S * B * d codes) and bounded in one call, which
    also receives the rest of each log-weight [S, B], so a bound can spend its refinement on the samples
    that dominate the estimate.

    Returns:
        ([S, B], [S, B]) float64.
    """
    codes, bases, means = [], [], []
    for z, base, mean in _proposal_terms(model, x, num_samples, max_rows, generator, chunk_terms):
        codes.append(z)
        bases.append(base)
        means.append(mean)
    z, base = torch.cat(codes), torch.cat(bases)  # [S, B, d], [S, B]: all samples at once
    bounds_for = prior_bounds if prior_bounds is not None else exact_prior_bounds(model.prior, model.encoder)
    lo, up = bounds_for(means[0])(z, base)
    return base + lo.double(), base + up.double()


def importance_sampled_log_likelihood(
    model: VAE,
    x: Tensor,
    num_samples: int,
    max_rows: int | None = None,
    generator: torch.Generator | None = None,
    prior_scorer: Callable[[Tensor], Scorer] | None = None,
    chunk_terms: ChunkTerms | None = None,
) -> LikelihoodEstimate:
    """IWAE estimate of log p(x) and the S-sample ELBO, per example, in nats: [B, D] -> [B] each.

    ``prior_scorer`` and ``chunk_terms`` as in ``log_weights`` (None: the prior's ``log_prob``, eager
    decoder terms)."""
    w = log_weights(
        model, x, num_samples, max_rows, generator, prior_scorer=prior_scorer, chunk_terms=chunk_terms
    )  # [S, B]
    return LikelihoodEstimate(log_mean_exp(w, 0), w.mean(dim=0))
