"""Pictures from a trained model: prior samples and exemplar-based variations."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from exemplar_vae.models.vae import VAE


@torch.no_grad()
def prior_sample_grid(model: VAE, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n samples from the model as a near-square [rows, cols, D] grid of Bernoulli means."""
    model.eval()
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    x = model.generate(rows * cols, generator)  # [rows*cols, D]
    return x.reshape(rows, cols, -1)


@torch.no_grad()
def exemplar_grid(model: VAE, exemplars: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Each row: an exemplar, then n variations of it drawn from r(z|x) and decoded.

    Args:
        model: the trained VAE.
        exemplars: [B, D] inputs (grey or binary).
        n: variations per exemplar.

    Returns:
        [B, 1 + n, D] pixel values in [0, 1].
    """
    model.eval()
    exemplars = exemplars.to(model.device)
    variations = model.exemplar_variations(exemplars, n, generator)  # [B, n, D]
    return torch.cat([exemplars.unsqueeze(1), variations], dim=1)
