"""Building blocks shared by the networks: gated dense layers and the paper's initialisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The paper's code bounds every Gaussian layer's log-variance with Hardtanh(-6, 2).
LOG_VAR_MIN, LOG_VAR_MAX = -6.0, 2.0


class GatedDense(nn.Module):
    """Gated dense layer: h(x) * sigmoid(g(x)) with two linear maps (Dauphin et al. 2017).

    The two maps keep their own parameters (``h`` and ``g``, as in the paper's code and in our checkpoints)
    but run as one product of twice the width followed by ``glu``: on a CPU one [rows, in] x [in, 2 out]
    product runs markedly closer to the machine's matmul rate than two of width ``out`` (docs/speed.md),
    and ``glu`` gates in one element-wise pass.
    Concatenating the weights costs one copy of them per call, small beside the product for the row
    counts of evaluation and retrieval (hundreds to thousands of rows).

    Args:
        in_features: input width.
        out_features: output width.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, out]
        weight = torch.cat([self.h.weight, self.g.weight])  # [2 out, in]
        bias = torch.cat([self.h.bias, self.g.bias])  # [2 out]
        return F.glu(F.linear(x, weight, bias), dim=-1)


class GaussianHead(nn.Module):
    """Two linear heads: features [B, hidden] -> (mean [B, d], log_var [B, d]), the log-variance bounded
    by Hardtanh(LOG_VAR_MIN, LOG_VAR_MAX) as in the paper's code."""

    def __init__(self, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.mean = nn.Linear(hidden, latent_dim)
        self.log_var = nn.Sequential(nn.Linear(hidden, latent_dim), nn.Hardtanh(LOG_VAR_MIN, LOG_VAR_MAX))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(h), self.log_var(h)


def he_init(module: nn.Module) -> None:
    """He-normal weights N(0, 2 / fan_in) on every nn.Linear and convolution, as the paper's code does;
    biases at zero."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GatedConv2d(nn.Module):
    """Gated convolution: h(x) * sigmoid(g(x)) with two convolutions of the same geometry, run as one
    convolution of twice the channels (one larger product runs closer to the machine's peak than two;
    see GatedDense).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: square kernel size.
        stride: stride.
        padding: zero padding on each side.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.h = nn.Conv2d(in_ch, out_ch, kernel, stride, padding)
        self.g = nn.Conv2d(in_ch, out_ch, kernel, stride, padding)

    def forward(self, x: Tensor) -> Tensor:  # [B, in_ch, H, W] -> [B, out_ch, H', W']
        # one convolution with both filter banks, gated by glu over channels (see GatedDense)
        weight = torch.cat([self.h.weight, self.g.weight])  # [2 out_ch, in_ch, k, k]
        assert self.h.bias is not None and self.g.bias is not None  # built with biases
        bias = torch.cat([self.h.bias, self.g.bias])  # [2 out_ch]
        return F.glu(F.conv2d(x, weight, bias, self.h.stride, self.h.padding), dim=-3)  # channels
