"""Every rule a configuration must obey, in one place.

Names are checked against the registries that build the objects (``PRIORS``, ``ARCHITECTURES``,
``OPTIMIZER_NAMES``, ``AMP_DTYPES``, ``SEARCH_NAMES``), and each component's own rule function is called
rather than restated (``check_exemplar_counts``, ``check_search``, ``check_subsample``), so the CLI, the
Python API and the objects themselves refuse the same values with the same message.
"""

from __future__ import annotations

import dataclasses
import math

from exemplar_vae.compiling import check_compile_mode
from exemplar_vae.config import EvalConfig, PriorConfig, RunConfig
from exemplar_vae.data.formats import available_memory
from exemplar_vae.errors import ConfigError
from exemplar_vae.models.build import ARCHITECTURES
from exemplar_vae.priors import PRIORS
from exemplar_vae.priors.exemplar import check_exemplar_counts, check_grad_tolerance
from exemplar_vae.priors.vampprior import check_subsample
from exemplar_vae.retrieval import check_search
from exemplar_vae.training.loop import AMP_DTYPES, DIVERGENCE_POLICIES
from exemplar_vae.training.optim import OPTIMIZER_NAMES

SPLITS = ("test", "val")


def _check_name(what: str, value: str, valid: object) -> None:
    names = list(valid)  # type: ignore[call-overload]
    if value not in names:
        raise ConfigError(f"unknown {what} '{value}'; valid: {', '.join(names)}")


def parameter_bytes(config: RunConfig, data_dim: int) -> int:
    """An upper estimate of the memory the networks and their training state take (weights, gradients
    and Adam's two moments, float32), from the sizes alone: checked before anything is allocated."""
    m = config.model
    h, d = m.hidden, m.latent_dim
    mlp = (
        2 * 2 * (data_dim * h + h * h) + 4 * h * d + 2 * (d * h + h * h) * 2 + h * data_dim * 2
    )  # gated: 2 maps
    factor = {"mlp": 1, "hvae": 3, "convhvae": 3}.get(m.arch, 3)
    pseudo = config.prior.components * data_dim if config.prior.name == "vampprior" else 0
    return 4 * 4 * (factor * mlp + pseudo)


def validate(config: RunConfig, num_train: int | None = None, data_dim: int | None = None) -> RunConfig:
    """Check every value and resolve the data-dependent defaults (M = N/2).

    Args:
        config: the requested configuration.
        num_train: N, the number of training points, once the data is loaded.
        data_dim: D, the values per example, once the data is loaded (sizes the networks' memory check).

    Returns:
        The configuration with ``prior.exemplars`` resolved when ``num_train`` is given.

    Raises:
        ConfigError: naming the offending value.
    """
    m, p, t = config.model, config.prior, config.train
    _check_name("architecture", m.arch, ARCHITECTURES)
    _check_name("prior", p.name, PRIORS)
    _check_name("mixed precision (--amp)", t.amp, AMP_DTYPES)
    _check_name("optimizer", t.optimizer, OPTIMIZER_NAMES)
    _check_name("divergence policy (--on-divergence)", t.divergence, DIVERGENCE_POLICIES)
    check_compile_mode(t.compile)
    positive = {
        "latent dimension (--latent-dim)": m.latent_dim,
        "hidden width (--hidden)": m.hidden,
        "components (--components)": p.components,
        "epochs (--epochs)": t.epochs,
        "batch size (--batch-size)": t.batch_size,
    }
    for what, value in positive.items():
        if value < 1:
            raise ConfigError(f"{what} must be at least 1, got {value}")
    if not 0 <= t.seed < 2**63:
        raise ConfigError(f"--seed must be between 0 and 2**63 - 1, got {t.seed}")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {t.max_steps}")
    if not 0 < t.lr < math.inf:
        raise ConfigError(f"learning rate (--lr) must be positive, got {t.lr}")
    if t.warmup < 0 or t.early_stopping < 0:
        raise ConfigError(
            f"--warmup and --early-stopping must be >= 0, got {t.warmup} and {t.early_stopping}"
        )
    if p.subsample is not None and p.name != "vampprior":
        raise ConfigError(
            f"--subsample K' is the VampPrior's pseudo-input subsampling; the prior is '{p.name}'"
        )
    check_subsample(p.subsample, p.components)
    if p.grad_tolerance is not None and p.name != "exemplar":
        raise ConfigError(
            f"--grad-tolerance is the exact exemplar prior's gradient option; the prior is '{p.name}'"
        )
    check_grad_tolerance(p.grad_tolerance, p.knn)
    check_search(p.search, p.nprobe)
    if p.search == "exact" and p.nprobe != PriorConfig.nprobe:
        raise ConfigError(
            f"--nprobe {p.nprobe} applies to the approximate search (--search ivf); the exact search probes "
            "every code"
        )
    if p.search == "ivf" and p.name != "exemplar":
        raise ConfigError(f"--search ivf is the exemplar prior's retrieval search; the prior is '{p.name}'")
    if p.search == "ivf" and p.knn == 0:
        raise ConfigError(
            "--search ivf applies to retrieval (--knn > 0); the exact prior (--knn 0) searches nothing"
        )
    if p.knn < 0:
        raise ConfigError(f"--knn must be >= 0 (0 = exact prior), got {p.knn}")
    if p.exemplars is not None and p.exemplars < 1:
        raise ConfigError(f"--exemplars (M) must be at least 1, got {p.exemplars}")
    if data_dim is not None:
        need, have = parameter_bytes(config, data_dim), available_memory()
        if have is not None and need > have:
            raise ConfigError(
                f"the networks would need about {need / 2**30:.1f} GiB (--hidden {m.hidden}, --latent-dim "
                f"{m.latent_dim}, D = {data_dim}) but {have / 2**30:.1f} GiB are available"
            )
    if num_train is None or p.name != "exemplar":
        return config
    if num_train < 2:
        raise ConfigError(f"the exemplar prior needs at least 2 training points, got {num_train}")
    exemplars = p.exemplars if p.exemplars is not None else max(1, num_train // 2)
    check_exemplar_counts(num_train, exemplars, p.knn)
    if p.leave_one_out and exemplars < 2:
        raise ConfigError(f"leave-one-out needs at least 2 exemplars per step, got --exemplars M={exemplars}")
    return dataclasses.replace(config, prior=dataclasses.replace(p, exemplars=exemplars))


def validate_eval(config: EvalConfig) -> EvalConfig:
    """Check an evaluation's settings before any model is loaded.

    Raises:
        ConfigError: naming the flag and the value.
    """
    _check_name("split (--split)", config.split, SPLITS)
    check_compile_mode(config.compile)
    if config.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {config.samples}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.limit is not None and config.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {config.limit}")
    if config.candidates is not None and config.candidates < 1:
        raise ConfigError(f"--candidates must be at least 1, got {config.candidates}")
    if config.check_exact < 0:
        raise ConfigError(f"--check-exact must be >= 0, got {config.check_exact}")
    if not config.tolerance > 0:
        raise ConfigError(f"--certify-tolerance must be positive, got {config.tolerance}")
    if not 0 <= config.budget <= 1:
        raise ConfigError(f"--certify-budget must be between 0 and 1 (a fraction of N), got {config.budget}")
    return config
