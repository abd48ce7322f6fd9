"""``exemplar-vae reproduce``: the shipped presets, and a tiny end-to-end run on digits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exemplar_vae import reproduce as rep
from exemplar_vae.cli.main import main
from exemplar_vae.io import BEST, BEST_WEIGHTS, LAST, LAST_OPTIMIZER, LAST_WEIGHTS
from exemplar_vae.validation import validate


def test_every_paper_row_has_a_valid_preset() -> None:
    presets = rep.list_presets()
    assert len(presets) == 27  # 3 datasets x 3 architectures x 3 priors of Table 1
    for p in presets:
        validate(p.config)
        dataset, arch, prior = p.config.data.dataset, p.config.model.arch, p.config.prior.name
        assert p.name == f"{dataset}-{arch}-{prior}"
        assert p.paper_mean < 0 and p.paper_std > 0
        assert p.config.train.epochs == 2000 and p.config.train.warmup == 100
        if prior == "exemplar":  # the paper: exact prior for VAE/HVAE, 10-NN for ConvHVAE
            assert p.config.prior.knn == (10 if arch == "convhvae" else 0)
    by_name = {p.name: p for p in presets}
    assert by_name["fashion-mnist-mlp-exemplar"].paper_mean == -226.75
    assert by_name["omniglot-convhvae-exemplar"].paper_mean == -96.38
    assert by_name["omniglot-mlp-vampprior"].config.prior.components == 1000


def test_search_budget_applies_to_retrieval_rows_only() -> None:
    by_name = {p.name: p for p in rep.list_presets()}
    ivf = rep.Budget(epochs=4, search="ivf")
    conv = rep.apply_budget(by_name["fashion-mnist-convhvae-exemplar"].config, ivf, seed=1)
    assert conv.prior.knn == 10 and conv.prior.search == "ivf"
    exact_prior = rep.apply_budget(by_name["fashion-mnist-mlp-exemplar"].config, ivf, seed=1)
    assert exact_prior.prior.knn == 0 and exact_prior.prior.search == "exact"  # nothing to search
    with_knn = rep.apply_budget(
        by_name["fashion-mnist-mlp-exemplar"].config, rep.Budget(knn=10, search="ivf"), 1
    )
    assert with_knn.prior.search == "ivf"
    gaussian = rep.apply_budget(by_name["fashion-mnist-mlp-gaussian"].config, ivf, seed=1)
    assert gaussian.prior.search == "exact"
    assert "ivf retrieval search" in rep.Budget(knn=10, search="ivf").describe()
    assert "search" not in rep.Budget(knn=10).describe()


def _digits_presets(folder: Path) -> Path:
    folder.mkdir()
    for prior, paper in (("gaussian", -30.0), ("exemplar", -29.0)):
        doc = {
            "row": f"VAE, {prior}",
            "paper": {"log_likelihood": paper, "std": 0.5},
            "config": {"data": {"dataset": "digits"}, "model": {"hidden": 16, "latent_dim": 4},
                       "prior": {"name": prior, "knn": 3}, "train": {"epochs": 50, "warmup": 10}},
        }  # fmt: skip
        (folder / f"digits-mlp-{prior}.json").write_text(json.dumps(doc))
    return folder


def test_reproduce_on_digits_writes_a_table_and_reuses_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    presets, out = _digits_presets(tmp_path / "presets"), tmp_path / "out"
    args = ["-q", "reproduce", "--presets", str(presets), "--dataset", "digits", "--prior", "gaussian", "exemplar",
            "--seeds", "2", "--epochs", "2", "--train-size", "300", "--limit", "20", "--samples", "10",
            "--candidates", "50",
            "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = (out / "reproduce.md").read_text()
    assert "at most 2 epochs" in table and "S = 10" in table and "truncated to the 50 exemplars" in table
    evaluation = json.loads((out / "digits-mlp-exemplar" / "seed1" / "evaluation.json").read_text())
    assert evaluation["prior_eval"] == "truncated" and evaluation["candidates"] == 50
    rows = [line for line in table.splitlines() if line.startswith("| digits")]
    assert len(rows) == 2
    for line in rows:  # | dataset | model | runs | mean ± std | paper | difference |
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "2"
        assert re.fullmatch(r"-\d+\.\d\d ± \d+\.\d\d", cells[3]) and re.fullmatch(r"[+-]\d+\.\d\d", cells[5])
    doc = json.loads((out / "reproduce.json").read_text())
    runs = doc["rows"][1]["runs"]
    mean = sum(r["log_likelihood"] for r in runs) / 2
    assert f"{mean:.2f}" in rows[1] and runs[0]["examples"] == 20
    # the seeds differ, so the runs differ
    assert runs[0]["log_likelihood"] != runs[1]["log_likelihood"]
    # a second call reuses the finished runs and their evaluations
    stamp = (out / "digits-mlp-exemplar" / "seed1" / BEST).stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert (out / "digits-mlp-exemplar" / "seed1" / BEST).stat().st_mtime_ns == stamp
    assert (out / "reproduce.md").read_text() == table


def test_reproduce_refuses_a_folder_with_another_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    presets, out = _digits_presets(tmp_path / "presets"), tmp_path / "out"
    base = ["-q", "reproduce", "--presets", str(presets), "--dataset", "digits", "--prior", "gaussian",
            "--seeds", "1", "--train-size", "200", "--limit", "5", "--samples", "5", "--device", "cpu",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--epochs", "3"]) == 2
    assert "different configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "celeba"], "no paper preset for celeba-mlp-gaussian"),
        (["--dataset", "mnist", "--seeds", "0"], "--seeds must be at least 1"),
        (["--dataset", "mnist", "--epochs", "0"], "epochs (--epochs) must be at least 1"),
        (["--dataset", "mnist", "--limit", "0"], "--limit must be at least 1"),
        (["--dataset", "mnist", "--check-exact", "-1"], "--check-exact must be >= 0"),
        (["--prior", "gaussian"], "--dataset is required"),
    ],
)
def test_reproduce_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["-q", "reproduce", "--prior", "gaussian", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_list_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 27 and any(
        "fashion-mnist-mlp-exemplar" in line and "-226.75" in line for line in lines
    )


def test_reproduce_restarts_a_run_interrupted_before_its_first_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    presets, out = _digits_presets(tmp_path / "presets"), tmp_path / "out"
    args = ["-q", "reproduce", "--presets", str(presets), "--dataset", "digits", "--prior", "gaussian",
            "--seeds", "1", "--epochs", "1", "--train-size", "200", "--limit", "5", "--samples", "5",
            "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    run = out / "digits-mlp-gaussian" / "seed1"
    for name in (LAST, LAST_WEIGHTS, LAST_OPTIMIZER, BEST, BEST_WEIGHTS, "reproduce_done.json"):
        (run / name).unlink()  # as if killed during epoch 1
    assert main(args) == 0
    assert (run / LAST).is_file() and (run / "reproduce_done.json").is_file()
    # the evaluation belongs to the new checkpoint: re-made, not reused
    settings = json.loads((run / "evaluation.json").read_text())["reproduce_settings"]
    assert settings["checkpoint_mtime_ns"] == (run / BEST).stat().st_mtime_ns


def test_table_only_tabulates_what_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    presets, out = _digits_presets(tmp_path / "presets"), tmp_path / "out"
    base = ["-q", "reproduce", "--presets", str(presets), "--dataset", "digits", "--prior", "gaussian",
            "--epochs", "1", "--train-size", "200", "--limit", "5", "--samples", "5", "--device", "cpu",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main([*base, "--table-only", "--seeds", "2"]) == 2
    assert "no evaluated runs" in capsys.readouterr().err
    assert main([*base, "--seeds", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--table-only", "--seeds", "3"]) == 0  # seeds 2 and 3 were never run
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| digits"))
    assert row.split("|")[3].strip() == "1"
    assert not (out / "digits-mlp-gaussian" / "seed2").exists()
