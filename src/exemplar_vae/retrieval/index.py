"""k-nearest-neighbour search over latent codes: faiss when installed, exact torch search otherwise.

Both backends are exact (faiss's flat L2 search); they return the same neighbours up to ties.
"""

from __future__ import annotations

import logging

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
