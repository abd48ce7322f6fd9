"""Priors against float64 brute-force mixtures (tests/reference.py), and the exemplar prior's invariants.

The exemplar prior's references rebuild the centres from a float64 copy of the encoder and loop over the
components explicitly, skipping a point's own exemplar for leave-one-out.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import reference as ref
import torch
from torch.testing import assert_close

from exemplar_vae.errors import ConfigError
from exemplar_vae.evaluation import PriorScoring
from exemplar_vae.evaluation.truncation import candidate_log_prob
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.priors import ExemplarPrior, GaussianPrior, MoGPrior, VampPrior
from exemplar_vae.priors.exemplar import streaming_exemplar_log_prob
from exemplar_vae.priors.mixtures import diag_mixture_log_prob
from exemplar_vae.retrieval import index as retrieval_index
from exemplar_vae.retrieval.index import knn_search

N, DATA_DIM, HIDDEN, LATENT = 40, 6, 16, 3


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def make_encoder(seed: int = 0, data_dim: int = DATA_DIM, latent: int = LATENT) -> MLPEncoder:
    torch.manual_seed(seed)
    return MLPEncoder(data_dim, HIDDEN, latent)


def make_exemplars(seed: int = 1, n: int = N) -> torch.Tensor:
    return torch.randn(n, DATA_DIM, generator=gen(seed))  # [N, D]; codes spread ~1.5, nearest ~0.4 apart


def centers64(encoder: MLPEncoder, x: torch.Tensor) -> np.ndarray:
    """mu_phi(x) from a float64 copy of the encoder: [n, d]."""
    with torch.no_grad():
        return ref.as64(copy.deepcopy(encoder).double().mean(x.double()))


def make_prior(
    encoder: MLPEncoder,
    exemplars: torch.Tensor,
    m: int = 15,
    knn: int = 0,
    loo: bool = True,
    log_var: float = -0.7,
    train: bool = True,
) -> ExemplarPrior:
    prior = ExemplarPrior(
        exemplars, LATENT, num_exemplars=m, knn=knn, leave_one_out=loo, search_backend="torch"
    )
    with torch.no_grad():
        prior.log_var.fill_(log_var)
    prior.train(train)
    prior.refresh(encoder)
    return prior


def loo_counts(index: torch.Tensor, subset: torch.Tensor) -> list[float]:
    """M - 1 for a point inside the subset, M otherwise."""
    members = set(subset.tolist())
    return [len(members) - (1.0 if i in members else 0.0) for i in index.tolist()]


def draw_queries(
    codes: np.ndarray, g: torch.Generator, b: int = 12, n: int = N
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset indices and codes near (some) of their own exemplar codes: ([B], [B, d] float32)."""
    index = torch.randint(n, (b,), generator=g)
    near = t64(codes)[index].float() + 0.3 * torch.randn(b, codes.shape[1], generator=g)
    far = 2.0 * torch.randn(b, codes.shape[1], generator=g)
    use_far = torch.rand(b, 1, generator=g) < 0.3
    return index, torch.where(use_far, far, near)


# -- Gaussian, MoG, VampPrior ------------------------------------------------------------------------
def test_gaussian_prior_log_prob() -> None:
    prior = GaussianPrior(4)
    z = 3 * torch.randn(50, 4, generator=gen(0))
    out = prior.log_prob(z, encoder=None)
    assert out.shape == (50,)
    assert_close(out.double(), t64(ref.log_normal_standard(z)), rtol=1e-6, atol=1e-5)
    one = ref.diag_mixture_log_prob(z, np.zeros((1, 4)), np.zeros((1, 4)))
    assert_close(out.double(), t64(one), rtol=1e-6, atol=1e-5)


def test_mog_prior_log_prob() -> None:
    torch.manual_seed(0)
    prior = MoGPrior(3, 7)
    with torch.no_grad():
        prior.log_vars.uniform_(-3.0, 1.5)
    z = 2 * torch.randn(40, 3, generator=gen(1))
    out = prior.log_prob(z, encoder=None)
    expect = ref.diag_mixture_log_prob(z, prior.means, prior.log_vars)
    assert_close(out.double(), t64(expect), rtol=1e-6, atol=1e-5)


