"""Two stochastic layers, and the observation models, against float64 references.

The HVAE is small enough to integrate: D = 5 binary pixels, 1-D z1 and z2, 8-unit gated networks, with
the Gaussian and the exemplar prior on z2. The exact log p(x) = log int int p(x|z1,z2) p(z1|z2) p(z2) is
a Riemann sum on a 2-D grid computed with float64 copies of the networks. Both Gaussian proposals are
widened (log-variance heads set to 1.8, see test_likelihood.py) so the importance weights are bounded.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math

import numpy as np
import pytest
import reference as ref
import torch
from scipy.special import logsumexp

from exemplar_vae.config import ModelConfig, PriorConfig
from exemplar_vae.functional import log_discretized_logistic
from exemplar_vae.models import HierarchicalVAE, build_vae
from exemplar_vae.models.observation import DiscretizedLogistic
from exemplar_vae.objectives.elbo import elbo_terms
from exemplar_vae.objectives.likelihood import importance_sampled_log_likelihood

D, HIDDEN, N_EXEMPLARS, BOX, GRID = 5, 8, 12, 10.0, 241
ALL_X = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))  # [32, 5]
X = ALL_X[[0, 31, 21, 12, 7]]  # [5, 5]


def _widen(head: torch.nn.Module) -> None:
    """Set a Gaussian head's log-variance to the constant 1.8."""
    layer = head[0] if isinstance(head, torch.nn.Sequential) else head.log_var[0]
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(1.8)


@functools.cache
def build_hvae(prior_name: str) -> HierarchicalVAE:
    torch.manual_seed(3)
    exemplars = torch.rand(N_EXEMPLARS, D, generator=torch.Generator().manual_seed(1))
    prior = PriorConfig(name=prior_name, exemplars=6, knn=0)
    model = build_vae(ModelConfig(arch="hvae", hidden=HIDDEN, latent_dim=1), prior, exemplars, (1, 1, D))
    assert isinstance(model, HierarchicalVAE)
    _widen(model.encoder.log_var_head)
    _widen(model.z1_encoder.heads)
    if prior_name == "exemplar":
        with torch.no_grad():
            model.prior.log_var.fill_(-0.5)
    model.eval()
    model.prior.refresh(model.encoder)
    return model


def log_prior_z2(model: HierarchicalVAE, z2: np.ndarray) -> np.ndarray:
    """float64 log p(z2): [n, 1] -> [n]."""
    if model.prior.__class__.__name__ == "GaussianPrior":
        return ref.log_normal_standard(z2)
    with torch.no_grad():
        centers = ref.as64(copy.deepcopy(model.encoder).double().mean(model.prior.exemplars.double()))
    return ref.isotropic_exemplar_log_prob(z2, centers, float(model.prior.log_var.detach()))


def exact_log_px(model: HierarchicalVAE, x: torch.Tensor, points: int = GRID) -> np.ndarray:
    """log p(x) by a Riemann sum over (z1, z2) in [-BOX, BOX]^2: [B]."""
    nodes, cell = ref.latent_grid(-BOX, BOX, points, 2)  # [G, 2]
    z1, z2 = nodes[:, :1], nodes[:, 1:]
    p_mean, p_log_var = ref.float64_network(model.z1_prior)(z2)
    log_joint = ref.log_normal_diag(z1, p_mean, p_log_var) + log_prior_z2(model, z2)  # [G]
    logits = ref.float64_network(model.decoder)(z1, z2)  # [G, D]
    return np.array([logsumexp(ref.log_bernoulli_logits(xb, logits) + log_joint) for xb in ref.as64(x)]) + (
        math.log(cell)
    )


@pytest.mark.parametrize("prior_name", ["gaussian", "exemplar"])
def test_hvae_importance_sampling_converges_to_exact_log_px(prior_name: str) -> None:
    model = build_hvae(prior_name)
    exact = exact_log_px(model, X)
    finer = exact_log_px(model, X, points=2 * GRID - 1)
    np.testing.assert_allclose(exact, finer, atol=1e-3)  # the quadrature itself has converged
    est = importance_sampled_log_likelihood(model, X, 20000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ref.as64(est.log_likelihood), exact, atol=0.03)
    assert (ref.as64(est.elbo) < exact).all()


