"""Shared test set-up.

The tests use tiny networks, for which one thread is fastest, and a second thread only spins when the
machine is busy (two OpenMP runtimes, torch's and faiss's, share two cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

try:
    import faiss  # type: ignore[import-untyped]

    faiss.omp_set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exemplar-prior run on digits (2 epochs), shared by the tests of the downstream tools.

    Tests read it and write their outputs elsewhere."""
    from exemplar_vae import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig, train

    out = tmp_path_factory.mktemp("tiny") / "run"
    config = RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(hidden=32, latent_dim=8),
        prior=PriorConfig(name="exemplar", knn=5),
        train=TrainConfig(epochs=2, warmup=1, seed=0, device="cpu"),
    )
    train(config, out, progress=False)
    return out
