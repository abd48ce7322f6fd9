"""Exemplar-based generation tools: cyclic chains, interpolation, temperature, and new exemplars added to a
trained model without retraining (checked against a brute-force float64 mixture), from Python and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import reference as ref
import torch
from PIL import Image

from exemplar_vae.cli.main import main
from exemplar_vae.config import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.generation import (
    cyclic_chain,
    interpolate,
    interpolation_grid,
    prior_sample_grid,
)
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.vae import VAE
from exemplar_vae.pipeline import train
from exemplar_vae.priors import ExemplarPrior, GaussianPrior, MoGPrior, VampPrior
from exemplar_vae.runs import load_exemplars_npz, load_run

D = 64  # digits: 8x8


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_digits(out: Path, prior: str) -> Path:
    config = RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(hidden=32, latent_dim=8),
        prior=PriorConfig(name=prior, knn=5),
        train=TrainConfig(epochs=1, warmup=1, seed=0, device="cpu"),
    )
    train(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    return {name: train_digits(root / name, name) for name in ("exemplar", "gaussian")}


@pytest.fixture(scope="module")
def loaded(runs: dict[str, Path]) -> VAE:
    model, _, _ = load_run(runs["exemplar"], device="cpu")
    return model


def decode_mean(model: VAE, z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model.decode(z))


@pytest.fixture(scope="module")
def extra_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("npz") / "extra.npz"
    images = np.random.RandomState(0).randint(0, 256, size=(40, 8, 8)).astype(np.uint8)  # [n, H, W]
    np.savez(path, x=images, y=np.zeros(40, dtype=np.int64))
    return path


# --------------------------------------------------------------------------- cyclic generation


@torch.no_grad()
def test_cyclic_chain_feeds_each_generation_back(loaded: VAE) -> None:
    chain = cyclic_chain(loaded, steps=4, n_chains=3, generator=gen(0))
    assert chain.shape == (3, 5, D)
    # replay the same random stream: x_0 ~ U[0,1]^D, then z ~ N(mu(x_t), sigma^2 I) per step
    g = gen(0)
    x = torch.rand(3, D, generator=g)
    assert torch.equal(chain[:, 0], x)
    sigma = torch.exp(0.5 * loaded.prior.log_var)
    for t in range(4):
        eps = torch.randn(3, 1, 8, generator=g)[:, 0]
        x = decode_mean(loaded, loaded.encoder.mean(chain[:, t]) + sigma * eps)
        torch.testing.assert_close(chain[:, t + 1], x, rtol=0, atol=1e-6)
    assert not torch.allclose(chain[:, 1], chain[:, 2], atol=1e-3)  # the chain moves


@torch.no_grad()
def test_cyclic_chain_without_noise_is_the_deterministic_map(loaded: VAE) -> None:
    chain = cyclic_chain(loaded, steps=3, n_chains=2, generator=gen(1), temperature=0.0)
    for t in range(3):
        expect = decode_mean(loaded, loaded.encoder.mean(chain[:, t]))  # x_{t+1} = decode-mean(mu(x_t))
        torch.testing.assert_close(chain[:, t + 1], expect, rtol=0, atol=1e-6)
    saved = loaded.prior.log_var.detach().clone()
    try:  # sigma -> 0 at temperature 1 gives the same chain
        loaded.prior.log_var.fill_(-80.0)
        torch.testing.assert_close(cyclic_chain(loaded, 3, 2, gen(1)), chain, rtol=0, atol=1e-6)
    finally:
        loaded.prior.log_var.copy_(saved)
    with pytest.raises(ConfigError, match="at least 1 step"):
        cyclic_chain(loaded, 0)


# --------------------------------------------------------------------------- interpolation


@torch.no_grad()
def test_interpolation_is_linear_in_latent_space(loaded: VAE) -> None:
    data_x = loaded.prior.exemplars
    x_a, x_b = data_x[0], data_x[1]
    mu_a, mu_b = loaded.encoder.mean(data_x[:2])
    line = interpolate(loaded, x_a, x_b, 5)
    assert line.shape == (5, D)
    torch.testing.assert_close(line[0], decode_mean(loaded, mu_a[None])[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(line[-1], decode_mean(loaded, mu_b[None])[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        line[1], decode_mean(loaded, (0.75 * mu_a + 0.25 * mu_b)[None])[0], rtol=0, atol=1e-6
    )
    batch = interpolate(loaded, data_x[:3], data_x[3:6], 5)
    assert batch.shape == (3, 5, D)
    torch.testing.assert_close(batch[0], interpolate(loaded, data_x[0], data_x[3], 5), rtol=0, atol=1e-6)
    grid = interpolation_grid(loaded, data_x[:3], data_x[3:6], 5)
    assert grid.shape == (3, 7, D)
    assert torch.equal(grid[:, 0], data_x[:3]) and torch.equal(grid[:, -1], data_x[3:6])
    with pytest.raises(ConfigError, match="at least 2 steps"):
        interpolate(loaded, x_a, x_b, 1)
    with pytest.raises(ConfigError, match="endpoints"):
        interpolate(loaded, data_x[:2], data_x[:3], 4)


# --------------------------------------------------------------------------- temperature


def make_prior(name: str) -> tuple[torch.nn.Module, MLPEncoder]:
    torch.manual_seed(3)
    encoder = MLPEncoder(12, 16, 4).eval()
    if name == "gaussian":
        return GaussianPrior(4), encoder
    if name == "mog":
        return MoGPrior(4, 7), encoder
    if name == "vampprior":
        return VampPrior(4, 12, 5), encoder
    prior = ExemplarPrior(torch.rand(30, 12), 4, knn=0)
    with torch.no_grad():
        prior.log_var.fill_(-1.3)
    prior.eval()
    prior.refresh(encoder)
    return prior, encoder


def component_means(prior: torch.nn.Module, encoder: MLPEncoder) -> torch.Tensor:
    if isinstance(prior, GaussianPrior):
        return torch.zeros(1, 4)
    if isinstance(prior, MoGPrior):
        return prior.means.detach()
    if isinstance(prior, VampPrior):
        return encoder(prior.pseudo_inputs())[0].detach()
    return prior.cache.get()


@pytest.mark.parametrize("name", ["gaussian", "mog", "vampprior", "exemplar"])
@torch.no_grad()
def test_temperature_scales_the_sampling_std(name: str) -> None:
    prior, encoder = make_prior(name)
    s0, s1 = (prior.sample(200, encoder, gen(5), temperature=t) for t in (0.0, 1.0))
    # temperature 0: every sample is a component mean (0 for N(0, I), an exemplar's code, ...)
    dist = torch.cdist(s0.double(), component_means(prior, encoder).double()).min(dim=1).values
    assert float(dist.max()) < 1e-6
    noise = s1 - s0
    assert float(noise.std()) > 0.1
    for t in (0.5, 2.0):
        st = prior.sample(200, encoder, gen(5), temperature=t)
        torch.testing.assert_close(st - s0, t * noise, rtol=1e-5, atol=1e-5)
    assert torch.equal(prior.sample(200, encoder, gen(5)), s1)  # default temperature is 1


@torch.no_grad()
def test_zero_temperature_exemplar_samples_are_decoded_codes(loaded: VAE) -> None:
    codes = loaded.prior.cache.get()  # [N, d]
    x = loaded.generate(20, gen(6), temperature=0.0)
    pick = torch.randint(codes.shape[0], (20,), generator=gen(6))  # the same picks
    torch.testing.assert_close(x, decode_mean(loaded, codes[pick]), rtol=0, atol=1e-6)
    grid = prior_sample_grid(loaded, 9, gen(6), temperature=0.0)
    assert grid.shape == (3, 3, D)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            prior_sample_grid(loaded, 4, gen(0), temperature=bad)


# --------------------------------------------------------------------------- new exemplars


@torch.no_grad()
def test_added_exemplars_give_the_brute_force_mixture(runs: dict[str, Path], extra_npz: Path) -> None:
    base, data, _ = load_run(runs["exemplar"], device="cpu")
    extra = torch.rand(25, D, generator=gen(7))
    model, _, _ = load_run(runs["exemplar"], device="cpu", data=data, extra_exemplars=extra)
    n = data.num_train
    assert isinstance(model.prior, ExemplarPrior) and model.prior.num_total == n + 25
    assert not model.prior.training
    means = model.encoder.mean(torch.cat([data.train_x, extra]))  # [N + 25, d]
    z = means[torch.randperm(n + 25, generator=gen(8))[:30]] + 0.5 * torch.randn(30, 8, generator=gen(9))
    z[-5:] = model.encoder.mean(extra[:5])  # some codes right at the new exemplars
    log_var = model.prior.log_var.detach()
    expect = torch.from_numpy(ref.isotropic_exemplar_log_prob(z, means, log_var))  # weight 1/(N + 25)
    got = model.prior.log_prob(z.double(), model.encoder)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.prior.log_prob(z, model.encoder).double(), expect, rtol=0, atol=2e-3)
    without = base.prior.log_prob(z.double(), base.encoder)
    assert float((got - without).abs().max()) > 1e-3  # far above the tolerance: the extras count

    from_file, _, _ = load_run(runs["exemplar"], device="cpu", data=data, extra_exemplars=extra_npz)
    file_x = torch.from_numpy(np.load(extra_npz)["x"].reshape(40, D).astype(np.float32) / 255)
    assert torch.equal(from_file.prior.exemplars, torch.cat([data.train_x, file_x]))
    with_val, _, _ = load_run(runs["exemplar"], device="cpu", data=data, add_val_exemplars=True)
    assert torch.equal(with_val.prior.exemplars, torch.cat([data.train_x, data.val_grey]))


def test_extra_exemplars_need_the_exemplar_prior(runs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="only the exemplar prior has an exemplar set"):
        load_run(runs["gaussian"], device="cpu", extra_exemplars=torch.rand(3, D))
    with pytest.raises(ConfigError, match="'gaussian' prior"):
        load_run(runs["gaussian"], device="cpu", add_val_exemplars=True)


def test_extra_exemplars_are_checked(runs: dict[str, Path], tmp_path: Path) -> None:
    data = load_run(runs["exemplar"], device="cpu")[1]
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 10, 10), dtype=np.uint8))
    with pytest.raises(DataError, match=r"D=100.*D=64"):
        load_exemplars_npz(tmp_path / "wide.npz", data)
    with pytest.raises(DataError, match="does not exist"):
        load_exemplars_npz(tmp_path / "missing.npz", data)
    for bad in (torch.rand(3, 10), torch.full((3, D), 2.0), torch.empty(0, D)):
        with pytest.raises(DataError, match="extra exemplars"):
            load_run(runs["exemplar"], device="cpu", data=data, extra_exemplars=bad)


# --------------------------------------------------------------------------- CLI


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


EVAL = ["--samples", "3", "--limit", "10", "--candidates", "0", "--check-exact", "0", "--no-progress"]


def test_cli_evaluate_with_extra_exemplars(
    runs: dict[str, Path], extra_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["exemplar"]
    code, _, _ = cli(["evaluate", str(run), *EVAL, "--extra-exemplars", str(extra_npz), "--json"], capsys)
    assert code == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert (ev["exemplars"], ev["train_examples"], ev["extra_exemplars"]) == (1197 + 40, 1197, 40)
    assert ev["extra_exemplar_sources"] == [str(extra_npz)]
    out = tmp_path / "with_val.json"
    code, stdout, _ = cli(["evaluate", str(run), *EVAL, "--with-val", "--out", str(out)], capsys)
    assert code == 0 and "1197 training + 300 extra images" in stdout
    ev_val = json.loads(out.read_text())
    assert (ev_val["exemplars"], ev_val["extra_exemplars"]) == (1497, 300)
    assert ev_val["extra_exemplar_sources"] == ["validation set (grey)"]
    assert cli(["evaluate", str(run), *EVAL, "--out", str(tmp_path / "plain.json")], capsys)[0] == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert (plain["exemplars"], plain["extra_exemplars"], plain["extra_exemplar_sources"]) == (1197, 0, [])
    assert plain["log_likelihood"] != ev_val["log_likelihood"]  # same samples, a different prior


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def tile(path: Path, row: int, col: int) -> np.ndarray:
    """Tile (row, col) of a grid written by ``save_image_grid`` (8x8 images, pad 1, scale 2)."""
    with Image.open(path) as img:
        arr = np.asarray(img)[::2, ::2]
    top, left = 1 + row * 9, 1 + col * 9
    return arr[top : top + 8, left : left + 8]


def test_cli_generate_layouts(
    runs: dict[str, Path], extra_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(runs["exemplar"])
    cases = {
        "cyclic.png": (["--cyclic", "5", "--n", "3"], (3, 6)),
        "interp.png": (["--interpolate", "--steps", "4", "--n", "2"], (2, 6)),
        "cold.png": (["--temperature", "0.5", "--n", "9"], (3, 3)),
        "rows.png": (
            ["--from-exemplars", "--n", "2", "--variations", "3", "--extra-exemplars", str(extra_npz)],
            (2, 4),
        ),
    }
    for name, (args, (rows, cols)) in cases.items():
        code, out, err = cli(["generate", run, "--out", str(tmp_path / name), *args], capsys)
        assert code == 0, err
        assert png_size(tmp_path / name) == ((cols * 9 + 1) * 2, (rows * 9 + 1) * 2), name
    extra = np.load(extra_npz)["x"]  # [40, 8, 8] uint8
    for r in range(2):  # rows start with one of the extra exemplars
        first = tile(tmp_path / "rows.png", r, 0)
        assert any(np.array_equal(first, e) for e in extra)
    cold = np.asarray(Image.open(tmp_path / "cold.png"))
    hot_path = tmp_path / "hot.png"
    assert cli(["generate", run, "--out", str(hot_path), "--temperature", "3", "--n", "9"], capsys)[0] == 0
    assert not np.array_equal(cold, np.asarray(Image.open(hot_path)))


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("generate", ["--temperature", "-1"], "temperature"),
        ("generate", ["--cyclic", "3", "--interpolate"], "pick one"),
        ("generate", ["--interpolate", "--steps", "1"], "--steps"),
        ("generate", ["--extra-exemplars", "WIDE"], "D=100"),
        ("generate", ["--extra-exemplars", "EXTRA", "--gaussian"], "only the exemplar prior"),
        ("evaluate", ["--extra-exemplars", "WIDE"], "D=100"),
        ("evaluate", ["--extra-exemplars", "EXTRA", "--gaussian"], "only the exemplar prior"),
        ("evaluate", ["--with-val", "--gaussian"], "only the exemplar prior"),
        ("evaluate", ["--with-val", "--split", "val"], "against themselves"),
    ],
)
def test_cli_bad_exemplar_input_writes_nothing(
    runs: dict[str, Path],
    extra_npz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    args: list[str],
    message: str,
) -> None:
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=np.zeros((4, 10, 10), dtype=np.uint8))
    run = runs["gaussian" if "--gaussian" in args else "exemplar"]
    args = [{"WIDE": str(wide), "EXTRA": str(extra_npz)}.get(a, a) for a in args if a != "--gaussian"]
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    out = tmp_path / ("out.png" if command == "generate" else "out.json")
    extra = ["--out", str(out)] + (EVAL if command == "evaluate" else [])
    code, _, err = cli([command, str(run), *extra, *args], capsys)
    assert code == 2 and err.startswith("error: ") and message in err
    assert not out.exists()
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
