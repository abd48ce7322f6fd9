"""VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k) over K learned pseudo-inputs.

Optional pseudo-input subsampling (the authors' remark that exemplar subsampling in a VampPrior acts like
fewer pseudo-inputs): in training mode every step uses a fresh uniformly random subset S of K' of the K
pseudo-inputs, p_S(z) = (1/K') sum_{k in S} q(z | u_k), drawn like the exemplar prior's subset (the first
K' of a keyed permutation, ``priors.subset.KeyedSubset``, keyed by one draw from the step's generator, so
every process of a distributed run draws the same subset). Only the K' chosen pseudo-inputs are encoded.
In evaluation mode the prior is the full mixture over all K.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exemplar_vae.errors import ConfigError
from exemplar_vae.interfaces import Encoder
from exemplar_vae.priors.base import Prior
from exemplar_vae.priors.mixtures import diag_mixture_log_prob, sample_diag_mixture
from exemplar_vae.priors.subset import KeyedSubset


def check_subsample(subsample: int | None, components: int) -> None:
    """The VampPrior's subsample size: None (all K pseudo-inputs every step) or 1 <= K' <= K.

    Raises:
        ConfigError: naming the flag and the values.
    """
    if subsample is None:
        return
    if isinstance(subsample, bool) or not isinstance(subsample, int) or not 1 <= subsample <= components:
        raise ConfigError(
            f"--subsample K'={subsample} must be an integer between 1 and the pseudo-inputs "
            f"--components K={components}"
        )


class VampPrior(Prior):
    """Mixture of the encoder's posteriors at K pseudo-inputs u_k in [0, 1]^D.

    The pseudo-inputs are a free [K, D] parameter passed through Hardtanh(0, 1), as the paper's code does
    with a bias-free linear layer on one-hot rows. Initialised N(0.05, 0.01) (the VampPrior paper's value).

    Args:
        latent_dim: d.
        data_dim: D.
        components: K (500 for MNIST and Fashion-MNIST in the paper).
        subsample: K', pseudo-inputs drawn per training step (a fresh random subset, weight 1/K' each);
            None: all K every step (the VampPrior paper). Evaluation always uses all K.
    """

    def __init__(self, latent_dim: int, data_dim: int, components: int, subsample: int | None = None) -> None:
        super().__init__(latent_dim)
        check_subsample(subsample, components)
        self.subsample = subsample
        self.pseudo_raw = nn.Parameter(0.05 + 0.01 * torch.randn(components, data_dim))

    @property
    def components(self) -> int:
        """K, the number of pseudo-inputs."""
        return self.pseudo_raw.shape[0]

    def pseudo_inputs(self) -> Tensor:
        """u_k in [0, 1]: [K, D]."""
        return F.hardtanh(self.pseudo_raw, 0.0, 1.0)

    def draw_subset(self, generator: torch.Generator | None = None) -> KeyedSubset:
        """K' distinct pseudo-inputs, uniformly at random (``KeyedSubset``; its key is one draw from
        ``generator``, torch's default CPU generator when None). Needs ``subsample`` set."""
        if self.subsample is None:
            raise ConfigError("this VampPrior has no --subsample size")
        g = generator if generator is not None else torch.default_generator
        return KeyedSubset.draw(self.components, self.subsample, g)

    @property
    def plan_reads_codes(self) -> bool:
        """Its plan draws pseudo-inputs and never looks at the codes (``Prior.plan_reads_codes``)."""
        return False

    def log_prob(
        self,
        z: Tensor,
        encoder: Encoder,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(z): the mixture over all K pseudo-inputs, or in training mode with ``subsample`` K' over a
        fresh subset of K' of them drawn from ``generator`` (weight 1/K' each): [B, d] -> [B]."""
        return self.planned_log_prob(z, encoder, index, self.plan(z, encoder, index, generator))

    def plan(
        self, z: Tensor | None, encoder: Encoder, index: Tensor | None, generator: torch.Generator | None
    ) -> Tensor | None:
        """In training mode with ``subsample``: the [K'] distinct pseudo-inputs of this step; else None."""
        if self.training and self.subsample is not None:
            return self.draw_subset(generator).members(self.pseudo_raw.device)  # [K'] distinct
        return None

    def planned_log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None, plan: Any) -> Tensor:
        """The mixture over the pseudo-inputs ``plan`` ([K'] ids; None: all K): [B, d] -> [B]."""
        if plan is not None:
            pseudo = F.hardtanh(self.pseudo_raw[plan], 0.0, 1.0)  # [K', D]: only these are encoded
        else:
            pseudo = self.pseudo_inputs()  # [K, D]
        means, log_vars = encoder(pseudo)  # [K or K', d] each
        return diag_mixture_log_prob(z, means, log_vars)  # [B], weight 1 / (number of components)

    @torch.no_grad()
    def sample(
        self, n: int, encoder: Encoder, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Pick a pseudo-input u_k (of all K), then z ~ q(z|u_k) with its standard deviation times T: [n, d]."""
        means, log_vars = encoder(self.pseudo_inputs())  # [K, d] each
        return sample_diag_mixture(n, means, log_vars, generator, temperature)

    def extra_repr(self) -> str:
        return f"components={self.components}, subsample={self.subsample}"
