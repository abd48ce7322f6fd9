"""Gated layers: the fused product (one matmul / convolution of twice the width, then glu) against the
two-map definition h(x) * sigmoid(g(x)), in float64, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exemplar_vae.models.layers import GatedConv2d, GatedDense


def _two_maps(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer.h(x) * torch.sigmoid(layer.g(x))


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: GatedDense(7, 5), (11, 7)),
        (lambda: GatedDense(1, 1), (1, 1)),
        (lambda: GatedConv2d(2, 3, 3, 2, 1), (4, 2, 8, 8)),
        (lambda: GatedConv2d(3, 4, 5, 1, 2), (2, 3, 7, 7)),
    ],
)
def test_fused_gated_layer_equals_h_times_sigmoid_g_with_gradients(make, shape) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    layer = make().double()
    x = (3.0 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()
    out = layer(x)
    ref = _two_maps(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out)  # a random linear functional of the output
    grads = torch.autograd.grad((out * w).sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad((ref * w).sum(), [x, *layer.parameters()])
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_gated_conv_gates_channels_of_an_unbatched_image() -> None:
    torch.manual_seed(1)
    layer = GatedConv2d(2, 3, 3, 2, 1).double()
    x = torch.randn(2, 8, 8, dtype=torch.float64)  # [C, H, W]
    torch.testing.assert_close(layer(x), _two_maps(layer, x), rtol=1e-12, atol=1e-12)


def test_gated_layers_keep_their_two_maps_in_the_state_dict() -> None:
    """Checkpoints written before the fused forward hold h.* and g.*; they must still load."""
    assert sorted(GatedDense(3, 2).state_dict()) == ["g.bias", "g.weight", "h.bias", "h.weight"]
    assert sorted(GatedConv2d(1, 2, 3, 1, 1).state_dict()) == ["g.bias", "g.weight", "h.bias", "h.weight"]
