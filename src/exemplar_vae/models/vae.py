"""VAE = encoder + decoder + prior. No branching on the prior's type: the prior is an object.

Read with ``priors/exemplar.py`` (the prior) and ``objectives/elbo.py`` (the loss, which takes the model
as an argument: the model does not know its objective).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from exemplar_vae.config import RunConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.functional import full_precision, reparameterize
from exemplar_vae.interfaces import Encoder
from exemplar_vae.io import (
    PRETRAINED_CONFIG,
    PRETRAINED_EXEMPLARS,
    PRETRAINED_FORMAT_VERSION,
    PRETRAINED_WEIGHTS,
    atomic_write_bytes,
    atomic_write_json,
    package_version,
    sha256_bytes,
)
from exemplar_vae.models.observation import Bernoulli, Observation, observation_for
from exemplar_vae.priors import Prior


class LowerTerms(NamedTuple):
    """What a model adds below its top latent z (the one the prior scores), per example, in nats."""

    log_px: Tensor  # [...] log p(x | latents)
    kl_lower: Tensor  # [...] log q(z_lower | x, z) - log p(z_lower | z), one draw; 0 for a one-layer VAE


class StepNoise(NamedTuple):
    """The standard normal noise of one single-sample ELBO, drawn ahead (``VAE.draw_noise``) so that a
    batch split over processes uses the rows of one global draw."""

    z: Tensor  # [B, d] for the top latent
    lower: Tensor | None  # [B, d_lower] for the latents below it; None for a one-layer VAE


class VAE(nn.Module):
    """A VAE with one stochastic layer z and a pluggable prior p(z).

    The objectives see a model through ``encode`` (q of the top latent, the one the prior scores),
    ``lower_terms`` (everything below it) and ``prior``; ``HierarchicalVAE`` implements the same three.

    Args:
        encoder: x [B, D] -> (mean [B, d], log_var [B, d]), with a ``mean(x)`` method.
        decoder: z [B, d] -> observation parameters [B, num_params * D].
        prior: a ``Prior``.
        image_shape: (C, H, W) of one example, for pictures.
        observation: how data is scored given the decoder's output (default Bernoulli logits).
        config: the run's configuration the model was built from (``build_vae`` passes it), kept as
            ``self.config`` (a frozen ``RunConfig``) for ``save_pretrained``; None for a model put
            together by hand, which then cannot be saved as a self-contained folder.
    """

    encoder: Encoder
    decoder: nn.Module
    prior: Prior
    # importance sampling decodes at most this many codes at once (see objectives.likelihood): on a CPU
    # a few thousand rows keep the [rows, D] temporaries small enough to be reused rather than freshly
    # mapped on every chunk (docs/speed.md); a GPU gets larger chunks. Convolutional decoders lower both
    # to bound their memory (build.py).
    eval_rows: int = 4000
    eval_rows_accelerator: int = 32000
    # whether ``lower_terms`` draws latents of its own below z (the importance sampler gives them their
    # own random stream; see objectives.likelihood)
    lower_latents: bool = False

    def evaluation_rows(self, device: torch.device) -> int:
        """Codes decoded per chunk during importance sampling on ``device``."""
        return self.eval_rows if device.type == "cpu" else self.eval_rows_accelerator

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        prior: Prior,
        image_shape: tuple[int, ...],
        observation: Observation | None = None,
        config: RunConfig | None = None,
    ):
        super().__init__()
        self.encoder, self.decoder, self.prior = encoder, decoder, prior
        self.image_shape = tuple(image_shape)
        self.observation = observation if observation is not None else Bernoulli()
        if config is not None and not isinstance(config, RunConfig):
            raise TypeError(f"config must be a RunConfig or None, got {type(config).__name__}")
        self.config: RunConfig | None = config

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x): [B, D] -> (mean [B, d], log_var [B, d])."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """p(x|z): [B, d] -> observation parameters [B, num_params * D] (Bernoulli: logits)."""
        return self.decoder(z)

    def decode_mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The picture of top-level codes: [n, d] -> mean of p(x|z) [n, D], values in [0, 1]."""
        return self.observation.mean(self.decode(z))

    def draw_noise(self, batch: int, generator: torch.Generator | None = None) -> StepNoise:
        """The noise of ``batch`` single-sample ELBO terms, in the order the ELBO would draw it."""
        z = torch.randn((batch, self.latent_dim), device=self.device, generator=generator)
        return StepNoise(z, None)

    def lower_terms(
        self, x: Tensor, z: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> LowerTerms:
        """log p(x|z) for codes z [..., B, d] drawn for inputs x [B, D]: -> [..., B] (kl_lower = 0).
        ``generator`` and ``noise`` are for models with latents below z."""
        log_px = self.observation.log_prob(x, full_precision(self.decode(z)))
        return LowerTerms(log_px, torch.zeros_like(log_px))

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """Samples from the model, shown as decoder means (e.g. Bernoulli probabilities): [n, D].

        For the exemplar prior call ``prior.refresh(encoder)`` first (``load_run`` and the trainer do).

        Args:
            n: number of samples.
            generator: RNG for the prior's draws.
            temperature: multiplies the standard deviation of the prior's noise (see ``Prior.sample``);
                0 decodes the component means (for the exemplar prior: the exemplars' codes).
        """
        z = self.prior.sample(n, self.encoder, generator, temperature)  # [n, d]
        return self.decode_mean(z, generator)

    @torch.no_grad()
    def exemplar_variations(
        self, x: Tensor, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """n variations of each input: z ~ r(z|x) (the exemplar prior's kernel; q(z|x) for other priors),
        decoded to means of p(x|z).

        Args:
            x: [B, D] exemplars.
            n: variations per exemplar.
            temperature: multiplies the kernel's standard deviation.

        Returns:
            [B, n, D] values in [0, 1].
        """
        mean, log_var = self.prior.variation_kernel(*self.encode(x))  # [B, d] each
        eps = torch.randn(
            (x.shape[0], n, mean.shape[1]), device=x.device, dtype=mean.dtype, generator=generator
        )
        z = reparameterize(mean.unsqueeze(1), log_var.unsqueeze(1), temperature * eps)  # [B, n, d]
        return self.decode_mean(z.reshape(-1, z.shape[-1]), generator).reshape(x.shape[0], n, -1)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the model as a self-contained folder that ``exemplar_vae.from_pretrained`` loads on any
        machine, without the training data or the run folder.

        The folder holds (each file written atomically; config.json last, so a folder whose config.json
        is in place is complete):

        - ``model.safetensors``: the state dict (tensors only, no pickle);
        - ``exemplars.safetensors`` (only for a prior with an exemplar set): one tensor ``exemplars``
          [N, D], uint8 codes k (value k/255) when the set is held compactly, else float32 values;
        - ``config.json``: the run configuration (``RunConfig.to_dict()``) plus ``image_shape``,
          ``likelihood`` (the observation model's name), ``binary``, ``format_version`` (1),
          ``exemplar_vae_version`` and ``files`` (file name -> SHA-256 of its bytes).

        An existing folder is written over (a stale exemplars file is removed); other files are kept.

        Returns:
            The folder.

        Raises:
            ConfigError: the model has no run configuration (``config`` is None), its observation model
                is not one ``build_vae`` makes, or ``directory`` is an existing file.
        """
        from safetensors.torch import save as safetensors_bytes

        if self.config is None:
            raise ConfigError(
                "this model has no run configuration (model.config is None), so it cannot be saved as a "
                "self-contained folder; build it with build_vae (or load it with load_run)"
            )
        binary = self.observation.name == Bernoulli.name
        made = observation_for(binary)
        if type(made) is not type(self.observation) or vars(made) != vars(self.observation):
            raise ConfigError(
                f"the model's observation model {type(self.observation).__name__} "
                f"('{self.observation.name}') is not one build_vae makes, so the model cannot be rebuilt"
            )
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"{directory} exists and is not a folder")
        weights = {}
        for name, value in self.state_dict().items():
            if not isinstance(value, Tensor):
                raise ConfigError(f"state entry '{name}' is a {type(value).__name__}, not a tensor")
            weights[name] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        blobs = {PRETRAINED_WEIGHTS: safetensors_bytes(weights, metadata={"format": "pt"})}
        store = self.prior.exemplar_set()
        if store is not None:
            backing = store.to("cpu").backing  # [N, D] uint8 codes or float32 values
            assert isinstance(backing, Tensor)
            blobs[PRETRAINED_EXEMPLARS] = safetensors_bytes(
                {"exemplars": backing.contiguous()}, metadata={"format": "pt"}
            )
        for name, blob in blobs.items():
            atomic_write_bytes(directory / name, blob)
        if store is None:
            (directory / PRETRAINED_EXEMPLARS).unlink(missing_ok=True)
        doc = {
            **self.config.to_dict(),
            "image_shape": [int(s) for s in self.image_shape],
            "likelihood": self.observation.name,
            "binary": binary,
            "format_version": PRETRAINED_FORMAT_VERSION,
            "exemplar_vae_version": package_version(),
            "files": {name: sha256_bytes(blob) for name, blob in blobs.items()},
        }
        atomic_write_json(directory / PRETRAINED_CONFIG, doc)
        return directory
