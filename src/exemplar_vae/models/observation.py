"""Observation models p(x | decoder output): what a decoder's outputs mean and how data is scored.

The decoder emits ``num_params * D`` numbers per example; the observation model turns them into a
log-likelihood and into the picture shown for a code (its mean). Binary data (MNIST, Fashion-MNIST,
Omniglot) uses a Bernoulli; 8-bit data (CelebA, user photos) a discretised logistic with a per-value
location and log-scale, as in the paper's CelebA code and PixelCNN++.
"""

from __future__ import annotations

import torch
from torch import Tensor

from exemplar_vae.functional import log_bernoulli_logits, log_discretized_logistic

# Bounds on the discretised logistic's log-scale (data units, values in [0, 1]): exp(-7) is a tenth of
# a bin of 8-bit data; exp(0) = 1 covers the whole range.
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 0.0


class Observation:
    """Interface: ``num_params`` outputs per data value; ``log_prob(x, params)``; ``mean(params)``."""

    name = ""
    num_params = 1

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x | params): x [..., D] (broadcast against params), params [..., num_params * D] -> [...]."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The picture of a code: [..., num_params * D] -> [..., D] values in [0, 1]."""
        raise NotImplementedError


class Bernoulli(Observation):
    """Binary data; params are logits."""

    name = "bernoulli"
    num_params = 1

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return log_bernoulli_logits(x, params)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


class DiscretizedLogistic(Observation):
    """8-bit data (values k/255); params are [raw location | raw log-scale], each [..., D].

    The location is sigmoid(raw) in (0, 1) and the log-scale is clamped to [LOG_SCALE_MIN, LOG_SCALE_MAX].
    """

    name = "logistic"
    num_params = 2

    def __init__(self, levels: int = 256) -> None:
        self.levels = levels

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """[..., 2D] -> (location [..., D], log-scale [..., D])."""
        raw_loc, raw_log_scale = params.chunk(2, dim=-1)
        return torch.sigmoid(raw_loc), raw_log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        loc, log_scale = self.split(params)
        return log_discretized_logistic(x, loc, log_scale, self.levels)

    def mean(self, params: Tensor) -> Tensor:
        return self.split(params)[0]


def observation_for(binary: bool) -> Observation:
    """Bernoulli for binary data, the 256-level discretised logistic for 8-bit data."""
    return Bernoulli() if binary else DiscretizedLogistic()
