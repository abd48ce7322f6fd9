"""End-to-end CLI tests on sklearn's digits: train, resume, evaluate, generate, report, table; bad input.

The options themselves (one meaning per flag, help text, -q, exit codes) are checked in test_cli_options.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exemplar_vae import errors
from exemplar_vae.cli.main import main

TRAIN = ["train", "--dataset", "digits", "--epochs", "2", "--warmup", "1", "--no-progress", "--seed", "3"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "exemplar"
    assert main(["-q", *TRAIN, "--prior", "exemplar", "--knn", "5", "--out", str(run_dir)]) == 0
    return run_dir


def test_train_writes_run_folder(trained_run: Path) -> None:
    for name in ("config.json", "metrics.jsonl", "best.json", "best.safetensors", "last.json", "curves.png"):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["prior"]["exemplars"] == 1197 // 2  # M = N/2 resolved
    assert config["prior"]["knn"] == 5
    lines = metrics(trained_run)
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("train_loss", "val_loss", "train_rec", "train_kl", "beta", "seconds", "prior_log_var"):
        assert key in lines[0]
    assert lines[0]["beta"] == 1.0 and lines[1]["val_loss"] < lines[0]["val_loss"]


def test_resume_matches_uninterrupted_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [
        "train",
        "--dataset",
        "digits",
        "--prior",
        "exemplar",
        "--knn",
        "3",
        "--warmup",
        "2",
        "--no-progress",
    ]
    assert run([*args, "--epochs", "4", "--out", str(straight)], capsys)[0] == 0
    assert run([*args, "--epochs", "2", "--out", str(split)], capsys)[0] == 0
    code, out, _ = run(["train", "--out", str(split), "--resume", "--epochs", "4", "--no-progress"], capsys)
    assert code == 0 and json.loads(out)["epochs_run"] == 4
    a, b = metrics(straight), metrics(split)
    assert [m["epoch"] for m in b] == [1, 2, 3, 4]
    for ma, mb in zip(a, b):
        assert ma["val_loss"] == pytest.approx(mb["val_loss"], rel=1e-6, abs=1e-6)
        assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-6, abs=1e-6)


def test_same_seed_same_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        assert (
            run(
                [*TRAIN, "--prior", "vampprior", "--components", "20", "--out", str(tmp_path / name)], capsys
            )[0]
            == 0
        )
    assert metrics(tmp_path / "a")[-1]["val_loss"] == metrics(tmp_path / "b")[-1]["val_loss"]


def test_evaluate_json(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["evaluate", str(trained_run), "--samples", "50", "--limit", "40", "--json", "--no-progress"], capsys
    )
    assert code == 0
    result = json.loads(out)
    for key in ("elbo", "log_likelihood", "samples", "examples", "split", "prior", "dataset"):
        assert key in result
    assert result["samples"] == 50 and result["examples"] == 40 and result["prior"] == "exemplar"
    assert result["log_likelihood"] < 0 and result["elbo"] <= result["log_likelihood"] + 0.5
    assert (
        json.loads((trained_run / "evaluation.json").read_text())["log_likelihood"]
        == result["log_likelihood"]
    )


def test_evaluate_with_extra_exemplars(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.npz"
    np.savez(extra, x=np.random.RandomState(0).randint(0, 256, size=(7, 8, 8)).astype(np.uint8))
    base = ["evaluate", str(trained_run), "--samples", "5", "--limit", "5", "--json", "--no-progress"]
    code, out, _ = run([*base, "--extra-exemplars", str(extra), "--out", str(tmp_path / "a.json")], capsys)
    assert code == 0 and json.loads(out)["extra_exemplars"] == 7
    code, out, _ = run([*base, "--with-val", "--out", str(tmp_path / "b.json")], capsys)
    assert code == 0 and json.loads(out)["extra_exemplar_sources"] == ["validation set (grey)"]
    with pytest.raises(SystemExit) as e:  # the old spelling: --exemplars is train's M
        main([*base, "--exemplars", str(extra)])
    assert e.value.code == 2


def test_generate_and_report(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.png"
    assert (
        run(
            [
                "generate",
                str(trained_run),
                "--out",
                str(out),
                "--n",
                "6",
                "--from-exemplars",
                "--variations",
                "4",
            ],
            capsys,
        )[0]
        == 0
    )
    img = np.asarray(Image.open(out))
    # 6 rows of (1 exemplar + 4 variations) 8x8 tiles, 1-pixel padding, upscaled x2
    assert img.shape == (2 * (6 * 9 + 1), 2 * (5 * 9 + 1))
    samples = tmp_path / "samples.png"
    assert run(["generate", str(trained_run), "--out", str(samples), "--n", "9"], capsys)[0] == 0
    assert np.asarray(Image.open(samples)).shape == (2 * (3 * 9 + 1), 2 * (3 * 9 + 1))
    assert run(["report", str(trained_run)], capsys)[0] == 0
    report = (trained_run / "report.md").read_text()
    assert "exemplar prior on digits" in report and "samples.png" in report
    for name in ("samples.png", "exemplars.png"):
        assert (trained_run / name).is_file()


def test_table(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(["evaluate", str(trained_run), "--samples", "20", "--limit", "10", "--no-progress"], capsys)
    code, out, _ = run(["table", str(trained_run), "--out", str(tmp_path / "t.md")], capsys)
    assert code == 0
    row = out.strip().splitlines()[-1]
    ll = json.loads((trained_run / "evaluation.json").read_text())["log_likelihood"]
    assert row.startswith("| exemplar | digits | 1197 | 2 (1) | 598 / 5 |") and f"{ll:.2f}" in row
    assert (tmp_path / "t.md").read_text() == out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prior", "foo"], "unknown prior 'foo'"),
        (["--prior", "exemplar", "--knn", "700"], "larger than the exemplars per step M=598"),
        (["--prior", "exemplar", "--exemplars", "5000"], "larger than the training set N=1197"),
        (["--prior", "exemplar", "--train-size", "0"], "train_size"),
        (["--lr", "-1"], "learning rate"),
        (["--optimizer", "sgd"], "unknown optimizer"),
        (["--dataset", "nope"], "unknown dataset"),
    ],
)
def test_bad_train_input_fails_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    code, _, err = run([*TRAIN, *extra, "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("error:") and message.lower() in err.lower()
    assert not out.exists()


def test_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 8, 8), dtype=np.uint8))
    code, _, err = run([*TRAIN, "--dataset", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "error:" in err and not (tmp_path / "run").exists()


def test_existing_run_needs_resume(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (trained_run / "metrics.jsonl").read_text()
    code, _, err = run([*TRAIN, "--out", str(trained_run)], capsys)
    assert code == 2 and "--resume" in err
    assert (trained_run / "metrics.jsonl").read_text() == before


def test_resume_refuses_changed_model(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["train", "--out", str(trained_run), "--resume", "--prior", "gaussian"], capsys)
    assert code == 2 and "only --epochs" in err


def test_corrupt_checkpoint(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    for name in ("best.json", "last.json", "last-optimizer.safetensors"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    data = (trained_run / "best.safetensors").read_bytes()
    (broken / "best.safetensors").write_bytes(data[: len(data) // 2])
    (broken / "last.safetensors").write_bytes(b"not a checkpoint")
    code, _, err = run(["evaluate", str(broken), "--samples", "5", "--no-progress"], capsys)
    assert code == 2 and "sha256 mismatch" in err and "best.safetensors" in err
    assert len(err.strip().splitlines()) == 1
    assert not (broken / "evaluation.json").exists()
    code, _, err = run(["train", "--out", str(broken), "--resume", "--no-progress"], capsys)
    assert code == 2 and "last.safetensors" in err and "sha256 mismatch" in err
    code, _, err = run(["generate", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "does not exist" in err


def test_generate_rejects_non_png(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["generate", str(trained_run), "--out", str(tmp_path / "x.jpg")], capsys)
    assert code == 2 and ".png" in err and not (tmp_path / "x.jpg").exists()


def test_diverged_training_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*TRAIN, "--lr", "1e30", "--max-steps", "3", "--out", str(tmp_path / "run")]
    code, _, err = run(argv, capsys)
    assert err.startswith("error: training diverged")
    assert code == (1 if hasattr(errors, "RunFailed") else 2)


def test_quiet_after_the_subcommand(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "-q", str(trained_run)])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("wrote ") and err == ""


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exemplar_vae.cli.main", "evaluate", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "error:" in proc.stderr
