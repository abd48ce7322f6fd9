"""The paper's MLP classifier: its loss and schedule against hand-written versions, training on digits,
the real/augmented loss mix, and ``exemplar-vae classify`` end to end with and without augmentation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from exemplar_vae.cli.main import main
from exemplar_vae.data import DataSplits, load_dataset
from exemplar_vae.downstream import build_classifier, classification_table, train_classifier
from exemplar_vae.downstream.classifier import lr_at_epoch, smoothed_cross_entropy
from exemplar_vae.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


def test_label_smoothing_targets_the_papers_values() -> None:
    """Target 0.01 on every class plus 0.9 on the true one (10 classes)."""
    logits = torch.randn(7, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 1, 1, 5, 7])
    target = torch.full((7, 10), 0.01, dtype=torch.float64)
    target[torch.arange(7), y] += 0.9
    reference = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(smoothed_cross_entropy(logits, y), reference)


def test_learning_rate_decays_linearly_to_one_percent() -> None:
    assert lr_at_epoch(0.1, 0, 100) == pytest.approx(0.1)
    assert lr_at_epoch(0.1, 50, 100) == pytest.approx(0.1 * (1 - 0.495))
    assert lr_at_epoch(0.1, 100, 100) == pytest.approx(0.001)
    assert lr_at_epoch(0.1, 99, 100) == pytest.approx(0.1 * (1 - 0.99 * 0.99))


def test_architecture() -> None:
    net = build_classifier(784, 1024, 10)
    widths = [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
    assert widths == [(784, 1024), (1024, 1024), (1024, 10)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net) == 2
    assert sum(p.numel() for p in net.parameters()) == 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10


def test_trains_on_digits_deterministically(digits: DataSplits) -> None:
    state = torch.get_rng_state()
    first = train_classifier(digits, hidden=64, epochs=20, seed=1, device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    second = train_classifier(digits, hidden=64, epochs=20, seed=1, device="cpu", progress=False)
    assert first["test_error"] < 10 and first["train_error"] < 10
    assert first["test_error"] == second["test_error"] and first["final_loss"] == second["final_loss"]
    assert first["test_inputs"] == "grey" and first["test_examples"] == 300
    assert first["augmented"] is False and first["real_weight"] is None
    other = train_classifier(digits, hidden=64, epochs=20, seed=2, device="cpu", progress=False)
    assert other["final_loss"] != first["final_loss"]


class CountingAugmenter:
    """Returns the real batch itself and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.sizes: list[int] = []

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        self.sizes.append(x.shape[0])
        return x.clone(), y.clone()


