"""exemplar-vae: Exemplar VAEs (Norouzi, Fleet, Norouzi, NeurIPS 2020) as a library and a CLI.

Public API::

    from exemplar_vae import RunConfig, EvalConfig, load_dataset, train, load_run, evaluate_run, evaluate_density
"""

from exemplar_vae.config import DataConfig, EvalConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.data import DataSplits, load_dataset
from exemplar_vae.errors import CheckpointError, ConfigError, DataError, ExemplarVAEError
from exemplar_vae.evaluation import evaluate_density
from exemplar_vae.models import VAE, build_vae
from exemplar_vae.objectives import elbo_terms, importance_sampled_log_likelihood
from exemplar_vae.pipeline import evaluate_run, generate_pictures, probe_run, train
from exemplar_vae.pretrained import from_pretrained
from exemplar_vae.priors import PRIORS, build_prior
from exemplar_vae.runs import build_model, load_run, load_run_config, prepare
from exemplar_vae.validation import validate, validate_eval

__version__ = "0.1.0"  # the one place for the version: pyproject.toml reads it (setuptools dynamic attr)

__all__ = [
    "PRIORS",
    "VAE",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSplits",
    "EvalConfig",
    "ExemplarVAEError",
    "ModelConfig",
    "PriorConfig",
    "RunConfig",
    "TrainConfig",
    "build_model",
    "build_prior",
    "build_vae",
    "elbo_terms",
    "evaluate_density",
    "evaluate_run",
    "from_pretrained",
    "generate_pictures",
    "importance_sampled_log_likelihood",
    "load_dataset",
    "load_run",
    "load_run_config",
    "prepare",
    "probe_run",
    "train",
    "validate",
    "validate_eval",
]
