"""Pure math shared by the whole package: one home for each formula.

Every function here takes tensors and returns tensors; none holds state, reads a config or picks a device.
Units are nats throughout. ``tests/reference.py`` holds slow float64 versions of each formula and the
tests compare the two.

References:
    Norouzi, Fleet, Norouzi. Exemplar VAE: Linking Generative Models, Nearest Neighbor Retrieval, and
    Data Augmentation. NeurIPS 2020 (arXiv:2004.04795).
    Tomczak, Welling. VAE with a VampPrior. AISTATS 2018.
    Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def full_precision(t: Tensor) -> Tensor:
    """float32 for half-precision tensors (mixed-precision network outputs), else unchanged (float64 stays)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def log_normal_diag(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; mean, diag(exp(log_var))) summed over the last dimension.

    Args:
        x: [..., D] points.
        mean: [..., D] means (broadcast against ``x``).
        log_var: [..., D] log-variances (broadcast against ``x``).

    Returns:
        [...] log-densities in nats.
    """
    return -0.5 * (LOG_2PI + log_var + (x - mean).pow(2) * torch.exp(-log_var)).sum(-1)


def log_normal_standard(x: Tensor) -> Tensor:
    """log N(x; 0, I) summed over the last dimension: [..., D] -> [...]."""
    return -0.5 * (LOG_2PI + x.pow(2)).sum(-1)


def log_bernoulli_logits(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last dimension.

    Args:
        x: [..., D] targets in [0, 1] (binary data, or probabilities for a cross-entropy).
        logits: [..., D] decoder logits.

    Returns:
        [...] log-likelihoods in nats.

    Computed as sum(x * logits) - sum(softplus(logits)) (the same terms as a cross-entropy with logits,
    in two element-wise passes instead of its five; in evaluation this runs on S x B x D values). Above
    the threshold softplus(l) = l is exact to the dtype's precision: log1p(exp(-l)) < 2e-9 for l > 20 in
    float32 (whose spacing at 20 is 2e-6), < 5e-18 for l > 40 in float64.
    """
    threshold = 40.0 if logits.dtype == torch.float64 else 20.0
    # a broadcast product and sum over samples [S, B, D] of inputs [B, D]: an einsum / batched matvec
    # would first copy the strided layout (docs/speed.md)
    dot = (logits * x.to(logits.dtype)).sum(-1)
    return dot - F.softplus(logits, threshold=threshold).sum(-1)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_discretized_logistic(x: Tensor, loc: Tensor, log_scale: Tensor, levels: int = 256) -> Tensor:
    """log P(x) of 8-bit data under a logistic discretised into ``levels`` bins, summed over the last dim.

    Values x = k / (levels - 1), k = 0..levels-1, own the bin [x - h, x + h] with h = 0.5 / (levels - 1);
    the first bin extends to -inf and the last to +inf, so the probabilities of the ``levels`` values sum
    to 1 (Salimans et al. 2017, PixelCNN++). The bin mass sigmoid(a) - sigmoid(b) is computed on the side
    where both sigmoids are small, so it stays accurate for narrow scales and far tails.

    Args:
        x: [..., D] values in [0, 1], multiples of 1 / (levels - 1).
        loc: [..., D] logistic locations (in data units).
        log_scale: [..., D] log of the logistic scales (in data units).
        levels: number of values (256 for 8-bit data).

    Returns:
        [...] log-probabilities in nats.
    """
    half = 0.5 / (levels - 1)
    inv_s = torch.exp(-log_scale)
    hi = (x + half - loc) * inv_s  # [..., D] standardised upper edge
    lo = (x - half - loc) * inv_s  # [..., D] standardised lower edge
    flip = (hi + lo) > 0  # sigmoid(hi) - sigmoid(lo) == sigmoid(-lo) - sigmoid(-hi)
    big, small = torch.where(flip, -lo, hi), torch.where(flip, -hi, lo)
    log_big = F.logsigmoid(big)
    middle = log_big + log1mexp(torch.minimum(F.logsigmoid(small) - log_big, torch.zeros_like(log_big)))
    first, last = x < half, x > 1.0 - half
    out = torch.where(first, F.logsigmoid(hi), torch.where(last, F.logsigmoid(-lo), middle))
    return out.sum(-1)


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances between rows: ||a_i - b_j||^2.

    Uses the expansion ||a||^2 + ||b||^2 - 2 a.b (one matrix product), clamped at zero. In float32 its
    absolute error reaches about 1e-6 * ||a||^2 (measured against a float64 direct difference in
    ``tests/test_functional.py``); callers that need better centre their codes or pass float64.

    Args:
        a: [A, D] rows.
        b: [B, D] rows.

    Returns:
        [A, B] squared distances.
    """
    a2 = a.pow(2).sum(-1, keepdim=True)  # [A, 1]
    b2 = b.pow(2).sum(-1).unsqueeze(0)  # [1, B]
    return (a2 + b2 - 2.0 * a @ b.transpose(0, 1)).clamp_min_(0.0)  # [A, B]


def isotropic_log_kernel(sq_dist: Tensor, log_var: Tensor, dim: int) -> Tensor:
    """log N(z; mu, sigma^2 I) from a squared distance ||z - mu||^2.

    Args:
        sq_dist: [...] squared distances.
        log_var: scalar tensor, log sigma^2 shared by all components and dimensions.
        dim: latent dimensionality D.

    Returns:
        [...] log-densities in nats.
    """
    return -0.5 * (dim * (LOG_2PI + log_var) + sq_dist * torch.exp(-log_var))


def isotropic_log_normaliser(dim: int, log_var: Tensor | float) -> Tensor | float:
    """log of N(z; mu, sigma^2 I)'s normalising constant, -dim/2 (log 2 pi + log sigma^2), in nats.

    Args:
        dim: latent dimensionality D.
        log_var: log sigma^2 (a scalar tensor or a float; the result has the same kind).
    """
    return -0.5 * dim * (LOG_2PI + log_var)


# nats: the largest rounding error accepted in an expanded kernel exponent before float64 is used
KERNEL_TOLERANCE = 1e-3


def expansion_error(sq_norm: float, log_var: float, dim: int, dtype: torch.dtype) -> float:
    """An estimate, with margin, of the rounding error (nats) of the expanded exponent
    -(|z|^2 + |c|^2 - 2 z.c) / (2 s^2) computed in ``dtype``: 2 eps sq_norm / s^2, for codes (centred
    first) with |z|^2 + |c|^2 <= sq_norm.

    The error is about eps times the largest term, sq_norm / (2 s^2). Measured in float32 against float64
    (d = 40, codes spread 1 and 3, log s^2 from -1.7 to -12; tests/test_narrow_kernels.py) the largest
    error was 0.4 to 0.7 eps sq_norm / s^2, so this estimate is 3 to 5 times the measured one. ``dim`` is
    not a factor: the rounding of the d products does not accumulate beyond the terms' size.
    """
    return 2.0 * torch.finfo(dtype).eps * sq_norm * math.exp(-log_var)


def kernel_dtype(sq_norm: float, log_var: float, dim: int, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """``dtype`` when its ``expansion_error`` is within ``KERNEL_TOLERANCE``, else float64."""
    if dtype == torch.float64 or expansion_error(sq_norm, log_var, dim, dtype) <= KERNEL_TOLERANCE:
        return dtype
    return torch.float64


def leave_one_out_mask(query_index: Tensor, component_index: Tensor) -> Tensor:
    """True where a component is the query point itself and must not explain it.

    Args:
        query_index: [B] dataset index of each query point.
        component_index: [K] dataset index of each mixture component (exemplar).

    Returns:
        [B, K] boolean mask.
    """
    return query_index.unsqueeze(1) == component_index.unsqueeze(0)  # [B, K]


def masked_log_mean_exp(log_terms: Tensor, mask: Tensor | None, count: Tensor | int | None = None) -> Tensor:
    """log (1 / count) sum_k exp(log_terms[b, k]) over the components that are not masked.

    The masked terms are set to -inf (never subtracted), and the default normaliser is the number of
    unmasked components of each row, so a leave-one-out mixture over M exemplars is divided by M - 1 when
    the point is among them and by M otherwise.

    Args:
        log_terms: [B, K] per-component log-densities.
        mask: [B, K] True where a component is excluded, or None.
        count: the normaliser per row ([B] tensor or int); default: unmasked components per row. Pass a
            larger count to get the value of a mixture of which only some components were kept (a lower
            bound on the full mixture).

    Returns:
        [B] log mixture densities; -inf for a row with no component left.
    """
    if mask is not None:
        log_terms = log_terms.masked_fill(mask, float("-inf"))
    if count is None:
        count = log_terms.shape[-1] - (mask.sum(-1) if mask is not None else 0)
    if not isinstance(count, Tensor):
        count = torch.tensor(float(count), dtype=log_terms.dtype, device=log_terms.device)
    # a row with nothing left has logsumexp = -inf; clamping its count of 0 keeps it -inf instead of NaN
    return torch.logsumexp(log_terms, dim=-1) - torch.log(count.to(log_terms.dtype).clamp_min(1.0))


def responsibilities(log_terms: Tensor, mask: Tensor | None) -> Tensor:
    """Each row's posterior over its mixture components, r_bk = exp(l_bk) / sum_k' exp(l_bk'), with the
    masked components at 0.

    Args:
        log_terms: [B, K] per-component log-densities (the mixture weights may be left out: they are
            equal and cancel).
        mask: [B, K] True where a component is excluded (leave-one-out), or None.

    Returns:
        [B, K] responsibilities in ``log_terms``' dtype, each row summing to 1; a row with no component
        left is all 0.
    """
    if mask is not None:
        log_terms = log_terms.masked_fill(mask, float("-inf"))
    total = torch.logsumexp(log_terms, dim=-1, keepdim=True)  # [B, 1]
    r = torch.exp(log_terms - total)  # [B, K]; NaN in a row with nothing left (-inf - -inf)
    return torch.nan_to_num(r, nan=0.0)


def mass_carrying_components(resp: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """For each row, the smallest set of components whose dropped responsibility is at most ``tolerance``.

    The set is the row's n_b largest entries, n_b the smallest count with sum(dropped) <= tolerance (so the
    mass kept is >= 1 - tolerance for rows that sum to 1); ties at the boundary are broken arbitrarily,
    which keeps the count minimal. The dropped mass is summed from the dropped entries themselves, smallest
    first, so it is accurate even when tiny; with tolerance 0 every entry > 0 is kept.

    An entry r < tolerance / K is never kept: were it among the n_b largest, everything after the
    (n_b - 1)-th would be < tolerance / K, at most K entries, so dropping them would already have been
    enough. Only the entries at or above that floor are ranked (``topk``), not the whole row.

    Args:
        resp: [B, K] non-negative responsibilities (``responsibilities``).
        tolerance: 0 <= tolerance < 1, the responsibility a row may drop.

    Returns:
        keep: [B, K] bool, the components kept for each row.
        dropped: [B] the responsibility each row drops (<= tolerance), in ``resp``'s dtype.
    """
    b, k = resp.shape
    floor = tolerance / k if k else 0.0
    candidate = resp >= floor if tolerance > 0 else resp > 0  # [B, K]
    c = int(candidate.sum(-1).max()) if b and k else 0  # the most entries a row may need
    if c == 0:
        return torch.zeros_like(resp, dtype=torch.bool), resp.sum(-1)
    top, where = resp.topk(c, dim=-1)  # [B, c] descending, [B, c] their columns
    ranked = torch.zeros_like(resp, dtype=torch.bool).scatter_(-1, where, True)  # [B, K]
    rest = resp.masked_fill(ranked, 0.0).sum(-1, keepdim=True)  # [B, 1] mass outside the top c (< tolerance)
    suffix = top.flip(-1).cumsum(-1).flip(-1)  # [B, c] suffix[b, j] = sum of top[b, j:], smallest first
    tails = torch.cat([suffix, torch.zeros_like(rest)], -1) + rest  # [B, c + 1] dropped mass keeping j
    count = (tails > tolerance).sum(-1, keepdim=True).clamp_max(c)  # [B, 1] n_b (tails is non-increasing)
    keep_ranked = torch.arange(c, device=resp.device).unsqueeze(0) < count  # [B, c]
    keep = torch.zeros_like(ranked).scatter_(-1, where, keep_ranked)  # [B, K]
    return keep, tails.gather(-1, count).squeeze(-1)


def log_mean_exp(x: Tensor, dim: int) -> Tensor:
    """log (1/n) sum_i exp(x_i) along ``dim``, computed stably with logsumexp."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def reparameterize(mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """z = mean + exp(log_var / 2) * eps (the reparameterisation trick); shapes broadcast."""
    return mean + torch.exp(0.5 * log_var) * eps


def kl_warmup(epoch: int, warmup_epochs: int) -> float:
    """Linear KL warm-up: beta = min(1, epoch / warmup_epochs), epochs counted from 1; 1 if no warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


def bits_per_dim(nats_per_example: float, num_dims: int) -> float:
    """Convert a negative log-likelihood in nats per example to bits per dimension."""
    return nats_per_example / (num_dims * math.log(2.0))
