"""Architectures by name -> a VAE from configs. One builder per architecture; priors stay independent.

- ``mlp``: the paper's VAE (gated dense 2 x hidden, one stochastic layer).
- ``hvae``: the paper's HVAE (two stochastic layers z1, z2; the prior on z2), gated dense networks.
- ``convhvae``: the paper's ConvHVAE (gated convolutions in q(z2|x), q(z1|x,z2) and p(x|z1,z2)).

The observation model follows the data: Bernoulli for binary data, a 256-level discretised logistic for
8-bit data (``binary=False``); the decoder emits ``num_params`` values per pixel accordingly.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from exemplar_vae.config import ModelConfig, PriorConfig, RunConfig
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import ConfigError
from exemplar_vae.models.decoders import MLPConditionalPrior, MLPDecoder, MLPHierarchicalDecoder
from exemplar_vae.models.encoders import MLPEncoder, MLPZ1Encoder
from exemplar_vae.models.hierarchical import HierarchicalVAE
from exemplar_vae.models.observation import Observation, observation_for
from exemplar_vae.models.vae import VAE
from exemplar_vae.priors import Prior, build_prior

CONV_EVAL_BYTES = 1 << 30  # activations per evaluation chunk of a convolutional decoder

Builder = Callable[[ModelConfig, Prior, tuple[int, int, int], Observation], VAE]


def _num_values(image_shape: tuple[int, int, int]) -> int:
    c, h, w = image_shape
    return c * h * w


def build_mlp(model: ModelConfig, prior: Prior, image_shape: tuple[int, int, int], obs: Observation) -> VAE:
    d = _num_values(image_shape)
    encoder = MLPEncoder(d, model.hidden, model.latent_dim)
    decoder = MLPDecoder(model.latent_dim, model.hidden, obs.num_params * d)
    return VAE(encoder, decoder, prior, image_shape, obs)


def build_hvae(model: ModelConfig, prior: Prior, image_shape: tuple[int, int, int], obs: Observation) -> VAE:
    d = _num_values(image_shape)
    return HierarchicalVAE(
        encoder=MLPEncoder(d, model.hidden, model.latent_dim),
        z1_encoder=MLPZ1Encoder(d, model.hidden, model.latent_dim),
        z1_prior=MLPConditionalPrior(model.latent_dim, model.hidden),
        decoder=MLPHierarchicalDecoder(model.latent_dim, model.hidden, obs.num_params * d),
        prior=prior,
        image_shape=image_shape,
        observation=obs,
    )


def build_convhvae(
    model: ModelConfig, prior: Prior, image_shape: tuple[int, int, int], obs: Observation
) -> VAE:
    from exemplar_vae.models.conv import DECODER_CHANNELS, ConvEncoder, ConvHierarchicalDecoder, ConvZ1Encoder

    vae = HierarchicalVAE(
        encoder=ConvEncoder(image_shape, model.hidden, model.latent_dim),
        z1_encoder=ConvZ1Encoder(image_shape, model.hidden, model.latent_dim),
        z1_prior=MLPConditionalPrior(model.latent_dim, model.hidden),
        decoder=ConvHierarchicalDecoder(model.latent_dim, model.hidden, image_shape, obs.num_params),
        prior=prior,
        image_shape=image_shape,
        observation=obs,
    )
    # a decoder row holds a few [64, H, W] float32 maps at once: keep a chunk near 1 GiB of them
    _, h, w = image_shape
    vae.eval_rows = vae.eval_rows_accelerator = max(1, CONV_EVAL_BYTES // (4 * 4 * DECODER_CHANNELS * h * w))
    return vae


ARCHITECTURES: dict[str, Builder] = {"mlp": build_mlp, "hvae": build_hvae, "convhvae": build_convhvae}


def build_vae(
    model: ModelConfig,
    prior: PriorConfig,
    exemplars: Tensor | ExemplarStore,
    image_shape: tuple[int, ...],
    binary: bool = True,
    config: RunConfig | None = None,
) -> VAE:
    """Build a VAE from configs.

    Args:
        model: networks' configuration (``arch`` one of ``ARCHITECTURES``).
        prior: prior's configuration (``prior.exemplars`` resolved, see ``config.validate``); the prior
            scores the top latent (z2 of the hierarchical models).
        exemplars: [N, D] training inputs: the exemplar set.
        image_shape: (C, H, W), with C * H * W == D.
        binary: Bernoulli observations when True, a 256-level discretised logistic when False.
        config: the whole run configuration (its ``model`` and ``prior`` sections must equal ``model``
            and ``prior``), kept by the model as ``model.config`` for ``VAE.save_pretrained``; None keeps
            ``RunConfig(model=model, prior=prior)`` (default data and training sections).

    Raises:
        ConfigError: an unknown architecture, an image shape that does not match the data's width, or a
            ``config`` whose model or prior section differs from ``model`` or ``prior``.
    """
    if config is None:
        config = RunConfig(model=model, prior=prior)
    elif config.model != model or config.prior != prior:
        section = "model" if config.model != model else "prior"
        raise ConfigError(
            f"build_vae: config.{section} {getattr(config, section)} differs from the {section} "
            f"configuration given, {model if section == 'model' else prior}"
        )
    if model.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{model.arch}'; valid: {', '.join(ARCHITECTURES)}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[0] * shape[1] * shape[2] != exemplars.shape[1]:
        raise ConfigError(f"image shape {shape} does not match data of width {exemplars.shape[1]}")
    c, h, w = shape
    vae = ARCHITECTURES[model.arch](
        model, build_prior(prior, model.latent_dim, exemplars), (c, h, w), observation_for(binary)
    )
    vae.config = config  # the builders construct the networks; the model keeps what it was built from
    return vae
