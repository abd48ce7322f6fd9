"""Retrieval: cached exemplar codes and k-nearest-neighbour search."""

from exemplar_vae.retrieval.cache import CodeCache, encode_means
from exemplar_vae.retrieval.index import knn_search

__all__ = ["CodeCache", "encode_means", "knn_search"]
