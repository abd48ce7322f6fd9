"""Exemplar tools for a user's own data: which exemplars explain an input (``generation.explain``, checked
against a float64 brute-force responsibility over every exemplar), generation from a chosen exemplar subset
(``sample_from_exemplars``), and the ``neighbours`` subcommand end to end on a tiny digits run."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import reference as ref
import torch
from PIL import Image
from scipy.special import logsumexp
from scipy.stats import chisquare
from torch.testing import assert_close

from exemplar_vae.cli import explain as explain_cli
from exemplar_vae.config import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.generation import (
    draw_exemplar_codes,
    exemplars_of_class,
    explain,
    explanation_grid,
    read_images,
    sample_from_exemplars,
    top_responsibilities,
)
from exemplar_vae.models.decoders import MLPDecoder
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.vae import VAE
from exemplar_vae.pipeline import train
from exemplar_vae.priors import ExemplarPrior, GaussianPrior
from exemplar_vae.runs import load_run

N, IMAGE_SHAPE, HIDDEN, LATENT = 60, (1, 2, 3), 16, 3
D = math.prod(IMAGE_SHAPE)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(log_var: float = -0.7, exemplars: torch.Tensor | None = None, seed: int = 0) -> VAE:
    """A tiny VAE with an ExemplarPrior over N random grey exemplars, in eval mode, its cache refreshed."""
    torch.manual_seed(seed)
    x = exemplars if exemplars is not None else torch.rand(N, D, generator=gen(seed + 1))
    prior = ExemplarPrior(x, LATENT, num_exemplars=N // 2, knn=0, search_backend="torch")
    with torch.no_grad():
        prior.log_var.fill_(log_var)
    model = VAE(MLPEncoder(D, HIDDEN, LATENT), MLPDecoder(LATENT, HIDDEN, D), prior, IMAGE_SHAPE).eval()
    prior.refresh(model.encoder)
    return model


def gaussian_model(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(
        MLPEncoder(D, HIDDEN, LATENT), MLPDecoder(LATENT, HIDDEN, D), GaussianPrior(LATENT), IMAGE_SHAPE
    ).eval()


def brute_force_responsibilities(mu: np.ndarray, centers: np.ndarray, log_var: float) -> np.ndarray:
    """r_bn = N(mu_b; c_n, s^2 I) / sum_m N(mu_b; c_m, s^2 I) in float64, one exemplar at a time: [B, N]."""
    b, d = mu.shape
    log_k = np.empty((b, centers.shape[0]))
    for n in range(centers.shape[0]):
        sq = np.sum((mu - centers[n]) ** 2, axis=1)  # direct difference
        log_k[:, n] = -0.5 * d * (math.log(2 * math.pi) + log_var) - 0.5 * sq / math.exp(log_var)
    return np.exp(log_k - logsumexp(log_k, axis=1, keepdims=True))


def reference_for(model: VAE, x: torch.Tensor) -> np.ndarray:
    """The brute-force responsibilities from the model's own (float32) codes, in float64."""
    with torch.no_grad():
        mu = ref.as64(model.encoder.mean(x))
    return brute_force_responsibilities(
        mu, ref.as64(model.prior.cache.get()), float(model.prior.log_var.detach())
    )


# --------------------------------------------------------------------------- explain


@pytest.mark.parametrize("log_var", [-0.7, -4.0, 1.5])
@pytest.mark.parametrize("k", [1, 5, N])
def test_explain_matches_float64_brute_force(log_var: float, k: int) -> None:
    model = make_model(log_var)
    x = torch.rand(9, D, generator=gen(7))
    r = reference_for(model, x)  # [B, N]
    assert np.allclose(r.sum(1), 1.0, rtol=0, atol=1e-12)
    want_ids = np.argsort(-r, axis=1, kind="stable")[:, :k]
    want = np.take_along_axis(r, want_ids, axis=1)
    got = explain(model, x, k)
    assert got.ids.dtype == torch.int64 and got.responsibilities.dtype == torch.float64
    assert got.ids.shape == got.responsibilities.shape == (9, k) and got.mass.shape == (9,)
    assert np.array_equal(got.ids.numpy(), want_ids)
    np.testing.assert_allclose(got.responsibilities.numpy(), want, rtol=1e-9, atol=0)
    assert bool((got.responsibilities[:, 1:] <= got.responsibilities[:, :-1]).all())  # sorted, largest first
    np.testing.assert_allclose(got.mass.numpy(), want.sum(1), rtol=1e-9, atol=0)
    if k == N:  # all exemplars: the whole prior mass
        np.testing.assert_allclose(got.mass.numpy(), 1.0, rtol=0, atol=1e-12)


