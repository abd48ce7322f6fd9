"""Representations: the kNN probe against a brute-force float64 kNN, its vote rule, the grey held-out
images it queries with, the t-SNE map, and ``exemplar-vae probe`` end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exemplar_vae.cli.main import main
from exemplar_vae.config import ModelConfig, PriorConfig
from exemplar_vae.data import TEST_BINARIZE_SEED, VAL_BINARIZE_SEED, DataSplits, fixed_binarize, load_dataset
from exemplar_vae.errors import ConfigError
from exemplar_vae.evaluation import knn_probe, majority_vote, probe_table, tsne_plot
from exemplar_vae.models import VAE, build_vae


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model(digits: DataSplits) -> VAE:
    torch.manual_seed(0)  # an untrained encoder is enough to compare two kNN implementations
    config = ModelConfig(hidden=32, latent_dim=6)
    return build_vae(config, PriorConfig(name="gaussian"), digits.train_x, digits.image_shape).eval()


def brute_force_accuracy(
    encoder: torch.nn.Module, index: torch.Tensor, index_y: torch.Tensor, queries: torch.Tensor,
    query_y: torch.Tensor, k: int,
) -> float:  # fmt: skip
    """Float64 codes, one query at a time: sort all distances, count votes, ties to the nearest."""
    enc64 = copy.deepcopy(encoder).double()
    with torch.no_grad():
        base = enc64.mean(index.double()).numpy()  # [N, d]
        codes = enc64.mean(queries.double()).numpy()  # [Q, d]
    labels, truth = index_y.numpy(), query_y.numpy()
    correct = 0
    for code, y in zip(codes, truth):
        order = np.argsort(((base - code) ** 2).sum(axis=1), kind="stable")[:k]
        votes: dict[int, int] = {}
        for label in labels[order]:
            votes[int(label)] = votes.get(int(label), 0) + 1
        best = max(votes.values())
        prediction = next(int(label) for label in labels[order] if votes[int(label)] == best)
        correct += prediction == int(y)
    return 100.0 * correct / len(truth)


def test_knn_probe_matches_brute_force(model: VAE, digits: DataSplits) -> None:
    ks = (1, 2, 4, 5, 15)
    result = knn_probe(model, digits, ks)
    assert [r["k"] for r in result["results"]] == list(ks)
    assert (result["index_size"], result["queries"], result["query_images"]) == (1197, 300, "grey")
    assert digits.test_grey is not None
    for row in result["results"]:
        expect = brute_force_accuracy(
            model.encoder, digits.train_x, digits.train_y, digits.test_grey, digits.test_y, row["k"]
        )
        assert row["accuracy_percent"] == pytest.approx(expect, abs=1e-9), row["k"]
        assert row["error_percent"] == pytest.approx(100 - expect, abs=1e-9)
    assert 20 < result["results"][0]["accuracy_percent"] < 100  # far from chance-free or chance-only


def test_knn_probe_with_validation_in_the_index(model: VAE, digits: DataSplits) -> None:
    result = knn_probe(model, digits, (3,), include_val=True)
    assert (result["index"], result["index_size"]) == ("train+val", 1497)
    index = torch.cat([digits.train_x, digits.val_grey])
    expect = brute_force_accuracy(
        model.encoder, index, torch.cat([digits.train_y, digits.val_y]), digits.test_grey, digits.test_y, 3
    )
    assert result["results"][0]["accuracy_percent"] == pytest.approx(expect, abs=1e-9)


def test_majority_vote_breaks_ties_by_the_nearest_neighbour() -> None:
    labels = torch.tensor([[3, 1, 1, 3], [2, 5, 5, 2], [4, 4, 0, 0], [7, 8, 9, 9], [6, 0, 0, 0]])
    assert majority_vote(labels, 1).tolist() == [3, 2, 4, 7, 6]
    assert majority_vote(labels, 2).tolist() == [3, 2, 4, 7, 6]  # 1-1 ties: the nearest
    assert majority_vote(labels, 3).tolist() == [1, 5, 4, 7, 0]  # majorities, and a 1-1-1 tie
    assert majority_vote(labels, 4).tolist() == [3, 2, 4, 9, 0]  # 2-2 ties go to the closer class


def test_grey_held_out_images_binarise_to_the_fixed_sets(digits: DataSplits) -> None:
    assert digits.val_grey is not None and digits.test_grey is not None
    assert torch.equal(fixed_binarize(digits.val_grey, seed=VAL_BINARIZE_SEED), digits.val_x)
    assert torch.equal(fixed_binarize(digits.test_grey, seed=TEST_BINARIZE_SEED), digits.test_x)
    assert ((digits.test_grey > 0) & (digits.test_grey < 1)).any()  # really grey
    kept = load_dataset("digits", train_size=10)  # replacing the training set keeps the grey fields
    assert kept.test_grey is not None and torch.equal(kept.test_grey, digits.test_grey)


def test_probe_falls_back_to_binarised_queries(model: VAE, digits: DataSplits) -> None:
    no_grey = dataclasses.replace(digits, test_grey=None)
    result = knn_probe(model, no_grey, (5,))
    assert result["query_images"] == "binarised"
    expect = brute_force_accuracy(
        model.encoder, digits.train_x, digits.train_y, digits.test_x, digits.test_y, 5
    )
    assert result["results"][0]["accuracy_percent"] == pytest.approx(expect, abs=1e-9)


@pytest.mark.parametrize("split", ["train", "test"])
def test_probe_needs_labels(model: VAE, digits: DataSplits, split: str) -> None:
    y = getattr(digits, f"{split}_y")
    unlabelled = dataclasses.replace(digits, **{f"{split}_y": torch.full_like(y, -1)})
    with pytest.raises(ConfigError, match=rf"{y.numel()} of {y.numel()} .*no label \(-1\)"):
        knn_probe(model, unlabelled)


@pytest.mark.parametrize("ks", [(0, 3), (1, 1198), ()])
def test_probe_rejects_bad_k(model: VAE, digits: DataSplits, ks: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="k"):
        knn_probe(model, digits, ks)


def test_probe_table_lists_every_k(model: VAE, digits: DataSplits) -> None:
    result = knn_probe(model, digits, (1, 7))
    table = probe_table(result)
    for r in result["results"]:
        assert f"| {r['k']} | {r['accuracy_percent']:.2f} | {r['error_percent']:.2f} |" in table
    assert table.count("\n| ") == 3  # header + 2 rows
    assert "index 1197 train codes, 300 grey test queries" in table


def test_tsne_plot_writes_png(model: VAE, digits: DataSplits, tmp_path: Path) -> None:
    path = tsne_plot(model, digits, tmp_path / "map.png", points=60, seed=1)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (650, 600)
        colours = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 10  # points in several label colours, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]  # no temporary file left behind
    with pytest.raises(ConfigError, match="png"):
        tsne_plot(model, digits, tmp_path / "map.jpg", points=60)
    with pytest.raises(ConfigError, match="at least 5 points"):
        tsne_plot(model, digits, tmp_path / "small.png", points=2)
    assert not (tmp_path / "map.jpg").exists() and not (tmp_path / "small.png").exists()


# --------------------------------------------------------------------------- exemplar-vae probe


def test_cli_probe_table_json_and_tsne(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "probe.md"
    assert main(["-q", "probe", str(run_dir), "--k", "1", "5", "--out", str(table), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out == table.read_text() and "| 5 |" in out and "| 3 |" not in out
    js, tsne = tmp_path / "probe.json", tmp_path / "tsne.png"
    argv = ["-q", "probe", str(run_dir), "--k", "3", "--json", "--out", str(js), "--tsne", str(tsne)]
    assert main([*argv, "--tsne-points", "50"]) == 0
    result = json.loads(js.read_text())
    assert result["prior"] == "exemplar" and [r["k"] for r in result["results"]] == [3]
    assert result["tsne"] == str(tsne) and tsne.stat().st_size > 1000
    assert json.loads(capsys.readouterr().out) == result


@pytest.mark.parametrize(
    "extra", [["--k", "0"], ["--k", "5000"], ["--tsne", "map.jpg"], ["--tsne", "m.png", "--tsne-points", "1"]]
)
def test_cli_probe_bad_input(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    out = tmp_path / "probe.md"
    argv = [
        "-q",
        "probe",
        str(run_dir),
        "--out",
        str(out),
        *[str(tmp_path / a) if "." in a else a for a in extra],
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert list(tmp_path.iterdir()) == []  # nothing written
