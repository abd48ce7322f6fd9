"""Generative data augmentation: draws from r(z|x) (checked against the kernel with the same noise), the
sigma -> 0 limit, output forms, shapes and label pass-through, no side effects on the model, the Dataset
wrapper, and ``exemplar-vae augment`` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from exemplar_vae.cli.main import main
from exemplar_vae.data import DataSplits, identity_collate, load_dataset
from exemplar_vae.downstream import AugmentedDataset, ExemplarAugmenter, round_to_8bit
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.models.vae import VAE
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.runs import load_run


@pytest.fixture(scope="module")
def loaded(run_dir: Path) -> tuple[VAE, DataSplits]:
    model, data, _ = load_run(run_dir, device="cpu")
    return model, data


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_temperature_zero_returns_the_reconstruction(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    x = data.train_x[:6]
    with torch.no_grad():
        mu = model.encode(x)[0].repeat_interleave(3, dim=0)  # [18, d]
        reference = torch.sigmoid(model.decode(mu))  # [18, D]
    mean, _ = ExemplarAugmenter(model, 3, temperature=0.0, output="mean", generator=gen(0))(x)
    torch.testing.assert_close(mean, reference, rtol=0, atol=1e-6)
    rounded, _ = ExemplarAugmenter(model, 3, temperature=0.0, output="rounded", generator=gen(0))(x)
    torch.testing.assert_close(rounded, round_to_8bit(reference), rtol=0, atol=1e-6)


def test_draws_use_the_exemplar_kernel_sigma_times_temperature(loaded: tuple[VAE, DataSplits]) -> None:
    """Same noise, rebuilt by hand: z = mu(x) + T * sigma * eps with the prior's sigma (not q's)."""
    model, data = loaded
    assert isinstance(model.prior, ExemplarPrior)
    x, n, t = data.train_x[:5], 4, 0.7
    out, _ = ExemplarAugmenter(model, n, temperature=t, output="mean", generator=gen(3))(x)
    with torch.no_grad():
        mu, log_var = model.encode(x)  # [5, d]
        sigma = torch.exp(0.5 * model.prior.log_var)
        eps = torch.randn((5, n, mu.shape[1]), generator=gen(3))
        z = mu.unsqueeze(1) + t * sigma * eps  # [5, n, d]
        reference = torch.sigmoid(model.decode(z.reshape(-1, z.shape[-1])))  # [5 * n, D]
        with_q = mu.unsqueeze(1) + t * torch.exp(0.5 * log_var).unsqueeze(1) * eps
        wrong = torch.sigmoid(model.decode(with_q.reshape(-1, z.shape[-1])))
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    assert (out - wrong).abs().max() > 1e-3  # the test tells the prior's kernel from q(z|x)


def test_larger_temperature_spreads_the_variations(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    x = data.train_x[:4]
    spread = []
    for t in (0.25, 1.0, 2.0):
        out, _ = ExemplarAugmenter(model, 200, temperature=t, output="mean", generator=gen(1))(x)
        spread.append(float(out.reshape(4, 200, -1).var(dim=1).mean()))
    assert spread[0] < spread[1] < spread[2]
    assert spread[0] > 0


def test_shapes_dtypes_device_and_labels(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    x, y = data.train_x[:5].double(), data.train_y[:5]
    for output in ("rounded", "mean", "sample"):
        x_aug, y_aug = ExemplarAugmenter(model, 3, output=output, generator=gen(0))(x, y)
        assert x_aug.shape == (15, data.data_dim) and x_aug.dtype == torch.float32
        assert x_aug.device == x.device
        assert float(x_aug.min()) >= 0 and float(x_aug.max()) <= 1
        assert y_aug is not None and torch.equal(y_aug, y.repeat_interleave(3))
    x_aug, y_aug = ExemplarAugmenter(model, 2)(x)
    assert x_aug.shape == (10, data.data_dim) and y_aug is None


def test_output_forms(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    x = data.train_x[:20]
    mean, _ = ExemplarAugmenter(model, 2, output="mean", generator=gen(5))(x)
    rounded, _ = ExemplarAugmenter(model, 2, output="rounded", generator=gen(5))(x)
    sample, _ = ExemplarAugmenter(model, 2, output="sample", generator=gen(5))(x)
    scaled = rounded * 255
    assert (scaled - scaled.round()).abs().max() < 1e-4  # multiples of 1/255
    assert (rounded - mean).abs().max() <= 0.5 / 255 + 1e-6  # and the nearest ones to the mean
    assert (mean * 255 - (mean * 255).round()).abs().max() > 0.01  # the mean itself is not rounded
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    # a Bernoulli draw from the same means: frequencies follow the probabilities
    assert abs(float(sample.mean()) - float(mean.mean())) < 0.05


def test_model_is_left_untouched(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (True, False):
        model.train(mode)
        for output in ("rounded", "mean", "sample"):
            ExemplarAugmenter(model, 2, output=output, generator=gen(0))(data.train_x[:8])
        assert all(m.training == mode for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()


def test_fresh_draws_and_reproducible_with_a_seed(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    x = data.train_x[:8]
    augmenter = ExemplarAugmenter(model, 1, output="mean", generator=gen(7))
    first, _ = augmenter(x)
    second, _ = augmenter(x)
    assert (first - second).abs().max() > 1e-3
    again, _ = ExemplarAugmenter(model, 1, output="mean", generator=gen(7))(x)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_bad_options(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    with pytest.raises(ConfigError, match="variations"):
        ExemplarAugmenter(model, 0)
    with pytest.raises(ConfigError, match="'blurred'"):
        ExemplarAugmenter(model, output="blurred")
    with pytest.raises(ConfigError, match="-1"):
        ExemplarAugmenter(model, temperature=-1)
    with pytest.raises(DataError, match="shape"):
        ExemplarAugmenter(model)(data.train_x[0])
    with pytest.raises(DataError, match="labels"):
        ExemplarAugmenter(model)(data.train_x[:3], data.train_y[:2])


def test_augmented_dataset_gives_fresh_augmentations(loaded: tuple[VAE, DataSplits]) -> None:
    model, data = loaded
    ds = AugmentedDataset(data.train_x[:30], data.train_y[:30], ExemplarAugmenter(model, 2, generator=gen(0)))
    assert len(ds) == 30
    x, y, x_aug, y_aug = ds[4]
    assert x.shape == (data.data_dim,) and x_aug.shape == (2, data.data_dim)
    assert torch.equal(x, data.train_x[4]) and torch.equal(y_aug, data.train_y[4].repeat(2))
    loader = DataLoader(ds, batch_size=10, shuffle=False, collate_fn=identity_collate)
    first = [batch for batch in loader]
    second = [batch for batch in loader]
    assert len(first) == 3
    xb, yb, xa, ya = first[1]
    assert xb.shape == (10, data.data_dim) and xa.shape == (20, data.data_dim)
    assert torch.equal(xb, data.train_x[10:20]) and torch.equal(ya, data.train_y[10:20].repeat_interleave(2))
    assert torch.equal(first[0][0], second[0][0])  # the same real images
    assert (first[0][2] - second[0][2]).abs().max() > 0  # fresh augmentations of them
    with pytest.raises(DataError):
        AugmentedDataset(data.train_x[:3], data.train_y[:2], ExemplarAugmenter(model))


def test_cli_augment_writes_what_load_dataset_reads(
    run_dir: Path, loaded: tuple[VAE, DataSplits], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = loaded
    out = tmp_path / "aug.npz"
    args = ["augment", str(run_dir), "--out", str(out), "--variations", "3", "--limit", "40"]
    assert main([*args, "--seed", "2", "--device", "cpu"]) == 0
    assert '"examples": 120' in capsys.readouterr().out
    with np.load(out) as f:
        x, y, source = f["x"], f["y"], f["source_index"]
    assert x.shape == (120, 8, 8) and x.dtype == np.uint8
    np.testing.assert_array_equal(source, np.repeat(np.arange(40), 3))
    np.testing.assert_array_equal(y, data.train_y[:40].repeat_interleave(3).numpy())
    expected, _ = ExemplarAugmenter(model, 3, generator=gen(2))(data.train_x[:40])
    np.testing.assert_array_equal(x.reshape(120, -1), torch.round(expected * 255).to(torch.uint8).numpy())
    back = load_dataset(out)
    assert back.image_shape == (1, 8, 8)
    assert back.num_train + len(back.val_x) + len(back.test_x) == 120
    labels = torch.cat([back.train_y, back.val_y, back.test_y]).sort().values
    assert torch.equal(labels, torch.from_numpy(y).sort().values)
    assert torch.equal(back.train_x, torch.from_numpy(x.reshape(120, -1)[back_train_rows(120)]) / 255.0)

    for output, dtype in (("mean", np.float32), ("sample", np.bool_)):
        path = tmp_path / f"{output}.npz"
        assert main(["augment", str(run_dir), "--out", str(path), "--output", output, "--limit", "10"]) == 0
        with np.load(path) as f:
            assert f["x"].dtype == dtype and f["x"].shape == (10, 8, 8)
        assert load_dataset(path).data_dim == 64


def back_train_rows(n: int) -> np.ndarray:
    """The rows ``load_npz`` keeps for training (a seeded 80/10/10 split)."""
    from exemplar_vae.data import SPLIT_SEED, random_split_indices

    return random_split_indices(n, n // 10, n // 10, seed=SPLIT_SEED)[0].numpy()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pixels", "blurred"], "unknown --pixels 'blurred'"),
        (["--variations", "0"], "--variations must be an integer >= 1, got 0"),
        (["--limit", "0"], "--limit must be an integer >= 1, got 0"),
        (["--temperature", "-0.5"], "temperature must be a finite number >= 0, got -0.5"),
    ],
)
def test_cli_augment_bad_options(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "aug.npz"
    assert main(["augment", str(run_dir), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_augment_bad_paths(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "aug.npz"
    assert main(["augment", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    assert main(["augment", str(run_dir), "--out", str(tmp_path / "aug.png")]) == 2
    assert "must be an .npz file, got" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
