"""Slow, obvious float64 references for the package's formulas (used by the tests only).

Everything here is numpy/scipy on float64 arrays, written the way the formula reads (direct differences,
explicit loops over mixture components, a variance divided rather than a precision multiplied). Nothing
here calls ``exemplar_vae``: the tests compare the library against these functions.

Units are nats. Shapes follow the library: ``[B, d]`` codes, ``[K, d]`` component parameters, ``[B]``
log-densities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import logsumexp

LOG_2PI = math.log(2.0 * math.pi)


def as64(x: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor or array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


def float64_network(module: Any) -> Callable[..., Any]:
    """A float64 deep copy of a torch network as a function of numpy arrays (tuples of outputs stay tuples)."""
    import copy

    import torch

    m64 = copy.deepcopy(module).double()

    def f(*arrays: np.ndarray) -> Any:
        with torch.no_grad():
            out = m64(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in arrays))
        return tuple(as64(o) for o in out) if isinstance(out, tuple) else as64(out)

    return f


# -- single densities ------------------------------------------------------------------------------
def log_normal_diag(x: Any, mean: Any, log_var: Any) -> np.ndarray:
    """log N(x; mean, diag(var)) summed over the last axis, with var = exp(log_var): [..., D] -> [...]."""
    x, mean, log_var = as64(x), as64(mean), as64(log_var)
    var = np.exp(log_var)
    return np.sum(-0.5 * np.log(2.0 * np.pi * var) - (x - mean) ** 2 / (2.0 * var), axis=-1)


def log_normal_standard(x: Any) -> np.ndarray:
    """log N(x; 0, I) summed over the last axis."""
    x = as64(x)
    return np.sum(-0.5 * LOG_2PI - 0.5 * x**2, axis=-1)


def log_sigmoid(t: np.ndarray) -> np.ndarray:
    """log sigmoid(t) = -log(1 + exp(-t)), stable for large |t|."""
    return -np.logaddexp(0.0, -t)


def log_bernoulli_logits(x: Any, logits: Any) -> np.ndarray:
    """sum_i x_i log p_i + (1 - x_i) log (1 - p_i) with p = sigmoid(logits): [..., D] -> [...]."""
    x, logits = as64(x), as64(logits)
    return np.sum(x * log_sigmoid(logits) + (1.0 - x) * log_sigmoid(-logits), axis=-1)


def log_discretized_logistic(x: Any, loc: Any, log_scale: Any, levels: int = 256) -> np.ndarray:
    """log P(x) of a logistic discretised into ``levels`` bins, written as CDF differences in float64 with
    scipy's expit; the end bins are open (-inf, h] and [1 - h, inf): [..., D] -> [...]."""
    from scipy.special import expit

    x, loc, s = as64(x), as64(loc), np.exp(as64(log_scale))
    half = 0.5 / (levels - 1)
    upper = np.where(x > 1.0 - half, 1.0, expit((x + half - loc) / s))
    lower = np.where(x < half, 0.0, expit((x - half - loc) / s))
    return np.sum(np.log(upper - lower), axis=-1)


def squared_distances(a: Any, b: Any) -> np.ndarray:
    """||a_i - b_j||^2 by direct differences: [A, D], [B, D] -> [A, B]."""
    a, b = as64(a), as64(b)
    out = np.empty((a.shape[0], b.shape[0]))
    for j in range(b.shape[0]):
        out[:, j] = np.sum((a - b[j]) ** 2, axis=-1)
    return out


# -- reductions ------------------------------------------------------------------------------------
def log_mean_exp(x: Any, axis: int) -> np.ndarray:
    """log (1/n) sum exp(x) along ``axis``."""
    x = as64(x)
    return logsumexp(x, axis=axis) - math.log(x.shape[axis])


def masked_log_mean_exp(log_terms: Any, mask: Any = None, count: Any = None) -> np.ndarray:
    """Row by row: log (1/count) sum of exp over the unmasked terms; -inf when nothing is kept.

    ``count`` defaults to the number of kept terms of the row; it may be an int or a per-row sequence.
    """
    log_terms = as64(log_terms)
    rows, cols = log_terms.shape
    mask = np.zeros((rows, cols), dtype=bool) if mask is None else np.asarray(as64(mask), dtype=bool)
    out = np.empty(rows)
    for b in range(rows):
        kept = [log_terms[b, k] for k in range(cols) if not mask[b, k]]
        if count is None:
            n = len(kept)
        elif np.ndim(count) == 0:
            n = float(as64(count))
        else:
            n = float(as64(count)[b])
        out[b] = -np.inf if not kept else logsumexp(kept) - math.log(n)
    return out


def leave_one_out_mask(query_index: Any, component_index: Any) -> np.ndarray:
    """[B, K] True where component k is the query point itself."""
    q, c = np.asarray(query_index), np.asarray(component_index)
    return np.array([[q[b] == c[k] for k in range(len(c))] for b in range(len(q))], dtype=bool)