@pytest.mark.parametrize("prior_name", ["gaussian", "exemplar"])
def test_hvae_lower_terms_match_float64_reference(prior_name: str) -> None:
    model = copy.deepcopy(build_hvae(prior_name)).double()
    x = X.double()
    z2 = torch.randn(4, x.shape[0], 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    terms = model.lower_terms(x, z2, torch.Generator().manual_seed(9))
    # the same z1 draws: eps ~ N(0, 1) of shape [S * B, d1] from the same generator state
    eps = ref.as64(
        torch.randn(4 * x.shape[0], 1, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    )
    z2_rows, x_rows = ref.as64(z2.reshape(-1, 1)), np.tile(ref.as64(x), (4, 1))
    q_mean, q_log_var = ref.float64_network(model.z1_encoder)(x_rows, z2_rows)
    z1 = q_mean + np.exp(0.5 * q_log_var) * eps
    p_mean, p_log_var = ref.float64_network(model.z1_prior)(z2_rows)
    kl = ref.log_normal_diag(z1, q_mean, q_log_var) - ref.log_normal_diag(z1, p_mean, p_log_var)
    log_px = ref.log_bernoulli_logits(x_rows, ref.float64_network(model.decoder)(z1, z2_rows))
    np.testing.assert_allclose(ref.as64(terms.kl_lower).reshape(-1), kl, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ref.as64(terms.log_px).reshape(-1), log_px, rtol=1e-10, atol=1e-10)


def test_hvae_elbo_adds_both_layers_and_stays_below_log_px() -> None:
    model = build_hvae("exemplar")
    x = X.repeat(400, 1)  # [2000, 5]
    terms = elbo_terms(model, x, None, 1.0, torch.Generator().manual_seed(2))
    exact = exact_log_px(model, X)
    mean_elbo = ref.as64(terms.elbo).reshape(400, -1).mean(0)  # Monte Carlo E_q[ELBO] per point
    assert (mean_elbo < exact).all()
    # one sample: elbo = -(rec + kl) with kl covering both layers
    torch.testing.assert_close(terms.elbo, -(terms.rec + terms.kl))


def test_exemplar_prior_on_z2_is_the_brute_force_mixture_of_q_z2_means() -> None:
    model = build_hvae("exemplar")
    z = torch.randn(7, 1, generator=torch.Generator().manual_seed(4))
    got = ref.as64(model.prior.log_prob(z, model.encoder))
    np.testing.assert_allclose(got, log_prior_z2(model, ref.as64(z)), rtol=1e-5, atol=1e-5)


def test_hvae_trains_with_every_prior_and_8_bit_data() -> None:
    x8 = torch.randint(0, 256, (30, 2 * 4 * 4), generator=torch.Generator().manual_seed(0)).float() / 255
    for prior_name, binary in itertools.product(["gaussian", "mog", "vampprior", "exemplar"], [True, False]):
        prior = PriorConfig(name=prior_name, components=3, exemplars=10, knn=3)
        model = build_vae(ModelConfig(arch="hvae", hidden=8, latent_dim=2), prior, x8, (2, 4, 4), binary)
        model.train()
        model.prior.refresh(model.encoder)
        x = (x8[:6] > 0.5).float() if binary else x8[:6]
        elbo_terms(model, x, torch.arange(6)).loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), prior_name
        assert model.generate(3).shape == (3, 32)
        assert model.observation.name == ("bernoulli" if binary else "logistic")


# -- the discretised logistic ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("loc", "log_scale"), [(0.5, -3.0), (0.02, -6.5), (0.97, -1.0), (0.3, 0.0), (0.5, -7.0), (0.0, -7.0)]
)
def test_discretized_logistic_sums_to_one_over_256_values(loc: float, log_scale: float) -> None:
    values = torch.arange(256, dtype=torch.float64).unsqueeze(1) / 255  # [256, 1]
    lp = log_discretized_logistic(
        values, torch.tensor([loc], dtype=torch.float64), torch.tensor([log_scale], dtype=torch.float64)
    )
    assert torch.isfinite(lp).all()
    assert float(torch.logsumexp(lp, 0)) == pytest.approx(0.0, abs=1e-10)


def test_discretized_logistic_matches_float64_cdf_differences() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 12), generator=g).double() / 255
    loc = torch.rand(50, 12, generator=g, dtype=torch.float64)
    # scales >= e^-2.5: every standardised edge within |12|, where plain float64 CDF differences are exact
    log_scale = torch.empty(50, 12, dtype=torch.float64).uniform_(-2.5, 0.0, generator=g)
    ref_lp = ref.log_discretized_logistic(x, loc, log_scale)
    np.testing.assert_allclose(ref.as64(log_discretized_logistic(x, loc, log_scale)), ref_lp, rtol=1e-8)
    lp32 = log_discretized_logistic(x.float(), loc.float(), log_scale.float())
    np.testing.assert_allclose(ref.as64(lp32), ref_lp, rtol=1e-4, atol=1e-3)


