"""Standard Gaussian prior p(z) = N(0, I)."""

from __future__ import annotations

import torch
from torch import Tensor

from exemplar_vae.functional import log_normal_standard
from exemplar_vae.interfaces import Encoder
from exemplar_vae.priors.base import Prior


class GaussianPrior(Prior):
    """p(z) = N(0, I); no parameters."""

    _anchor: Tensor

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries dtype and device

    def log_prob(
        self,
        z: Tensor,
        encoder: Encoder,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return log_normal_standard(z)  # [B]

    def sample(
        self, n: int, encoder: Encoder, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """z ~ N(0, T^2 I): [n, d]."""
        return temperature * torch.randn(n, self.latent_dim, device=self._anchor.device, generator=generator)