def test_augmenter_called_every_step_and_loss_mixed(digits: DataSplits) -> None:
    common = dict(hidden=16, epochs=3, seed=0, device="cpu", progress=False)
    plain = train_classifier(digits, **common)  # type: ignore[arg-type]
    counting = CountingAugmenter()
    only_real = train_classifier(digits, augmenter=counting, real_weight=1.0, **common)  # type: ignore[arg-type]
    steps = -(-digits.num_train // 100)
    assert counting.calls == 3 * steps and max(counting.sizes) == 100
    # weight 1 on the real batch: the augmented term contributes nothing
    assert only_real["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-6)
    assert only_real["test_error"] == plain["test_error"]
    # weight 0 on a copy of the real batch: the same loss again
    same = train_classifier(digits, augmenter=CountingAugmenter(), real_weight=0.0, **common)  # type: ignore[arg-type]
    assert same["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-5)

    def noise(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(0)), y

    mixed = train_classifier(digits, augmenter=noise, real_weight=0.4, **common)  # type: ignore[arg-type]
    assert mixed["final_loss"] != pytest.approx(plain["final_loss"], rel=1e-3)
    assert mixed["real_weight"] == 0.4 and mixed["augmented"] is True


@pytest.mark.parametrize("bad", [dict(hidden=0), dict(epochs=0), dict(real_weight=1.5), dict(lr=0.0)])
def test_bad_classifier_options(digits: DataSplits, bad: dict) -> None:
    with pytest.raises(ConfigError, match=str(list(bad.values())[0])):
        train_classifier(digits, **{"epochs": 1, "progress": False, "device": "cpu", **bad})


def table_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_cli_classify_with_and_without_augmentation(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["classify", "--dataset", "digits", "--hidden", "32", "--epochs", "2", "--seeds", "2"]
    assert main([*base, "--device", "cpu", "--no-progress"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 1 and "augmentation" not in rows[0][0]

    out = tmp_path / "table.md"
    args = [*base, "--augment", str(run_dir), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    rows = table_rows(printed)
    assert len(rows) == 2
    assert "augmentation (exemplar prior)" in rows[1][0] and "augmentation" not in rows[0][0]
    for _method, hidden, epochs, error, per_seed in rows:
        assert hidden == "2x32" and epochs == "2"
        mean, std = (float(v) for v in re.fullmatch(r"([\d.]+) ± ([\d.]+)", error).groups())  # type: ignore[union-attr]
        seeds = [float(v) for v in per_seed.split(", ")]
        assert len(seeds) == 2 and all(0 <= v <= 100 for v in [mean, std, *seeds])
        assert mean == pytest.approx(sum(seeds) / 2, abs=0.01)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["seeds"] == [1, 2] and result["test_inputs"] == "grey"
    assert [row["augmented"] for row in result["rows"]] == [False, True]
    assert all(run["epochs"] == 2 for row in result["rows"] for run in row["runs"])
    assert classification_table(result) == printed
    assert "0.4·CE(real) + 0.6·CE(augmented)" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "mnist"], "trained on 'digits', but --dataset is 'mnist'"),
        (["--dataset", "digits", "--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["--dataset", "digits", "--real-weight", "1.5"], "--real-weight must lie in [0, 1], got 1.5"),
        (["--dataset", "digits", "--pixels", "blurred"], "unknown --pixels 'blurred'"),
        (["--dataset", "digits", "--hidden", "0"], "--hidden must be an integer >= 1, got 0"),
    ],
)
def test_cli_classify_bad_input(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "table.md"
    args = [
        "classify",
        *extra,
        "--augment",
        str(run_dir),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_classify_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["classify", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    assert main([*base, "--augment", str(tmp_path / "missing"), "--out", str(tmp_path / "t.md")]) == 2
    assert "run folder" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "t.json")]) == 2
    assert "t.json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_work_folder_resumes_and_reuses_finished_classifiers(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exemplar_vae.downstream import classifier

    work = tmp_path / "work"
    kw = dict(hidden=16, epochs=1, seeds=2, device="cpu", progress=False, work_dir=work)
    first = classifier.compare_augmentation("digits", run_dir, **kw)  # type: ignore[arg-type]
    files = sorted(p.name for p in work.iterdir())
    assert len(files) == 4 and sum(f.startswith("real-seed") for f in files) == 2

    calls: list[int] = []
    real = classifier.train_classifier

    def counting(*args: object, **kwargs: object) -> dict:
        calls.append(int(kwargs["seed"]))  # type: ignore[call-overload]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(classifier, "train_classifier", counting)
    again = classifier.compare_augmentation("digits", run_dir, **kw)  # type: ignore[arg-type]
    assert calls == [] and again["rows"] == first["rows"]

    (work / files[0]).unlink()  # an interrupted comparison: only that classifier is trained again
    (work / "real-seed2.json").write_text("{not json")
    again = classifier.compare_augmentation("digits", run_dir, **kw)  # type: ignore[arg-type]
    assert sorted(calls) == sorted([int(files[0].split("seed")[1][:-5]), 2])
    assert [r["errors"] for r in again["rows"]] == [r["errors"] for r in first["rows"]]

    calls.clear()  # other settings are never mixed with the stored ones
    classifier.compare_augmentation("digits", run_dir, **{**kw, "epochs": 2})  # type: ignore[arg-type]
    assert sorted(calls) == [1, 1, 2, 2]