def test_vampprior_log_prob_is_mixture_of_encoded_pseudo_inputs() -> None:
    torch.manual_seed(0)
    encoder = make_encoder(2)
    prior = VampPrior(LATENT, DATA_DIM, 9)
    with torch.no_grad():
        prior.pseudo_raw.uniform_(-0.5, 1.5)  # exercise the clamp to [0, 1]
    pseudo = np.clip(ref.as64(prior.pseudo_raw), 0.0, 1.0)
    with torch.no_grad():
        means, log_vars = copy.deepcopy(encoder).double()(t64(pseudo))
    z = 2 * torch.randn(30, LATENT, generator=gen(3))
    out = prior.log_prob(z, encoder)
    assert_close(out.double(), t64(ref.diag_mixture_log_prob(z, means, log_vars)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("max_elements", [1, 7, 33, 2**24])
@pytest.mark.parametrize("lv_range", [(-6.0, -6.0), (2.0, 2.0), (-6.0, 2.0)])
def test_diag_mixture_log_prob_chunks_and_extreme_log_variances(
    max_elements: int, lv_range: tuple[float, float]
) -> None:
    g = gen(4)
    k, d = 11, 4
    means = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    log_vars = torch.empty(k, d, dtype=torch.float64).uniform_(*lv_range, generator=g)
    z = torch.cat(
        [
            means[:5] + 0.01 * torch.randn(5, d, generator=g, dtype=torch.float64),
            3 * torch.randn(20, d, generator=g, dtype=torch.float64),
        ]
    )
    expect = t64(ref.diag_mixture_log_prob(z, means, log_vars))
    out64 = diag_mixture_log_prob(z, means, log_vars, max_elements=max_elements)
    assert out64.dtype == torch.float64
    assert_close(out64, expect, rtol=1e-11, atol=1e-9)
    out32 = diag_mixture_log_prob(z.float(), means.float(), log_vars.float(), max_elements=max_elements)
    assert out32.dtype == torch.float32
    # float32 inputs are rounded by ~6e-8 relative; with 1/var = 400 and |z - m| ~ 6 that moves the
    # quadratic form (values down to ~-1e4) by ~1e-3 relative to nothing, hence rtol on the value.
    expect32 = t64(ref.diag_mixture_log_prob(z.float(), means.float(), log_vars.float()))
    assert_close(out32.double(), expect32, rtol=2e-7, atol=1e-5)


def test_diag_mixture_chunking_gives_identical_rows() -> None:
    g = gen(5)
    means, log_vars = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    z = torch.randn(50, 2, generator=g)
    full = diag_mixture_log_prob(z, means, log_vars)
    for max_elements in (1, 6, 13, 299):
        assert_close(
            diag_mixture_log_prob(z, means, log_vars, max_elements=max_elements), full, rtol=0, atol=0
        )


# -- exemplar prior: evaluation form -------------------------------------------------------------------
def test_exemplar_prior_eval_is_full_mixture_without_leave_one_out() -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, train=False)
    codes = centers64(encoder, exemplars)  # [N, d]
    index, z = draw_queries(codes, gen(6), b=30)
    out = prior.log_prob(z, encoder)
    expect = t64(ref.isotropic_exemplar_log_prob(z, codes, -0.7))  # all N, weight 1/N
    assert out.dtype == torch.float32
    assert_close(out.double(), expect, rtol=1e-5, atol=1e-4)
    # in eval mode the index changes nothing: the full prior has no leave-one-out
    assert_close(prior.log_prob(z, encoder, index), out, rtol=0, atol=0)


@pytest.mark.parametrize("max_elements", [1, 20, 700, 2**22])
@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_streaming_exemplar_log_prob_chunks(max_elements: int, offset: float) -> None:
    g = gen(7)
    centers = 2 * torch.randn(N, LATENT, generator=g, dtype=torch.float64) + offset
    near = centers[:10] + 0.05 * torch.randn(10, LATENT, generator=g, dtype=torch.float64)
    z = torch.cat([near, 2 * torch.randn(43, LATENT, generator=g, dtype=torch.float64) + offset])  # [53, d]
    for lv in (-6.0, -0.7, 2.0):
        log_var = torch.tensor(lv, dtype=torch.float64)
        expect = t64(ref.isotropic_exemplar_log_prob(z, centers, lv))
        out = streaming_exemplar_log_prob(z, centers, log_var, max_elements=max_elements)
        assert out.dtype == torch.float64 and out.shape == (53,)
        assert_close(out, expect, rtol=1e-11, atol=1e-9)
        # float32: the documented error is about 1e-7 * ||z - c|| * ||c_n - c|| / sigma^2 nats (c: the
        # mean centre). Seen: up to 1.00x that estimate (7e-4 .. 1.4e-2 nats at log_var = -6); allow 2x.
        z32, c32 = z.float(), centers.float()
        out32 = streaming_exemplar_log_prob(z32, c32, log_var.float(), max_elements=max_elements)
        assert out32.dtype == torch.float32
        expect32 = t64(ref.isotropic_exemplar_log_prob(z32, c32, float(log_var.float())))
        shift = c32.double().mean(0)
        scale = (z32.double() - shift).norm(dim=1).max() * (c32.double() - shift).norm(dim=1).max()
        bound = 2e-7 * scale.item() / np.exp(lv) + 1e-6
        err = (out32.double() - expect32).abs().max().item()
        assert err < bound, f"float32 error {err:.3g} > {bound:.3g} at log_var {lv}"


# -- exemplar prior: training forms --------------------------------------------------------------------
@pytest.mark.parametrize("loo", [True, False])
def test_exact_log_prob_is_subset_mixture(loo: bool) -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, m=15, loo=loo)
    codes = centers64(encoder, exemplars)
    g = gen(8)
    for _ in range(5):
        subset = prior.draw_subset(g).members()
        index, z = draw_queries(codes, g)
        index[:4] = subset[:4]  # some points surely inside the subset
        out = prior.exact_log_prob(z, encoder, index, subset)
        sub = subset.tolist()
        if loo:
            expect = ref.isotropic_exemplar_log_prob(z, codes[sub], -0.7, index.tolist(), sub)
            counted = ref.isotropic_exemplar_log_prob(
                z, codes[sub], -0.7, index.tolist(), sub, loo_counts(index, subset)
            )
            assert_close(t64(expect), t64(counted), rtol=0, atol=0)  # divides by M - 1 / M
        else:
            expect = ref.isotropic_exemplar_log_prob(z, codes[sub], -0.7)
        assert_close(out.double(), t64(expect), rtol=1e-5, atol=1e-4)
        # without an index there is nothing to leave out
        no_index = ref.isotropic_exemplar_log_prob(z, codes[sub], -0.7)
        assert_close(
            prior.exact_log_prob(z, encoder, None, subset).double(), t64(no_index), rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("knn", [0, 5])
def test_leave_one_out_never_lets_a_point_explain_itself(knn: int) -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, m=15, knn=knn, log_var=-10.0)  # sigma ~ 7e-3
    codes = centers64(encoder, exemplars)
    subset = prior.draw_subset(gen(9)).members()
    index = subset[:6]
    with torch.no_grad():
        z = encoder.mean(exemplars[index])  # exactly at each point's own exemplar code
    fn = prior.exact_log_prob if knn == 0 else prior.knn_log_prob
    out = fn(z, encoder, index, subset).double()
    sub = subset.tolist()
    without_self = t64(ref.isotropic_exemplar_log_prob(z, codes[sub], -10.0, index.tolist(), sub))
    with_self = t64(ref.isotropic_exemplar_log_prob(z, codes[sub], -10.0))
    assert torch.isfinite(out).all()
    if knn == 0:
        assert_close(out, without_self, rtol=1e-5, atol=1e-3)
    else:
        assert (out <= without_self * (1 - 1e-6) + 1e-4).all()
    assert (out < with_self - 100.0).all(), (out, with_self)  # self would give ~ +13 nats


