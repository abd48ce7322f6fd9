"""The exemplar prior: a Parzen window over the encoded training set.

    p(z | X) = 1/N sum_n N(z; mu_phi(x_n), sigma^2 I)

with mu_phi the encoder's mean network (shared with q) and one learned scalar log sigma^2.

Training forms (Norouzi et al. 2020, Sec. 3 and the official code):

* leave-one-out: a training point's own exemplar is masked out (-inf) and the mixture is divided by the
  number of exemplars left;
* exemplar subsampling: every minibatch draws a fresh random subset of M of the N exemplars (without
  replacement, the paper's definition);
* exact mode (k = 0): the M exemplars are encoded with gradient and the full M-component mixture is used;
* retrieval augmented training (k > 0): the k codes nearest to each z among the M-subset are found in a
  cache of all exemplar codes (refreshed by the training loop, stale within an epoch); the union of the
  retrieved exemplars is re-encoded with gradient, and log p(z) is the mixture over that union with the
  exact mixture's weight 1/(M - #left out). All terms are positive, so this is a lower bound on the exact
  subsampled leave-one-out log p(z); it is equal when the union covers the M-subset.

At evaluation (``prior.eval()``) the prior is the whole exemplar set, without leave-one-out, computed
from the cache in blocks (memory stays bounded for 50k exemplars and thousands of codes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from exemplar_vae.errors import ConfigError
from exemplar_vae.functional import (
    LOG_2PI,
    isotropic_log_kernel,
    leave_one_out_mask,
    masked_log_mean_exp,
    squared_distances,
)
from exemplar_vae.interfaces import Encoder
from exemplar_vae.priors.base import Prior
from exemplar_vae.retrieval import CodeCache, knn_search


def exemplar_log_kernel(z: Tensor, centers: Tensor, log_var: Tensor) -> Tensor:
    """log N(z_b; c_m, sigma^2 I) for every pair: [B, d], [M, d] -> [B, M].

    Distances are taken in float64 (the paper's code does the same): the prior's variance can become
    small, and the squared-distance expansion in float32 would then cost accuracy.
    """
    sq = squared_distances(z.double(), centers.double())  # [B, M]
    return isotropic_log_kernel(sq, log_var.double(), z.shape[-1])


def streaming_exemplar_log_prob(
    z: Tensor, centers: Tensor, log_var: Tensor, max_elements: int = 2**22
) -> Tensor:
    """log (1/N) sum_n N(z; c_n, sigma^2 I) over all N centers, in blocks of rows and centers.

    The squared distance is expanded and the row term ||z||^2 pulled out of the log-sum-exp, so each
    block costs one fused matrix product (``addmm``) and one log-sum-exp:

        log sum_n exp(-||z - c_n||^2 / 2s^2) = -||z||^2 / 2s^2 + log sum_n exp((z.c_n - ||c_n||^2 / 2) / s^2)

    Codes are first centred on the mean center, which keeps the expansion accurate in float32 (the error
    is about 1e-7 * ||z - c|| * ||c_n - c|| / s^2 nats; tested against a float64 direct difference).

    Args:
        z: [B, d] codes (computation happens in z's dtype).
        centers: [N, d] exemplar codes.
        log_var: scalar log sigma^2.
        max_elements: bound on the size of one [rows, centers] block.

    Returns:
        [B] log-densities, in z's dtype.
    """
    n, d = centers.shape
    dtype = z.dtype
    shift = centers.mean(0, dtype=dtype)  # [d]
    zc, cc = z - shift, centers.to(dtype) - shift  # [B, d], [N, d]
    log_var = log_var.to(dtype)
    prec = torch.exp(-log_var)
    bias = (-0.5 * prec) * cc.pow(2).sum(-1)  # [N]
    center_chunk = min(n, max(1, max_elements // 64))
    row_chunk = max(1, max_elements // center_chunk)
    out = []
    for zb in zc.split(row_chunk):
        acc = torch.full((zb.shape[0],), float("-inf"), dtype=dtype, device=z.device)
        for cb, bb in zip(cc.split(center_chunk), bias.split(center_chunk)):
            logits = torch.addmm(bb, zb, cb.T, alpha=float(prec))  # [r, c] = (z.c - |c|^2 / 2) / s^2
            acc = torch.logaddexp(acc, torch.logsumexp(logits, dim=1))
        out.append(acc - 0.5 * prec * zb.pow(2).sum(-1))
    return torch.cat(out) - 0.5 * d * (LOG_2PI + log_var) - math.log(n)


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
    d = z.shape[-1]
    prec = torch.exp(-log_var.to(z.dtype))
    shift = candidates.mean(1, keepdim=True)  # [B, 1, d]: centring keeps the expansion accurate
    zc = z.transpose(0, 1) - shift  # [B, S, d]
    cc = candidates - shift  # [B, K, d]
    logits = torch.baddbmm(
        (-0.5 * prec) * cc.pow(2).sum(-1).unsqueeze(1), zc, cc.transpose(1, 2), alpha=float(prec)
    )  # [B, S, K] = (z.c - |c|^2 / 2) / s^2
    lse = torch.logsumexp(logits, dim=-1) - 0.5 * prec * zc.pow(2).sum(-1)  # [B, S]
    return (lse - 0.5 * d * (LOG_2PI + log_var.to(z.dtype)) - math.log(num_total)).transpose(0, 1)


def build_clusters(
    codes: Tensor, num_clusters: int, iters: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Partition exemplar codes with a few Lloyd (k-means) iterations, for distance bounds.

    The bounds built on this partition are valid whatever the quality of the clustering: each cluster's
    radius is the exact largest distance of its members to its centroid (computed in float64).

    Args:
        codes: [N, d] exemplar codes.
        num_clusters: G (capped at N).
        iters: Lloyd iterations.
        seed: seeds the initial centroids.

    Returns:
        (centroids [G, d] float64, radii [G] float64, assignment [N] int64).
    """
    x = codes.double()
    g = min(num_clusters, x.shape[0])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centroids = x[torch.randperm(x.shape[0], generator=gen)[:g].to(x.device)]  # [G, d]
    for _ in range(iters):
        assign = squared_distances(x, centroids).argmin(1)  # [N]
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=g).unsqueeze(1).double()  # [G, 1]
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    assign = squared_distances(x, centroids).argmin(1)
    dist = (x - centroids[assign]).norm(dim=1)  # [N]
    radii = torch.zeros(g, dtype=torch.float64, device=x.device).scatter_reduce_(0, assign, dist, "amax")
    return centroids, radii, assign


def dropped_mass_upper_bound(
    z: Tensor,
    log_var: Tensor,
    centroids: Tensor,
    radii: Tensor,
    remaining: Tensor,
    anchor: Tensor,
    anchor_radius: Tensor,
) -> Tensor:
    """Upper bound on log sum_{n dropped} N(z; c_n, sigma^2 I) for exemplars left out of a truncation.

    Every dropped exemplar n of cluster g satisfies ||z - c_n|| >= ||z - centroid_g|| - radius_g, and (as it
    was not among the candidates nearest the test point's anchor) ||z - c_n|| >= anchor_radius - ||z -
    anchor||. The kernel decreases with distance, so each cluster contributes at most (its dropped count)
    x the kernel at the larger of the two distance bounds (clamped at 0).

    Args:
        z: [S, B, d] codes, column b drawn for test point b.
        log_var: scalar log sigma^2.
        centroids: [G, d] cluster centroids; radii: [G] cluster radii.
        remaining: [B, G] number of dropped exemplars of each cluster, per test point.
        anchor: [B, d] the point each truncation searched around (the encoder mean).
        anchor_radius: [B] distance from the anchor to its farthest kept candidate.

    Returns:
        [S, B] float64 upper bounds (-inf where nothing was dropped).
    """
    s, b, d = z.shape
    z64 = z.double()
    to_centroid = squared_distances(z64.reshape(s * b, d), centroids).sqrt().reshape(s, b, -1)  # [S, B, G]
    by_cluster = (to_centroid - radii).clamp_min(0.0)  # [S, B, G]
    by_anchor = (anchor_radius.double() - (z64 - anchor.double()).norm(dim=-1)).clamp_min(0.0)  # [S, B]
    lower_dist = torch.maximum(by_cluster, by_anchor.unsqueeze(-1))  # [S, B, G]
    log_k = isotropic_log_kernel(lower_dist.pow(2), log_var.double(), d)  # [S, B, G]
    log_count = torch.log(remaining.double()).unsqueeze(0)  # [1, B, G], -inf where none dropped
    return torch.logsumexp(log_k + log_count, dim=-1)


class ExemplarPrior(Prior):
    """Parzen-window prior over encoded exemplars, with leave-one-out, subsampling and retrieval.

    Args:
        exemplars: [N, D] exemplar inputs (the grey training images); not saved in checkpoints.
        latent_dim: d.
        num_exemplars: M, exemplars drawn per minibatch during training (None: N // 2).
        knn: k neighbours per point for retrieval augmented training; 0 for the exact prior over M.
        leave_one_out: mask each training point's own exemplar.
        search_backend: "auto", "faiss" or "torch" (see ``retrieval.knn_search``).
    """

    def __init__(
        self,
        exemplars: Tensor,
        latent_dim: int,
        num_exemplars: int | None = None,
        knn: int = 10,
        leave_one_out: bool = True,
        search_backend: str = "auto",
    ) -> None:
        super().__init__(latent_dim)
        n = exemplars.shape[0]
        if n < 1:
            raise ConfigError("the exemplar prior needs at least one exemplar, got an empty set")
        m = num_exemplars if num_exemplars is not None else max(1, n // 2)
        if not 1 <= m <= n:
            raise ConfigError(f"exemplars per step M={m} must be between 1 and N={n}")
        if not 0 <= knn <= m:
            raise ConfigError(f"k={knn} neighbours must be between 0 and M={m}")
        self.num_exemplars, self.knn, self.leave_one_out = m, knn, leave_one_out
        self.search_backend = search_backend
        self.log_var = nn.Parameter(torch.zeros(()))  # log sigma^2, one scalar for all exemplars and dims
        self.register_buffer("exemplars", exemplars, persistent=False)  # [N, D]
        self.cache = CodeCache()
        # Evaluation: None scores every code against all N exemplars; K keeps, for each test point, the K
        # exemplars whose codes are nearest its encoder mean (a lower bound; see ``batch_scorer``).
        self.eval_candidates: int | None = None
        self.bound_clusters: int | None = None  # k-means clusters behind the certified bounds (None: sqrt N)
        self._cluster_source: Tensor | None = None  # the cache tensor the partition below was built from
        self._cluster_cache: tuple[Tensor, Tensor, Tensor] = (torch.empty(0), torch.empty(0), torch.empty(0))

    # -- exemplar set -------------------------------------------------------------------------------
    @property
    def num_total(self) -> int:
        """N, the size of the exemplar set."""
        return self.exemplars.shape[0]

    def set_exemplars(self, exemplars: Tensor) -> None:
        """Replace the exemplar set (e.g. add new data without retraining); invalidates the cache."""
        if exemplars.ndim != 2 or exemplars.shape[0] < 1:
            raise ConfigError(
                f"exemplars must be a non-empty [N, D] tensor, got shape {tuple(exemplars.shape)}"
            )
        self.exemplars = exemplars.to(self.log_var.device)
        self.cache.invalidate()

    def refresh(self, encoder: Encoder) -> None:
        """Encode all exemplars into the code cache (an explicit call from the training loop)."""
        self.cache.refresh(encoder, self.exemplars)

    # -- training-time pieces ------------------------------------------------------------------------
    def draw_subset(self, generator: torch.Generator | None = None) -> Tensor:
        """M distinct exemplar indices, uniformly at random: [M] int64."""
        perm = torch.randperm(self.num_total, device=self.exemplars.device, generator=generator)
        return perm[: self.num_exemplars]

    def _normaliser(self, index: Tensor | None, subset: Tensor) -> Tensor:
        """Number of exemplars each point's mixture is averaged over: M, or M - 1 if it left itself out."""
        m = torch.full((1,), float(subset.shape[0]), dtype=torch.float64, device=subset.device)
        if index is None or not self.leave_one_out:
            return m
        member = torch.zeros(self.num_total, dtype=torch.bool, device=subset.device)
        member[subset] = True
        return m - member[index].double()  # [B]

    def exact_log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor) -> Tensor:
        """log p(z) over every exemplar of ``subset``, encoded with gradient: [B, d] -> [B]."""
        centers = encoder.mean(self.exemplars[subset])  # [M, d]
        log_k = exemplar_log_kernel(z, centers, self.log_var)  # [B, M]
        mask = leave_one_out_mask(index, subset) if (self.leave_one_out and index is not None) else None
        return masked_log_mean_exp(log_k, mask, self._normaliser(index, subset)).to(z.dtype)

    def retrieve(self, z: Tensor, index: Tensor | None, subset: Tensor) -> Tensor:
        """Indices of the exemplars whose cached codes are nearest to each z within the subset.

        Each point gets k neighbours other than itself (k + 1 are fetched under leave-one-out), and the
        union over the batch is returned: [U] int64 dataset indices.
        """
        codes = self.cache.get()[subset]  # [M, d]
        k = min(self.knn + (1 if self.leave_one_out and index is not None else 0), subset.shape[0])
        _, nearest = knn_search(z.detach(), codes, k, self.search_backend)  # [B, k] rows of subset
        return torch.unique(subset[nearest.reshape(-1)])  # [U]

    def knn_log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor) -> Tensor:
        """Retrieval lower bound on ``exact_log_prob``: the mixture over the retrieved union only."""
        union = self.retrieve(z, index, subset)  # [U]
        centers = encoder.mean(self.exemplars[union])  # [U, d], re-encoded with gradient
        log_k = exemplar_log_kernel(z, centers, self.log_var)  # [B, U]
        mask = leave_one_out_mask(index, union) if (self.leave_one_out and index is not None) else None
        return masked_log_mean_exp(log_k, mask, self._normaliser(index, subset)).to(z.dtype)

    # -- the Prior interface -------------------------------------------------------------------------
    def log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None = None) -> Tensor:
        if not self.training:
            return self.full_log_prob(z)
        if self.leave_one_out and index is None:
            raise ValueError("leave-one-out training needs the dataset index of every point")
        subset = self.draw_subset()
        if self.knn == 0:
            return self.exact_log_prob(z, encoder, index, subset)
        return self.knn_log_prob(z, encoder, index, subset)

    def full_log_prob(self, z: Tensor) -> Tensor:
        """The test-time prior over all N cached exemplar codes, no leave-one-out: [B, d] -> [B]."""
        return streaming_exemplar_log_prob(z, self.cache.get(), self.log_var.detach())

    def _truncation(self, mean: Tensor) -> tuple[Tensor, Tensor] | None:
        """(squared distances, indices), each [B, K], of the ``eval_candidates`` cached codes nearest each
        test point's encoder mean; None when the evaluation scores against every exemplar."""
        k = self.eval_candidates
        if self.training or k is None or k >= self.num_total:
            return None
        return knn_search(mean, self.cache.get(), k, self.search_backend)

    def batch_scorer(self, mean: Tensor, encoder: Encoder) -> Callable[[Tensor], Tensor]:
        """Importance-sampling scorer; with ``eval_candidates = K`` it keeps, for each test point, only the
        K exemplars whose cached codes are nearest the point's encoder mean (faiss search), which makes
        the prior term K/N times cheaper and the estimate a lower bound on the full-prior one."""
        truncation = self._truncation(mean)
        if truncation is None:
            return super().batch_scorer(mean, encoder)
        candidates = self.cache.get()[truncation[1]]  # [B, K, d]
        log_var = self.log_var.detach()
        return lambda z: candidate_log_prob(z, candidates, log_var, self.num_total)

    def _num_bound_clusters(self) -> int:
        g = self.bound_clusters if self.bound_clusters is not None else round(math.sqrt(self.num_total))
        return max(1, min(self.num_total, g))

    def _clusters(self) -> tuple[Tensor, Tensor, Tensor]:
        """The k-means partition of the current cache used by ``batch_bounds`` (rebuilt after a refresh)."""
        codes = self.cache.get()
        if self._cluster_source is not codes or self._cluster_cache[0].shape[0] != self._num_bound_clusters():
            g = self._num_bound_clusters()
            self._cluster_cache = build_clusters(codes, g)
            self._cluster_source = codes
        return self._cluster_cache

    def batch_bounds(self, mean: Tensor, encoder: Encoder) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """Certified bounds for the truncated evaluation: (the truncated value, that value plus an upper
        bound on the mass of the dropped exemplars, from a k-means partition of the codes and the
        truncation radius; see ``dropped_mass_upper_bound``)."""
        truncation = self._truncation(mean)
        if truncation is None:
            return super().batch_bounds(mean, encoder)
        codes = self.cache.get()
        sq_dist, nearest = truncation  # [B, K] each
        candidates = codes[nearest]  # [B, K, d]
        centroids, radii, assign = self._clusters()
        g = centroids.shape[0]
        kept = torch.zeros(mean.shape[0], g, dtype=torch.float64, device=codes.device)
        kept.scatter_add_(1, assign[nearest], torch.ones_like(nearest, dtype=torch.float64))  # [B, G]
        remaining = torch.bincount(assign, minlength=g).double().unsqueeze(0) - kept  # [B, G]
        # the K-th distance, shrunk by a relative 1e-6 so float32 rounding in the search cannot loosen it
        anchor_radius = sq_dist[:, -1].double().clamp_min(0).sqrt() * (1 - 1e-6)  # [B]
        log_var = self.log_var.detach()
        log_n = math.log(self.num_total)

        def bounds(z: Tensor) -> tuple[Tensor, Tensor]:
            lower = candidate_log_prob(z, candidates, log_var, self.num_total)  # [S, B]
            dropped = dropped_mass_upper_bound(z, log_var, centroids, radii, remaining, mean, anchor_radius)
            return lower, torch.logaddexp(lower.double() + log_n, dropped) - log_n

        return bounds

    @torch.no_grad()
    def sample(
        self, n: int, encoder: Encoder, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Pick exemplars uniformly (from the whole exemplar set, extra exemplars included), then
        z ~ N(mu(x_n), (T sigma)^2 I): [n, d]."""
        codes = self.cache.get()  # [N, d]
        pick = torch.randint(codes.shape[0], (n,), device=codes.device, generator=generator)  # [n]
        eps = torch.randn(n, codes.shape[1], device=codes.device, dtype=codes.dtype, generator=generator)
        return codes[pick] + temperature * torch.exp(0.5 * self.log_var) * eps

    def variation_kernel(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        """r(z|x) = N(mu(x), sigma^2 I): the exemplar prior's own transition kernel."""
        return mean, self.log_var.expand_as(mean)

    def extra_metrics(self) -> dict[str, Any]:
        return {"prior_log_var": float(self.log_var.detach())}
