"""Encoders q(z|x) = N(mu(x), diag exp(log_var(x))). Networks only: they know nothing about priors."""

from __future__ import annotations

from torch import Tensor, nn

from exemplar_vae.models.layers import GatedDense, he_init

# The paper's code bounds the encoder's log-variance with Hardtanh(-6, 2).
LOG_VAR_MIN, LOG_VAR_MAX = -6.0, 2.0


class MLPEncoder(nn.Module):
    """Two gated dense layers and two heads (the paper's MLP VAE encoder).

    The mean head alone is mu_phi, the network the exemplar prior shares; ``mean`` runs only that path.

    Args:
        data_dim: D, flattened input size.
        hidden: width of the gated layers.
        latent_dim: size of z.
    """

    def __init__(self, data_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.body = nn.Sequential(GatedDense(data_dim, hidden), GatedDense(hidden, hidden))
        self.mean_head = nn.Linear(hidden, latent_dim)
        self.log_var_head = nn.Sequential(
            nn.Linear(hidden, latent_dim), nn.Hardtanh(LOG_VAR_MIN, LOG_VAR_MAX)
        )
        he_init(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[B, D] -> (mean [B, d], log_var [B, d])."""
        h = self.body(x)  # [B, hidden]
        return self.mean_head(h), self.log_var_head(h)

    def mean(self, x: Tensor) -> Tensor:
        """mu_phi(x): [B, D] -> [B, d], skipping the log-variance head."""
        return self.mean_head(self.body(x))
