"""Generation: prior samples, exemplar-based variations, cyclic chains and interpolation; samples from a
chosen exemplar subset, and the exemplars that explain an input."""

from exemplar_vae.generation.explain import (
    Explanation,
    explain,
    explanation_grid,
    read_images,
    top_responsibilities,
)
from exemplar_vae.generation.sample import (
    ExemplarDraw,
    check_temperature,
    cyclic_chain,
    draw_exemplar_codes,
    exemplar_grid,
    exemplars_of_class,
    interpolate,
    interpolation_grid,
    prior_sample_grid,
    sample_from_exemplars,
)

__all__ = [
    "ExemplarDraw",
    "Explanation",
    "check_temperature",
    "cyclic_chain",
    "draw_exemplar_codes",
    "exemplar_grid",
    "exemplars_of_class",
    "explain",
    "explanation_grid",
    "interpolate",
    "interpolation_grid",
    "prior_sample_grid",
    "read_images",
    "sample_from_exemplars",
    "top_responsibilities",
]
