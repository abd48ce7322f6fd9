"""The Prior interface every prior implements.

A prior is an ``nn.Module`` holding its own parameters. It is handed the encoder when it needs one (the
VampPrior encodes pseudo-inputs, the exemplar prior encodes exemplars), so networks never know about
priors. ``self.training`` selects the training-time form (for the exemplar prior: leave-one-out and
exemplar subsampling) and the evaluation form (the full prior).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import ConfigError
from exemplar_vae.interfaces import Encoder


class KernelMixture(NamedTuple):
    """p(z) = 1/N sum_n N(z; centers[n], exp(log_var) I): what evaluation needs of a kernel prior."""

    centers: Tensor  # [N, d] component means (the exemplar prior: the cached exemplar codes)
    log_var: Tensor  # [] the shared log sigma^2 (detached)


class Prior(nn.Module):
    """Base class: log_prob(z) -> [B], sample(n) -> [n, d], an explicit refresh hook, and what evaluation
    and generation may ask of any prior (``kernel_mixture``, ``variation_kernel``, ``extra_metrics``)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(
        self,
        z: Tensor,
        encoder: Encoder,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(z) in nats.

        Args:
            z: [B, d] latent codes.
            encoder: the VAE's encoder (used by priors built from encoded inputs).
            index: [B] dataset indices of the points the codes came from (drives leave-one-out during
                training; ignored by priors that have no use for it).
            generator: randomness of the training-time form (the exemplar prior's subset); None: torch's
                global generator.

        Returns:
            [B] log-densities.
        """
        raise NotImplementedError

    @property
    def plan_reads_codes(self) -> bool:
        """Whether ``plan`` looks at the codes z (retrieval, the mass-carrying exemplars); when it does not,
        the compiled step skips encoding the batch for it and passes None. Default: whether the prior
        overrides ``plan`` (the default plan reads nothing; for one of its own, True is the safe answer);
        a prior whose own plan never looks at z says False."""
        return type(self).plan is not Prior.plan

    def plan(
        self, z: Tensor | None, encoder: Encoder, index: Tensor | None, generator: torch.Generator | None
    ) -> Any:
        """The training step's random and data-dependent choices, made without gradient: a subset of
        exemplars or pseudo-inputs drawn from ``generator``, neighbours retrieved for the codes ``z`` [B, d]
        (detached), the inputs they need gathered. ``planned_log_prob`` then computes log p(z) as a pure
        tensor function of z, the networks and the plan, which ``torch.compile`` can fuse
        (``objectives.elbo.CompiledElbo``). Drawn in the order ``log_prob`` draws, so both give the same
        value. Default: nothing to choose (None). A prior whose training form draws randomness must
        override both methods (the default ``planned_log_prob`` calls ``log_prob`` without a generator)."""
        return None

    def planned_log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None, plan: Any) -> Tensor:
        """log p(z) [B] with the choices of ``plan`` (``self.plan``); default: ``log_prob``, for priors
        whose training form draws nothing."""
        return self.log_prob(z, encoder, index)

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

    def kernel_mixture(self) -> KernelMixture | None:
        """The evaluation-time prior as an equal-weight mixture of isotropic Gaussian kernels, if it is one.

        Evaluation uses it to truncate the mixture to the components near each test point
        (``evaluation.truncation``) and to bound what was dropped (``evaluation.certify``). None (the
        default): the prior is scored with ``log_prob``.
        """
        return None

    def exemplar_set(self) -> ExemplarStore | None:
        """The [N, D] inputs the prior is built on (the exemplar prior's exemplars); None for a prior
        without an exemplar set."""
        return None

    def set_exemplars(self, exemplars: Tensor | ExemplarStore) -> None:
        """Replace the prior's exemplar set (add new data without retraining). Only a prior built on
        exemplars has one; the others refuse."""
        raise ConfigError(f"the {type(self).__name__} has no exemplar set to replace")

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
