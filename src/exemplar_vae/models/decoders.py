"""Decoders: z -> parameters of p(x|z). Networks only: they know nothing about priors."""

from __future__ import annotations

from torch import Tensor, nn

from exemplar_vae.models.layers import GatedDense, he_init


class MLPDecoder(nn.Module):
    """Two gated dense layers and a linear output of Bernoulli logits (the paper's MLP VAE decoder).

    Args:
        latent_dim: size of z.
        hidden: width of the gated layers.
        data_dim: D, flattened output size.
    """

    def __init__(self, latent_dim: int, hidden: int, data_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            GatedDense(latent_dim, hidden), GatedDense(hidden, hidden), nn.Linear(hidden, data_dim)
        )
        he_init(self)

    def forward(self, z: Tensor) -> Tensor:
        """[B, d] -> Bernoulli logits [B, D]."""
        return self.net(z)
