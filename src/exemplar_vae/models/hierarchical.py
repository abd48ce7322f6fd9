"""Two stochastic layers (the paper's HVAE and ConvHVAE; Tomczak & Welling 2018, Norouzi et al. 2020).

    q(z2|x) q(z1|x, z2)   and   p(z2) p(z1|z2) p(x|z1, z2)

The prior (Gaussian, MoG, VampPrior or exemplar) sits on the top layer z2, so the exemplar prior's
kernel is r(z2|x_n) = N(mu_{q(z2|x)}(x_n), sigma^2 I): its cache, retrieval and leave-one-out work
unchanged with ``encoder`` = q(z2|x). p(z1|z2) is a learned diagonal Gaussian. One draw of z1 per z2:

    ELBO = E[log p(x|z1,z2)] - E[log q(z1|x,z2) + log q(z2|x) - log p(z1|z2) - log p(z2)].

The networks (``models/encoders.py``, ``models/decoders.py``, ``models/conv.py``) come in four parts:
``encoder`` x -> q(z2|x); ``z1_encoder`` with ``features(x)`` -> h and ``head(h, z2)`` -> q(z1|x,z2) (the
features of x are computed once per input, not once per importance sample); ``z1_prior`` z2 -> p(z1|z2);
``decoder`` (z1, z2) -> observation parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exemplar_vae.functional import full_precision, log_normal_diag, reparameterize
from exemplar_vae.interfaces import ConditionalEncoder, Encoder
from exemplar_vae.models.observation import Observation
from exemplar_vae.models.vae import VAE, LowerTerms, StepNoise
from exemplar_vae.priors import Prior


class HierarchicalVAE(VAE):
    """A VAE with latents z1 (bottom) and z2 (top, scored by ``prior``).

    Args:
        encoder: q(z2|x): x [B, D] -> (mean, log_var) [B, d2], with ``mean(x)``.
        z1_encoder: q(z1|x, z2): ``features(x [B, D]) -> [B, F]``, ``head(h [B, F], z2 [B, d2])`` ->
            (mean, log_var) [B, d1].
        z1_prior: p(z1|z2): z2 [B, d2] -> (mean, log_var) [B, d1].
        decoder: p(x|z1, z2): (z1 [B, d1], z2 [B, d2]) -> observation parameters [B, num_params * D].
        prior: p(z2).
        image_shape: (C, H, W).
        observation: how data is scored (default Bernoulli).
        lower_dim: d1, the size of z1 (None: d2, as in the paper's models).
    """

    z1_encoder: ConditionalEncoder
    lower_latents = True  # lower_terms draws z1

    def __init__(
        self,
        encoder: Encoder,
        z1_encoder: ConditionalEncoder,
        z1_prior: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        image_shape: tuple[int, ...],
        observation: Observation | None = None,
        lower_dim: int | None = None,
    ):
        super().__init__(encoder, decoder, prior, image_shape, observation)
        self.z1_encoder, self.z1_prior = z1_encoder, z1_prior
        self.lower_dim = lower_dim if lower_dim is not None else prior.latent_dim  # d1

    def decode(self, z: Tensor, z1: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """p(x|z1, z2) parameters for top codes z [n, d2]; z1 drawn from p(z1|z2) when not given."""
        if z1 is None:
            mean, log_var = self.z1_prior(z)  # [n, d1]
            eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
            z1 = reparameterize(mean, log_var, eps)
        return self.decoder(z1, z)

    def decode_mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The picture of top codes z2 [n, d2]: z1 ~ p(z1|z2), then the mean of p(x|z1, z2): [n, D]."""
        return self.observation.mean(self.decode(z, generator=generator))

    def draw_noise(self, batch: int, generator: torch.Generator | None = None) -> StepNoise:
        """The noise of ``batch`` single-sample ELBO terms: z2's, then z1's (the order ``elbo_terms``
        draws them in when none is given)."""
        z = torch.randn((batch, self.latent_dim), device=self.device, generator=generator)
        lower = torch.randn((batch, self.lower_dim), device=self.device, generator=generator)
        return StepNoise(z, lower)

    def lower_terms(
        self, x: Tensor, z: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> LowerTerms:
        """log p(x|z1,z2) and log q(z1|x,z2) - log p(z1|z2), z1 ~ q(z1|x,z2), for z2 = z [..., B, d2]
        drawn for inputs x [B, D]: -> [..., B] each. ``noise`` [..., B, d1] replaces z1's draw."""
        lead, b = z.shape[:-1], x.shape[0]
        h = self.z1_encoder.features(x)  # [B, F], once per input
        z2 = z.reshape(-1, z.shape[-1])  # [R, d2], R = prod(lead), rows ordered (..., B)
        reps = z2.shape[0] // b
        h_rows = h.unsqueeze(0).expand(reps, *h.shape).reshape(-1, h.shape[-1])  # [R, F]
        x_rows = x.unsqueeze(0).expand(reps, *x.shape).reshape(-1, x.shape[-1])  # [R, D]
        q_mean, q_log_var = (full_precision(t) for t in self.z1_encoder.head(h_rows, z2))  # [R, d1]
        if noise is None:
            eps = torch.randn(q_mean.shape, dtype=q_mean.dtype, device=q_mean.device, generator=generator)
        else:
            eps = noise.reshape(q_mean.shape).to(q_mean.dtype)
        z1 = reparameterize(q_mean, q_log_var, eps)  # [R, d1]
        p_mean, p_log_var = (full_precision(t) for t in self.z1_prior(z2))  # [R, d1]
        kl_lower = log_normal_diag(z1, q_mean, q_log_var) - log_normal_diag(z1, p_mean, p_log_var)  # [R]
        log_px = self.observation.log_prob(x_rows, full_precision(self.decoder(z1, z2)))  # [R]
        return LowerTerms(log_px.reshape(lead), kl_lower.reshape(lead))
