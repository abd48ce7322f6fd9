"""Evaluation: density estimation on held-out data."""

from exemplar_vae.evaluation.density import evaluate_density

__all__ = ["evaluate_density"]
