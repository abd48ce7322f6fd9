"""Configuration: one frozen dataclass per component, round-tripped through JSON.

The rules a configuration must obey (names from the registries, ranges, what depends on the data) are
checked in one place, ``exemplar_vae.validation``.

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
from exemplar_vae.io import atomic_write_json

_SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_types(klass: type, values: dict[str, Any], section: str) -> None:
    """Each value of ``values`` has the type its field of ``klass`` declares (``int``, ``float``,
    ``bool``, ``str``, optionally ``| None``): ``true`` is not an integer, ``"false"`` not a boolean,
    ``2.5`` not an integer, and a float field takes an integer.

    Raises:
        ConfigError: naming the section, the key, the value and the expected type.
    """
    declared = {f.name: str(f.type) for f in dataclasses.fields(klass)}  # e.g. "int | None"
    for key, value in values.items():
        kinds = [k.strip() for k in declared[key].split("|")]
        if value is None and "None" in kinds:
            continue
        ok = any(
            isinstance(value, _SCALARS[k]) and not (isinstance(value, bool) and k != "bool")
            for k in kinds
            if k in _SCALARS
        )
        if not ok:
            expected = " or ".join("null" if k == "None" else k for k in kinds)
            raise ConfigError(f"config {section}.{key} must be {expected}, got {json.dumps(value)[:60]}")


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
        subsample: VampPrior only: K', the pseudo-inputs drawn per training step (a fresh random subset
            of the K, weight 1/K' each; evaluation uses all K); None uses all K every step.
        grad_tolerance: exact exemplar prior (knn 0) only: None (default) encodes all M exemplars with
            gradient every step; tol in [0, 1) encodes them without gradient and re-encodes with gradient
            only the exemplars carrying all but at most tol of each point's responsibility (the value and
            the gradients for z and log sigma^2 stay exact; the encoder gradient through the dropped
            exemplars is left out; logged as ``grad_neglected_mass`` and ``grad_exemplars``).
    """

    name: str = "exemplar"
    components: int = 500
    exemplars: int | None = None
    knn: int = 10
    leave_one_out: bool = True
    search: str = "exact"
    nprobe: int = 16
    subsample: int | None = None
    grad_tolerance: float | None = None


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
        max_steps: stop after this many optimiser steps in all (None: no limit); a run stopped inside an
            epoch saves its last checkpoint there and resumes from the next step.
        divergence: what a diverging run does (``training.loop.DivergenceWatch``: the training loss above
            10 times its lowest 5-step mean, and 10 nats above it, on 5 steps in a row): "stop" (raise
            ``RunFailed``; the CLI exits 1) or "warn" (log a warning and go on). A loss that is not
            finite stops the run either way.
        compile: "off" or "on" (the step's loss, forward and backward, through ``torch.compile``:
            ``objectives.elbo.CompiledElbo``); without a C++ compiler it runs eagerly.
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
    max_steps: int | None = None
    divergence: str = "stop"
    compile: str = "off"


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
        """Build from a dict such as a parsed config.json; unknown keys and values of the wrong type are
        an error (``check_types``: booleans are booleans, integers integers)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object of sections, got {type(d).__name__}")
        parts = {"data": DataConfig, "model": ModelConfig, "prior": PriorConfig, "train": TrainConfig}
        unknown = set(d) - set(parts)
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(parts)}")
        kwargs = {}
        for key, klass in parts.items():
            section = d.get(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"config section '{key}' must be an object, got {type(section).__name__}")
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(section) - names
            if bad:
                raise ConfigError(f"unknown keys {sorted(bad)} in config section '{key}'")
            check_types(klass, section, key)
            kwargs[key] = klass(**section)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"no config file at {path}") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
        except RecursionError as e:
            raise ConfigError(f"config file {path} is nested too deeply to be a config") from e
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from e
        return cls.from_dict(d)


@dataclass(frozen=True)
class EvalConfig:
    """How a trained model is evaluated (``evaluate``): importance-sampled log-likelihood and ELBO.

    Attributes:
        samples: S importance samples per test point (the paper: 5000).
        batch_size: test points scored together.
        candidates: exemplar prior only: score each test point against the K exemplars whose codes are
            nearest its encoder mean (a lower bound on the full-prior estimate, far cheaper); None scores
            every exemplar.
        check_exact: with truncation, also score the first n points with the full prior on the same
            samples and report the truncation error ("truncation_check"); 0 skips it.
        escalate: when that check finds an error above ``tolerance`` (a kernel too wide for the
            candidates to hold the mass), score again with 4x the candidates until the check is within the
            tolerance, or with the full prior past N/4 candidates, and report what was used ("escalated");
            False keeps the first truncated value.
        certify: with truncation, bound every point's truncation error from above (see
            ``evaluation.certify``).
        tolerance: the certified bound to reach per test point, nats.
        budget: with ``certify``, at most this fraction of the N exemplars is evaluated exactly per point.
        seed: seeds the importance samples (batch b draws from its own generator, so any batch can be
            re-scored on the same samples).
        split: "test" or "val".
        limit: score only the first n points of the split (None: all).
        compile: "on": the decoder's part of the weights through ``torch.compile`` (``compiling``);
            "off" (default): eager.
    """

    samples: int = 5000
    batch_size: int = 100
    candidates: int | None = 1000
    check_exact: int = 10
    escalate: bool = True
    certify: bool = False
    tolerance: float = 0.01
    budget: float = 0.5
    seed: int = 0
    split: str = "test"
    limit: int | None = None
    compile: str = "off"