def test_streamed_blocks_agree_with_one_block() -> None:
    g = gen(3)
    q, c = torch.randn(13, 4, generator=g), torch.randn(101, 4, generator=g)
    one_ids, one = top_responsibilities(q, c, torch.tensor(-1.0), 10)
    many_ids, many = top_responsibilities(q, c, torch.tensor(-1.0), 10, max_elements=7)  # many blocks
    assert torch.equal(one_ids, many_ids)
    assert_close(many, one, rtol=1e-12, atol=0)
    r = brute_force_responsibilities(ref.as64(q), ref.as64(c), -1.0)
    np.testing.assert_allclose(many.numpy(), -np.sort(-r, axis=1)[:, :10], rtol=1e-9, atol=0)


def test_an_exemplar_explains_itself_when_sigma_is_small() -> None:
    model = make_model(log_var=-12.0)
    store = model.prior.exemplar_set()
    assert store is not None
    picks = torch.tensor([0, 17, N - 1])
    got = explain(model, store.gather(picks), 3)
    assert torch.equal(got.ids[:, 0], picks)
    assert bool((got.responsibilities[:, 0] > 0.999).all())


def test_equal_responsibilities_keep_the_smaller_id_first() -> None:
    x = torch.rand(N, D, generator=gen(4))
    x[41] = x[12]  # a duplicate exemplar: the same code, the same responsibility
    model = make_model(log_var=-12.0, exemplars=x)
    got = explain(model, x[12:13], 2)
    assert got.ids[0].tolist() == [12, 41]
    assert_close(got.responsibilities[0, 0], got.responsibilities[0, 1], rtol=0, atol=0)
    np.testing.assert_allclose(float(got.mass[0]), 1.0, atol=1e-9)


def test_explain_refuses_bad_requests() -> None:
    model = make_model()
    x = torch.rand(2, D, generator=gen(0))
    with pytest.raises(ConfigError, match="exemplar set"):
        explain(gaussian_model(), x, 3)
    for k in (0, N + 1):
        with pytest.raises(ConfigError, match=f"k={k}"):
            explain(model, x, k)
    with pytest.raises(DataError, match=f"\\[B, {D}\\]"):
        explain(model, torch.rand(2, D + 1), 3)


def test_explanation_grid_shows_each_input_beside_its_exemplars() -> None:
    model = make_model()
    x = torch.rand(2, D, generator=gen(5))
    e = explain(model, x, 4)
    grid = explanation_grid(model, x, e)
    assert grid.shape == (2, 5, D)
    assert torch.equal(grid[:, 0], x)
    assert torch.equal(grid[1, 1:], model.prior.exemplars[e.ids[1]])


# --------------------------------------------------------------------------- sampling from a subset


