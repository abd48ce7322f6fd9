"""Retrieval: the cache of exemplar codes and nearest-neighbour search over it."""

from exemplar_vae.retrieval.cache import CodeCache, encode_means
from exemplar_vae.retrieval.index import (
    BACKENDS,
    ApproximateIndex,
    TensorSubset,
    default_nlist,
    faiss_gpu_available,
    knn_search,
    recall,
)
from exemplar_vae.retrieval.search import SEARCH_NAMES, Subset, SubsetSearch, as_subset, check_search

__all__ = [
    "BACKENDS",
    "SEARCH_NAMES",
    "ApproximateIndex",
    "CodeCache",
    "Subset",
    "SubsetSearch",
    "TensorSubset",
    "as_subset",
    "check_search",
    "default_nlist",
    "encode_means",
    "faiss_gpu_available",
    "knn_search",
    "recall",
]
