"""Which exemplars explain an input: the exemplars that carry most of its prior mass.

For an input x with encoder mean mu = mu_phi(x), the exemplar prior p(z) = 1/N sum_n N(z; mu(x_n), sigma^2 I)
splits its density at mu among the exemplars by their responsibilities

    r_n = N(mu; mu(x_n), sigma^2 I) / sum_m N(mu; mu(x_m), sigma^2 I)
        = softmax_n(-||mu - mu(x_n)||^2 / (2 sigma^2)).

``explain`` returns the k exemplars of largest responsibility, computed exactly over all N exemplars in
blocks (direct float64 differences, a running float64 log-sum-exp for the normaliser, a running top-k),
so memory stays bounded for a million exemplars. ``read_images`` turns a user's image files into model
inputs, and ``explanation_grid`` lays out each input beside its exemplars for ``viz.save_image_grid``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data.images import decode_image
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.models.vae import VAE

__all__ = ["Explanation", "explain", "explanation_grid", "read_images", "top_responsibilities"]

MAX_ELEMENTS = 1 << 22  # bound on one [rows, centers, d] block of float64 differences (32 MiB)


class Explanation(NamedTuple):
    """The exemplars that carry most of each input's prior mass, largest responsibility first."""

    ids: Tensor  # [B, k] int64 rows of the prior's exemplar set (``model.prior.exemplar_set()``)
    responsibilities: Tensor  # [B, k] float64 r_n, non-increasing along each row
    mass: Tensor  # [B] float64, the sum of the k responsibilities (1 when k = N)


