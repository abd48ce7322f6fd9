"""VAE = encoder + decoder + prior. No branching on the prior's type: the prior is an object.

Read with ``priors/exemplar.py`` (the prior) and ``objectives/elbo.py`` (the loss, which takes the model
as an argument: the model does not know its objective).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from exemplar_vae.functional import full_precision, reparameterize
from exemplar_vae.interfaces import Encoder
from exemplar_vae.models.observation import Bernoulli, Observation
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
    ):
        super().__init__()
        self.encoder, self.decoder, self.prior = encoder, decoder, prior
        self.image_shape = tuple(image_shape)
        self.observation = observation if observation is not None else Bernoulli()

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
