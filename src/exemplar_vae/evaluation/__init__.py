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
