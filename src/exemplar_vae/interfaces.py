"""Structural types shared across modules (typing only; nothing here runs)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Encoder(Protocol):
    """What priors, caches and generators need from an encoder: q(z|x) and its mean network."""

    training: bool

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[B, D] -> (mean [B, d], log_var [B, d])."""
        ...

    def mean(self, x: Tensor) -> Tensor:
        """mu_phi(x): [B, D] -> [B, d]."""
        ...

    def train(self, mode: bool = True) -> Encoder: ...

    def eval(self) -> Encoder: ...
