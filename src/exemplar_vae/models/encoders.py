"""Encoders q(z|x) = N(mu(x), diag exp(log_var(x))). Networks only: they know nothing about priors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exemplar_vae.models.layers import LOG_VAR_MAX, LOG_VAR_MIN, GatedDense, GaussianHead, he_init


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


class MLPZ1Encoder(nn.Module):
    """q(z1|x, z2) of the paper's HVAE: GD(D->hidden) on x, GD(d2->hidden) on z2, concatenated,
    GD(2 hidden->hidden), Gaussian heads.

    ``features(x)`` depends on x only, so importance sampling computes it once per input.
    """

    def __init__(self, data_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.x_net = GatedDense(data_dim, hidden)
        self.z2_net = GatedDense(latent_dim, hidden)
        self.joint = GatedDense(2 * hidden, hidden)
        self.heads = GaussianHead(hidden, latent_dim)
        he_init(self)

    def features(self, x: Tensor) -> Tensor:
        """[B, D] -> [B, hidden]."""
        return self.x_net(x)

    def head(self, h: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        """([B, hidden], [B, d2]) -> (mean [B, d1], log_var [B, d1])."""
        return self.heads(self.joint(torch.cat([h, self.z2_net(z2)], dim=-1)))

    def forward(self, x: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.features(x), z2)