@pytest.mark.parametrize("knn", [0, 14])
def test_train_mode_log_prob_with_m_equal_n_is_loo_over_everything(knn: int) -> None:
    """With M = N the random subset is the whole set, so the training prior is fully determined."""
    encoder, exemplars = make_encoder(), make_exemplars()
    m = 15
    prior = make_prior(encoder, make_exemplars(n=m), m=m, knn=knn)
    exemplars = prior.exemplars
    codes = centers64(encoder, exemplars)
    index, z = draw_queries(codes, gen(10), n=m)
    out = prior.log_prob(z, encoder, index)
    expect = ref.isotropic_exemplar_log_prob(z, codes, -0.7, index.tolist(), list(range(m)))
    assert_close(out.double(), t64(expect), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("knn", [1, 2, 3, 5, 8, 13])
def test_knn_log_prob_is_a_lower_bound_on_exact(knn: int) -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, m=15, knn=knn)
    codes = centers64(encoder, exemplars)
    g = gen(11 + knn)
    strict = 0
    for _ in range(20):
        subset = prior.draw_subset(g).members()
        index, z = draw_queries(codes, g)
        index[:3] = subset[:3]
        with torch.no_grad():
            exact = prior.exact_log_prob(z, encoder, index, subset).double()
            bound = prior.knn_log_prob(z, encoder, index, subset).double()
        assert (bound <= exact + 1e-6 * exact.abs() + 1e-6).all(), (bound - exact).max()
        strict += int((bound < exact - 1e-4).sum())
        # the bound is the mixture over the retrieved union with the exact mixture's weights
        union = prior.retrieve(z, index, subset).tolist()
        expect = ref.isotropic_exemplar_log_prob(
            z, codes[union], -0.7, index.tolist(), union, loo_counts(index, subset)
        )
        assert_close(bound, t64(expect), rtol=1e-5, atol=1e-4)
    if knn <= 5:
        assert strict > 0  # a few neighbours do not cover the subset: the bound is not trivial


