"""AdamNormGrad's per-tensor gradient normalisation and the optimiser factory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from exemplar_vae.errors import ConfigError
from exemplar_vae.training.optim import build_optimizer, load_optimizer_state, normalize_gradients


def test_normalize_gradients_divides_each_tensor_by_its_own_norm() -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4, dtype=torch.float64)) for _ in range(3)]
    params.append(nn.Parameter(torch.randn(2, dtype=torch.float64)))  # no gradient: left alone
    grads = [torch.randn(3, 4, dtype=torch.float64) * s for s in (1e-3, 1.0, 1e3)]
    for p, g in zip(params, grads, strict=False):
        p.grad = g.clone()
    normalize_gradients(params, eps=1e-7)
    for p, g in zip(params, grads, strict=False):
        torch.testing.assert_close(p.grad, g / (torch.linalg.vector_norm(g) + 1e-7), rtol=1e-14, atol=0)
    assert params[3].grad is None
    normalize_gradients([])  # nothing to do


def _same_steps(pairs, steps: int, rows: int, dim: int) -> None:  # noqa: ANN001
    """``steps`` optimiser steps of each (model, optimizer) pair on the same random batches (loss: the sum
    of squared outputs), then their parameters must agree."""
    for _ in range(steps):
        x = torch.randn(rows, dim, dtype=torch.float64)
        for model, opt in pairs:
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    (a, _), (b, _) = pairs
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


def test_build_optimizer_matches_plain_adam() -> None:
    """The factory's (fused where available) Adam takes the same steps as torch's per-tensor Adam."""
    torch.manual_seed(1)
    a = nn.Linear(5, 3).double()
    b = nn.Linear(5, 3).double()
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer("adamnormgrad", a.parameters(), 1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    _same_steps(((a, opt_a), (b, opt_b)), steps=5, rows=8, dim=5)


def test_build_optimizer_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer("sgd", nn.Linear(2, 2).parameters(), 1e-3)


def test_fused_adam_is_chosen_and_kept_when_resuming_a_per_tensor_checkpoint() -> None:
    """This torch (>= 2.4) has a fused CPU Adam; a state saved by a per-tensor Adam (checkpoints from
    before) loads into it without switching it back, and the next steps equal the per-tensor ones."""
    torch.manual_seed(2)
    a = nn.Linear(4, 3).double()
    b = nn.Linear(4, 3).double()
    b.load_state_dict(a.state_dict())
    old = torch.optim.Adam(a.parameters(), lr=1e-2, foreach=False)  # the checkpoint's optimizer
    for _ in range(3):
        old.zero_grad()
        a(torch.randn(6, 4, dtype=torch.float64)).pow(2).sum().backward()
        old.step()
    b.load_state_dict(a.state_dict())
    new = build_optimizer("adam", b.parameters(), 1e-2)
    assert new.defaults["fused"] is True
    load_optimizer_state(new, copy.deepcopy(old.state_dict()))  # as read from a file: no shared tensors
    assert all(g["fused"] is True for g in new.param_groups)
    _same_steps(((a, old), (b, new)), steps=3, rows=6, dim=4)
