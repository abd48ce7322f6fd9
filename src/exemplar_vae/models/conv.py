"""The paper's ConvHVAE networks: gated convolutions in q(z2|x), q(z1|x, z2) and p(x|z1, z2).

The architecture is that of Tomczak & Welling (2018, "VAE with a VampPrior"), used unchanged by
Norouzi et al. (2020); see docs/paper.md §5. p(z1|z2) is the MLP one (``MLPConditionalPrior``).

Every network takes and returns FLATTENED vectors, like the rest of the package: an image is [B, D]
with D = C * H * W in (C, H, W) order, reshaped to [B, C, H, W] inside. Two stride-2 convolutions
halve the image twice, so H and W must be divisible by 4 (28 x 28 for MNIST-type data, 64 x 64 for
CelebA).

Networks only: they know nothing about priors or training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exemplar_vae.errors import ConfigError
from exemplar_vae.models.layers import GatedConv2d, GatedDense, GaussianHead, he_init

# Channels of the last encoder convolution: 6 maps of (H/4) x (W/4), flattened (294 for 28 x 28).
FEATURE_CHANNELS = 6
# Channels of the decoder's gated convolutions.
DECODER_CHANNELS = 64


def _check_image_shape(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) with H and W divisible by 4, else ConfigError."""
    if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
        raise ConfigError(f"convhvae needs an image shape (C, H, W) of positive sizes, got {image_shape}")
    c, h, w = (int(s) for s in image_shape)
    if h % 4 or w % 4:
        raise ConfigError(
            f"convhvae needs height and width divisible by 4 (two stride-2 convolutions), got {h} x {w}; "
            "use arch 'hvae' or 'mlp' for this data"
        )
    return c, h, w


