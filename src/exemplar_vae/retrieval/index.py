"""k-nearest-neighbour search over latent codes: faiss when installed, exact torch search otherwise.

Both exact backends (faiss's flat L2 search and torch's chunked distance + top-k) return the same
neighbours up to ties. ``ApproximateIndex`` is the inverted-file index used by retrieval augmented
training: warm-startable from the previous epoch's centroids, searchable within a subset given either as
an index tensor or as an O(1) membership test, and built on the GPU when faiss has GPU support.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

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
CHUNK_ELEMENTS = 1 << 26  # the torch search's distance block: 2^26 float32 = 256 MiB
COLD_NITER = 10  # k-means iterations of a cold quantizer (faiss's IndexIVF default, ``index.cp.niter``)
WARM_NITER = 3  # k-means iterations from the previous epoch's centroids
KMEANS_SEED = 1234  # faiss's ClusteringParameters default seed
POINTS_PER_CENTROID = 256  # faiss's default training sample: 256 * nlist points (max_points_per_centroid)
GPU_MAX_K = 2048  # faiss GPU indexes select at most 2048 neighbours and probe at most 2048 lists

__all__ = [
    "BACKENDS",
    "CHUNK_ELEMENTS",
    "ApproximateIndex",
    "Membership",
    "TensorSubset",
    "check_nprobe",
    "default_nlist",
    "faiss_gpu_available",
    "knn_search",
    "recall",
]

Membership = Callable[[Tensor], Tensor]  # ids [...] int64 in [0, N) -> [...] bool


def faiss_gpu_available() -> bool:
    """Whether faiss was built with GPU support and a CUDA device is visible."""
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()


def knn_search(
    queries: Tensor, base: Tensor, k: int, backend: str = "auto", *, chunk_elements: int = CHUNK_ELEMENTS
) -> tuple[Tensor, Tensor]:
    """The k rows of ``base`` nearest to each query in squared Euclidean distance.

    Args:
        queries: [B, d] query codes.
        base: [M, d] searched codes (on the queries' device for the torch backend).
        k: neighbours per query, 1 <= k <= M.
        backend: "faiss", "torch", or "auto" (faiss for CPU tensors when available, torch otherwise: CUDA
            tensors are searched by torch on their device, without host round trips).
        chunk_elements: the torch backend's bound on one block of the distance matrix; the base (and, if
            needed, the queries) is split into blocks of at most this many distances, and the per-block
            top-k are merged.

    Returns:
        (sq_dist [B, k], idx [B, k] int64 rows of ``base``), nearest first, on the queries' device.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown search backend '{backend}'; valid: {', '.join(BACKENDS)}")
    if not 1 <= k <= base.shape[0]:
        raise ConfigError(f"k={k} neighbours requested from {base.shape[0]} codes")
    if chunk_elements < 1:
        raise ConfigError(f"chunk_elements must be positive, got {chunk_elements}")
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
    return _torch_knn(queries.detach().float(), base.detach().float(), k, chunk_elements)


