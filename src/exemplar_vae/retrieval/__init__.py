"""Retrieval: the cache of exemplar codes and nearest-neighbour search over it."""

from exemplar_vae.retrieval.cache import CodeCache, encode_means
from exemplar_vae.retrieval.index import BACKENDS, ApproximateIndex, default_nlist, knn_search, recall
from exemplar_vae.retrieval.search import SEARCH_NAMES, SubsetSearch, check_search

__all__ = [
    "BACKENDS",
    "SEARCH_NAMES",
    "ApproximateIndex",
    "CodeCache",
    "SubsetSearch",
    "check_search",
    "default_nlist",
    "encode_means",
    "knn_search",
    "recall",
]
