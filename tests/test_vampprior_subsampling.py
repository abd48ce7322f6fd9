"""The VampPrior's optional pseudo-input subsampling (``PriorConfig.subsample``, ``--subsample``).

In training mode the prior is the mixture over a fresh subset of K' of the K pseudo-inputs (the keyed
subset drawn from the step's generator, weight 1/K'), checked against a float64 brute-force mixture over
the same subset; in evaluation mode, and with ``subsample=None``, it is exactly the full mixture of today.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import reference as ref
import torch
from torch.testing import assert_close

from exemplar_vae.cli.main import build_parser, config_from_args
from exemplar_vae.config import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.priors import VampPrior, build_prior
from exemplar_vae.priors.mixtures import diag_mixture_log_prob
from exemplar_vae.priors.subset import KeyedSubset
from exemplar_vae.validation import validate

DATA_DIM, HIDDEN, LATENT, K = 6, 16, 3, 12


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(subsample: int | None, seed: int = 0, components: int = K) -> tuple[VampPrior, MLPEncoder]:
    torch.manual_seed(seed)
    encoder = MLPEncoder(DATA_DIM, HIDDEN, LATENT)
    prior = VampPrior(LATENT, DATA_DIM, components, subsample)
    with torch.no_grad():
        prior.pseudo_raw.uniform_(-0.5, 1.5)  # exercise the clamp to [0, 1]
    return prior, encoder


def reference_mixture(prior: VampPrior, encoder: MLPEncoder, z: torch.Tensor, ids: np.ndarray) -> np.ndarray:
    """float64 brute force: encode the clipped pseudo-inputs ``ids`` with a float64 copy of the encoder and
    sum the components one at a time (weight 1 / len(ids))."""
    pseudo = np.clip(ref.as64(prior.pseudo_raw)[ids], 0.0, 1.0)  # [K', D]
    with torch.no_grad():
        means, log_vars = copy.deepcopy(encoder).double()(torch.from_numpy(pseudo))
    return ref.diag_mixture_log_prob(z, means, log_vars)


@pytest.mark.parametrize("subsample", [1, 5, K])
def test_training_form_is_the_mixture_over_the_drawn_subset(subsample: int) -> None:
    prior, encoder = make(subsample)
    prior.train()
    z = 2 * torch.randn(25, LATENT, generator=gen(1))
    out = prior.log_prob(z, encoder, None, gen(7))
    ids = KeyedSubset.draw(K, subsample, gen(7)).members().numpy()  # the same draw, recomputed
    assert len(set(ids.tolist())) == subsample
    assert_close(
        out.double(), torch.from_numpy(reference_mixture(prior, encoder, z, ids)), rtol=1e-5, atol=1e-4
    )
    if subsample < K:  # a proper subset: not the full mixture
        full = reference_mixture(prior, encoder, z, np.arange(K))
        assert np.abs(ref.as64(out) - full).max() > 1e-3


def test_only_the_subset_is_encoded_and_gets_gradient() -> None:
    prior, encoder = make(4)
    prior.train()
    with torch.no_grad():
        prior.pseudo_raw.uniform_(0.1, 0.9)  # inside the clamp: every row has a gradient when used
    seen: list[int] = []
    encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    prior.log_prob(torch.randn(8, LATENT, generator=gen(2)), encoder, None, gen(3)).sum().backward()
    assert seen == [4]
    ids = set(KeyedSubset.draw(K, 4, gen(3)).members().tolist())
    grad_rows = set(torch.nonzero(prior.pseudo_raw.grad.abs().sum(1)).reshape(-1).tolist())
    assert grad_rows == ids


def test_the_subset_is_fresh_each_step_distinct_and_covers_all_pseudo_inputs() -> None:
    prior, _ = make(5)
    g = gen(11)
    draws = [prior.draw_subset(g).members() for _ in range(400)]
    for ids in draws:
        assert ids.shape == (5,) and len(set(ids.tolist())) == 5
        assert int(ids.min()) >= 0 and int(ids.max()) < K
    assert len({tuple(sorted(d.tolist())) for d in draws}) > 100  # fresh subsets, not one repeated
    counts = np.bincount(torch.cat(draws).numpy(), minlength=K)  # 400 * 5 / 12 ~ 167 expected each
    assert counts.min() > 110 and counts.max() < 230, counts


def test_same_generator_state_same_subset_and_one_draw_consumed() -> None:
    prior, encoder = make(5)
    prior.train()
    z = torch.randn(10, LATENT, generator=gen(4))
    g1, g2 = gen(9), gen(9)
    a, b = prior.log_prob(z, encoder, None, g1), prior.log_prob(z, encoder, None, g2)
    assert torch.equal(a, b)  # every process of a distributed run draws the same subset
    expect = gen(9)
    torch.randint(0, 2**62, (1,), generator=expect)
    assert torch.equal(g1.get_state(), expect.get_state())


def test_evaluation_ignores_the_option() -> None:
    sub, encoder = make(3)
    full, _ = make(None)
    full.load_state_dict(sub.state_dict())
    sub.eval()
    full.eval()
    z = 2 * torch.randn(20, LATENT, generator=gen(5))
    g = gen(6)
    state = g.get_state()
    out = sub.log_prob(z, encoder, None, g)
    assert torch.equal(g.get_state(), state)  # nothing drawn
    assert torch.equal(out, full.log_prob(z, encoder, None, gen(6)))
    assert_close(
        out.double(), torch.from_numpy(reference_mixture(sub, encoder, z, np.arange(K))), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("training", [True, False])
def test_subsample_none_gives_exactly_the_full_mixture(training: bool) -> None:
    prior, encoder = make(None)
    prior.train(training)
    z = 2 * torch.randn(20, LATENT, generator=gen(8))
    g = gen(1)
    state = g.get_state()
    out = prior.log_prob(z, encoder, None, g)
    assert torch.equal(g.get_state(), state)  # the step's random stream is as before the option existed
    assert torch.equal(out, diag_mixture_log_prob(z, *encoder(prior.pseudo_inputs())))  # today's formula


def test_sampling_uses_all_pseudo_inputs_in_either_mode() -> None:
    sub, encoder = make(2)
    full, _ = make(None)
    full.load_state_dict(sub.state_dict())
    sub.train()
    assert torch.equal(sub.sample(50, encoder, gen(3), 0.7), full.sample(50, encoder, gen(3), 0.7))


# -- configuration, factory, CLI ---------------------------------------------------------------------
def run_config(name: str = "vampprior", components: int = 10, subsample: int | None = None) -> RunConfig:
    return RunConfig(prior=PriorConfig(name=name, components=components, subsample=subsample))


@pytest.mark.parametrize("subsample", [0, -3, 11])
def test_out_of_range_sizes_are_refused(subsample: int) -> None:
    with pytest.raises(ConfigError, match=r"--subsample K'=.*--components K=10") as info:
        validate(run_config(subsample=subsample))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="--subsample"):
        VampPrior(LATENT, DATA_DIM, 10, subsample)


@pytest.mark.parametrize("name", ["exemplar", "gaussian", "mog"])
def test_other_priors_refuse_the_option(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"--subsample .*VampPrior.*'{name}'") as info:
        validate(run_config(name, subsample=5))
    assert "\n" not in str(info.value)


def test_valid_sizes_pass_and_reach_the_prior() -> None:
    for subsample in (None, 1, 10):
        config = validate(run_config(subsample=subsample))
        prior = build_prior(config.prior, LATENT, torch.zeros(4, DATA_DIM))
        assert isinstance(prior, VampPrior) and prior.subsample == subsample
    validate(run_config("exemplar"))  # the default None is fine for every prior


def test_config_json_round_trip_and_types(tmp_path) -> None:  # noqa: ANN001
    config = run_config(subsample=7)
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json").prior.subsample == 7
    assert RunConfig.from_dict({"prior": {}}).prior.subsample is None  # older configs load unchanged
    with pytest.raises(ConfigError, match=r"prior.subsample must be int or null"):
        RunConfig.from_dict({"prior": {"subsample": 2.5}})


def test_cli_flag_sets_the_field() -> None:
    args = build_parser().parse_args(["train", "--out", "x", "--prior", "vampprior", "--subsample", "50"])
    config = config_from_args(args)
    assert config.prior.subsample == 50 and config.prior.name == "vampprior"
    assert config_from_args(build_parser().parse_args(["train", "--out", "x"])).prior.subsample is None


def test_a_short_training_run_with_subsampling(tmp_path) -> None:  # noqa: ANN001
    from exemplar_vae.pipeline import train
    from exemplar_vae.runs import load_run

    config = RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(hidden=16, latent_dim=4),
        prior=PriorConfig(name="vampprior", components=20, subsample=5),
        train=TrainConfig(epochs=1, warmup=1, seed=0, device="cpu"),
    )
    train(config, tmp_path / "run", progress=False)
    model, _, loaded = load_run(tmp_path / "run", device="cpu")
    assert loaded.prior.subsample == 5 and model.prior.subsample == 5
    assert model.prior.pseudo_raw.shape == (20, 64)
