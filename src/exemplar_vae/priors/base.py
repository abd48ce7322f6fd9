"""The Prior interface every prior implements.

A prior is an ``nn.Module`` holding its own parameters. It is handed the encoder when it needs one (the
VampPrior encodes pseudo-inputs, the exemplar prior encodes exemplars), so networks never know about
priors. ``self.training`` selects the training-time form (for the exemplar prior: leave-one-out and
exemplar subsampling) and the evaluation form (the full prior).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from exemplar_vae.interfaces import Encoder


class Prior(nn.Module):
    """Base class: log_prob(z) -> [B], sample(n) -> [n, d], and an explicit refresh hook."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None = None) -> Tensor:
        """log p(z) in nats.

        Args:
            z: [B, d] latent codes.
            encoder: the VAE's encoder (used by priors built from encoded inputs).
            index: [B] dataset indices of the points the codes came from (drives leave-one-out during
                training; ignored by priors that have no use for it).

        Returns:
            [B] log-densities.
        """
        raise NotImplementedError

    def sample(
        self, n: int, encoder: Encoder, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Draw n codes from the prior: [n, d].

        ``temperature`` multiplies the standard deviation of the Gaussian noise (of N(0, I), of the
        picked mixture component, or of the kernel around the picked exemplar's code); 0 returns the
        component means. The component choice does not depend on it, so with the same generator state
        ``sample(T) - sample(0) == T * (sample(1) - sample(0))``.
        """
        raise NotImplementedError

    def refresh(self, encoder: Encoder) -> None:
        """Recompute whatever the prior caches from the encoder (called by the training loop and by
        evaluation, never by a loss). Default: nothing to cache."""

    def batch_scorer(self, mean: Tensor, encoder: Encoder) -> Callable[[Tensor], Tensor]:
        """A function scoring codes drawn around a batch of test points, for importance sampling.

        Args:
            mean: [B, d] encoder means of the batch's test points.
            encoder: the VAE's encoder.

        Returns:
            f(z [S, B, d]) -> log p(z) [S, B], where column b holds codes drawn for test point b. The default
            scores every code with ``log_prob``; the exemplar prior may restrict each column to the
            exemplars near its test point (a lower bound).
        """

        def score(z: Tensor) -> Tensor:
            return self.log_prob(z.reshape(-1, z.shape[-1]), encoder).reshape(z.shape[:-1])

        return score

    def batch_bounds(self, mean: Tensor, encoder: Encoder) -> Callable[..., tuple[Tensor, Tensor]]:
        """Like ``batch_scorer``, but f(z [S, B, d], log_weight [S, B] | None) -> (lower, upper) bounds on
        log p(z) [S, B]. ``log_weight`` is the rest of each importance log-weight (log p(x, ...|z) - log q),
        which a bound may use to spend its work where the estimate needs it. A prior scored exactly returns
        its value twice; the truncated exemplar prior returns a certified interval."""
        score = self.batch_scorer(mean, encoder)

        def bounds(z: Tensor, log_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
            value = score(z)
            return value, value

        return bounds

    def variation_kernel(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        """Distribution used to draw variations of an input whose q(z|x) is N(mean, exp(log_var)).

        The exemplar prior overrides this with its own kernel r(z|x) = N(mu(x), sigma^2 I); for the other
        priors a variation is a draw from q(z|x).
        """
        return mean, log_var

    def extra_metrics(self) -> dict[str, Any]:
        """Scalars worth logging each epoch (e.g. the exemplar prior's learned log-variance)."""
        return {}


def randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise with the dtype and device of ``like``."""
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)