def test_discretized_logistic_is_accurate_in_far_tails_and_has_finite_gradients() -> None:
    # a narrow logistic far from the value: the plain CDF difference underflows, the stable form does not
    x = torch.tensor([[100 / 255]], dtype=torch.float32)
    loc = torch.tensor([[0.9]], requires_grad=True)
    log_scale = torch.tensor([[-5.0]], requires_grad=True)
    lp = log_discretized_logistic(x, loc, log_scale)
    # log(sigmoid(a) - sigmoid(b)) ~ b + log(e^(a-b) - 1) for a, b << 0
    a, b = (100.5 / 255 - 0.9) / math.exp(-5.0), (99.5 / 255 - 0.9) / math.exp(-5.0)
    assert float(lp.detach()) == pytest.approx(b + math.log(math.expm1(a - b)), rel=1e-5)
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


def test_logistic_observation_splits_location_and_scale_blocks() -> None:
    obs = DiscretizedLogistic()
    params = torch.cat([torch.full((2, 3), 40.0), torch.full((2, 3), -100.0)], dim=-1)  # loc ~ 1, scale min
    loc, log_scale = obs.split(params)
    assert torch.allclose(loc, torch.ones(2, 3)) and (log_scale == -7.0).all()
    x = torch.ones(2, 3)
    # the value 1 owns [1 - h, inf) with h = 0.5 / 255: P = sigmoid(h / e^-7) per pixel
    expected = 3 * -math.log1p(math.exp(-0.5 / 255 * math.exp(7.0)))
    assert torch.allclose(obs.log_prob(x, params), torch.full((2,), expected), atol=1e-5)
    assert torch.equal(obs.mean(params), loc)


# -- training: architectures, 8-bit data, mixed precision ---------------------------------------------
def _digits_config(arch: str, amp: str = "off"):  # noqa: ANN202
    from exemplar_vae.config import DataConfig, RunConfig, TrainConfig

    return RunConfig(
        data=DataConfig(dataset="digits", train_size=300),
        model=ModelConfig(arch=arch, hidden=16, latent_dim=4),
        prior=PriorConfig(name="exemplar", knn=3),
        train=TrainConfig(epochs=1, warmup=1, seed=0, device="cpu", batch_size=50, amp=amp),
    )


@pytest.mark.parametrize(
    ("arch", "amp"), [("hvae", "off"), ("mlp", "bf16"), ("hvae", "bf16"), ("mlp", "fp16")]
)
def test_training_runs_for_each_architecture_and_precision(arch: str, amp: str) -> None:
    from exemplar_vae.pipeline import train

    model, result = train(_digits_config(arch, amp), progress=False)
    assert result.epochs_run == 1 and math.isfinite(result.best_val_loss)
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights in float32


def test_8_bit_data_trains_with_the_logistic_likelihood_without_binarisation() -> None:
    from exemplar_vae.data import load_dataset
    from exemplar_vae.pipeline import train

    digits = load_dataset("digits", train_size=300)
    to8 = {k: (getattr(digits, k) * 255).round() / 255 for k in ("train_x",)}
    data = dataclasses.replace(digits, binary=False, val_x=digits.val_grey, test_x=digits.test_grey, **to8)
    model, result = train(_digits_config("mlp"), progress=False, data=data)
    assert model.observation.name == "logistic" and math.isfinite(result.best_val_loss)
    est = importance_sampled_log_likelihood(model, data.test_x[:3], 10)
    assert torch.isfinite(est.log_likelihood).all()