def top_responsibilities(
    queries: Tensor, centers: Tensor, log_var: Tensor | float, k: int, max_elements: int = MAX_ELEMENTS
) -> tuple[Tensor, Tensor]:
    """The k largest responsibilities of an isotropic Parzen window with equal weights, exactly.

    r_bn = exp(-||q_b - c_n||^2 / 2s^2) / sum_m exp(-||q_b - c_m||^2 / 2s^2), over all N centers, streamed
    in blocks of rows and centers: squared distances are direct float64 differences, the normaliser a
    running float64 log-sum-exp, and the top k are merged block by block (equal responsibilities keep the
    smaller id first).

    Args:
        queries: [B, d] points.
        centers: [N, d] kernel centers.
        log_var: log s^2 (a scalar).
        k: how many, 1 <= k <= N.
        max_elements: bound on the size of one [rows, centers, d] block.

    Returns:
        (ids [B, k] int64, responsibilities [B, k] float64), largest first, on the queries' device.
    """
    n, d = centers.shape
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} exemplars requested, but the exemplar set holds N={n} (need 1 <= k <= N)")
    device = queries.device
    q64 = queries.detach().to(torch.float64)
    c64 = centers.detach().to(device=device, dtype=torch.float64)
    lv = float(log_var.detach()) if isinstance(log_var, Tensor) else float(log_var)
    half_prec = 0.5 * math.exp(-lv)  # 1 / 2s^2
    per_row = max(1, max_elements // max(d, 1))  # differences one query may hold
    row_chunk = max(1, min(q64.shape[0], per_row // min(n, per_row)))
    center_chunk = max(1, min(n, max_elements // (row_chunk * max(d, 1))))
    all_ids, all_resp = [], []
    for qb in q64.split(row_chunk):  # [r, d]
        r = qb.shape[0]
        lse = torch.full((r,), float("-inf"), dtype=torch.float64, device=device)
        best = torch.empty((r, 0), dtype=torch.float64, device=device)
        best_ids = torch.empty((r, 0), dtype=torch.int64, device=device)
        for start in range(0, n, center_chunk):
            cb = c64[start : start + center_chunk]  # [c, d]
            logits = -half_prec * (qb.unsqueeze(1) - cb.unsqueeze(0)).pow(2).sum(-1)  # [r, c]
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
            ids = torch.arange(start, start + cb.shape[0], device=device).expand(r, -1)  # [r, c]
            cand, cand_ids = torch.cat([best, logits], 1), torch.cat([best_ids, ids], 1)  # ids ascending
            order = torch.sort(cand, dim=1, descending=True, stable=True).indices[:, :k]
            best, best_ids = cand.gather(1, order), cand_ids.gather(1, order)
        all_ids.append(best_ids)
        all_resp.append(torch.exp(best - lse.unsqueeze(1)))
    return torch.cat(all_ids), torch.cat(all_resp)


def _kernel_prior(model: VAE) -> tuple[Tensor, Tensor]:
    """The prior's (centers [N, d], log sigma^2), or ConfigError for a prior without an exemplar set."""
    prior = model.prior
    store = prior.exemplar_set()
    mixture = prior.kernel_mixture() if store is not None else None
    if store is None or mixture is None:
        raise ConfigError(
            f"only a prior with an exemplar set can name the exemplars behind an input; this model has a "
            f"{type(prior).__name__}"
        )
    if mixture.centers.shape[0] != store.num_rows:
        raise ConfigError(
            f"the prior's code cache holds {mixture.centers.shape[0]} codes for {store.num_rows} exemplars: "
            "call model.prior.refresh(model.encoder) first"
        )
    return mixture.centers, mixture.log_var


@torch.no_grad()
def explain(model: VAE, x: Tensor, k: int = 8) -> Explanation:
    """The k exemplars of largest responsibility for each input's encoder mean.

    With mu = mu_phi(x) and the prior's cached exemplar codes mu(x_n) and kernel variance sigma^2,
    r_n = N(mu; mu(x_n), sigma^2 I) / sum_m N(mu; mu(x_m), sigma^2 I) over all N exemplars (extra
    exemplars added with ``set_exemplars`` / ``load_run(extra_exemplars=...)`` included). The codes must be
    fresh (``load_run`` refreshes them; otherwise call ``model.prior.refresh(model.encoder)``).

    Args:
        model: a VAE whose prior has an exemplar set (the exemplar prior).
        x: [B, D] inputs in [0, 1].
        k: exemplars per input, 1 <= k <= N.

    Returns:
        ``Explanation(ids [B, k], responsibilities [B, k] float64, mass [B] float64)``, largest first.

    Raises:
        ConfigError: the prior has no exemplar set, or k is out of range.
        DataError: x is not [B, D] with the model's D.
    """
    centers, log_var = _kernel_prior(model)
    data_dim = math.prod(model.image_shape)
    if x.ndim != 2 or x.shape[1] != data_dim:
        raise DataError(
            f"inputs must be [B, {data_dim}] for images of shape {model.image_shape}, got {tuple(x.shape)}"
        )
    model.eval()
    mu = model.encoder.mean(x.to(device=model.device, dtype=torch.float32))  # [B, d]
    ids, resp = top_responsibilities(mu, centers, log_var, k)
    return Explanation(ids, resp, resp.sum(1))


@torch.no_grad()
def explanation_grid(model: VAE, x: Tensor, explanation: Explanation) -> Tensor:
    """Rows of an input followed by its k exemplars (grey images from the prior's exemplar set).

    Args:
        x: [B, D] the inputs that were explained.
        explanation: ``explain(model, x, k)``.

    Returns:
        [B, 1 + k, D] pixel values in [0, 1], on the CPU.
    """
    store = model.prior.exemplar_set()
    if store is None:
        raise ConfigError(f"the {type(model.prior).__name__} has no exemplar set")
    b, k = explanation.ids.shape
    rows = store.gather(explanation.ids.reshape(-1).cpu()).cpu().reshape(b, k, -1)  # [B, k, D]
    return torch.cat([x.detach().float().cpu().unsqueeze(1), rows], dim=1)


def read_images(paths: Sequence[str | Path], image_shape: Sequence[int]) -> Tensor:
    """Image files (PNG, JPEG, ... read with Pillow) as model inputs: [B, D] float32 in [0, 1].

    Each image is converted to the model's channels (grey "L" for C = 1, "RGB" for C = 3; alpha dropped)
    and flattened in (C, H, W) order; values are pixel / 255. Nothing is resized.

    Args:
        paths: the files.
        image_shape: (C, H, W) of the model's images.

    Raises:
        DataError: a file is missing or unreadable, or its size is not the model's W x H.
        ConfigError: no files, or a model with a number of channels other than 1 or 3.
    """
    c, h, w = (int(v) for v in image_shape)
    if c not in (1, 3):
        raise ConfigError(f"images can be read for 1- or 3-channel models only, this one has {c} channels")
    if not paths:
        raise ConfigError("no images given")
    out = np.empty((len(paths), c, h, w), dtype=np.uint8)
    for i, path in enumerate(paths):
        pixels = decode_image(Path(path).expanduser(), "L" if c == 1 else "RGB")  # [H', W'(, 3)]
        if pixels.shape[:2] != (h, w):
            raise DataError(
                f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} pixels, but the model takes {w}x{h} "
                "images (resize or crop it first)"
            )
        out[i] = pixels.reshape(h, w, c).transpose(2, 0, 1)
    return torch.from_numpy(out.reshape(len(paths), -1)).float().div_(255.0)
