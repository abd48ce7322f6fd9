"""Decoders: z -> parameters of p(x|z). Networks only: they know nothing about priors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exemplar_vae.models.layers import GatedDense, GaussianHead, he_init


class MLPDecoder(nn.Module):
    """Two gated dense layers and a linear output of Bernoulli logits (the paper's MLP VAE decoder).

    Args:
        latent_dim: size of z.
        hidden: width of the gated layers.
        data_dim: flattened output size: D for Bernoulli logits, 2D for a discretised logistic.
    """

    def __init__(self, latent_dim: int, hidden: int, data_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            GatedDense(latent_dim, hidden), GatedDense(hidden, hidden), nn.Linear(hidden, data_dim)
        )
        he_init(self)

    def forward(self, z: Tensor) -> Tensor:
        """[B, d] -> observation parameters [B, data_dim]."""
        return self.net(z)


class MLPConditionalPrior(nn.Module):
    """p(z1|z2) of the paper's HVAE and ConvHVAE: GD(d2->hidden), GD(hidden->hidden), Gaussian heads."""

    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(GatedDense(latent_dim, hidden), GatedDense(hidden, hidden))
        self.heads = GaussianHead(hidden, latent_dim)
        he_init(self)

    def forward(self, z2: Tensor) -> tuple[Tensor, Tensor]:
        """[B, d2] -> (mean [B, d1], log_var [B, d1])."""
        return self.heads(self.net(z2))


class MLPHierarchicalDecoder(nn.Module):
    """p(x|z1, z2) of the paper's HVAE: GD(d->hidden) on each of z1 and z2, concatenated,
    GD(2 hidden->hidden), Linear(hidden->out_dim).

    Args:
        latent_dim: size of z1 and of z2.
        hidden: width of the gated layers.
        out_dim: observation parameters per example (D for Bernoulli logits, 2D for a logistic).
    """

    def __init__(self, latent_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.z1_net, self.z2_net = GatedDense(latent_dim, hidden), GatedDense(latent_dim, hidden)
        self.joint = nn.Sequential(GatedDense(2 * hidden, hidden), nn.Linear(hidden, out_dim))
        he_init(self)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """([B, d1], [B, d2]) -> [B, out_dim]."""
        return self.joint(torch.cat([self.z1_net(z1), self.z2_net(z2)], dim=-1))
