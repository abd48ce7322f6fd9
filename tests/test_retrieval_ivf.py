"""The approximate (IVF) retrieval index: subset membership, the exact fallback, recall, and the prior
trained with it (against brute-force float64 neighbour sets)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch

from exemplar_vae.config import PriorConfig, RunConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.retrieval import ApproximateIndex, default_nlist, recall
from exemplar_vae.validation import validate

D = 6


def clustered_codes(n: int, seed: int, clusters: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(clusters, D, generator=g)
    pick = torch.randint(clusters, (n,), generator=g)
    return centres[pick] + torch.randn(n, D, generator=g)  # [n, D]


def brute_subset_knn(queries: torch.Tensor, codes: torch.Tensor, subset: torch.Tensor, k: int) -> np.ndarray:
    """float64 brute force: the k subset members nearest each query, [B, k] dataset indices."""
    sq = ref.squared_distances(queries, codes[subset])  # [B, M]
    return subset.numpy()[np.argsort(sq, axis=1, kind="stable")[:, :k]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_probe_equals_brute_force_within_the_subset(seed: int) -> None:
    """nprobe = nlist visits every list: the over-fetched, filtered result is the exact subset kNN."""
    codes = clustered_codes(600, seed)
    index = ApproximateIndex(codes, nlist=8, nprobe=8)
    g = torch.Generator().manual_seed(seed + 10)
    subset = torch.randperm(600, generator=g)[:150]
    queries = codes[torch.randint(600, (25,), generator=g)] + 0.3 * torch.randn(25, D, generator=g)
    found = index.search_subset(queries, subset, codes, 7)
    assert found.shape == (25, 7) and found.dtype == torch.int64
    expected = brute_subset_knn(queries, codes, subset, 7)
    assert (np.sort(found.numpy(), 1) == np.sort(expected, 1)).all()
    assert recall(found, torch.from_numpy(expected)) == 1.0


def test_results_are_subset_members_and_distinct() -> None:
    codes = clustered_codes(2000, 3)
    index = ApproximateIndex(codes, nprobe=2)
    g = torch.Generator().manual_seed(4)
    subset = torch.randperm(2000, generator=g)[:500]
    queries = 3.0 * torch.randn(40, D, generator=g)
    found = index.search_subset(queries, subset, codes, 11)
    members = set(subset.tolist())
    for row in found.tolist():
        assert set(row) <= members and len(set(row)) == 11


def test_short_rows_fall_back_to_exact_search() -> None:
    """A tiny subset: the over-fetched hits of a one-list probe hold fewer than k members, so the rows are
    searched exactly; the answer is then the brute-force one."""
    codes = clustered_codes(1000, 5)
    index = ApproximateIndex(codes, nlist=20, nprobe=1)
    g = torch.Generator().manual_seed(6)
    subset = torch.randperm(1000, generator=g)[:12]
    queries = codes[:30] + 0.1
    found = index.search_subset(queries, subset, codes, 5)
    expected = brute_subset_knn(queries, codes, subset, 5)
    assert (np.sort(found.numpy(), 1) == np.sort(expected, 1)).all()


def test_recall_counts_found_neighbours() -> None:
    exact = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = torch.tensor([[4, 3, 9, 1], [8, 7, 6, 5]])
    assert recall(approx, exact) == pytest.approx(7 / 8)


def test_low_probe_recall_is_measured_below_one_and_rises_with_nprobe() -> None:
    codes = clustered_codes(5000, 7, clusters=40)
    g = torch.Generator().manual_seed(8)
    subset = torch.randperm(5000, generator=g)[:2500]
    queries = codes[torch.randint(5000, (200,), generator=g)] + 0.5 * torch.randn(200, D, generator=g)
    exact = torch.from_numpy(brute_subset_knn(queries, codes, subset, 10))
    recalls = [
        recall(ApproximateIndex(codes, nlist=100, nprobe=p).search_subset(queries, subset, codes, 10), exact)
        for p in (1, 4, 100)
    ]
    assert recalls[0] < 1.0 and recalls[0] <= recalls[1] <= recalls[2] == 1.0


def test_default_nlist_and_bad_arguments() -> None:
    assert default_nlist(50_000) == 447 and default_nlist(10) == 1
    codes = clustered_codes(100, 9)
    with pytest.raises(ConfigError, match="nlist"):
        ApproximateIndex(codes, nlist=101)
    with pytest.raises(ConfigError, match="nprobe"):
        ApproximateIndex(codes, nprobe=0)
    with pytest.raises(ConfigError, match="k=30"):
        ApproximateIndex(codes, nlist=4).search_subset(codes[:3], torch.arange(20), codes, 30)


def test_prior_with_ivf_search_retrieves_subset_neighbours_and_reports_recall() -> None:
    """With every list probed the prior's retrieval equals the exact one (leave-one-out included), the
    recall is measured once per cache refresh, and the bound is the mixture over the retrieved union."""
    torch.manual_seed(0)
    encoder = MLPEncoder(D, 16, 3)
    exemplars = torch.randn(300, D, generator=torch.Generator().manual_seed(1))
    exact = ExemplarPrior(exemplars, 3, num_exemplars=120, knn=4, search_backend="torch")
    ivf = ExemplarPrior(exemplars, 3, num_exemplars=120, knn=4, search="ivf", nprobe=10_000)
    for p in (exact, ivf):
        p.train()
        p.refresh(encoder)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        subset = exact.draw_subset(g)
        index = torch.cat([subset[:5], torch.randint(300, (5,), generator=g)])
        z = exact.cache.get()[index] + 0.2 * torch.randn(10, 3, generator=g)
        assert sorted(ivf.retrieve(z, index, subset).tolist()) == sorted(
            exact.retrieve(z, index, subset).tolist()
        )
        with torch.no_grad():
            torch.testing.assert_close(
                ivf.knn_log_prob(z, encoder, index, subset), exact.knn_log_prob(z, encoder, index, subset)
            )
    assert ivf.searcher.recall == 1.0 and ivf.extra_metrics()["search_recall"] == 1.0
    assert "search_recall" not in exact.extra_metrics()
    first = ivf.searcher.index(ivf.cache.get())[0]
    ivf.refresh(encoder)  # a new cache: the index is rebuilt
    assert ivf.searcher.index(ivf.cache.get())[0] is not first


def test_config_validates_search() -> None:
    for prior, match in (
        (PriorConfig(search="hnsw"), "--search"),
        (PriorConfig(nprobe=0), "--nprobe"),
        (PriorConfig(name="exemplar", nprobe=4), "applies to the approximate search"),
        (PriorConfig(search="ivf", knn=0), "--knn"),
        (PriorConfig(name="gaussian", search="ivf"), "exemplar prior's retrieval"),
    ):
        with pytest.raises(ConfigError, match=match):
            validate(RunConfig(prior=prior))
    validate(RunConfig(prior=PriorConfig(name="exemplar", search="ivf", nprobe=4)))
    loaded = RunConfig.from_dict({"prior": {"name": "exemplar", "knn": 10}})  # configs from before the flag
    assert loaded.prior.search == "exact" and loaded.prior.nprobe == 16
    with pytest.raises(ConfigError, match="unknown search"):
        ExemplarPrior(torch.zeros(10, D), 3, knn=2, search="annoy")
