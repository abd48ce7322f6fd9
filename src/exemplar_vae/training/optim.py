"""Optimisers: Adam, and the paper's "AdamNormGrad" (per-tensor gradient normalisation, then Adam)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from exemplar_vae.errors import ConfigError

# "adamnormgrad" is Adam on gradients normalised per tensor (``normalize_gradients``)
OPTIMIZER_NAMES = ("adam", "adamnormgrad")

# devices with a fused (one kernel for all parameters) Adam in torch
_FUSED_DEVICES = ("cpu", "cuda")


@torch.no_grad()
def normalize_gradients(params: Iterable[nn.Parameter], eps: float = 1e-7) -> None:
    """Divide each parameter tensor's gradient by (its L2 norm + eps), in place, as the paper's code does.

    The norms and divisions run as multi-tensor (``_foreach``) operations, one call for all tensors."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    torch._foreach_add_(norms, eps)
    torch._foreach_div_(grads, norms)


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam(0.9, 0.999, eps 1e-8) for both "adam" and "adamnormgrad" (the latter also needs
    ``normalize_gradients`` before each step, which the trainer does).

    Torch's fused Adam (one kernel over every parameter) is used where this torch has it (CPU and CUDA in
    recent versions): the same update as the per-tensor loop with far less per-tensor overhead (see
    docs/speed.md); elsewhere the per-tensor Adam."""
    if name not in OPTIMIZER_NAMES:
        raise ConfigError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZER_NAMES)}")
    params = list(params)
    if params and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
        except RuntimeError:  # an older torch without a fused kernel for these devices
            pass
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state, keeping this optimizer's implementation (fused or not).

    ``Optimizer.load_state_dict`` would take the saved groups' flags, so a checkpoint written by a
    per-tensor Adam would switch a fused one back; the flags are the running code's choice, the moments
    and step counts the checkpoint's."""
    flags = ("fused", "foreach", "capturable", "differentiable")
    groups = [{**saved, **{f: g[f] for f in flags if f in g}} for saved, g in zip(
        state["param_groups"], optimizer.param_groups, strict=True
    )]  # fmt: skip
    optimizer.load_state_dict({**state, "param_groups": groups})
