"""The Fréchet distance of ``evaluation.quality`` against closed forms and a scipy float64 reference, the
classifier's features, ``sample_frechet``, and ``experiments/sample_quality.py`` end to end on digits."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.testing import assert_close

from exemplar_vae.config import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.downstream.classifier import build_classifier
from exemplar_vae.evaluation.quality import (
    classifier_features,
    feature_statistics,
    frechet_distance,
    sample_frechet,
)

F = 7


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_cov(r: np.random.Generator, f: int = F, rank: int | None = None, ridge: float = 0.1) -> np.ndarray:
    a = r.normal(size=(f, rank or f))
    return a @ a.T / f + ridge * np.eye(f)


def scipy_reference(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root of C1 C2, float64."""
    root = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(root).real)


def test_identical_gaussians_are_at_distance_zero() -> None:
    r = rng(0)
    mu, cov = r.normal(size=F), random_cov(r)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-10
    t = torch.from_numpy(cov).float()  # float32 tensors are taken in float64 too
    assert abs(frechet_distance(torch.from_numpy(mu), t, torch.from_numpy(mu), t)) < 1e-6


def test_diagonal_covariances_match_the_closed_form() -> None:
    r = rng(1)
    mu1, mu2 = r.normal(size=F), r.normal(size=F)
    v1, v2 = r.uniform(0.01, 4.0, size=F), r.uniform(0.01, 4.0, size=F)
    expect = np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expect, rel=1e-12, abs=1e-12)
    # zero variances (a degenerate Gaussian) too
    v1[:3] = 0.0
    expect = np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expect, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_random_pair_matches_the_scipy_reference(seed: int) -> None:
    r = rng(seed)
    mu1, mu2 = r.normal(size=F), r.normal(size=F)
    c1, c2 = random_cov(r), random_cov(r)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(scipy_reference(mu1, c1, mu2, c2), rel=1e-9)


def test_invariant_to_a_rotation_of_both() -> None:
    r = rng(5)
    mu1, mu2 = r.normal(size=F), r.normal(size=F)
    c1, c2 = random_cov(r), random_cov(r)
    q, _ = np.linalg.qr(r.normal(size=(F, F)))  # orthogonal
    rotated = frechet_distance(q @ mu1, q @ c1 @ q.T, q @ mu2, q @ c2 @ q.T)
    assert rotated == pytest.approx(frechet_distance(mu1, c1, mu2, c2), rel=1e-10)


def test_symmetric_in_its_arguments() -> None:
    r = rng(6)
    mu1, mu2, c1, c2 = r.normal(size=F), r.normal(size=F), random_cov(r), random_cov(r)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-10)


def test_near_singular_covariances_stay_finite_and_non_negative() -> None:
    r = rng(7)
    f = 40
    for rank in (1, 3, 10):
        c1 = random_cov(r, f, rank, ridge=1e-12)
        c2 = random_cov(r, f, rank, ridge=0.0)
        mu = r.normal(size=f)
        d = frechet_distance(mu, c1, mu, c2)
        assert math.isfinite(d) and d >= 0.0
        same = frechet_distance(mu, c1, mu, c1)  # exactly 0 in exact arithmetic
        assert math.isfinite(same) and 0.0 <= same < 1e-6
        # a shift of the mean adds its squared length
        assert frechet_distance(mu, c1, mu + 1.0, c1) == pytest.approx(f, abs=1e-5)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="frechet_distance needs"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))
    with pytest.raises(ValueError, match="n >= 2"):
        feature_statistics(np.zeros((1, 3)))


def test_feature_statistics_match_numpy() -> None:
    x = rng(8).normal(size=(50, 5)).astype(np.float32)
    mean, cov = feature_statistics(torch.from_numpy(x))
    assert mean.dtype == torch.float64 and cov.shape == (5, 5)
    assert_close(mean, torch.from_numpy(x.astype(np.float64).mean(0)))
    assert_close(cov, torch.from_numpy(np.cov(x.astype(np.float64), rowvar=False)))


def test_features_are_the_last_hidden_layer() -> None:
    torch.manual_seed(0)
    net = build_classifier(12, 9, 4)
    x = torch.rand(30, 12)
    w1, b1, w2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
    expect = torch.relu(torch.relu(x @ w1.T + b1) @ w2.T + b2)  # [30, 9]
    assert_close(classifier_features(net, x, batch_size=7), expect)
    with pytest.raises(ValueError, match="nn.Sequential"):
        classifier_features(torch.nn.Linear(12, 4), x)


