"""The evidence lower bound with a single-sample KL term (the mixture priors have no closed-form KL).

    ELBO(x) = E_q[log p(x|z)] - E_q[log q(z|x) - log p(z)]

estimated with one reparameterised z ~ q(z|x). The loss is mean_b(rec_b + beta * kl_b), with beta the
KL warm-up weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from exemplar_vae.functional import full_precision, log_normal_diag, reparameterize
from exemplar_vae.models.vae import VAE, StepNoise


class ElboTerms(NamedTuple):
    """Per-example terms (nats) and the scalar training loss."""

    loss: Tensor  # [] mean over the batch of rec + beta * kl
    rec: Tensor  # [B] -log p(x|z)
    kl: Tensor  # [B] log q(z|x) - log p(z), single sample
    elbo: Tensor  # [B] -(rec + kl)


def elbo_terms(
    model: VAE,
    x: Tensor,
    index: Tensor | None = None,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    noise: StepNoise | None = None,
) -> ElboTerms:
    """Single-sample ELBO of a batch.

    Args:
        model: the VAE (its prior in train mode uses leave-one-out and subsampling; in eval mode, the
            full prior).
        x: [B, D] inputs (binary, or 8-bit values k/255 for a discretised logistic).
        index: [B] dataset indices (needed by the exemplar prior's leave-one-out in training).
        beta: weight of the KL term in the loss (1 for evaluation).
        generator: randomness for z (unless ``noise`` is given) and for the prior (the exemplar prior's
            subset in training).
        noise: the standard normal noise of z and of the latents below it, drawn ahead
            (``model.draw_noise``); None draws it from ``generator``.

    Returns:
        ElboTerms.
    """
    # under mixed precision the networks run in half precision; the densities are computed in float32
    mean, log_var = (full_precision(t) for t in model.encode(x))  # [B, d]
    if noise is None:
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    else:
        eps = noise.z.to(mean.dtype)
    z = reparameterize(mean, log_var, eps)  # [B, d]
    lower_noise = noise.lower if noise is not None else None
    lower = model.lower_terms(x, z, generator, lower_noise)  # log p(x|...) [B], KL of the layers below z [B]
    with torch.autocast(z.device.type, enabled=False):  # mixture sums and retrieval stay float32
        log_pz = model.prior.log_prob(z, model.encoder, index, generator)  # [B]
    rec = -lower.log_px  # [B]
    kl = log_normal_diag(z, mean, log_var) - log_pz + lower.kl_lower
    return ElboTerms(loss=(rec + beta * kl).mean(), rec=rec, kl=kl, elbo=-(rec + kl))
