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


class ConditionalEncoder(Protocol):
    """q(z1|x, z2) of a two-layer model: features of x once, then a head per top code."""

    def features(self, x: Tensor) -> Tensor:
        """[B, D] -> [B, F], depends on x only."""
        ...

    def head(self, h: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        """([R, F], [R, d2]) -> (mean [R, d1], log_var [R, d1])."""
        ...