def test_cli_hvae_train_evaluate_generate_report(tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    from exemplar_vae.cli.main import main

    run = tmp_path / "hvae"
    assert main(["-q", "train", "--dataset", "digits", "--arch", "hvae", "--prior", "exemplar", "--knn", "3",
                 "--hidden", "16", "--latent-dim", "4", "--epochs", "1", "--warmup", "1", "--train-size", "300",
                 "--device", "cpu", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    assert json.loads((run / "config.json").read_text())["model"]["arch"] == "hvae"
    assert main(["-q", "evaluate", str(run), "--samples", "20", "--limit", "10", "--check-exact", "10", "--candidates", "50",
                 "--device", "cpu", "--no-progress", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["arch"] == "hvae" and result["likelihood"] == "bernoulli"
    assert result["log_likelihood"] >= result["elbo"]
    assert result["truncation_check"]["max_error"] >= 0  # the truncated prior is a lower bound
    assert main(["-q", "generate", str(run), "--out", str(tmp_path / "g.png"), "--from-exemplars", "--n", "3",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert main(["-q", "report", str(run), "--device", "cpu"]) == 0
    assert (run / "samples.png").is_file() and (tmp_path / "g.png").is_file()


def test_cli_8_bit_npz_with_no_binarize_uses_the_logistic_likelihood(tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    import numpy as np

    from exemplar_vae.cli.main import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "faces.npz", x=rng.integers(0, 256, (120, 3, 8, 8), dtype=np.uint8))
    run = tmp_path / "run"
    assert main(["-q", "train", "--dataset", str(tmp_path / "faces.npz"), "--no-binarize", "--arch", "convhvae",
                 "--prior", "exemplar", "--knn", "3", "--hidden", "8", "--latent-dim", "2", "--epochs", "1",
                 "--warmup", "1", "--batch-size", "32", "--device", "cpu", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    assert json.loads((run / "config.json").read_text())["data"]["binarize"] is False
    capsys.readouterr()
    assert (
        main(["-q", "evaluate", str(run), "--samples", "5", "--device", "cpu", "--no-progress", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["likelihood"] == "logistic" and result["arch"] == "convhvae"
    # 8-bit data: nats per image and bits per dimension describe the same number
    assert result["bits_per_dim"] == pytest.approx(-result["log_likelihood"] / (3 * 8 * 8 * math.log(2)))
    assert 0 < result["bits_per_dim"] < 20  # untrained: near 8 bits (uniform), not a Bernoulli figure


@pytest.mark.parametrize(
    ("arch", "count"), [("mlp", 1_116_864), ("hvae", 2_431_024), ("convhvae", 2_210_861)]
)
def test_paper_sized_networks_have_the_papers_parameter_counts(arch: str, count: int) -> None:
    """docs/paper.md §5: VAE 1,116,864 (counted by hand from the code), HVAE ~2.43 M, ConvHVAE ~2.21 M."""
    model = build_vae(ModelConfig(arch=arch), PriorConfig(name="gaussian"), torch.zeros(2, 784), (1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("points", [3, 7])
def test_hvae_check_exact_rescores_the_requested_points_on_their_own_samples(points: int) -> None:
    """With two stochastic layers (z1 drawn with the generator between chunks) --check-exact re-scores
    exactly the requested points on the samples of the truncated pass."""
    from exemplar_vae.config import EvalConfig
    from exemplar_vae.evaluation import PriorScoring, evaluate_density
    from exemplar_vae.evaluation.density import _score

    model = copy.deepcopy(build_hvae("exemplar"))
    model.eval_rows = 40  # chunks of 10 samples for batches of 4: z1 is drawn six times per batch
    x = torch.cat([ALL_X, ALL_X])[:10]
    settings = EvalConfig(samples=60, batch_size=4, candidates=2, check_exact=points, escalate=False)
    full, trunc = PriorScoring(model.prior, model.encoder), PriorScoring(model.prior, model.encoder, 2)
    exact_ll, _, _ = _score(model, x, settings, full, False, False)  # batches of 4: 3 and 7 cut a batch
    trunc_ll, _, _ = _score(model, x, settings, trunc, False, False)
    got = evaluate_density(model, x, settings, progress=False)
    check, diff = got["truncation_check"], (exact_ll - trunc_ll)[:points].double()
    assert check["points"] == points and float(diff.max()) > 1e-4  # the truncation matters here
    assert math.isclose(check["mean_error"], float(diff.mean()), rel_tol=1e-5, abs_tol=1e-7)
    assert math.isclose(check["max_error"], float(diff.max()), rel_tol=1e-5, abs_tol=1e-7)


def test_hvae_importance_samples_do_not_depend_on_the_chunk_size() -> None:
    """z2 and z1 each read their own random stream, so the log-weights are the same whatever the number
    of codes decoded at once (the CPU's and a GPU's chunk sizes differ); a one-layer model keeps a single
    stream, so its weights are those of the same generator unsplit."""
    from exemplar_vae.objectives.likelihood import log_weights

    model = copy.deepcopy(build_hvae("gaussian")).double()
    x = ALL_X[:5].double()
    # chunks of 16, 32 and all 64 samples: torch draws normals in blocks of 16 values, so a stream read in
    # chunks of a multiple of 16 values equals one draw (as for B = 100 test points with d = 40)
    weights = [
        log_weights(model, x, 64, max_rows=rows, generator=torch.Generator().manual_seed(3))
        for rows in (80, 160, None)
    ]
    for w in weights[1:]:
        torch.testing.assert_close(w, weights[0], rtol=1e-12, atol=1e-10)
    other = log_weights(model, x, 64, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(other, weights[0])  # the seed matters
