"""Evaluation: density estimation on held-out data."""

from exemplar_vae.evaluation.density import evaluate_density

__all__ = ["evaluate_density"]

from exemplar_vae.evaluation.representation import (  # noqa: E402
    DEFAULT_KS,
    encode_codes,
    knn_probe,
    majority_vote,
    probe_table,
    tsne_plot,
)

__all__ += ["DEFAULT_KS", "encode_codes", "knn_probe", "majority_vote", "probe_table", "tsne_plot"]

from exemplar_vae.evaluation.classifier import (  # noqa: E402
    build_classifier,
    classification_table,
    compare_augmentation,
    train_classifier,
)

__all__ += ["build_classifier", "classification_table", "compare_augmentation", "train_classifier"]
