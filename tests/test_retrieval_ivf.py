"""The approximate (IVF) retrieval index: subset membership, the exact fallback, recall, and the prior
trained with it (against brute-force float64 neighbour sets); the warm-started quantizer, membership
functions and subset objects, the chunked torch search, and (with a CUDA device) the GPU paths."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch

from exemplar_vae.config import PriorConfig, RunConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.retrieval import ApproximateIndex, SubsetSearch, default_nlist, knn_search, recall
from exemplar_vae.retrieval.index import faiss_gpu_available
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
        subset = exact.draw_subset(g).members()
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


# -- warm-started quantizer ----------------------------------------------------------------------------


def moved_problem(n: int = 5000, seed: int = 7) -> tuple[torch.Tensor, ...]:
    """Codes, the same codes after an epoch's small drift (+ 0.01 noise), a half subset, queries near the
    moved codes, and the exact 10 nearest subset members of each query among the moved codes."""
    codes = clustered_codes(n, seed, clusters=40)
    g = torch.Generator().manual_seed(seed + 1)
    moved = codes + 0.01 * torch.randn(n, D, generator=g)
    subset = torch.randperm(n, generator=g)[: n // 2]
    queries = moved[torch.randint(n, (300,), generator=g)] + 0.5 * torch.randn(300, D, generator=g)
    exact = torch.from_numpy(brute_subset_knn(queries, moved, subset, 10))
    return codes, moved, subset, queries, exact


def test_warm_started_index_matches_the_cold_recall_on_moved_codes() -> None:
    """An index started from the previous epoch's centroids (a few k-means iterations) on slightly moved
    codes finds the subset neighbours as well as one trained from scratch (measured: cold 0.975, warm
    0.978 at nprobe=2 of 60 lists)."""
    codes, moved, subset, queries, exact = moved_problem()
    previous = ApproximateIndex(codes, nlist=60, nprobe=2)
    centroids = previous.centroids()
    assert centroids.shape == (60, D) and centroids.dtype == torch.float32
    cold = ApproximateIndex(moved, nlist=60, nprobe=2)
    warm = ApproximateIndex(moved, nlist=60, nprobe=2, init_centroids=centroids)
    assert warm.warm and not cold.warm and warm.centroids().shape == (60, D)
    assert not torch.equal(warm.centroids(), centroids)  # the iterations moved them
    cold_recall = recall(cold.search_subset(queries, subset, moved, 10), exact)
    warm_recall = recall(warm.search_subset(queries, subset, moved, 10), exact)
    assert cold_recall < 1.0  # the comparison is not vacuous
    assert warm_recall >= cold_recall - 0.02


def test_train_size_subsamples_the_quantizer_training_set() -> None:
    codes = clustered_codes(3000, 11)
    assert ApproximateIndex(codes, nlist=5).train_points == 5 * 256  # faiss's default sample
    assert ApproximateIndex(codes, nlist=20).train_points == 3000
    small = ApproximateIndex(codes, nlist=20, nprobe=20, train_size=400)
    assert small.train_points == 400 and small.index.ntotal == 3000  # every code is still indexed
    subset = torch.arange(0, 3000, 3)
    found = small.search_subset(codes[:20], subset, codes, 5)  # every list probed: exact
    expected = brute_subset_knn(codes[:20], codes, subset, 5)
    assert (np.sort(found.numpy(), 1) == np.sort(expected, 1)).all()
    with pytest.raises(ConfigError, match="train_size"):
        ApproximateIndex(codes, nlist=20, train_size=10)
    with pytest.raises(ConfigError, match="init_centroids"):
        ApproximateIndex(codes, nlist=20, init_centroids=torch.zeros(19, D))


def test_subset_search_rebuilds_warm_from_the_previous_centroids() -> None:
    codes, moved, subset, queries, _ = moved_problem(2000, 3)
    searcher = SubsetSearch("ivf", nprobe=4)
    first, fresh = searcher.index(codes)
    assert fresh and not first.warm and searcher.last_build_seconds is not None
    assert searcher.index(codes) == (first, False)  # the same cache tensor: no rebuild
    second, fresh = searcher.index(moved)
    assert fresh and second is not first and second.warm and searcher.last_build_seconds > 0
    assert second.nlist == first.nlist == default_nlist(2000)
    third, _ = searcher.index(moved[:1000].clone())  # another N, another nlist: a cold build
    assert not third.warm and third.nlist == default_nlist(1000)
    cold = SubsetSearch("ivf", nprobe=4, warm_start=False)
    cold.index(codes)
    assert not cold.index(moved)[0].warm


# -- membership functions and subset objects -----------------------------------------------------------


class MaskSubset:
    """A subset object over a boolean mask: ``contains`` by lookup, ``members`` by listing (no __len__)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask, self.calls = mask, 0

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.mask.to(ids.device)[ids]

    def members(self) -> torch.Tensor:
        return self.mask.nonzero().flatten()


@pytest.mark.parametrize(("m", "nprobe"), [(500, 2), (12, 1)])  # the second: every row falls back
def test_membership_function_equals_the_tensor_subset(m: int, nprobe: int) -> None:
    codes = clustered_codes(2000, 12)
    index = ApproximateIndex(codes, nlist=20, nprobe=nprobe)
    g = torch.Generator().manual_seed(13)
    subset = torch.randperm(2000, generator=g)[:m]
    mask = torch.zeros(2000, dtype=torch.bool)
    mask[subset] = True
    queries = codes[torch.randint(2000, (40,), generator=g)] + 0.3 * torch.randn(40, D, generator=g)
    listed: list[int] = []

    def rows() -> torch.Tensor:
        listed.append(1)
        return subset

    by_tensor = index.search_subset(queries, subset, codes, 5)
    by_member = index.search_subset(queries, lambda ids: mask[ids], codes, 5, subset_rows=rows, subset_size=m)
    assert torch.equal(by_member, by_tensor)
    assert (len(listed) > 0) == (m == 12)  # listed only for the exact fallback
    with pytest.raises(ConfigError, match="subset_rows"):
        index.search_subset(queries, lambda ids: mask[ids], codes, 5)


