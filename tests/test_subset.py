"""Tests of the keyed exemplar subset (exemplar_vae.priors.subset): bijection, exact membership,
determinism across processes and devices, statistical uniformity, and O(batch) membership tests."""

from __future__ import annotations

import math
import random
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from exemplar_vae.errors import ConfigError
from exemplar_vae.priors.subset import _HASH_MUL1, _HASH_MUL2, KeyedSubset, _hash32, _splitmix64, subset_key

# --- chi-square quantiles ---


def _chi2_ppf(q: float, dof: int) -> float:
    """The q-quantile of chi-square with ``dof`` degrees of freedom (scipy, else Wilson-Hilferty)."""
    try:
        from scipy.stats import chi2  # type: ignore[import-untyped]

        return float(chi2.ppf(q, dof))
    except ImportError:  # pragma: no cover - scipy is a test dependency
        z = _normal_ppf(q)
        a = 2.0 / (9.0 * dof)
        return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def _normal_ppf(q: float) -> float:
    """Standard normal quantile by bisection on erf (only used without scipy)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def test_wilson_hilferty_matches_known_quantiles() -> None:
    # chi2(199) 99.9% = 266.386..., chi2(9) 99.9% = 27.877...
    z = _normal_ppf(0.999)
    assert z == pytest.approx(3.0902, abs=1e-3)
    for dof, expected in ((199, 266.386), (9, 27.877)):
        a = 2.0 / (9.0 * dof)
        assert dof * (1.0 - a + z * math.sqrt(a)) ** 3 == pytest.approx(expected, rel=0.01)
        assert _chi2_ppf(0.999, dof) == pytest.approx(expected, rel=0.01)


# --- arithmetic ---


M32 = 0xFFFFFFFF


def reference_hash32(x: int) -> int:
    """lowbias32 in Python integers."""
    x ^= x >> 16
    x = (x * _HASH_MUL1) & M32
    x ^= x >> 15
    x = (x * _HASH_MUL2) & M32
    return x ^ (x >> 16)


def reference_permute(n: int, key: int, rounds: int, i: int, inverse: bool = False) -> int:
    """pi(i) (or pi^{-1}(i)) of the module docstring, in Python integers: round keys by splitmix64, a
    balanced Feistel network on 2h bits with F(R) = top h bits of hash32(hash32(R ^ k0) ^ k1),
    cycle-walked into [0, n)."""
    bits = max(2, (n - 1).bit_length())
    h = (bits + bits % 2) // 2
    keys, state = [], key
    for _ in range(rounds):
        state = (state + 0x9E3779B97F4A7C15) & (2**64 - 1)
        z = _splitmix64(state)
        keys.append((z & M32, z >> 32))

    def f(r: int, k: tuple[int, int]) -> int:
        return reference_hash32(reference_hash32(r ^ k[0]) ^ k[1]) >> (32 - h)

    v = i
    while True:
        left, right = v >> h, v & ((1 << h) - 1)
        for k in reversed(keys) if inverse else keys:
            if inverse:
                left, right = right ^ f(left, k), left
            else:
                left, right = right, left ^ f(right, k)
        v = (left << h) | right
        if v < n:
            return v


def test_hash32_is_the_python_integer_hash() -> None:
    rng = random.Random(0)
    xs = [rng.getrandbits(32) for _ in range(2000)] + [0, 1, 2**31 - 1, 2**31, 2**32 - 1]
    x = np.array(xs, dtype=np.uint32)
    assert _hash32(x).tolist() == [reference_hash32(v) for v in xs]
    assert x.tolist() == xs  # the input is not modified in place


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 50_000, 65_537, 2**62])
@pytest.mark.parametrize("rounds", [1, 6])
def test_permutation_is_the_python_integer_reference(n: int, rounds: int) -> None:
    rng = random.Random(n + rounds)
    key = rng.getrandbits(63)
    subset = KeyedSubset(n, min(n, 40), key, rounds)
    ids = [rng.randrange(n) for _ in range(40)]
    t = torch.tensor(ids, dtype=torch.int64)
    assert subset.permute(t).tolist() == [reference_permute(n, key, rounds, i) for i in ids]
    assert subset.inverse(t).tolist() == [reference_permute(n, key, rounds, i, inverse=True) for i in ids]
    assert subset.members().tolist() == [reference_permute(n, key, rounds, i) for i in range(min(n, 40))]


# --- bijection ---


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 4096, 4097, 65537])
def test_permutation_is_a_bijection(n: int) -> None:
    subset = KeyedSubset(n, 1, key=subset_key(1, 2, n))
    i = torch.arange(n)
    p = subset.permute(i)
    assert p.dtype == torch.int64 and p.shape == (n,)
    assert torch.equal(torch.sort(p).values, i)
    assert torch.equal(subset.inverse(p), i)
    assert torch.equal(subset.permute(subset.inverse(i)), i)


@pytest.mark.parametrize("rounds", [1, 2, 3, 8])
def test_any_number_of_rounds_is_a_bijection(rounds: int) -> None:
    n = 777
    subset = KeyedSubset(n, 5, key=12345, rounds=rounds)
    p = subset.permute(torch.arange(n))
    assert torch.equal(torch.sort(p).values, torch.arange(n))
    assert torch.equal(subset.inverse(p), torch.arange(n))


def test_permutation_is_not_the_identity_and_keeps_shape() -> None:
    subset = KeyedSubset(4097, 10, key=99)
    i = torch.arange(4097)
    assert (subset.permute(i) != i).float().mean() > 0.99
    grid = torch.arange(24).reshape(2, 3, 4)
    out = subset.permute(grid)
    assert out.shape == (2, 3, 4)
    assert torch.equal(out.reshape(-1), subset.permute(grid.reshape(-1)))
    assert subset.permute(torch.arange(0)).shape == (0,)
    assert torch.equal(subset.permute(torch.arange(10, dtype=torch.int32)), subset.permute(torch.arange(10)))


# --- members and contains ---


@pytest.mark.parametrize(("n", "m"), [(10_007, 3_001), (10_007, 10_007), (10_007, 1)])
def test_members_and_contains(n: int, m: int) -> None:
    subset = KeyedSubset(n, m, key=subset_key(0, 3, 17))
    members = subset.members()
    assert members.shape == (m,) and members.dtype == torch.int64
    assert torch.unique(members).numel() == m
    assert int(members.min()) >= 0 and int(members.max()) < n
    assert bool(subset.contains(members).all())
    mask = torch.ones(n, dtype=torch.bool)
    mask[members] = False
    complement = torch.arange(n)[mask]
    assert complement.numel() == n - m
    assert not bool(subset.contains(complement).any())
    assert int(subset.contains(torch.arange(n)).sum()) == m


def test_leave_one_out_normaliser_matches_members() -> None:
    n, m = 5_000, 1_200
    subset = KeyedSubset(n, m, key=subset_key(7, 1, 42))
    members = subset.members()
    gen = torch.Generator().manual_seed(0)
    inside = members[torch.randint(0, m, (40,), generator=gen)]
    index = torch.cat([inside, torch.randint(0, n, (88,), generator=gen)])
    in_subset = subset.contains(index)
    assert torch.equal(in_subset, torch.isin(index, members))
    assert bool(in_subset[:40].all()) and not bool(in_subset.all())
    normaliser = m - in_subset.long()  # exemplars left after masking the point's own one
    assert torch.equal(normaliser[:40], torch.full((40,), m - 1))
    assert torch.equal(normaliser[~in_subset], torch.full((int((~in_subset).sum()),), m))


# --- keys and determinism ---


def test_keys_select_subsets_deterministically() -> None:
    n, m = 10_000, 100
    a = KeyedSubset(n, m, key=subset_key(0, 0, 5))
    again = KeyedSubset(n, m, key=subset_key(0, 0, 5))  # what a second process builds
    assert torch.equal(a.members(), again.members())
    assert a == again and hash(a) == hash(again)
    others = [KeyedSubset(n, m, key=subset_key(s, e, t)) for s, e, t in ((0, 0, 6), (0, 1, 5), (1, 0, 5))]
    for other in others:
        assert other != a
        overlap = torch.isin(other.members(), a.members()).sum()
        assert int(overlap) < 10  # independent subsets share ~ m^2/n = 1 member
    assert len({tuple(KeyedSubset(64, 8, key=k).members().tolist()) for k in range(50)}) == 50


def test_subset_key_is_63_bit_and_mixed() -> None:
    keys = {subset_key(s, e, t) for s in range(3) for e in range(3) for t in range(100)}
    assert len(keys) == 900
    assert all(0 <= k < 2**63 for k in keys)
    assert subset_key(0, 0, 0) == subset_key(0, 0, 0)
    assert subset_key(0, 1, 0) != subset_key(0, 0, 1)
    assert subset_key(-1, 0, 0) != subset_key(1, 0, 0)
    # neighbouring steps differ in about half of the bits
    flips = [bin(subset_key(0, 0, t) ^ subset_key(0, 0, t + 1)).count("1") for t in range(200)]
    assert 28 < sum(flips) / len(flips) < 35


def test_draw_takes_one_randint_from_the_generator() -> None:
    n, m = 1000, 30
    g1 = torch.Generator().manual_seed(11)
    g2 = torch.Generator().manual_seed(11)
    expected_key = int(torch.randint(0, 2**62, (1,), generator=g2).item())
    s1 = KeyedSubset.draw(n, m, g1)
    assert s1.key == expected_key and s1.num_total == n and s1.size == m
    # both generators are now in the same state: the draw consumed exactly one randint
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    g3 = torch.Generator().manual_seed(11)
    assert torch.equal(KeyedSubset.draw(n, m, g3).members(), s1.members())
    assert KeyedSubset.draw(n, m, g1).key != s1.key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_subset_on_cuda() -> None:
    n, m = 100_003, 4_000
    subset = KeyedSubset(n, m, key=subset_key(3, 4, 5))
    cpu = subset.members()
    cuda = subset.members(device="cuda")
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), cpu)
    ids = torch.randint(0, n, (2000,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(subset.contains(ids.cuda()).cpu(), subset.contains(ids))
    assert torch.equal(subset.inverse(ids.cuda()).cpu(), subset.inverse(ids))


# --- validation and immutability ---


@pytest.mark.parametrize(
    ("num_total", "size", "key", "rounds"),
    [
        (0, 1, 0, 6),
        (10, 0, 0, 6),
        (10, 11, 0, 6),
        (10, 5, 0, 0),
        (10, 5, -1, 6),
        (10, 5, 2**63, 6),
        (2**62 + 1, 1, 0, 6),
        (1000.0, 10, 0, 6),
    ],
)
def test_bad_arguments_raise_config_error(num_total: Any, size: int, key: int, rounds: int) -> None:
    with pytest.raises(ConfigError) as info:
        KeyedSubset(num_total, size, key, rounds)
    assert "\n" not in str(info.value)


def test_bad_ids_raise_config_error() -> None:
    subset = KeyedSubset(100, 10, key=1)
    with pytest.raises(ConfigError):
        subset.contains(torch.tensor([0, 100]))
    with pytest.raises(ConfigError):
        subset.permute(torch.tensor([-1]))
    with pytest.raises(ConfigError):
        subset.inverse(torch.tensor([1.0]))


def test_largest_range_round_trips() -> None:
    n = 2**62
    subset = KeyedSubset(n, 2**40, key=2**63 - 1)
    ids = torch.tensor([0, 1, 2**40 - 1, 2**61, n - 1], dtype=torch.int64)
    p = subset.permute(ids)
    assert bool(((p >= 0) & (p < n)).all())
    assert torch.equal(subset.inverse(p), ids)


def test_is_immutable() -> None:
    subset = KeyedSubset(100, 10, key=1)
    with pytest.raises(AttributeError):
        subset.size = 20  # type: ignore[misc]
    with pytest.raises(AttributeError):
        subset._size = 20  # type: ignore[misc]
    assert (subset.num_total, subset.size, subset.key, subset.rounds) == (100, 10, 1, 6)
    assert repr(subset) == "KeyedSubset(num_total=100, size=10, key=1, rounds=6)"


# --- statistical uniformity ---

N_STAT, M_STAT, DRAWS = 200, 50, 4_000
PAIRS = [(0, 1), (0, 199), (17, 113), (99, 100), (150, 151)]


@pytest.fixture(scope="module")
def draws() -> Tensor:
    """[DRAWS, M] the members of 4,000 subsets keyed by subset_key over 4 epochs x 1,000 steps."""
    return torch.stack(
        [
            KeyedSubset(N_STAT, M_STAT, key=subset_key(2024, s // 1000, s % 1000)).members()
            for s in range(DRAWS)
        ]
    )


def _rotations() -> Tensor:
    """[DRAWS, M] a bad 'permutation' (a random rotation) that has uniform inclusion but is not random."""
    offsets = torch.randint(0, N_STAT, (DRAWS, 1), generator=torch.Generator().manual_seed(0))
    return (offsets + torch.arange(M_STAT)) % N_STAT


def inclusion_chi2(members: Tensor) -> float:
    """sum over elements of (count - E)^2 / (E (1 - M/N)): ~ chi2 with N - 1 dof."""
    counts = torch.bincount(members.reshape(-1), minlength=N_STAT).double()
    q = M_STAT / N_STAT
    expected = members.shape[0] * q
    return float(((counts - expected) ** 2).sum() / (expected * (1 - q)))


def pair_z_scores(members: Tensor) -> list[float]:
    """For each pair in PAIRS, (joint inclusion frequency - M(M-1)/(N(N-1))) / its standard error."""
    p = M_STAT * (M_STAT - 1) / (N_STAT * (N_STAT - 1))
    se = math.sqrt(p * (1 - p) / members.shape[0])
    scores = []
    for a, b in PAIRS:
        joint = ((members == a).any(1) & (members == b).any(1)).double().mean()
        scores.append(float((joint - p) / se))
    return scores


def position_chi2(members: Tensor, bins: int = 10) -> tuple[float, int]:
    """The positions (in members()) of each element, in ``bins`` bins, against uniform given its count:
    (statistic, dof)."""
    width = M_STAT // bins
    position_bin = (torch.arange(M_STAT) // width).expand_as(members)
    table = torch.zeros(N_STAT, bins, dtype=torch.float64)
    table.index_put_(
        (members.reshape(-1), position_bin.reshape(-1)),
        torch.ones(members.numel(), dtype=torch.float64),
        accumulate=True,
    )
    expected = table.sum(1, keepdim=True) / bins
    return float(((table - expected) ** 2 / expected).sum()), N_STAT * (bins - 1)


def successive_pair_chi2(members: Tensor, bins: int = 10) -> tuple[float, int]:
    """(members[0], members[1]) in bins x bins cells against uniform over ordered distinct pairs."""
    width = N_STAT // bins
    cell = (members[:, 0] // width) * bins + members[:, 1] // width
    counts = torch.bincount(cell, minlength=bins * bins).double()
    same = torch.eye(bins, dtype=torch.float64).reshape(-1)
    prob = torch.where(same > 0, width * (width - 1), width * width) / (N_STAT * (N_STAT - 1))
    expected = members.shape[0] * prob
    return float(((counts - expected) ** 2 / expected).sum()), bins * bins - 1


def test_inclusion_is_uniform(draws: Tensor) -> None:
    assert draws.shape == (DRAWS, M_STAT)
    assert all(torch.unique(row).numel() == M_STAT for row in draws[:100])
    stat = inclusion_chi2(draws)
    assert stat < _chi2_ppf(0.999, N_STAT - 1), stat


def test_pairwise_inclusion(draws: Tensor) -> None:
    scores = pair_z_scores(draws)
    assert all(abs(z) < 5 for z in scores), scores


def test_positions_in_members_are_uniform(draws: Tensor) -> None:
    stat, dof = position_chi2(draws)
    assert stat < _chi2_ppf(0.999, dof), (stat, dof)


def test_successive_members_are_independent(draws: Tensor) -> None:
    stat, dof = successive_pair_chi2(draws)
    assert stat < _chi2_ppf(0.999, dof), (stat, dof)


def test_statistics_reject_a_rotation() -> None:
    """The checks have power: a random rotation (each element included with probability M/N) fails the
    pairwise and the successive-members tests."""
    rot = _rotations()
    assert max(abs(z) for z in pair_z_scores(rot)) > 5
    stat, dof = successive_pair_chi2(rot)
    assert stat > _chi2_ppf(0.999, dof)


def test_inclusion_statistic_rejects_a_biased_subset() -> None:
    gen = torch.Generator().manual_seed(0)
    weights = torch.ones(N_STAT)
    weights[:20] = 1.5
    biased = torch.stack([torch.multinomial(weights, M_STAT, generator=gen) for _ in range(DRAWS)])
    assert inclusion_chi2(biased) > _chi2_ppf(0.999, N_STAT - 1)


# --- cost shape ---


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_contains_work_is_proportional_to_the_batch() -> None:
    n, m = 10**6, 5 * 10**5
    subset = KeyedSubset(n, m, key=subset_key(0, 0, 0))
    ids = torch.randint(0, n, (1_100,), generator=torch.Generator().manual_seed(0))
    subset.contains(ids[:10])  # first-call allocations (numpy, torch) out of the measurement
    with _LargestTensor() as probe:  # sees torch's tensors
        inside = subset.contains(ids)
    tracemalloc.start()  # sees numpy's allocations (the network runs in numpy), not torch's
    try:
        subset.contains(ids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert inside.shape == (1_100,) and inside.dtype == torch.bool
    assert 0 < probe.largest <= 1_100  # no O(N) tensor was made
    assert peak < 200 * 1_100  # bytes: a few arrays of the batch's size; an [N] int64 array is 8 MB
    assert 400 < int(inside.sum()) < 700  # about half of the ids are members
