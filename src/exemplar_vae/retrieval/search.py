"""Retrieval during training: the k cached codes nearest each query within the step's exemplar subset.

``SubsetSearch`` holds what the search keeps between steps: the IVF index of the current cache (rebuilt
after each refresh, warm-started from the previous index's centroids), its build time, and the recall
measured on the first batch after each rebuild. The exemplar prior owns one and asks it for neighbours;
it never sees how they were found.

A subset is either a [M] tensor of distinct indices or any ``Subset``: an object with an O(1)
membership test ``contains(ids)`` and a listing ``members()`` (e.g. a keyed permutation of the N
indices). The IVF search only tests membership (plus a listing for the rare exact fallback), so with a
``Subset`` a step costs no O(N) work; a tensor subset is wrapped in ``TensorSubset``, which builds an [N]
mask once per call.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from torch import Tensor

from exemplar_vae.errors import ConfigError
from exemplar_vae.retrieval.index import (
    ApproximateIndex,
    TensorSubset,
    check_nprobe,
    default_nlist,
    knn_search,
    recall,
)

SEARCH_NAMES = ("exact", "ivf")


@runtime_checkable
class Subset(Protocol):
    """A subset of the N cached codes' indices.

    ``contains(ids)``: [...] bool for int64 ids in [0, N) of any shape (ideally O(1) per id, on the ids'
    device). ``members()``: the [M] int64 member indices (only the exact search and the IVF search's
    fallback list them). An object that also defines ``__len__`` (M) spares the IVF search a listing.
    """

    def contains(self, ids: Tensor) -> Tensor: ...

    def members(self) -> Tensor: ...


def as_subset(subset: Tensor | Subset, num_codes: int) -> Subset:
    """``subset`` as a ``Subset``: a tensor of indices into ``num_codes`` codes is wrapped."""
    return TensorSubset(subset, num_codes) if isinstance(subset, Tensor) else subset


def subset_size(subset: Subset) -> int:
    """M: ``len(subset)`` when defined, else the length of ``members()``."""
    size = getattr(subset, "__len__", None)
    return int(size()) if callable(size) else int(subset.members().shape[0])


def check_search(search: str, nprobe: int) -> None:
    """A known search name and at least one probed list.

    Raises:
        ConfigError: naming the flag and the value.
    """
    if search not in SEARCH_NAMES:
        raise ConfigError(f"unknown search '{search}' (--search); valid: {', '.join(SEARCH_NAMES)}")
    check_nprobe(nprobe)


class SubsetSearch:
    """k-nearest-neighbour search of cached codes restricted to a subset of them.

    Args:
        search: "exact" (a flat search of the subset at every step) or "ivf" (an ``ApproximateIndex`` over
            all N codes, rebuilt when the cache changes, over-fetching to stay inside the subset; its
            recall against the exact search is measured on the first batch after each rebuild).
        nprobe: inverted lists visited per query with ``search="ivf"``.
        nlist: inverted lists of the index (None: about 2 sqrt(N)).
        backend: the exact search's backend, "auto", "faiss" or "torch" (see ``knn_search``).
        warm_start: rebuild the index's quantizer from the previous index's centroids (same nlist and d)
            with a few k-means iterations instead of training it from scratch.
        train_size: codes the quantizer is trained on (None: faiss's default, min(N, 256 * nlist)).
    """

    def __init__(
        self,
        search: str = "exact",
        nprobe: int = 16,
        nlist: int | None = None,
        backend: str = "auto",
        *,
        warm_start: bool = True,
        train_size: int | None = None,
    ):
        check_search(search, nprobe)
        self.search, self.nprobe, self.nlist, self.backend = search, nprobe, nlist, backend
        self.warm_start, self.train_size = warm_start, train_size
        self.recall: float | None = None  # measured on the first batch after each index rebuild
        self.last_build_seconds: float | None = None  # wall time of the last index (re)build
        self._index: ApproximateIndex | None = None
        self._index_source: Tensor | None = None  # the cache tensor the index was built from

    def neighbours(self, z: Tensor, subset: Tensor | Subset, codes: Tensor, k: int) -> Tensor:
        """The k members of ``subset`` whose codes are nearest each query.

        Args:
            z: [B, d] queries (detached here).
            subset: [M] distinct int64 rows of ``codes``, or a ``Subset`` of them.
            codes: [N, d] the cached exemplar codes.
            k: neighbours per query, 1 <= k <= M.

        Returns:
            [B, k] int64 rows of ``codes`` (dataset indices), all members of ``subset``.
        """
        if self.search == "ivf":
            sub = as_subset(subset, codes.shape[0])
            index, fresh = self.index(codes)
            found = index.search_subset(
                z.detach(), sub.contains, codes, k, subset_rows=sub.members, subset_size=subset_size(sub)
            )  # [B, k]
            if fresh:  # one exact search per rebuild measures the recall
                self.recall = recall(found, self.exact(z, sub, codes, k))
            return found
        return self.exact(z, subset, codes, k)

    def exact(self, z: Tensor, subset: Tensor | Subset, codes: Tensor, k: int) -> Tensor:
        """The exact k nearest members of ``subset``: [B, k] rows of ``codes`` (a ``Subset`` is listed,
        O(M), as a flat search of the subset must; searching all N codes and filtering the hits by
        membership measured slower at the sizes of training, 25,000 of 50,000)."""
        rows = (subset if isinstance(subset, Tensor) else subset.members()).to(codes.device)
        _, nearest = knn_search(z.detach(), codes[rows], k, self.backend)  # [B, k] rows of the subset
        return rows[nearest.to(rows.device)].to(z.device)

    def index(self, codes: Tensor) -> tuple[ApproximateIndex, bool]:
        """The IVF index over ``codes``, rebuilt when they are a new cache tensor; and whether it was just
        built. A rebuild with the previous index's nlist and d starts from its centroids (``warm_start``)
        and records its wall time in ``last_build_seconds``."""
        if self._index is None or self._index_source is not codes:
            n, d = codes.shape
            nlist = default_nlist(n) if self.nlist is None else self.nlist
            previous = self._index
            warm = self.warm_start and previous is not None and previous.nlist == nlist and previous.dim == d
            init = previous.centroids() if warm and previous is not None else None
            self._index = None  # free the old index before building the new one
            start = time.perf_counter()
            self._index = ApproximateIndex(
                codes, nlist, self.nprobe, init_centroids=init, train_size=self.train_size
            )
            self.last_build_seconds = time.perf_counter() - start
            self._index_source = codes
            return self._index, True
        return self._index, False
