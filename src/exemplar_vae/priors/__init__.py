"""Priors p(z), by name: "gaussian", "vampprior", "mog", "exemplar"."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from exemplar_vae.config import PriorConfig
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import ConfigError
from exemplar_vae.priors.base import Prior
from exemplar_vae.priors.exemplar import ExemplarPrior
from exemplar_vae.priors.gaussian import GaussianPrior
from exemplar_vae.priors.mog import MoGPrior
from exemplar_vae.priors.vampprior import VampPrior

PriorFactory = Callable[[PriorConfig, int, Tensor | ExemplarStore], Prior]

PRIORS: dict[str, PriorFactory] = {
    "gaussian": lambda cfg, latent_dim, exemplars: GaussianPrior(latent_dim),
    "vampprior": lambda cfg, latent_dim, exemplars: VampPrior(
        latent_dim, exemplars.shape[1], cfg.components, cfg.subsample
    ),
    "mog": lambda cfg, latent_dim, exemplars: MoGPrior(latent_dim, cfg.components),
    "exemplar": lambda cfg, latent_dim, exemplars: ExemplarPrior(
        exemplars,
        latent_dim,
        cfg.exemplars,
        cfg.knn,
        cfg.leave_one_out,
        search=cfg.search,
        nprobe=cfg.nprobe,
        grad_tolerance=cfg.grad_tolerance,
    ),
}


def build_prior(config: PriorConfig, latent_dim: int, exemplars: Tensor | ExemplarStore) -> Prior:
    """Make the prior named in ``config``.

    Args:
        config: the prior's configuration.
        latent_dim: d.
        exemplars: [N, D] training inputs (the exemplar set; its width D sizes the VampPrior's pseudo-inputs).
    """
    try:
        factory = PRIORS[config.name]
    except KeyError:
        raise ConfigError(f"unknown prior '{config.name}'; valid: {', '.join(PRIORS)}") from None
    return factory(config, latent_dim, exemplars)


__all__ = ["PRIORS", "ExemplarPrior", "GaussianPrior", "MoGPrior", "Prior", "VampPrior", "build_prior"]
