"""Shared test set-up.

The tests use tiny networks, for which one thread is fastest, and a second thread only spins when the
machine is busy (two OpenMP runtimes, torch's and faiss's, share two cores).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)

try:
    import faiss  # type: ignore[import-untyped]

    faiss.omp_set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
