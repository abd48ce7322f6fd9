"""Retrieval: the cache of exemplar codes and nearest-neighbour search over it."""

from exemplar_vae.retrieval.cache import CodeCache, encode_means
from exemplar_vae.retrieval.index import SEARCH_NAMES, ApproximateIndex, default_nlist, knn_search, recall

__all__ = [
    "SEARCH_NAMES",
    "ApproximateIndex",
    "CodeCache",
    "default_nlist",
    "encode_means",
    "knn_search",
    "recall",
]