@torch.no_grad()
def test_temperature_zero_decodes_the_codes_of_the_given_exemplars() -> None:
    model = make_model()
    subset = model.prior.exemplars[torch.tensor([3, 8, 21, 30, 55])]  # [M, D]
    decoded = model.decode_mean(model.encoder.mean(subset))  # [M, D]
    out = sample_from_exemplars(model, subset, 40, gen(1), temperature=0.0)
    assert out.shape == (40, D)
    dist = (out.unsqueeze(1) - decoded.unsqueeze(0)).abs().amax(-1)  # [n, M]
    assert bool((dist.min(1).values < 1e-6).all())  # each sample is the decoded code of one of them
    draw = draw_exemplar_codes(model, subset, 40, gen(1), temperature=0.0)
    assert_close(draw.z, model.encoder.mean(subset)[draw.picks], rtol=1e-6, atol=1e-6)
    assert_close(out, decoded[draw.picks], rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_a_seeded_generator_reproduces_the_samples() -> None:
    model = make_model()
    subset = model.prior.exemplars[:10]
    a = sample_from_exemplars(model, subset, 25, gen(2))
    b = sample_from_exemplars(model, subset, 25, gen(2))
    c = sample_from_exemplars(model, subset, 25, gen(3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    store = ExemplarStore.from_tensor(subset.clone(), compact=False)  # a store gives the same draws
    assert torch.equal(sample_from_exemplars(model, store, 25, gen(2)), a)


@torch.no_grad()
def test_codes_use_the_models_own_kernel() -> None:
    """Replay the stream: picks, then eps; z = mu(x_pick) + T sigma eps with the prior's sigma."""
    model = make_model(log_var=-1.3)
    subset = model.prior.exemplars[10:17]
    mu = model.encoder.mean(subset)
    for t in (0.5, 1.0, 2.0):
        g = gen(9)
        pick = torch.randint(subset.shape[0], (30,), generator=g)
        eps = torch.randn(30, LATENT, generator=g)
        draw = draw_exemplar_codes(model, subset, 30, gen(9), temperature=t)
        assert torch.equal(draw.picks, pick)
        assert_close(draw.z, mu[pick] + t * math.exp(0.5 * -1.3) * eps, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_a_prior_without_a_kernel_draws_from_q() -> None:
    model = gaussian_model()
    subset = torch.rand(6, D, generator=gen(11))
    mean, log_var = model.encode(subset)
    g = gen(12)
    pick = torch.randint(6, (20,), generator=g)
    eps = torch.randn(20, LATENT, generator=g)
    draw = draw_exemplar_codes(model, subset, 20, gen(12), temperature=0.7)
    assert_close(draw.z, mean[pick] + 0.7 * torch.exp(0.5 * log_var[pick]) * eps, rtol=1e-5, atol=1e-6)


def test_exemplars_are_picked_uniformly() -> None:
    model = make_model()
    subset = model.prior.exemplars[:7]
    draw = draw_exemplar_codes(model, subset, 7000, gen(13))
    counts = torch.bincount(draw.picks, minlength=7).numpy()
    assert counts.sum() == 7000 and (counts > 0).all()
    assert chisquare(counts).pvalue > 1e-3  # seeded: deterministic


def test_sampling_refuses_bad_requests() -> None:
    model = make_model()
    subset = model.prior.exemplars[:4]
    with pytest.raises(DataError, match="\\[0, 1\\]"):
        sample_from_exemplars(model, subset * 2, 3)
    with pytest.raises(DataError, match="shape"):
        sample_from_exemplars(model, subset[:, :-1], 3)
    with pytest.raises(DataError, match="non-empty"):
        sample_from_exemplars(model, subset[:0], 3)
    with pytest.raises(ConfigError, match="at least 1"):
        sample_from_exemplars(model, subset, 0)
    with pytest.raises(ConfigError, match="temperature"):
        sample_from_exemplars(model, subset, 3, temperature=-1.0)


# --------------------------------------------------------------------------- the neighbours subcommand


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("explain") / "run"
    config = RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(hidden=16, latent_dim=4),
        prior=PriorConfig(name="exemplar", knn=3),
        train=TrainConfig(epochs=2, warmup=1, seed=0, device="cpu"),
    )
    train(config, out, progress=False)
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exemplar-vae")
    explain_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def test_exemplars_of_class_are_the_grey_training_images_of_that_label(digits_run: Path) -> None:
    _, data, _ = load_run(digits_run, device="cpu")
    x = exemplars_of_class(data, 3)
    ids = (data.train_y == 3).nonzero().reshape(-1)
    assert x.shape == (ids.numel(), data.data_dim) and ids.numel() > 0
    assert torch.equal(x, data.train_store.gather(ids))
    with pytest.raises(ConfigError, match="label 42"):
        exemplars_of_class(data, 42)


def test_neighbours_writes_png_and_json(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, _ = load_run(digits_run, device="cpu")
    grey = (data.train_store.gather(torch.tensor([5, 100])).numpy() * 255).round().astype(np.uint8)  # [2, 64]
    first = write_png(tmp_path / "a.png", grey[0].reshape(8, 8))
    second = write_png(tmp_path / "b.png", np.repeat(grey[1].reshape(8, 8, 1), 3, axis=2))  # RGB -> grey
    out = tmp_path / "nb.png"
    args = parse(
        [
            "neighbours",
            str(digits_run),
            str(first),
            str(second),
            "--out",
            str(out),
            "--k",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert explain_cli.COMMANDS[args.command](args) == 0

    with Image.open(out) as img:  # 2 rows of (1 + 4) 8x8 tiles, 1 pixel apart, upscaled twice
        assert img.size == (2 * (5 * 9 + 1), 2 * (2 * 9 + 1))
    doc = json.loads(out.with_suffix(".json").read_text())
    x = read_images([first, second], model.image_shape)
    assert_close(x[0], torch.from_numpy(grey[0]).float() / 255)
    assert_close(x[1], torch.from_numpy(grey[1]).float() / 255)
    want = explain(model, x, 4)
    assert doc["k"] == 4 and doc["num_exemplars"] == data.num_train and len(doc["images"]) == 2
    for row, ids, resp, mass in zip(
        doc["images"], want.ids.tolist(), want.responsibilities.tolist(), want.mass
    ):
        assert [e["id"] for e in row["exemplars"]] == ids
        np.testing.assert_allclose([e["responsibility"] for e in row["exemplars"]], resp, rtol=1e-12)
        assert [e["label"] for e in row["exemplars"]] == data.train_y[ids].tolist()
        assert abs(row["mass"] - float(mass)) < 1e-12 and 0 < row["mass"] <= 1 + 1e-12
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{first}: ") and printed[1].startswith(f"{second}: ")
    assert f"#{want.ids[0, 0]}" in printed[0] and printed[-1].startswith("wrote")


def test_neighbours_refuses_an_image_of_another_size(digits_run: Path, tmp_path: Path) -> None:
    big = write_png(tmp_path / "big.png", np.zeros((10, 12), dtype=np.uint8))
    args = parse(
        ["neighbours", str(digits_run), str(big), "--out", str(tmp_path / "nb.png"), "--device", "cpu"]
    )
    with pytest.raises(DataError, match="12x10 pixels, but the model takes 8x8"):
        explain_cli.COMMANDS[args.command](args)
    assert not (tmp_path / "nb.png").exists() and not (tmp_path / "nb.json").exists()


def test_neighbours_refuses_bad_options(digits_run: Path, tmp_path: Path) -> None:
    img = write_png(tmp_path / "a.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ConfigError, match="png"):
        explain_cli.neighbours(digits_run, [img], tmp_path / "nb.jpg", device="cpu")
    with pytest.raises(ConfigError, match="--k"):
        explain_cli.neighbours(digits_run, [img], tmp_path / "nb.png", k=0, device="cpu")
    with pytest.raises(ConfigError, match="k=100000"):
        explain_cli.neighbours(digits_run, [img], tmp_path / "nb.png", k=100000, device="cpu")


def test_neighbours_with_extra_exemplars(digits_run: Path, tmp_path: Path) -> None:
    _, data, _ = load_run(digits_run, device="cpu")
    pixels = (data.train_store.gather(torch.tensor([5])).numpy() * 255).round().astype(np.uint8).reshape(8, 8)
    image = write_png(tmp_path / "a.png", pixels)
    extra = tmp_path / "extra.npz"
    np.savez(extra, x=np.stack([pixels] * 3))  # three copies of the image itself: codes at distance ~0
    out = tmp_path / "nb.png"
    args = parse(
        ["neighbours", str(digits_run), str(image), "--out", str(out), "--k", "3", "--device", "cpu",
         "--extra-exemplars", str(extra)]
    )  # fmt: skip
    assert explain_cli.COMMANDS[args.command](args) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    n = data.num_train
    assert doc["num_exemplars"] == n + 3 and doc["train_exemplars"] == n
    found = doc["images"][0]["exemplars"]
    assert sorted(e["id"] for e in found) == [n, n + 1, n + 2]
    assert all(e["source"] == "extra" and e["label"] == -1 for e in found)