@pytest.mark.parametrize("with_index", [True, False])
def test_knn_log_prob_equals_exact_when_union_covers_subset(with_index: bool) -> None:
    """Under leave-one-out retrieve() fetches k + 1 codes, so k = M - 1 covers the subset; else k = M."""
    encoder, exemplars = make_encoder(), make_exemplars()
    m = 15
    prior = make_prior(encoder, exemplars, m=m, knn=m - 1 if with_index else m)
    codes = centers64(encoder, exemplars)
    g = gen(12)
    for _ in range(5):
        subset = prior.draw_subset(g).members()
        index, z = draw_queries(codes, g)
        index[:3] = subset[:3]
        idx = index if with_index else None
        assert sorted(prior.retrieve(z, idx, subset).tolist()) == sorted(subset.tolist())
        with torch.no_grad():
            exact = prior.exact_log_prob(z, encoder, idx, subset)
            bound = prior.knn_log_prob(z, encoder, idx, subset)
        assert_close(bound, exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loo", [True, False])
@pytest.mark.parametrize("knn", [1, 2, 4])
def test_retrieve_returns_true_nearest_non_self_neighbours(knn: int, loo: bool) -> None:
    """With a fresh cache, the union holds every point's k nearest subset codes other than itself."""
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, m=20, knn=knn, loo=loo)
    codes = ref.as64(prior.cache.get())
    g = gen(13)
    for _ in range(10):
        subset = prior.draw_subset(g).members()
        index, z = draw_queries(codes, g)
        index[:4] = subset[:4]
        union = set(prior.retrieve(z, index, subset).tolist())
        assert union <= set(subset.tolist())
        sq = ref.squared_distances(z, codes)  # [B, N]
        for b in range(z.shape[0]):
            cands = [j for j in subset.tolist() if not (loo and j == int(index[b]))]
            nearest = sorted(cands, key=lambda j: sq[b, j])[:knn]
            assert set(nearest) <= union, (b, nearest, sorted(union))