# -- mixtures --------------------------------------------------------------------------------------
def diag_mixture_log_prob(z: Any, means: Any, log_vars: Any) -> np.ndarray:
    """log (1/K) sum_k N(z; means_k, diag exp(log_vars_k)), one component at a time: [B, d] -> [B]."""
    z, means, log_vars = as64(z), as64(means), as64(log_vars)
    k = means.shape[0]
    comps = np.stack([log_normal_diag(z, means[j], log_vars[j]) for j in range(k)], axis=1)  # [B, K]
    return logsumexp(comps, axis=1) - math.log(k)


def isotropic_exemplar_log_prob(
    z: Any,
    centers: Any,
    log_var: Any,
    query_index: Sequence[int] | None = None,
    center_index: Sequence[int] | None = None,
    count: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Parzen window log (1/n) sum_j N(z_b; c_j, sigma^2 I), with an explicit leave-one-out loop.

    Component j is skipped for query b when ``center_index[j] == query_index[b]``. The sum is divided by
    the number of components kept for that query, or by ``count`` (a number or one per query) if given.
    A query with no component left gets -inf.
    """
    z, centers = as64(z), as64(centers)
    log_var = float(as64(log_var))
    b, d = z.shape
    terms = np.full((b, centers.shape[0]), -np.inf)  # [B, M], -inf = skipped
    kept = np.zeros(b)
    for j in range(centers.shape[0]):
        sq = np.sum((z - centers[j]) ** 2, axis=1)  # [B], direct difference
        term = -0.5 * d * (LOG_2PI + log_var) - 0.5 * sq / math.exp(log_var)
        keep = np.ones(b, dtype=bool)
        if query_index is not None and center_index is not None:
            keep = np.asarray(query_index) != center_index[j]  # the point never explains itself
        terms[keep, j] = term[keep]
        kept += keep
    n = kept if count is None else np.broadcast_to(np.asarray(count, dtype=np.float64), (b,))
    out = np.full(b, -np.inf)  # a query with nothing kept stays -inf
    some = kept > 0
    out[some] = logsumexp(terms[some], axis=1) - np.log(n[some])
    return out


# -- likelihoods -----------------------------------------------------------------------------------
def log_weights(
    x: Any,
    z: Any,
    mean: Any,
    log_var: Any,
    logits_fn: Callable[[np.ndarray], np.ndarray],
    log_prior_fn: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Brute-force log w[s, b] = log p(x_b|z_sb) + log p(z_sb) - log q(z_sb|x_b), a loop over samples.

    Args:
        x: [B, D] binary inputs.
        z: [S, B, d] samples.
        mean, log_var: [B, d] parameters of q(z|x).
        logits_fn: [n, d] -> [n, D] decoder logits (float64).
        log_prior_fn: [n, d] -> [n] log p(z).

    Returns:
        [S, B] log-weights.
    """
    x, z, mean, log_var = as64(x), as64(z), as64(mean), as64(log_var)
    out = np.empty(z.shape[:2])
    for s in range(z.shape[0]):
        log_px = log_bernoulli_logits(x, logits_fn(z[s]))  # [B]
        out[s] = log_px + log_prior_fn(z[s]) - log_normal_diag(z[s], mean, log_var)
    return out


def importance_sampled_log_likelihood(log_w: Any) -> np.ndarray:
    """log (1/S) sum_s exp(log_w[s, b]): [S, B] -> [B]."""
    return log_mean_exp(log_w, axis=0)


def latent_grid(lo: float, hi: float, points: int, dim: int) -> tuple[np.ndarray, float]:
    """A uniform grid over [lo, hi]^dim: ([points^dim, dim] nodes, volume of one cell)."""
    axis = np.linspace(lo, hi, points)
    h = axis[1] - axis[0]
    nodes = np.stack(np.meshgrid(*([axis] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    return nodes, h**dim


def exact_log_px(
    x: Any,
    logits_fn: Callable[[np.ndarray], np.ndarray],
    log_prior_fn: Callable[[np.ndarray], np.ndarray],
    lo: float,
    hi: float,
    points: int,
    dim: int,
) -> np.ndarray:
    """log p(x) = log int p(x|z) p(z) dz by a Riemann sum over a fine grid, in log space.

    The integrand decays to zero well inside the box for the tests' models, so the uniform rule is
    spectrally accurate (the tests still compare two grid sizes).

    Returns:
        [B] log-likelihoods in nats.
    """
    x = as64(x)
    nodes, cell = latent_grid(lo, hi, points, dim)  # [G, d]
    logits = logits_fn(nodes)  # [G, D]
    log_pz = log_prior_fn(nodes)  # [G]
    out = np.empty(x.shape[0])
    for b in range(x.shape[0]):
        out[b] = logsumexp(log_bernoulli_logits(x[b], logits) + log_pz) + math.log(cell)
    return out


# -- small schedules -------------------------------------------------------------------------------
def kl_warmup(epoch: int, warmup_epochs: int) -> float:
    """beta = epoch / warmup_epochs while warming up (epochs from 1), then 1; 1 without warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return epoch / warmup_epochs if epoch < warmup_epochs else 1.0


def bits_per_dim(nats_per_example: float, num_dims: int) -> float:
    """nats per example -> bits per dimension: divide by D and by log 2."""
    return nats_per_example / num_dims / math.log(2.0)