def _torch_knn(q: Tensor, b: Tensor, k: int, limit: int) -> tuple[Tensor, Tensor]:
    """Exact k-NN by blocks of at most ``limit`` squared distances, merging per-block top-k; no host sync."""
    num_q, num_b = q.shape[0], b.shape[0]
    if num_q * num_b <= limit:  # one block
        return torch.topk(squared_distances(q, b), k, dim=1, largest=False, sorted=True)  # [B, k]
    cols = min(num_b, max(k, limit // max(num_q, 1)))  # base rows per block, at least k
    rows = min(num_q, max(1, limit // cols))  # queries per block
    dist = torch.empty((num_q, k), dtype=q.dtype, device=q.device)
    idx = torch.empty((num_q, k), dtype=torch.int64, device=q.device)
    for r0 in range(0, num_q, rows):
        qr = q[r0 : r0 + rows]
        best_d, best_i = torch.topk(squared_distances(qr, b[:cols]), k, dim=1, largest=False, sorted=True)
        for c0 in range(cols, num_b, cols):
            block = squared_distances(qr, b[c0 : c0 + cols])  # [rows, <= cols]
            bd, bi = torch.topk(block, min(k, block.shape[1]), dim=1, largest=False, sorted=True)
            cat_d, cat_i = torch.cat([best_d, bd], dim=1), torch.cat([best_i, bi + c0], dim=1)
            best_d, pos = torch.topk(cat_d, k, dim=1, largest=False, sorted=True)
            best_i = cat_i.gather(1, pos)
        dist[r0 : r0 + rows], idx[r0 : r0 + rows] = best_d, best_i
    return dist, idx


def check_nprobe(nprobe: int) -> None:
    """At least one inverted list visited per query (ConfigError otherwise)."""
    if nprobe < 1:
        raise ConfigError(f"--nprobe must be at least 1, got {nprobe}")


def default_nlist(n: int) -> int:
    """Inverted lists of the approximate index for n codes: about 2 sqrt(n), with at least 39 codes per
    list (faiss's k-means warns below that), at least 1."""
    return max(1, min(round(2 * math.sqrt(n)), n // 39))


class TensorSubset:
    """A subset given as a tensor of [M] distinct indices into N codes, with the ``Subset`` interface.

    ``contains`` builds an [N] boolean mask once (O(N), on the device of the first ids it tests) and
    looks ids up in it; ``members`` returns the indices.
    """

    def __init__(self, rows: Tensor, num_codes: int) -> None:
        self.rows, self.num_codes = rows, num_codes
        self._mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def contains(self, ids: Tensor) -> Tensor:
        """[...] bool: whether each id in [0, N) is a member."""
        if self._mask is None or self._mask.device != ids.device:
            self._mask = torch.zeros(self.num_codes, dtype=torch.bool, device=ids.device)
            self._mask[self.rows.to(ids.device)] = True
        return self._mask[ids]

    def members(self) -> Tensor:
        """[M] int64 indices."""
        return self.rows


_GPU_RESOURCES: dict[int, Any] = {}


def _gpu_resources(device: int) -> Any:
    """One faiss ``StandardGpuResources`` per device and process (it holds scratch memory and streams)."""
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[device]


class ApproximateIndex:
    """An inverted-file index (faiss IndexIVFFlat) over all N cached codes, rebuilt with the cache.

    Retrieval augmented training searches a fresh random subset of M of the N codes at every step. The
    index is built once per cache refresh over all N codes; a search over-fetches from it and keeps, for
    each query, the first k hits inside the subset. Queries that find fewer than k subset members are
    searched exactly within the subset, so every query gets k neighbours from the subset. The result is
    approximate (a true neighbour in a list that was not probed is missed); its recall against the exact
    search is measured by ``recall``.

    The quantizer is trained by k-means (``faiss.Clustering``) on at most ``train_size`` codes (default
    256 * nlist, faiss's own default sample), for ``COLD_NITER`` iterations from random codes or, given
    ``init_centroids`` (the previous epoch's ``centroids()``; the codes drift little between epochs), for
    ``warm_niter`` iterations from them.

    Args:
        codes: [N, d] codes. CUDA codes get a GPU index when faiss has GPU support (``faiss-gpu-cu12``,
            the ``gpu`` extra); otherwise the index lives on the CPU and queries are copied there.
        nlist: inverted lists (k-means centroids); None: ``default_nlist(N)``.
        nprobe: lists visited per query.
        init_centroids: [nlist, d] initial quantizer centroids (warm start), or None (cold start).
        train_size: codes the quantizer is trained on, nlist <= train_size (a fixed-seed random sample
            when below N); None: min(N, 256 * nlist).
        warm_niter: k-means iterations of a warm start.
        use_gpu: None: a GPU index exactly when the codes are on a CUDA device and faiss has GPU support;
            True requires that support; False keeps the index on the CPU.
    """

    def __init__(
        self,
        codes: Tensor,
        nlist: int | None = None,
        nprobe: int = 16,
        init_centroids: Tensor | None = None,
        train_size: int | None = None,
        *,
        warm_niter: int = WARM_NITER,
        use_gpu: bool | None = None,
    ) -> None:
        if faiss is None:
            raise ConfigError("the approximate index needs faiss (pip install faiss-cpu)")
        n, d = codes.shape
        nlist = default_nlist(n) if nlist is None else nlist
        if not 1 <= nlist <= n:
            raise ConfigError(f"the approximate index needs 1 <= nlist <= N={n}, got {nlist}")
        check_nprobe(nprobe)
        if init_centroids is not None and tuple(init_centroids.shape) != (nlist, d):
            raise ConfigError(
                f"init_centroids must be [nlist={nlist}, d={d}], got {list(init_centroids.shape)}"
            )
        if train_size is not None and train_size < nlist:
            raise ConfigError(f"train_size={train_size} codes cannot train nlist={nlist} centroids")
        if warm_niter < 1:
            raise ConfigError(f"warm_niter must be at least 1, got {warm_niter}")
        if use_gpu is None:
            use_gpu = codes.device.type == "cuda" and faiss_gpu_available()
        elif use_gpu and not faiss_gpu_available():
            raise ConfigError("a GPU index needs faiss with GPU support (pip install faiss-gpu-cu12)")
        self.num_codes, self.dim, self.nlist = n, d, nlist
        self.on_gpu, self.warm = use_gpu, init_centroids is not None
        self.nprobe = min(nprobe, nlist, GPU_MAX_K) if use_gpu else min(nprobe, nlist)
        gpu_id = 0
        self.device = torch.device("cpu")  # where the index lives, and its search results
        if use_gpu:
            given = codes.device.index if codes.device.type == "cuda" else None
            gpu_id = torch.cuda.current_device() if given is None else given
            self.device = torch.device("cuda", gpu_id)

        base = np.ascontiguousarray(codes.detach().float().cpu().numpy())
        self.train_points = min(n, POINTS_PER_CENTROID * nlist if train_size is None else train_size)
        if self.train_points < n:  # a fixed-seed sample, sorted for a cache-friendly gather
            pick = np.sort(np.random.default_rng(KMEANS_SEED).choice(n, self.train_points, replace=False))
            train = np.ascontiguousarray(base[pick])
        else:
            train = base
        self._centroids = self._train_quantizer(train, init_centroids, warm_niter, use_gpu, gpu_id)

        quantizer = faiss.IndexFlatL2(d)
        quantizer.add(self._centroids)
        # a quantizer holding nlist centroids makes the IVF index trained (IndexIVF: is_trained =
        # quantizer->is_trained && quantizer->ntotal == nlist); IVFFlat has no further training
        index: Any = faiss.IndexIVFFlat(quantizer, d, nlist)
        assert index.is_trained
        index.nprobe = self.nprobe
        if use_gpu:
            # faiss/gpu/GpuCloner: index_cpu_to_gpu(resources, device, index) copies the trained, empty
            # index; the codes are then added (assigned to lists) on the GPU
            index = faiss.index_cpu_to_gpu(_gpu_resources(gpu_id), gpu_id, index)
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", self.nprobe)
        index.add(base)
        self.index = index

    def _train_quantizer(
        self, train: np.ndarray, init: Tensor | None, warm_niter: int, use_gpu: bool, gpu_id: int
    ) -> np.ndarray:
        """k-means centroids [nlist, d] float32 of the training codes, from ``init`` when given."""
        d, nlist = self.dim, self.nlist
        cp = faiss.ClusteringParameters()
        cp.niter = COLD_NITER if init is None else warm_niter
        cp.seed = KMEANS_SEED
        cp.min_points_per_centroid = 1  # small sets: no warning, the clustering is still valid
        # the sample is drawn above; stop faiss from subsampling it again (it keeps at most
        # max_points_per_centroid * nlist points)
        cp.max_points_per_centroid = max(1, math.ceil(train.shape[0] / nlist))
        clus = faiss.Clustering(d, nlist, cp)
        if init is not None:
            # faiss/Clustering.h, Clustering::centroids: "if centroids are set on input to train, they will
            # be used as initialization" (the same route as the Python wrapper's
            # faiss.Kmeans.train(x, init_centroids=...))
            faiss.copy_array_to_vector(
                np.ascontiguousarray(init.detach().float().cpu().numpy()).ravel(), clus.centroids
            )
        assign: Any = faiss.IndexFlatL2(d)
        if use_gpu:  # the assignment step (the cost of k-means) on the GPU, as faiss.Kmeans(gpu=...) does
            assign = faiss.index_cpu_to_gpu(_gpu_resources(gpu_id), gpu_id, assign)
        clus.train(train, assign)
        return np.ascontiguousarray(faiss.vector_float_to_array(clus.centroids).reshape(nlist, d))

    def centroids(self) -> Tensor:
        """[nlist, d] float32 CPU copy of the quantizer's centroids (to warm-start the next index)."""
        return torch.from_numpy(self._centroids.copy())

    def _search(self, queries: Tensor, fetch: int) -> Tensor:
        """[B, fetch] int64 ids of the nearest indexed codes (-1 where the probed lists ran out), on the
        index's device."""
        if self.on_gpu:
            try:  # faiss.contrib.torch_utils lets GPU indexes take and return CUDA tensors (no host copy)
                import faiss.contrib.torch_utils  # type: ignore[import-untyped]  # noqa: F401

                q = queries.detach().to(self.device, torch.float32).contiguous()
                with torch.cuda.device(self.device):
                    _, hits = self.index.search(q, fetch)
                if isinstance(hits, Tensor):
                    return hits.to(torch.int64)
                return torch.from_numpy(hits).to(self.device)
            except ImportError:  # pragma: no cover - old faiss: numpy in and out
                pass
        q_np = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        _, hits_np = self.index.search(q_np, fetch)
        return torch.from_numpy(hits_np).to(self.device)

    def search_subset(
        self,
        queries: Tensor,
        subset: Tensor | Membership,
        codes: Tensor,
        k: int,
        *,
        subset_rows: Callable[[], Tensor] | None = None,
        subset_size: int | None = None,
    ) -> Tensor:
        """The (approximately) k nearest members of a subset for each query.

        Args:
            queries: [B, d] codes.
            subset: the subset, either [M] distinct int64 indices into the N indexed codes (an [N] mask is
                built once per call, O(N)), or a membership function ``member(ids) -> bool`` of int64
                ids in [0, N) of any shape (on the index's device), e.g. an O(1) keyed-permutation test.
            codes: [N, d] the indexed codes (for the exact fallback).
            k: neighbours per query, k <= M.
            subset_rows: with a membership function: lists the [M] members, called only when some row
                needs the exact fallback.
            subset_size: with a membership function: M.

        Returns:
            [B, k] int64 indices into the N codes, all members of the subset, on the queries' device.
        """
        if isinstance(subset, Tensor):
            tensor_subset = TensorSubset(subset, self.num_codes)
            member: Membership = tensor_subset.contains
            rows_of: Callable[[], Tensor] = tensor_subset.members
            m = len(tensor_subset)
        else:
            if subset_rows is None or subset_size is None:
                raise ConfigError("a membership function needs subset_rows and subset_size")
            member, rows_of, m = subset, subset_rows, subset_size
        if not 1 <= k <= m:
            raise ConfigError(f"k={k} neighbours requested from {m} codes")
        # expected members among f hits: f * M / N; fetch twice the k needed, plus slack
        fetch = min(self.num_codes, math.ceil(2 * k * self.num_codes / m) + 8)
        if self.on_gpu:
            fetch = min(fetch, GPU_MAX_K)  # rows short of members fall back to the exact search
        hits = self._search(queries, fetch)  # [B, fetch], -1 where the probed lists ran out
        keep = (hits >= 0) & member(hits.clamp(min=0)).to(hits.device)  # [B, fetch]
        # stable order of the kept hits: rank = position among the kept ones, nearest first
        rank = torch.cumsum(keep, dim=1) - 1
        take = keep & (rank < k)
        found = take.sum(dim=1)  # [B]
        # scatter the taken hits to their rank; the others land in a spare last column, dropped
        buf = torch.full((hits.shape[0], k + 1), -1, dtype=torch.int64, device=hits.device)
        buf.scatter_(1, torch.where(take, rank, torch.full_like(rank, k)), hits)
        out = buf[:, :k]
        short = (found < k).nonzero().flatten()
        if short.numel():  # too few subset members among the hits: exact search within the subset
            sub = rows_of().to(codes.device)
            _, rows = knn_search(queries[short.to(queries.device)], codes[sub], k)
            out[short] = sub[rows.to(sub.device)].to(out.device)
        return out.to(queries.device)


def recall(approx: Tensor, exact: Tensor) -> float:
    """Fraction of the exact neighbours (rows of ``exact`` [B, k]) that ``approx`` [B, k] also found."""
    hit = (approx.unsqueeze(2) == exact.unsqueeze(1)).any(dim=1)  # [B, k]
    return float(hit.double().mean())
