"""Mixture-of-Gaussians prior: K learned means and diagonal log-variances, equal weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exemplar_vae.interfaces import Encoder
from exemplar_vae.priors.base import Prior
from exemplar_vae.priors.mixtures import diag_mixture_log_prob, sample_diag_mixture


class MoGPrior(Prior):
    """p(z) = (1/K) sum_k N(z; m_k, diag exp(s_k)).

    Args:
        latent_dim: d.
        components: K.
    """

    def __init__(self, latent_dim: int, components: int) -> None:
        super().__init__(latent_dim)
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_vars = nn.Parameter(torch.zeros(components, latent_dim))

    def log_prob(
        self,
        z: Tensor,
        encoder: Encoder,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return diag_mixture_log_prob(z, self.means, self.log_vars)  # [B]

    def sample(
        self, n: int, encoder: Encoder, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Pick a component, then z ~ N(m_k, T^2 diag exp(s_k)): [n, d]."""
        return sample_diag_mixture(n, self.means.detach(), self.log_vars.detach(), generator, temperature)