class Replay:
    """A stand-in model whose samples are given images in order: its prior's codes are row numbers, its
    decoder looks them up; it records the temperatures asked for and the batches decoded."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.temperatures, self.decoded = images, [], []
        self.prior, self.encoder = self, None

    def sample(
        self, n: int, encoder: None, generator: torch.Generator | None, temperature: float
    ) -> torch.Tensor:
        self.temperatures.append(temperature)
        return torch.arange(n, dtype=torch.float32)[:, None]  # [n, 1]

    def decode_mean(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.decoded.append(z.shape[0])
        return self.images[z[:, 0].long()]


def test_sample_frechet_of_the_real_images_is_zero_and_matches_by_hand() -> None:
    torch.manual_seed(1)
    net = build_classifier(12, 6, 3)
    real = torch.rand(80, 12)
    model = Replay(real)
    assert sample_frechet(model, net, real, 50, 0.5, None, batch_size=16) < 1e-8  # type: ignore[arg-type]
    assert model.temperatures == [0.5] and model.decoded == [16, 16, 16, 2]
    other = torch.rand(50, 12) ** 2
    expect = frechet_distance(
        *feature_statistics(classifier_features(net, real[:50])),
        *feature_statistics(classifier_features(net, other)),
    )
    assert sample_frechet(Replay(other), net, real, 50, 1.0, None) == pytest.approx(expect, rel=1e-12)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n=81"):
        sample_frechet(Replay(real), net, real, 81)  # type: ignore[arg-type]


# -- a real model, and the experiment script end to end ------------------------------------------------
def train_digits(out: Path, prior: PriorConfig) -> Path:
    from exemplar_vae.pipeline import train

    config = RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(hidden=16, latent_dim=4),
        prior=prior,
        train=TrainConfig(epochs=1, warmup=1, seed=0, device="cpu"),
    )
    train(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("quality")
    return [
        train_digits(root / "gaussian", PriorConfig(name="gaussian")),
        train_digits(root / "vamp", PriorConfig(name="vampprior", components=10, subsample=4)),
    ]


def test_sample_frechet_of_a_model_is_reproducible_and_temperature_matters(runs: list[Path]) -> None:
    from exemplar_vae.runs import load_run

    model, data, _ = load_run(runs[0], device="cpu")
    torch.manual_seed(0)
    net = build_classifier(data.data_dim, 8, 10)
    real = data.test_x
    a = sample_frechet(model, net, real, 100, 0.7, torch.Generator().manual_seed(3), batch_size=33)
    samples = model.generate(100, torch.Generator().manual_seed(3), 0.7)  # [100, D]
    expect = frechet_distance(
        *feature_statistics(classifier_features(net, real[:100])),
        *feature_statistics(classifier_features(net, samples)),
    )
    assert a == pytest.approx(expect, rel=1e-5) and math.isfinite(a) and a >= 0.0  # float32 decoder
    c = sample_frechet(model, net, real, 100, 0.0, torch.Generator().manual_seed(3))
    assert c != pytest.approx(a)


def load_script():  # noqa: ANN201
    path = Path(__file__).resolve().parents[1] / "experiments" / "sample_quality.py"
    spec = importlib.util.spec_from_file_location("sample_quality", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_writes_a_table_and_reuses_its_classifier(runs: list[Path], tmp_path: Path) -> None:
    script = load_script()
    cache, out = tmp_path / "clf.pt", tmp_path / "table.md"
    argv = [*map(str, runs), "--classifier-epochs", "1", "--classifier-hidden", "16", "--samples", "100"]
    argv += [
        "--temperatures",
        "0.5",
        "1.0",
        "--classifier-cache",
        str(cache),
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    script.main(argv)
    first = out.read_text()
    assert cache.is_file()
    lines = [line for line in first.splitlines() if line.startswith("| ")]
    assert lines[0] == "| prior | run | T = 0.5 | T = 1 |"
    assert lines[1].startswith("| real training images (floor) |")
    assert lines[2].startswith("| gaussian |") and lines[3].startswith("| vampprior (K=10, K'=4) |")
    values = [float(v) for line in lines[1:] for v in line.strip(" |").split(" | ")[2:]]
    assert len(values) == 6 and all(math.isfinite(v) and v >= 0 for v in values)
    script.main(argv)  # the cached classifier: the same table
    assert out.read_text() == first
    with pytest.raises(SystemExit, match="holds a classifier"):
        script.main([*argv[:-2], "--classifier-hidden", "8", "--out", str(out)])
