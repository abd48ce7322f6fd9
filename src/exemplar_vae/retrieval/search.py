"""Retrieval during training: the k cached codes nearest each query within the step's exemplar subset.

``SubsetSearch`` holds what the search keeps between steps: the IVF index of the current cache (rebuilt
after each refresh) and the recall measured on the first batch after each rebuild. The exemplar prior owns
one and asks it for neighbours; it never sees how they were found.
"""

from __future__ import annotations

from torch import Tensor

from exemplar_vae.errors import ConfigError
from exemplar_vae.retrieval.index import ApproximateIndex, check_nprobe, knn_search, recall

SEARCH_NAMES = ("exact", "ivf")


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
    """

    def __init__(
        self, search: str = "exact", nprobe: int = 16, nlist: int | None = None, backend: str = "auto"
    ):
        check_search(search, nprobe)
        self.search, self.nprobe, self.nlist, self.backend = search, nprobe, nlist, backend
        self.recall: float | None = None  # measured on the first batch after each index rebuild
        self._index: ApproximateIndex | None = None
        self._index_source: Tensor | None = None  # the cache tensor the index was built from

    def neighbours(self, z: Tensor, subset: Tensor, codes: Tensor, k: int) -> Tensor:
        """The k members of ``subset`` whose codes are nearest each query.

        Args:
            z: [B, d] queries (detached here).
            subset: [M] distinct int64 rows of ``codes``.
            codes: [N, d] the cached exemplar codes.
            k: neighbours per query, 1 <= k <= M.

        Returns:
            [B, k] int64 rows of ``codes`` (dataset indices), all members of ``subset``.
        """
        if self.search == "ivf":
            index, fresh = self.index(codes)
            found = index.search_subset(z.detach(), subset, codes, k)  # [B, k]
            if fresh:  # one exact search per rebuild measures the recall
                self.recall = recall(found, self.exact(z, subset, codes, k))
            return found
        return self.exact(z, subset, codes, k)

    def exact(self, z: Tensor, subset: Tensor, codes: Tensor, k: int) -> Tensor:
        """The exact k nearest members of ``subset``: [B, k] rows of ``codes``."""
        _, nearest = knn_search(z.detach(), codes[subset], k, self.backend)  # [B, k] rows of the subset
        return subset[nearest]

    def index(self, codes: Tensor) -> tuple[ApproximateIndex, bool]:
        """The IVF index over ``codes``, rebuilt when they are a new cache tensor; and whether it was just
        built."""
        if self._index is None or self._index_source is not codes:
            self._index = ApproximateIndex(codes, self.nlist, self.nprobe)
            self._index_source = codes
            return self._index, True
        return self._index, False