@pytest.mark.parametrize("search", ["exact", "ivf"])
def test_subset_search_takes_a_subset_object(search: str) -> None:
    codes = clustered_codes(1500, 14)
    g = torch.Generator().manual_seed(15)
    subset = torch.randperm(1500, generator=g)[:400]
    mask = torch.zeros(1500, dtype=torch.bool)
    mask[subset] = True
    queries = codes[torch.randint(1500, (30,), generator=g)] + 0.3 * torch.randn(30, D, generator=g)
    searcher = SubsetSearch(search, nprobe=3)
    by_tensor = searcher.neighbours(queries, subset, codes, 6)
    keyed = MaskSubset(mask)
    by_object = searcher.neighbours(queries, keyed, codes, 6)
    if search == "ivf":  # the same index and members: the same hits
        assert torch.equal(by_object, by_tensor) and keyed.calls >= 1
    # the exact search lists members() in sorted order: the same neighbour sets
    assert torch.equal(
        searcher.exact(queries, keyed, codes, 6).sort(1).values,
        searcher.exact(queries, subset, codes, 6).sort(1).values,
    )
    assert mask[by_object].all()


# -- the chunked torch search --------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 50, 700, 10_000])
def test_chunked_torch_search_equals_the_unchunked_one(chunk: int) -> None:
    g = torch.Generator().manual_seed(16)
    queries, base = torch.randn(40, D, generator=g), torch.randn(333, D, generator=g)
    dist, idx = knn_search(queries, base, 7, "torch")
    c_dist, c_idx = knn_search(queries, base, 7, "torch", chunk_elements=chunk)
    assert torch.equal(c_idx, idx)
    torch.testing.assert_close(c_dist, dist)
    with pytest.raises(ConfigError, match="chunk_elements"):
        knn_search(queries, base, 7, "torch", chunk_elements=0)


# -- CUDA paths ------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
def test_cuda_chunked_search_stays_on_the_device_and_matches_the_cpu() -> None:
    g = torch.Generator().manual_seed(17)
    queries, base = torch.randn(64, D, generator=g), torch.randn(5000, D, generator=g)
    dist, idx = knn_search(queries, base, 9, "torch")
    c_dist, c_idx = knn_search(queries.cuda(), base.cuda(), 9, chunk_elements=1000)
    assert c_dist.is_cuda and c_idx.is_cuda and c_idx.dtype == torch.int64
    assert (c_idx.cpu() == idx).float().mean() > 0.99  # float32 ties aside
    torch.testing.assert_close(c_dist.cpu(), dist, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@needs_cuda
def test_cuda_codes_index_searches_like_the_cpu_index() -> None:
    """CUDA codes: a GPU index when faiss has GPU support, else a CPU one; either way, with every list
    probed, the exact subset neighbours on the queries' device, for a tensor subset and a subset object."""
    codes = clustered_codes(3000, 18)
    g = torch.Generator().manual_seed(19)
    subset = torch.randperm(3000, generator=g)[:700]
    mask = torch.zeros(3000, dtype=torch.bool)
    mask[subset] = True
    queries = codes[torch.randint(3000, (50,), generator=g)] + 0.3 * torch.randn(50, D, generator=g)
    index = ApproximateIndex(codes.cuda(), nlist=16, nprobe=16)
    assert index.on_gpu == faiss_gpu_available()
    warm = ApproximateIndex(codes.cuda(), nlist=16, nprobe=16, init_centroids=index.centroids())
    expected = np.sort(brute_subset_knn(queries, codes, subset, 8), 1)
    for idx in (index, warm):
        found = idx.search_subset(queries.cuda(), subset.cuda(), codes.cuda(), 8)
        assert found.is_cuda and (np.sort(found.cpu().numpy(), 1) == expected).all()
        keyed = MaskSubset(mask.cuda())
        by_object = idx.search_subset(
            queries.cuda(), keyed.contains, codes.cuda(), 8, subset_rows=keyed.members, subset_size=700
        )
        assert torch.equal(by_object, found)
    searcher = SubsetSearch("ivf", nprobe=16, nlist=16)
    found = searcher.neighbours(queries.cuda(), MaskSubset(mask.cuda()), codes.cuda(), 8)
    assert found.is_cuda and (np.sort(found.cpu().numpy(), 1) == expected).all()
    assert searcher.recall == 1.0


def test_exact_search_of_a_keyed_subset_lists_it() -> None:
    """The exact search of a subset object lists its members: the brute force within the subset."""
    from exemplar_vae.priors.subset import KeyedSubset
    from exemplar_vae.retrieval import SubsetSearch

    g = torch.Generator().manual_seed(3)
    codes = torch.cat([torch.randn(500, 4, generator=g), 50.0 + torch.randn(500, 4, generator=g)])  # [N, d]
    keyed = KeyedSubset(1000, 300, key=7)
    members = keyed.members()
    queries = torch.cat([codes[:20], codes[500:520]]) + 0.01  # near both clusters
    found = SubsetSearch(backend="torch").exact(queries, keyed, codes, 5)
    expect = members[torch.cdist(queries, codes[members]).topk(5, largest=False).indices]  # [B, 5]
    assert torch.equal(found.sort(1).values, expect.sort(1).values)
    assert keyed.contains(found).all()
