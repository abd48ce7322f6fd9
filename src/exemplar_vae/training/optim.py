"""Optimisers: Adam, and the paper's "AdamNormGrad" (per-tensor gradient normalisation, then Adam)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from exemplar_vae.errors import ConfigError


@torch.no_grad()
def normalize_gradients(params: Iterable[nn.Parameter], eps: float = 1e-7) -> None:
    """Divide each parameter tensor's gradient by (its L2 norm + eps), in place, as the paper's code does."""
    for p in params:
        if p.grad is not None:
            p.grad.div_(p.grad.norm() + eps)


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam(0.9, 0.999, eps 1e-8) for both "adam" and "adamnormgrad" (the latter also needs
    ``normalize_gradients`` before each step, which the trainer does)."""
    if name not in ("adam", "adamnormgrad"):
        raise ConfigError(f"unknown optimizer '{name}'; valid: adam, adamnormgrad")
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
