"""Messages that name what the user typed: --cyclic 0, a missing folder for `table`, flags refused on
--resume, an infinite --lr, and an undefined standard error (one test point)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exemplar_vae.cli.main import main
from exemplar_vae.config import RunConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.validation import validate

TINY = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "4", "--epochs", "1", "--warmup", "1",
        "--prior", "exemplar", "--knn", "3", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("msg") / "run"
    assert main(["-q", "train", *TINY, "--out", str(out)]) == 0
    return out


def test_cyclic_zero_is_an_error_and_plain_generate_still_works(run: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["-q", "generate", str(run), "--out", str(tmp_path / "a.png"), "--cyclic", "0"]) == 2
    assert "--cyclic needs at least 1 step" in capsys.readouterr().err
    assert main(["-q", "generate", str(run), "--out", str(tmp_path / "b.png"), "--n", "4"]) == 0


def test_table_on_a_missing_folder_says_it_does_not_exist(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["table", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_names_the_flags_it_refuses(run: Path, capsys) -> None:  # noqa: ANN001
    assert main(["-q", "train", "--out", str(run), "--resume", "--prior", "gaussian", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--prior" in err and "--lr" in err and "(got name" not in err


def test_an_infinite_learning_rate_is_refused() -> None:
    with pytest.raises(ConfigError, match="--lr"):
        validate(RunConfig.from_dict({"train": {"lr": float("inf")}}))


def test_one_test_point_prints_n_a_for_the_standard_error(run: Path, capsys) -> None:  # noqa: ANN001
    assert main(["-q", "evaluate", str(run), "--limit", "1", "--samples", "10", "--check-exact", "0"]) == 0
    assert "± n/a nats" in capsys.readouterr().out
    assert json.loads((run / "evaluation.json").read_text())["log_likelihood_std_error"] is None
    assert main(["table", str(run)]) == 0
    assert "± n/a" in capsys.readouterr().out


def test_generate_from_one_class_or_from_given_images(run: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`generate --class` draws from the Parzen window over one class's training images, `--from-images`
    from images the user gives (a folder or an .npz); both write a grid, and they exclude each other."""
    import numpy as np
    from PIL import Image

    from exemplar_vae.data import load_dataset

    assert (
        main(["-q", "generate", str(run), "--out", str(tmp_path / "c.png"), "--class", "3", "--n", "9"]) == 0
    )
    assert Image.open(tmp_path / "c.png").size[0] > 0
    folder = tmp_path / "mine"
    folder.mkdir()
    digits = load_dataset("digits")
    for i in range(4):
        image = (digits.test_grey[i].reshape(8, 8).numpy() * 255).astype(np.uint8)
        Image.fromarray(image, mode="L").save(folder / f"{i}.png")
    assert (
        main(["-q", "generate", str(run), "--out", str(tmp_path / "f.png"), "--from-images", str(folder)])
        == 0
    )
    assert (
        main(["-q", "generate", str(run), "--out", str(tmp_path / "x.png"), "--class", "3", "--interpolate"])
        == 2
    )
    assert "pick one of" in capsys.readouterr().err
    assert main(["-q", "generate", str(run), "--out", str(tmp_path / "y.png"), "--class", "42"]) == 2
