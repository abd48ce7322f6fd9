"""Generation: prior samples, exemplar-based variations, cyclic chains and interpolation."""

from exemplar_vae.generation.sample import (
    check_temperature,
    cyclic_chain,
    exemplar_grid,
    interpolate,
    interpolation_grid,
    prior_sample_grid,
)

__all__ = [
    "check_temperature",
    "cyclic_chain",
    "exemplar_grid",
    "interpolate",
    "interpolation_grid",
    "prior_sample_grid",
]
