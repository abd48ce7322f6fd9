"""The exemplar prior truncated to each test point's nearest exemplars, for importance sampling.

Scoring S samples of a test point against all N exemplars costs S x N kernel terms. Every sample of a
test point is drawn near the point's encoder mean, so the exemplars whose codes are nearest that mean carry
almost all of the mixture's mass for it. Keeping only the K nearest (found once per test point) makes the
prior K/N times cheaper; dropping positive mixture terms can only lower the value, so the estimate is a
lower bound on the full-prior one (``evaluation.certify`` bounds the gap from above).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from exemplar_vae.functional import isotropic_log_normaliser, kernel_dtype
from exemplar_vae.priors.base import KernelMixture
from exemplar_vae.retrieval import knn_search


def nearest_candidates(mixture: KernelMixture, mean: Tensor, k: int) -> Tensor:
    """The k mixture components whose centres are nearest each test point's encoder mean.

    Args:
        mixture: the prior as a kernel mixture ([N, d] centres).
        mean: [B, d] encoder means of the test points.
        k: candidates per test point, 1 <= k <= N.

    Returns:
        [B, k] int64 rows of ``mixture.centers``, nearest first.
    """
    return knn_search(mean, mixture.centers, k)[1]


def candidate_log_prob(z: Tensor, candidates: Tensor, log_var: Tensor, num_total: int) -> Tensor:
    """log (1/N) sum_{k} N(z; c_k, sigma^2 I) over a per-column candidate set only.

    Dropping components can only lower a mixture of positive terms, so this is a lower bound on the full
    prior whose N components include the candidates.

    Args:
        z: [S, B, d] codes; column b was drawn for test point b.
        candidates: [B, K, d] the exemplar codes kept for each test point.
        log_var: scalar log sigma^2.
        num_total: N, the size of the full exemplar set (the mixture weight is 1/N).

    Returns:
        [S, B] log-densities (lower bounds), in z's dtype.
    """
    return candidate_scorer(candidates, log_var, num_total)(z)


def candidate_scorer(candidates: Tensor, log_var: Tensor, num_total: int) -> Callable[[Tensor], Tensor]:
    """``candidate_log_prob`` with the candidates' part computed once: f(z [S, B, d]) -> [S, B].

    Evaluation streams the samples of a batch in chunks; the candidates' part is shared by every chunk.
    One batched product of augmented vectors gives each exponent directly,

        [z, |z|^2, 1] . [c / s^2, -1 / (2 s^2), -|c|^2 / (2 s^2)] = -|z - c|^2 / (2 s^2)   (<= 0),

    so the kernel sum is exp and sum in place, with no max-shift pass. Codes are centred on the
    candidates' mean first. The expansion's rounding grows as 1 / s^2 (``functional.expansion_error``):
    a chunk whose bound passes ``KERNEL_TOLERANCE`` in the candidates' dtype (a narrow kernel) is computed
    in float64, so the value stays a lower bound on the full prior at any variance. The result is in z's
    dtype. Where a sample's sum falls below 1e-20 (every candidate far away; float32
    exponentials would underflow), its test point's column is recomputed with a shifted log-sum-exp.
    """
    d = candidates.shape[-1]
    shift = candidates.mean(1, keepdim=True)  # [B, 1, d]
    cc = candidates - shift  # [B, K, d]
    c_sq_max = float(cc.pow(2).sum(-1).max()) if cc.numel() else 0.0
    lv = float(log_var)
    parts: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}

    def prepared(dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(shift, augmented candidates [B, d + 2, K], constant) in ``dtype``, made once."""
        if dtype not in parts:
            sh = shift if dtype == candidates.dtype else candidates.to(dtype).mean(1, keepdim=True)
            ccd = cc if dtype == candidates.dtype else candidates.to(dtype) - sh  # centred in ``dtype``
            prec = torch.exp(-log_var.to(dtype))
            c_aug = torch.cat(
                [
                    prec * ccd,
                    (-0.5 * prec).expand(ccd.shape[:-1]).unsqueeze(-1),
                    (-0.5 * prec) * ccd.pow(2).sum(-1, True),
                ],
                -1,
            )  # [B, K, d + 2]
            const = torch.as_tensor(isotropic_log_normaliser(d, log_var.to(dtype)) - math.log(num_total))
            parts[dtype] = (sh, c_aug.transpose(1, 2).contiguous(), const)
        return parts[dtype]

    def exponents(z: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(z augmented [B, S, d + 2], the candidates' part, the constant) in ``dtype``."""
        sh, c_aug_t, const = prepared(dtype)
        zc = z.transpose(0, 1).to(dtype) - sh  # [B, S, d]
        z_aug = torch.cat([zc, zc.pow(2).sum(-1, True), torch.ones_like(zc[..., :1])], -1)  # [B, S, d + 2]
        return z_aug, c_aug_t, const

    def score(z: Tensor) -> Tensor:
        z_aug, c_aug_t, const = exponents(z, candidates.dtype)
        z_sq_max = float(z_aug[..., d].max()) if z_aug.numel() else 0.0
        precise = kernel_dtype(z_sq_max + c_sq_max, lv, d, candidates.dtype)
        if precise != candidates.dtype:  # a narrow kernel: the expansion needs float64 to stay a bound
            z_aug, c_aug_t, const = exponents(z, precise)
        total = torch.bmm(z_aug, c_aug_t).exp_().sum(-1)  # [B, S] sum_k exp(-|z - c_k|^2 / 2s^2)
        out = total.log()
        far = total < (1e-20 if total.dtype == torch.float32 else 1e-280)  # [B, S]
        cols = far.any(dim=1).nonzero().flatten()  # test points with at least one such sample
        if cols.numel():  # redo their columns (memory at most the main product's) with a shifted sum
            exponent = torch.bmm(z_aug[cols], c_aug_t[cols])  # [c, S, K]
            out[cols] = torch.where(far[cols], torch.logsumexp(exponent, dim=-1), out[cols])
        return (out + const).transpose(0, 1).to(z.dtype)

    return score


def truncated_scorer(mixture: KernelMixture, mean: Tensor, k: int) -> Callable[[Tensor], Tensor]:
    """f(z [S, B, d]) -> [S, B]: the prior of every column b truncated to the k components nearest
    ``mean[b]`` (a lower bound on the full mixture)."""
    candidates = mixture.centers[nearest_candidates(mixture, mean, k)]  # [B, k, d]
    return candidate_scorer(candidates, mixture.log_var, mixture.centers.shape[0])
