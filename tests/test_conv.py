"""The ConvHVAE networks (models/conv.py): shapes, the flattening contract, and a float64 reference.

Tiny images (1 x 8 x 8 and 3 x 8 x 8) and narrow layers keep the file fast; one test builds the
paper's 28 x 28 network and counts its parameters (docs/paper.md §5: "≈2.21 M").
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference as ref
import torch

from exemplar_vae.config import ModelConfig, PriorConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.models import HierarchicalVAE, build_vae
from exemplar_vae.models.conv import ConvEncoder, ConvHierarchicalDecoder, ConvZ1Encoder
from exemplar_vae.models.layers import GatedConv2d
from exemplar_vae.models.observation import DiscretizedLogistic
from exemplar_vae.objectives.elbo import elbo_terms
from exemplar_vae.objectives.likelihood import importance_sampled_log_likelihood

HIDDEN, LATENT, N = 16, 3, 24


def _images(c: int, n: int = N, seed: int = 0) -> torch.Tensor:
    """[n, c * 8 * 8] uniform values."""
    return torch.rand(n, c * 64, generator=torch.Generator().manual_seed(seed))


def _conv_out(decoder: ConvHierarchicalDecoder, z1: torch.Tensor, z2: torch.Tensor) -> tuple:
    """The decoder's flat output and its last convolution's [R, P*C, H, W] map (from a forward hook)."""
    seen: list[torch.Tensor] = []
    handle = decoder.out.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        flat = decoder(z1, z2)
    finally:
        handle.remove()
    return flat, seen[0]


# -- shapes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("c", "num_params"), list(itertools.product([1, 3], [1, 2])))
def test_shapes_for_grey_and_colour_images(c: int, num_params: int) -> None:
    torch.manual_seed(0)
    shape, x = (c, 8, 8), _images(c, 5)
    enc, z1_enc = ConvEncoder(shape, HIDDEN, LATENT), ConvZ1Encoder(shape, HIDDEN, LATENT)
    dec = ConvHierarchicalDecoder(LATENT, HIDDEN, shape, num_params)
    mean, log_var = enc(x)
    assert mean.shape == log_var.shape == (5, LATENT) and enc.data_dim == c * 64 and enc.latent_dim == LATENT
    assert ((log_var >= -6) & (log_var <= 2)).all()
    h = z1_enc.features(x)
    assert h.shape == (5, 6 * 2 * 2)
    q_mean, q_log_var = z1_enc.head(h, mean)
    assert q_mean.shape == q_log_var.shape == (5, LATENT)
    assert dec(q_mean, mean).shape == (5, num_params * c * 64)


def test_paper_network_on_28x28_has_2_21_million_parameters() -> None:
    x = torch.rand(100, 784).round()
    model = build_vae(
        ModelConfig(arch="convhvae", hidden=300, latent_dim=40), PriorConfig(name="gaussian"), x, (1, 28, 28)
    )
    assert isinstance(model, HierarchicalVAE)
    assert model.z1_encoder.features(x[:2]).shape == (2, 294)
    mean, _ = model.encoder(x[:2])
    assert mean.shape == (2, 40) and model.decoder(mean, mean).shape == (2, 784)
    # by part: q(z2|x) 228,604; q(z1|x,z2) 538,496; p(z1|z2) 229,280; p(x|z1,z2) 1,214,481
    assert sum(p.numel() for p in model.parameters()) == 2_210_861


@pytest.mark.parametrize("shape", [(1, 28, 30), (1, 10, 8), (3, 6, 6)])
def test_sizes_not_divisible_by_4_are_rejected(shape: tuple[int, int, int]) -> None:
    for make in (
        lambda: ConvEncoder(shape, HIDDEN, LATENT),
        lambda: ConvZ1Encoder(shape, HIDDEN, LATENT),
        lambda: ConvHierarchicalDecoder(LATENT, HIDDEN, shape, 1),
    ):
        with pytest.raises(ConfigError, match="divisible by 4"):
            make()


def test_gated_conv_is_h_times_sigmoid_g() -> None:
    torch.manual_seed(1)
    layer = GatedConv2d(2, 3, 3, 2, 1)
    x = torch.randn(4, 2, 8, 8)
    out = layer(x)
    assert out.shape == (4, 3, 4, 4)
    torch.testing.assert_close(out, layer.h(x) * torch.sigmoid(layer.g(x)))


# -- the flattening contract ---------------------------------------------------------------------------
@pytest.mark.parametrize(("c", "num_params"), [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_output_block_p_holds_parameter_p_of_each_pixel_in_data_order(c: int, num_params: int) -> None:
    """Parameter p of pixel (c, i, j) is the last convolution's channel p*C + c at (i, j), and sits at
    flat position p*D + (c*H + i)*W + j. Random weights make the map vary over channels and space, so a
    channel-last, a transposed or a parameter-innermost flattening would fail."""
    torch.manual_seed(2)
    shape = (c, 8, 8)
    dec = ConvHierarchicalDecoder(LATENT, HIDDEN, shape, num_params)
    z1, z2 = torch.randn(4, LATENT), torch.randn(4, LATENT)
    flat, conv = _conv_out(dec, z1, z2)  # [4, P*D], [4, P*C, 8, 8]
    d = c * 64
    maps = conv.view(4, num_params, c, 8, 8)
    assert maps[:, :, :, 1:].std() > 0 and maps[:, :, :, :, 1:].std() > 0  # the test can see order
    for p, ch, i, j in itertools.product(range(num_params), range(c), (0, 3, 7), (0, 5, 7)):
        torch.testing.assert_close(flat[:, p * d + (ch * 8 + i) * 8 + j], conv[:, p * c + ch, i, j])
    if num_params == 2:
        loc, log_scale = DiscretizedLogistic().split(flat)  # [4, D] each, in x's (C, H, W) order
        assert loc.shape == log_scale.shape == (4, d)
        torch.testing.assert_close(loc.view(4, c, 8, 8), torch.sigmoid(conv[:, :c]))
        torch.testing.assert_close(log_scale.view(4, c, 8, 8), conv[:, c:].clamp(-7.0, 0.0))


def test_location_and_scale_set_per_channel_land_in_their_blocks() -> None:
    """A last convolution that outputs only its bias: location of channel c = b[c], log-scale b[C + c]."""
    dec = ConvHierarchicalDecoder(LATENT, HIDDEN, (3, 8, 8), 2)
    bias = torch.tensor([2.0, -1.0, 0.5, -2.0, -4.0, -6.0])  # loc logits of R, G, B; log-scales of R, G, B
    with torch.no_grad():
        dec.out.weight.zero_()
        dec.out.bias.copy_(bias)
    loc, log_scale = DiscretizedLogistic().split(dec(torch.randn(2, LATENT), torch.randn(2, LATENT)))
    loc, log_scale = loc.view(2, 3, 64), log_scale.view(2, 3, 64)  # the data's [C, H*W] layout
    for ch in range(3):
        assert torch.allclose(loc[:, ch], torch.sigmoid(bias[ch]))
        assert torch.allclose(log_scale[:, ch], bias[3 + ch])


def test_encoder_reads_the_data_in_c_h_w_order() -> None:
    """A 1 x 1 marker in pixel (c, i, j) of the flat input changes the encoder's stride-1 first layer only
    near (i, j) of the image: the reshape is (C, H, W), not (H, W, C)."""
    torch.manual_seed(3)
    enc = ConvEncoder((3, 8, 8), HIDDEN, LATENT)
    first = enc.body[0]
    x = torch.zeros(1, 192)
    x[0, (2 * 8 + 1) * 8 + 6] = 1.0  # channel 2, row 1, column 6
    seen: list[torch.Tensor] = []
    handle = first.register_forward_hook(lambda _m, _i, out: seen.append(out))
    enc.mean(x)
    enc.mean(torch.zeros(1, 192))
    handle.remove()
    changed = (seen[0] - seen[1]).abs().sum(dim=1)[0] > 0  # [8, 8]
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed.any() and (rows - 1).abs().max() <= 3 and (cols - 6).abs().max() <= 3  # 7 x 7 kernel


# -- the two views of a network agree -----------------------------------------------------------------
def test_features_then_head_equals_forward_and_mean_skips_only_the_log_variance() -> None:
    torch.manual_seed(4)
    shape, x = (3, 8, 8), _images(3, 6)
    enc, z1_enc = ConvEncoder(shape, HIDDEN, LATENT), ConvZ1Encoder(shape, HIDDEN, LATENT)
    z2 = torch.randn(6, LATENT)
    q = z1_enc(x, z2)
    q_split = z1_enc.head(z1_enc.features(x), z2)
    torch.testing.assert_close(q[0], q_split[0])
    torch.testing.assert_close(q[1], q_split[1])
    torch.testing.assert_close(enc.mean(x), enc(x)[0])
    # the head broadcasts: features computed once per input serve S draws of z2 per input
    z2s = torch.randn(4, 6, LATENT)  # [S, B, d]
    h = z1_enc.features(x).unsqueeze(0).expand(4, -1, -1).reshape(24, -1)  # [S*B, F]
    rows = z1_enc.head(h, z2s.reshape(24, LATENT))[0].view(4, 6, LATENT)
    for s in range(4):
        torch.testing.assert_close(rows[s], z1_enc(x, z2s[s])[0])


# -- the whole model -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prior_name", "binary"),
    list(itertools.product(["gaussian", "vampprior", "mog", "exemplar"], [True, False])),
)
def test_convhvae_trains_and_scores_with_every_prior(prior_name: str, binary: bool) -> None:
    torch.manual_seed(5)
    data = (_images(1) * 255).round() / 255  # 8-bit values
    prior = PriorConfig(name=prior_name, components=3, exemplars=10, knn=3)
    model = build_vae(
        ModelConfig(arch="convhvae", hidden=HIDDEN, latent_dim=LATENT), prior, data, (1, 8, 8), binary
    )
    x, index = ((data[:6] > 0.5).float() if binary else data[:6]), torch.arange(6)
    model.train()
    model.prior.refresh(model.encoder)
    terms = elbo_terms(model, x, index, 1.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(terms.loss)
    terms.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    model.eval()
    model.prior.refresh(model.encoder)
    with torch.no_grad():
        est = importance_sampled_log_likelihood(model, x, 20, generator=torch.Generator().manual_seed(1))
    assert est.log_likelihood.shape == est.elbo.shape == (6,)
    assert torch.isfinite(est.log_likelihood).all() and torch.isfinite(est.elbo).all()
    assert (est.log_likelihood >= est.elbo - 1e-4).all()
    assert (est.log_likelihood < 0).all()


# -- a float64 reference for the layers below z2 ------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_lower_terms_match_float64_reference(binary: bool) -> None:
    """log p(x|z1,z2) and log q(z1|x,z2) - log p(z1|z2) for z2 [S, B, d] against numpy float64 densities
    of the sub-networks' outputs, with the same z1 noise."""
    torch.manual_seed(6)
    data = (_images(3) * 255).round() / 255
    prior = PriorConfig(name="gaussian")
    model = build_vae(
        ModelConfig(arch="convhvae", hidden=HIDDEN, latent_dim=LATENT), prior, data, (3, 8, 8), binary
    )
    model = model.double().eval()
    x = (data[:5] > 0.5).double() if binary else data[:5].double()
    s, b = 4, x.shape[0]
    z2 = torch.randn(s, b, LATENT, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        terms = model.lower_terms(x, z2, torch.Generator().manual_seed(9))
    eps = ref.as64(
        torch.randn(s * b, LATENT, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    )
    z2_rows, x_rows = ref.as64(z2.reshape(-1, LATENT)), np.tile(ref.as64(x), (s, 1))  # rows ordered (S, B)
    q_mean, q_log_var = ref.float64_network(model.z1_encoder)(x_rows, z2_rows)
    z1 = q_mean + np.exp(0.5 * q_log_var) * eps
    p_mean, p_log_var = ref.float64_network(model.z1_prior)(z2_rows)
    kl = ref.log_normal_diag(z1, q_mean, q_log_var) - ref.log_normal_diag(z1, p_mean, p_log_var)
    params = ref.float64_network(model.decoder)(z1, z2_rows)  # [S*B, P*D]
    if binary:
        log_px = ref.log_bernoulli_logits(x_rows, params)
    else:
        d = x_rows.shape[1]
        loc = 1.0 / (1.0 + np.exp(-params[:, :d]))
        log_px = ref.log_discretized_logistic(x_rows, loc, np.clip(params[:, d:], -7.0, 0.0))
    assert terms.log_px.shape == terms.kl_lower.shape == (s, b)
    np.testing.assert_allclose(ref.as64(terms.kl_lower).reshape(-1), kl, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ref.as64(terms.log_px).reshape(-1), log_px, rtol=1e-8, atol=1e-8)