def _feature_size(c_h_w: tuple[int, int, int]) -> int:
    """F = 6 * (H/4) * (W/4): the flattened width of the encoders' last convolution."""
    _, h, w = c_h_w
    return FEATURE_CHANNELS * (h // 4) * (w // 4)


class ConvEncoder(nn.Module):
    """q(z2|x) of the paper's ConvHVAE: five gated convolutions (kernels 7, 3, 5, 3, 3; two of stride
    2), flattened to F = 6 (H/4) (W/4), and Gaussian heads.

    The mean head alone is mu_phi, the network the exemplar prior shares; ``mean`` runs only that path.

    Args:
        image_shape: (C, H, W), H and W divisible by 4.
        hidden: unused (the heads read the F convolutional features directly, as in the paper); kept
            so that every encoder is built the same way.
        latent_dim: size of z2.
    """

    def __init__(self, image_shape: tuple[int, ...], hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        c, h, w = self.image_shape
        self.data_dim, self.latent_dim = c * h * w, latent_dim
        self.body = nn.Sequential(
            GatedConv2d(c, 32, 7, 1, 3),
            GatedConv2d(32, 32, 3, 2, 1),  # H/2
            GatedConv2d(32, 64, 5, 1, 2),
            GatedConv2d(64, 64, 3, 2, 1),  # H/4
            GatedConv2d(64, FEATURE_CHANNELS, 3, 1, 1),
        )
        self.heads = GaussianHead(_feature_size(self.image_shape), latent_dim)
        he_init(self)

    def features(self, x: Tensor) -> Tensor:
        """[B, D] -> [B, F]."""
        maps = self.body(x.reshape(-1, *self.image_shape))  # [B, C, H, W] -> [B, 6, H/4, W/4]
        return maps.flatten(1)  # [B, F]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[B, D] -> (mean [B, d], log_var [B, d])."""
        return self.heads(self.features(x))

    def mean(self, x: Tensor) -> Tensor:
        """mu_phi(x): [B, D] -> [B, d], skipping the log-variance head."""
        return self.heads.mean(self.features(x))


class ConvZ1Encoder(nn.Module):
    """q(z1|x, z2) of the paper's ConvHVAE: five gated 3 x 3 convolutions on x (two of stride 2) ->
    [B, F]; GD(d2->F) on z2; concatenated, GD(2F->hidden), Gaussian heads.

    ``features(x)`` depends on x only, so importance sampling computes it once per input.

    Args:
        image_shape: (C, H, W), H and W divisible by 4.
        hidden: width of the joint gated layer.
        latent_dim: size of z1 and of z2.
    """

    def __init__(self, image_shape: tuple[int, ...], hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        c, h, w = self.image_shape
        self.data_dim, self.latent_dim = c * h * w, latent_dim
        f = _feature_size(self.image_shape)
        self.x_net = nn.Sequential(
            GatedConv2d(c, 32, 3, 1, 1),
            GatedConv2d(32, 32, 3, 2, 1),  # H/2
            GatedConv2d(32, 64, 3, 1, 1),
            GatedConv2d(64, 64, 3, 2, 1),  # H/4
            GatedConv2d(64, FEATURE_CHANNELS, 3, 1, 1),
        )
        self.z2_net = GatedDense(latent_dim, f)
        self.joint = GatedDense(2 * f, hidden)
        self.heads = GaussianHead(hidden, latent_dim)
        he_init(self)

    def features(self, x: Tensor) -> Tensor:
        """[B, D] -> [B, F]."""
        return self.x_net(x.reshape(-1, *self.image_shape)).flatten(1)  # [B, 6, H/4, W/4] -> [B, F]

    def head(self, h: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        """([R, F], [R, d2]) -> (mean [R, d1], log_var [R, d1])."""
        return self.heads(self.joint(torch.cat([h, self.z2_net(z2)], dim=-1)))  # [R, 2F] -> [R, hidden]

    def forward(self, x: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.features(x), z2)


class ConvHierarchicalDecoder(nn.Module):
    """p(x|z1, z2) of the paper's ConvHVAE: GD(d->hidden) on each of z1 and z2, concatenated,
    GD(2 hidden->C H W) reshaped to a [C, H, W] map, four gated 3 x 3 convolutions of 64 channels, and a
    1 x 1 convolution to ``num_params * C`` channels.

    The output is flattened with the parameter index outermost: [R, num_params, C, H, W] ->
    [R, num_params * D], so its first D values are the first parameter of every pixel in the data's
    (C, H, W) order, the next D the second (what ``DiscretizedLogistic.split`` expects).

    Args:
        latent_dim: size of z1 and of z2.
        hidden: width of the gated dense layers.
        image_shape: (C, H, W), H and W divisible by 4.
        num_params: observation parameters per data value (1 Bernoulli logit, 2 for a logistic).
    """

    def __init__(self, latent_dim: int, hidden: int, image_shape: tuple[int, ...], num_params: int) -> None:
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        c, h, w = self.image_shape
        self.num_params = num_params
        self.z1_net, self.z2_net = GatedDense(latent_dim, hidden), GatedDense(latent_dim, hidden)
        self.to_map = GatedDense(2 * hidden, c * h * w)
        self.body = nn.Sequential(
            GatedConv2d(c, DECODER_CHANNELS, 3, 1, 1),
            *(GatedConv2d(DECODER_CHANNELS, DECODER_CHANNELS, 3, 1, 1) for _ in range(3)),
        )
        self.out = nn.Conv2d(DECODER_CHANNELS, num_params * c, 1)
        he_init(self)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """([R, d1], [R, d2]) -> [R, num_params * D]."""
        h = self.to_map(torch.cat([self.z1_net(z1), self.z2_net(z2)], dim=-1))  # [R, C*H*W]
        h = self.body(h.reshape(-1, *self.image_shape))  # [R, 64, H, W]
        # output channel p * C + c is parameter p of channel c, so a plain flatten puts p outermost
        return self.out(h).flatten(1)  # [R, P*C, H, W] -> [R, P*C*H*W]
