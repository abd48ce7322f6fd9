"""Configuration: one frozen dataclass per component, validated, round-tripped through JSON.

Defaults follow the paper's code (sajadn/Exemplar-VAE) for the MLP VAE: gated dense layers 2x300,
latent size 40, batch 100, learning rate 5e-4, KL warm-up over 100 epochs, early stopping after 50
epochs without a better validation loss, M = N/2 exemplars per step and k = 10 retrieved neighbours.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exemplar_vae.errors import ConfigError

PRIOR_NAMES = ("gaussian", "vampprior", "mog", "exemplar")
OPTIMIZER_NAMES = ("adam", "adamnormgrad")
ARCH_NAMES = ("mlp", "hvae", "convhvae")
AMP_NAMES = ("off", "bf16", "fp16")
SEARCH_NAMES = ("exact", "ivf")


@dataclass(frozen=True)
class DataConfig:
    """Which data to train on.

    Attributes:
        dataset: "fashion-mnist", "mnist", "digits", "omniglot", "celeba", or a path to an .npz
            file or to a folder of images.
        data_dir: folder holding the dataset's standard files (None: the default search path).
        train_size: keep only the first N training images (None: all of them).
        binarize: None: the dataset's default (binary datasets and the MNIST family are binarised
            dynamically; 8-bit photos like CelebA are modelled as 8-bit values with a discretised
            logistic likelihood); True/False forces it.
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_size: int | None = None
    binarize: bool | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The networks.

    Attributes:
        arch: network family: "mlp" (the paper's VAE, gated dense layers), "hvae" (two stochastic
            layers z1, z2, gated dense) or "convhvae" (two stochastic layers, gated convolutions); the
            prior always scores the top layer.
        latent_dim: size of z (of z1 and of z2 in the hierarchical models; 40 in the paper).
        hidden: width of the hidden layers (300 in the paper).
    """

    arch: str = "mlp"
    latent_dim: int = 40
    hidden: int = 300


@dataclass(frozen=True)
class PriorConfig:
    """The prior p(z).

    Attributes:
        name: one of "gaussian", "vampprior", "mog", "exemplar".
        components: K pseudo-inputs (VampPrior) or mixture components (MoG); 500 as in the paper.
        exemplars: M, the exemplars drawn for every minibatch (exemplar prior); None means N/2.
        knn: k nearest exemplars for retrieval augmented training; 0 means the exact prior over all M.
        leave_one_out: exclude a training point from its own prior (exemplar prior).
        search: how retrieval finds the k neighbours during training: "exact" (flat search of the
            M-subset) or "ivf" (an approximate faiss IVF index over all N codes rebuilt every epoch,
            over-fetching to stay inside the subset; recall logged as ``search_recall``).
        nprobe: inverted lists visited per query with ``search="ivf"``.
    """

    name: str = "exemplar"
    components: int = 500
    exemplars: int | None = None
    knn: int = 10
    leave_one_out: bool = True
    search: str = "exact"
    nprobe: int = 16


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation.

    Attributes:
        epochs: maximum number of epochs (the paper: 2000, ended by early stopping).
        warmup: epochs of linear KL warm-up (beta = min(1, epoch / warmup)); 0 disables it.
        early_stopping: stop after this many epochs past warm-up without a better validation loss
            (0 disables it).
        batch_size: minibatch size.
        lr: learning rate.
        optimizer: "adamnormgrad" (the paper's code: each parameter's gradient divided by its L2 norm,
            then Adam) or "adam".
        seed: seeds the initialisation, the data order, the binarisation and the exemplar draws.
        device: "cpu", "cuda", "cuda:1", or "auto" (CUDA when available).
        amp: mixed precision for the training steps: "off", "bf16" or "fp16" (with a gradient scaler);
            validation and evaluation always run in float32.
    """

    epochs: int = 2000
    warmup: int = 100
    early_stopping: int = 50
    batch_size: int = 100
    lr: float = 5e-4
    optimizer: str = "adamnormgrad"
    seed: int = 14
    device: str = "auto"
    amp: str = "off"


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved as RUN_DIR/config.json."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a dict such as a parsed config.json; unknown keys are an error."""
        parts = {"data": DataConfig, "model": ModelConfig, "prior": PriorConfig, "train": TrainConfig}
        unknown = set(d) - set(parts)
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(parts)}")
        kwargs = {}
        for key, klass in parts.items():
            section = d.get(key, {})
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(section) - names
            if bad:
                raise ConfigError(f"unknown keys {sorted(bad)} in config section '{key}'")
            kwargs[key] = klass(**section)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        from exemplar_vae.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"no config file at {path}") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
        return cls.from_dict(d)


def validate(config: RunConfig, num_train: int | None = None) -> RunConfig:
    """Check every value and resolve the data-dependent defaults (M = N/2).

    Args:
        config: the requested configuration.
        num_train: N, the number of training points, once the data is loaded.

    Returns:
        The configuration with ``prior.exemplars`` resolved when ``num_train`` is given.

    Raises:
        ConfigError: naming the offending value.
    """
    m, p, t = config.model, config.prior, config.train
    if m.arch not in ARCH_NAMES:
        raise ConfigError(f"unknown architecture '{m.arch}'; valid: {', '.join(ARCH_NAMES)}")
    if p.name not in PRIOR_NAMES:
        raise ConfigError(f"unknown prior '{p.name}'; valid: {', '.join(PRIOR_NAMES)}")
    if t.amp not in AMP_NAMES:
        raise ConfigError(f"unknown mixed precision '{t.amp}' (--amp); valid: {', '.join(AMP_NAMES)}")
    if t.optimizer not in OPTIMIZER_NAMES:
        raise ConfigError(f"unknown optimizer '{t.optimizer}'; valid: {', '.join(OPTIMIZER_NAMES)}")
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
    if not t.lr > 0:
        raise ConfigError(f"learning rate (--lr) must be positive, got {t.lr}")
    if t.warmup < 0 or t.early_stopping < 0:
        raise ConfigError(
            f"--warmup and --early-stopping must be >= 0, got {t.warmup} and {t.early_stopping}"
        )
    if p.search not in SEARCH_NAMES:
        raise ConfigError(f"--search must be one of {', '.join(SEARCH_NAMES)}, got '{p.search}'")
    if p.nprobe < 1:
        raise ConfigError(f"--nprobe must be at least 1, got {p.nprobe}")
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
    if num_train is None or p.name != "exemplar":
        return config
    if num_train < 2:
        raise ConfigError(f"the exemplar prior needs at least 2 training points, got {num_train}")
    exemplars = p.exemplars if p.exemplars is not None else max(1, num_train // 2)
    if exemplars > num_train:
        raise ConfigError(f"--exemplars M={exemplars} is larger than the training set N={num_train}")
    if p.leave_one_out and exemplars < 2:
        raise ConfigError(f"leave-one-out needs at least 2 exemplars per step, got --exemplars M={exemplars}")
    if p.knn > exemplars:
        raise ConfigError(f"--knn k={p.knn} is larger than the exemplars per step M={exemplars}")
    return dataclasses.replace(config, prior=dataclasses.replace(p, exemplars=exemplars))