@pytest.mark.parametrize("knn", [0, 4])
def test_gradients_reach_log_var_and_encoder_through_exemplars(knn: int) -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, m=15, knn=knn)
    codes = centers64(encoder, exemplars)
    g = gen(14)
    subset = prior.draw_subset(g).members()
    index, z = draw_queries(codes, g)
    index[:4] = subset[:4]
    z = z.detach()  # the only path to the encoder is through the re-encoded exemplars
    fn = prior.exact_log_prob if knn == 0 else prior.knn_log_prob
    union = subset.tolist() if knn == 0 else prior.retrieve(z, index, subset).tolist()
    encoder.zero_grad()
    (-fn(z, encoder, index, subset).sum()).backward()

    counts = loo_counts(index, subset)

    def loss64(centres: np.ndarray, lv: float) -> float:
        return -float(ref.isotropic_exemplar_log_prob(z, centres, lv, index.tolist(), union, counts).sum())

    # d loss / d log sigma^2 against a central difference of the float64 reference
    h = 1e-5
    fd = (loss64(codes[union], -0.7 + h) - loss64(codes[union], -0.7 - h)) / (2 * h)
    assert prior.log_var.grad is not None and abs(prior.log_var.grad.item()) > 1e-2
    assert prior.log_var.grad.item() == pytest.approx(fd, rel=1e-4, abs=1e-4)

    # d loss / d (mean-head bias): moving the bias moves every centre; central difference in float64
    enc64 = copy.deepcopy(encoder).double()
    grad = encoder.mean_head.bias.grad
    assert grad is not None and grad.abs().max() > 1e-3
    for i in range(LATENT):
        vals = []
        for sign in (1.0, -1.0):
            e = copy.deepcopy(enc64)
            with torch.no_grad():
                e.mean_head.bias[i] += sign * h
                vals.append(loss64(ref.as64(e.mean(exemplars[union].double())), -0.7))
        assert grad[i].item() == pytest.approx((vals[0] - vals[1]) / (2 * h), rel=1e-3, abs=1e-3)
    # the body gets gradient too; the log-variance head is not on the prior's path
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.body.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in encoder.log_var_head.parameters())


def test_knn_gradients_equal_exact_gradients_when_union_covers_subset() -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    m = 15
    prior = make_prior(encoder, exemplars, m=m, knn=m - 1)
    g = gen(15)
    subset = prior.draw_subset(g).members()
    index, z = draw_queries(centers64(encoder, exemplars), g)
    grads = []
    for fn in (prior.exact_log_prob, prior.knn_log_prob):
        encoder.zero_grad()
        prior.zero_grad()
        (-fn(z, encoder, index, subset).sum()).backward()
        grads.append([prior.log_var.grad.clone()] + [p.grad.clone() for p in encoder.mean_head.parameters()])
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- exemplar prior: errors ------------------------------------------------------------------------------
def test_train_mode_log_prob_without_index_raises_under_leave_one_out() -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, knn=3)
    z = torch.randn(4, LATENT, generator=gen(16))
    with pytest.raises(ValueError, match="index"):
        prior.log_prob(z, encoder)
    no_loo = make_prior(encoder, exemplars, knn=3, loo=False)
    assert torch.isfinite(no_loo.log_prob(z, encoder)).all()


