"""Downstream uses of a trained model: generative data augmentation and the classifier that uses it."""

from exemplar_vae.downstream.augment import (
    OUTPUTS,
    AugmentedDataset,
    ExemplarAugmenter,
    augment_run,
    round_to_8bit,
)
from exemplar_vae.downstream.classifier import (
    build_classifier,
    classification_table,
    compare_augmentation,
    train_classifier,
)

__all__ = [
    "OUTPUTS",
    "AugmentedDataset",
    "ExemplarAugmenter",
    "augment_run",
    "build_classifier",
    "classification_table",
    "compare_augmentation",
    "round_to_8bit",
    "train_classifier",
]
