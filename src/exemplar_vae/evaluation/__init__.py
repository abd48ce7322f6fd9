"""Evaluation: density estimation on held-out data (truncated and certified) and the representation probe."""

from exemplar_vae.evaluation.density import evaluate_density, point_log_likelihoods
from exemplar_vae.evaluation.representation import (
    DEFAULT_KS,
    encode_codes,
    knn_probe,
    majority_vote,
    probe_table,
    tsne_plot,
)
from exemplar_vae.evaluation.scoring import PriorScoring

__all__ = [
    "DEFAULT_KS",
    "PriorScoring",
    "encode_codes",
    "evaluate_density",
    "knn_probe",
    "majority_vote",
    "point_log_likelihoods",
    "probe_table",
    "tsne_plot",
]