@pytest.mark.parametrize(
    ("n", "m", "knn", "match"),
    [
        (N, 15, 16, "k=16"),
        (N, N + 1, 0, "M=41"),
        (N, 0, 0, "M=0"),
        (0, None, 0, "at least one"),
        (N, 15, -1, "k=-1"),
    ],
)
def test_exemplar_prior_construction_errors(n: int, m: int | None, knn: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExemplarPrior(torch.rand(n, DATA_DIM), LATENT, num_exemplars=m, knn=knn)


def test_exemplar_prior_needs_a_refreshed_cache() -> None:
    prior = ExemplarPrior(make_exemplars(), LATENT, num_exemplars=10, knn=2).eval()
    with pytest.raises(RuntimeError, match="refresh"):
        prior.log_prob(torch.zeros(2, LATENT), make_encoder())


# -- kNN search ----------------------------------------------------------------------------------------
BACKENDS = ["torch", "auto"] + (["faiss"] if retrieval_index.faiss is not None else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_search_matches_brute_force(backend: str, k: int) -> None:
    g = gen(17)
    queries, base = torch.randn(20, 4, generator=g), torch.randn(50, 4, generator=g)
    sq = ref.squared_distances(queries, base)  # [20, 50], distinct with probability one
    order = np.argsort(sq, axis=1)[:, :k]
    dist, idx = knn_search(queries, base, k, backend)
    assert idx.dtype == torch.int64 and idx.shape == (20, k) and dist.shape == (20, k)
    assert torch.equal(idx, torch.from_numpy(order))
    assert_close(dist.double(), t64(np.take_along_axis(sq, order, axis=1)), rtol=1e-5, atol=1e-5)


def test_knn_search_backends_agree() -> None:
    if retrieval_index.faiss is None:
        pytest.skip("faiss not installed")
    g = gen(18)
    queries, base = 3 * torch.randn(64, 8, generator=g), 3 * torch.randn(300, 8, generator=g)
    d1, i1 = knn_search(queries, base, 10, "faiss")
    d2, i2 = knn_search(queries, base, 10, "torch")
    assert torch.equal(i1, i2)
    assert_close(d1, d2, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [0, 51])
def test_knn_search_rejects_bad_k(backend: str, k: int) -> None:
    with pytest.raises(ConfigError, match=f"k={k}"):
        knn_search(torch.randn(3, 4), torch.randn(50, 4), k, backend)


def test_knn_search_rejects_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="annoy"):
        knn_search(torch.randn(3, 4), torch.randn(50, 4), 2, "annoy")


# -- sampling ------------------------------------------------------------------------------------------
def assert_moments(samples: torch.Tensor, mean: np.ndarray, var: np.ndarray) -> None:
    """Sample mean and variance within 5 standard errors of the mixture's moments."""
    n = samples.shape[0]
    s = ref.as64(samples)
    assert np.all(np.abs(s.mean(0) - mean) < 5 * np.sqrt(var / n)), (s.mean(0), mean)
    assert np.all(np.abs(s.var(0) - var) < 5 * var * np.sqrt(2.0 / n) + 0.05 * var), (s.var(0), var)


def mixture_moments(means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = means.mean(0)
    return mean, (variances + means**2).mean(0) - mean**2


def test_gaussian_prior_sample() -> None:
    out = GaussianPrior(3).sample(20000, None, gen(19))
    assert out.shape == (20000, 3)
    assert_moments(out, np.zeros(3), np.ones(3))
    assert torch.equal(out, GaussianPrior(3).sample(20000, None, gen(19)))


def test_mog_prior_sample() -> None:
    torch.manual_seed(1)
    prior = MoGPrior(2, 4)
    with torch.no_grad():
        prior.log_vars.uniform_(-2.0, 0.5)
    out = prior.sample(20000, None, gen(20))
    assert out.shape == (20000, 2)
    assert_moments(out, *mixture_moments(ref.as64(prior.means), np.exp(ref.as64(prior.log_vars))))


def test_vampprior_sample() -> None:
    torch.manual_seed(2)
    encoder = make_encoder(3)
    prior = VampPrior(LATENT, DATA_DIM, 5)
    with torch.no_grad():
        prior.pseudo_raw.uniform_(0.0, 1.0)
        means, log_vars = encoder(prior.pseudo_inputs())
    out = prior.sample(20000, encoder, gen(21))
    assert out.shape == (20000, LATENT)
    assert_moments(out, *mixture_moments(ref.as64(means), np.exp(ref.as64(log_vars))))


def test_exemplar_prior_sample_lands_on_cached_codes() -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, log_var=-30.0, train=False)  # sigma ~ 3e-7
    codes = prior.cache.get()
    out = prior.sample(4000, encoder, gen(22))
    assert out.shape == (4000, LATENT)
    sq = ref.squared_distances(out, codes)  # [4000, N]
    assert np.sqrt(sq.min(1)).max() < 1e-4
    counts = np.bincount(sq.argmin(1), minlength=N)  # uniform pick: 100 expected per exemplar
    assert counts.min() > 50 and counts.max() < 160, counts


def test_exemplar_prior_sample_moments() -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, log_var=-0.7, train=False)
    codes = ref.as64(prior.cache.get())
    out = prior.sample(20000, encoder, gen(23))
    assert_moments(out, *mixture_moments(codes, np.full_like(codes, np.exp(-0.7))))


