"""k-nearest-neighbour search over latent codes: faiss when installed, exact torch search otherwise.

Both backends are exact (faiss's flat L2 search); they return the same neighbours up to ties.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.errors import ConfigError
from exemplar_vae.functional import squared_distances

logger = logging.getLogger(__name__)

try:  # faiss is a dependency, but keep the package importable without it
    import faiss  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised only where faiss is missing
    faiss = None  # type: ignore[assignment]

BACKENDS = ("auto", "faiss", "torch")
__all__ = ["BACKENDS", "ApproximateIndex", "check_nprobe", "default_nlist", "knn_search", "recall"]


def knn_search(queries: Tensor, base: Tensor, k: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The k rows of ``base`` nearest to each query in squared Euclidean distance.

    Args:
        queries: [B, d] query codes.
        base: [M, d] searched codes.
        k: neighbours per query, 1 <= k <= M.
        backend: "faiss", "torch", or "auto" (faiss for CPU tensors when available, torch otherwise).

    Returns:
        (sq_dist [B, k], idx [B, k] int64 rows of ``base``), nearest first, on the queries' device.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown search backend '{backend}'; valid: {', '.join(BACKENDS)}")
    if not 1 <= k <= base.shape[0]:
        raise ConfigError(f"k={k} neighbours requested from {base.shape[0]} codes")
    use_faiss = backend == "faiss" or (backend == "auto" and faiss is not None and base.device.type == "cpu")
    if use_faiss:
        if faiss is None:
            raise ConfigError(
                "the faiss backend was requested but faiss is not installed (pip install faiss-cpu)"
            )
        q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        b = np.ascontiguousarray(base.detach().cpu().numpy(), dtype=np.float32)
        dist_np, idx_np = faiss.knn(q, b, k)
        return (
            torch.from_numpy(dist_np).to(queries.device),
            torch.from_numpy(idx_np).to(device=queries.device, dtype=torch.int64),
        )
    d = squared_distances(queries.detach().float(), base.detach().float())  # [B, M]
    dist, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)  # [B, k]
    return dist, idx


def check_nprobe(nprobe: int) -> None:
    """At least one inverted list visited per query (ConfigError otherwise)."""
    if nprobe < 1:
        raise ConfigError(f"--nprobe must be at least 1, got {nprobe}")


def default_nlist(n: int) -> int:
    """Inverted lists of the approximate index for n codes: about 2 sqrt(n), with at least 39 codes per
    list (faiss's k-means warns below that), at least 1."""
    return max(1, min(round(2 * math.sqrt(n)), n // 39))


class ApproximateIndex:
    """An inverted-file index (faiss IndexIVFFlat) over all N cached codes, rebuilt with the cache.

    Retrieval augmented training searches a fresh random subset of M of the N codes at every step. The
    index is built once per cache refresh over all N codes; a search over-fetches from it and keeps, for
    each query, the first k hits inside the subset. Queries that find fewer than k subset members are
    searched exactly within the subset, so every query gets k neighbours from the subset. The result is
    approximate (a true neighbour in a list that was not probed is missed); its recall against the exact
    search is measured by ``recall``.

    Args:
        codes: [N, d] codes (any device; the index lives on the CPU).
        nlist: inverted lists (k-means centroids); None: ``default_nlist(N)``.
        nprobe: lists visited per query.
    """

    def __init__(self, codes: Tensor, nlist: int | None = None, nprobe: int = 16) -> None:
        if faiss is None:
            raise ConfigError("the approximate index needs faiss (pip install faiss-cpu)")
        n, d = codes.shape
        nlist = default_nlist(n) if nlist is None else nlist
        if not 1 <= nlist <= n:
            raise ConfigError(f"the approximate index needs 1 <= nlist <= N={n}, got {nlist}")
        check_nprobe(nprobe)
        self.num_codes, self.nlist, self.nprobe = n, nlist, min(nprobe, nlist)
        base = np.ascontiguousarray(codes.detach().float().cpu().numpy())
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        self.index.cp.min_points_per_centroid = 1  # small sets: no warning, the clustering is still valid
        self.index.train(base)
        self.index.add(base)
        self.index.nprobe = self.nprobe

    def search_subset(self, queries: Tensor, subset: Tensor, codes: Tensor, k: int) -> Tensor:
        """The (approximately) k nearest members of ``subset`` for each query.

        Args:
            queries: [B, d] codes.
            subset: [M] distinct int64 indices into the N indexed codes; k <= M.
            codes: [N, d] the indexed codes (for the exact fallback).
            k: neighbours per query.

        Returns:
            [B, k] int64 indices into the N codes, all members of ``subset``, on the queries' device.
        """
        m = subset.shape[0]
        if not 1 <= k <= m:
            raise ConfigError(f"k={k} neighbours requested from {m} codes")
        # expected members among f hits: f * M / N; fetch twice the k needed, plus slack
        fetch = min(self.num_codes, math.ceil(2 * k * self.num_codes / m) + 8)
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        _, hits = self.index.search(q, fetch)  # [B, fetch], -1 where the probed lists ran out
        hits_t = torch.from_numpy(hits)
        member = torch.zeros(self.num_codes + 1, dtype=torch.bool)  # last slot: the -1 padding
        member[subset.cpu()] = True
        keep = member[hits_t]  # [B, fetch]
        # stable order of the kept hits: rank = position among the kept ones, nearest first
        rank = torch.cumsum(keep, dim=1) - 1
        take = keep & (rank < k)
        found = take.sum(dim=1)  # [B]
        out = torch.empty((q.shape[0], k), dtype=torch.int64)
        full = found == k
        out[full] = hits_t[take & full.unsqueeze(1)].view(-1, k)
        short = (~full).nonzero().flatten()
        if short.numel():  # too few subset members among the hits: exact search within the subset
            sub = subset.to(codes.device)
            _, rows = knn_search(queries[short.to(queries.device)], codes[sub], k)
            out[short] = sub[rows].cpu()
        return out.to(queries.device)


def recall(approx: Tensor, exact: Tensor) -> float:
    """Fraction of the exact neighbours (rows of ``exact`` [B, k]) that ``approx`` [B, k] also found."""
    hit = (approx.unsqueeze(2) == exact.unsqueeze(1)).any(dim=1)  # [B, k]
    return float(hit.double().mean())
