"""VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k) over K learned pseudo-inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exemplar_vae.interfaces import Encoder
from exemplar_vae.priors.base import Prior
from exemplar_vae.priors.mixtures import diag_mixture_log_prob, sample_diag_mixture


class VampPrior(Prior):
    """Mixture of the encoder's posteriors at K pseudo-inputs u_k in [0, 1]^D.

    The pseudo-inputs are a free [K, D] parameter passed through Hardtanh(0, 1), as the paper's code does
    with a bias-free linear layer on one-hot rows. Initialised N(0.05, 0.01) (the VampPrior paper's value).

    Args:
        latent_dim: d.
        data_dim: D.
        components: K (500 for MNIST and Fashion-MNIST in the paper).
    """

    def __init__(self, latent_dim: int, data_dim: int, components: int) -> None:
        super().__init__(latent_dim)
        self.pseudo_raw = nn.Parameter(0.05 + 0.01 * torch.randn(components, data_dim))

    def pseudo_inputs(self) -> Tensor:
        """u_k in [0, 1]: [K, D]."""
        return F.hardtanh(self.pseudo_raw, 0.0, 1.0)

    def log_prob(
        self,
        z: Tensor,
        encoder: Encoder,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        means, log_vars = encoder(self.pseudo_inputs())  # [K, d], [K, d]
        return diag_mixture_log_prob(z, means, log_vars)  # [B]

    @torch.no_grad()
    def sample(
        self, n: int, encoder: Encoder, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Pick a pseudo-input u_k, then z ~ q(z|u_k) with its standard deviation times T: [n, d]."""
        means, log_vars = encoder(self.pseudo_inputs())  # [K, d] each
        return sample_diag_mixture(n, means, log_vars, generator, temperature)