# -- exemplar prior: truncated evaluation prior (importance sampling) -------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_candidate_log_prob_is_mixture_over_candidates_with_weight_one_over_n(dtype: torch.dtype) -> None:
    g = gen(24)
    s, b, k, d = 30, 4, 7, LATENT
    candidates = 2 * torch.randn(b, k, d, generator=g, dtype=torch.float64) + 5.0  # [B, K, d]
    z = candidates[:, :3].mean(1) + torch.randn(s, b, d, generator=g, dtype=torch.float64)  # [S, B, d]
    for lv in (-3.0, -0.7, 1.0):
        log_var = torch.tensor(lv, dtype=dtype)
        out = candidate_log_prob(z.to(dtype), candidates.to(dtype), log_var, N)
        assert out.shape == (s, b) and out.dtype == dtype
        expect = np.stack(
            [
                ref.isotropic_exemplar_log_prob(
                    z[:, j].to(dtype), candidates[j].to(dtype), float(log_var), count=N
                )
                for j in range(b)
            ],
            axis=1,
        )  # [S, B]
        tol = dict(rtol=1e-11, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-4)
        assert_close(out.double(), t64(expect), **tol)


@pytest.mark.parametrize("k", [1, 5, N - 1, N])
def test_truncated_scorer_is_lower_bound_on_full_prior(k: int) -> None:
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, train=False)
    codes = ref.as64(prior.cache.get())
    g = gen(25)
    mean = t64(codes)[:6].float() + 0.5 * torch.randn(6, LATENT, generator=g)  # [B, d] test-point means
    z = mean + torch.randn(50, 6, LATENT, generator=g)  # [S, B, d]
    full = prior.full_log_prob(z.reshape(-1, LATENT)).reshape(50, 6).double()
    assert_close(full, t64(ref.isotropic_exemplar_log_prob(z.reshape(-1, LATENT), codes, -0.7)).reshape(50, 6),
                 rtol=1e-5, atol=1e-4)  # fmt: skip
    out = PriorScoring(prior, encoder, k).scorer(mean)(z).double()  # [S, B]
    assert out.shape == (50, 6)
    assert (out <= full + 1e-5).all()
    # the candidates are the K cached codes nearest each test point's mean; weight 1/N
    sq = ref.squared_distances(mean, codes)  # [B, N]
    expect = np.stack(
        [
            ref.isotropic_exemplar_log_prob(z[:, b], codes[np.argsort(sq[b])[:k]], -0.7, count=N)
            for b in range(6)
        ],
        axis=1,
    )
    assert_close(out, t64(expect), rtol=1e-5, atol=1e-4)
    if k < 5:
        assert (out < full - 1e-3).any()
    # in training mode the candidates are ignored: the scorer is log_prob, which needs an index under
    # leave-one-out
    prior.train()
    with pytest.raises(ValueError, match="index"):
        PriorScoring(prior, encoder, k).scorer(mean)(z)


@pytest.mark.parametrize("knn", [0, 4])
def test_keyed_subset_gives_the_values_of_its_member_list(knn: int) -> None:
    """The prior accepts the keyed subset itself (O(1) membership) or the tensor of its members: the
    exact prior, the retrieved union and the kNN bound are the same, leave-one-out normaliser included."""
    encoder, exemplars = make_encoder(), make_exemplars()
    prior = make_prior(encoder, exemplars, m=15, knn=knn)
    g = gen(31)
    keyed = prior.draw_subset(g)
    members = keyed.members()
    assert len(keyed) == 15 and members.unique().numel() == 15
    index, z = draw_queries(ref.as64(prior.cache.get()), g)
    index[:4] = members[:4]
    with torch.no_grad():
        if knn == 0:
            assert_close(
                prior.exact_log_prob(z, encoder, index, keyed),
                prior.exact_log_prob(z, encoder, index, members),
            )
        else:
            assert torch.equal(prior.retrieve(z, index, keyed), prior.retrieve(z, index, members))
            assert_close(
                prior.knn_log_prob(z, encoder, index, keyed), prior.knn_log_prob(z, encoder, index, members)
            )
    counts = prior._normaliser(index, keyed)
    assert counts.tolist() == loo_counts(index, members)
