"""Generation: prior samples and exemplar-based variations."""

from exemplar_vae.generation.sample import exemplar_grid, prior_sample_grid

__all__ = ["exemplar_grid", "prior_sample_grid"]

from exemplar_vae.generation.sample import (  # noqa: E402
    check_temperature,
    cyclic_chain,
    interpolate,
    interpolation_grid,
)

__all__ += ["check_temperature", "cyclic_chain", "interpolate", "interpolation_grid"]

from exemplar_vae.generation.augment import (  # noqa: E402
    OUTPUTS,
    AugmentedDataset,
    ExemplarAugmenter,
    augment_run,
    round_to_8bit,
)

__all__ += ["OUTPUTS", "AugmentedDataset", "ExemplarAugmenter", "augment_run", "round_to_8bit"]
