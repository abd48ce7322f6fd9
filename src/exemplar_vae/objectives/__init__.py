"""Objectives: the ELBO and the importance-sampled log-likelihood."""

from exemplar_vae.objectives.elbo import ElboTerms, elbo_terms
from exemplar_vae.objectives.likelihood import (
    LikelihoodEstimate,
    importance_sampled_log_likelihood,
    log_weights,
)

__all__ = [
    "ElboTerms",
    "LikelihoodEstimate",
    "elbo_terms",
    "importance_sampled_log_likelihood",
    "log_weights",
]
