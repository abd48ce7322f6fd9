"""Ablation grid (LOO, M/N, k) and the ``ablate`` command end to end on sklearn's digits (N = 1197)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from exemplar_vae.ablation import ablation_grid, plan_ablation, run_ablation
from exemplar_vae.cli.main import main
from exemplar_vae.config import DataConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.errors import ConfigError
from exemplar_vae.io import BEST, BEST_WEIGHTS, LAST, LAST_OPTIMIZER, LAST_WEIGHTS

BASE = RunConfig(data=DataConfig(dataset="digits"), prior=PriorConfig(name="exemplar", knn=10))
ABLATE = [
    "ablate", "--dataset", "digits", "--epochs", "1", "--warmup", "1", "--m-fractions", "0.5", "1.0",
    "--ks", "1", "5", "--samples", "20", "--limit", "20", "--no-progress",
]  # fmt: skip
NAMES = ["base", "loo=off", "M=1N", "k=1", "k=5"]


def prior_of(grid: list[tuple[str, RunConfig]]) -> dict[str, tuple[int | None, int, bool]]:
    return {name: (c.prior.exemplars, c.prior.knn, c.prior.leave_one_out) for name, c in grid}


# -- the grid -------------------------------------------------------------------------------------------


def test_grid_one_factor_at_a_time() -> None:
    grid = ablation_grid(BASE, num_train=1000)
    assert prior_of(grid) == {  # M, k, LOO; the base (500, 10, on) once, its duplicates left out
        "base": (500, 10, True),
        "loo=off": (500, 10, False),
        "M=0.1N": (100, 10, True),
        "M=0.25N": (250, 10, True),
        "M=1N": (1000, 10, True),
        "k=1": (500, 1, True),
        "k=5": (500, 5, True),
        "k=50": (500, 50, True),
    }
    assert [name for name, _ in grid][0] == "base"
    for _, config in grid:  # only the prior varies
        assert (config.data, config.model, config.train) == (BASE.data, BASE.model, BASE.train)


def test_grid_reads_n_from_the_data() -> None:
    grid = dict(ablation_grid(BASE))  # digits: N = 1197, M = floor(f N)
    assert grid["base"].prior.exemplars == 1197 // 2
    assert grid["M=0.1N"].prior.exemplars == 119
    assert grid["M=0.25N"].prior.exemplars == 299
    assert grid["M=1N"].prior.exemplars == 1197


@pytest.mark.parametrize("n", [1198, 1199])
def test_half_is_the_base_point_for_any_n(n: int) -> None:
    names = [name for name, _ in ablation_grid(BASE, num_train=n)]
    assert "M=0.5N" not in names and names.count("base") == 1


def test_invalid_combinations_are_clamped_or_left_out_with_a_note() -> None:
    plan = plan_ablation(BASE, m_fractions=(0.1, 0.12, 0.25, 1.0), num_train=20)  # base M = 10, k = 10
    got = {pt.name: (pt.config.prior.exemplars, pt.config.prior.knn) for pt in plan.points}
    assert got == {
        "base": (10, 10),
        "loo=off": (10, 10),
        "M=0.1N": (2, 2),  # k clamped to M
        "M=0.25N": (5, 5),
        "M=1N": (20, 10),
        "k=1": (10, 1),
        "k=5": (10, 5),
    }  # k=50 > M left out; M=0.12N (M = 2) repeats M=0.1N
    notes = "\n".join(plan.notes)
    assert "k=50 left out" in notes and "M=10" in notes
    assert "M=0.1N: k clamped from 10 to M=2" in notes
    assert "M=0.12N left out: same configuration as M=0.1N" in notes
    assert "loo=on" in notes and "k=10" in notes  # the base's duplicates, named once


@pytest.mark.parametrize(
    "kwargs, value",
    [
        ({"m_fractions": (0.5, 0.0)}, "0.0"),
        ({"m_fractions": (1.5,)}, "1.5"),
        ({"m_fractions": (math.nan,)}, "nan"),
        ({"ks": (5, 0)}, "0"),
        ({"ks": (-3,)}, "-3"),
        ({"loo": ("yes",)}, "yes"),
    ],
)
def test_bad_grid_values_raise(kwargs: dict, value: str) -> None:
    with pytest.raises(ConfigError, match=value):
        ablation_grid(BASE, num_train=100, **kwargs)


def test_base_must_be_an_exemplar_prior() -> None:
    with pytest.raises(ConfigError, match="gaussian"):
        ablation_grid(RunConfig(prior=PriorConfig(name="gaussian")), num_train=100)


# -- end to end -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ablation") / "abl"
    assert main(["-q", *ABLATE, "--out", str(out)]) == 0
    return out


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]  # past the header


def test_ablate_writes_one_table(ablation_dir: Path) -> None:
    text = (ablation_dir / "ablation.md").read_text()
    budget = text.splitlines()[0]
    for part in ("digits", "N = 1197", "epochs 1", "warm-up 1", "S = 20", "20 test images"):
        assert part in budget, part
    rows = table_rows(text)
    assert len(rows) == len(NAMES)
    results = json.loads((ablation_dir / "ablation.json").read_text())
    assert [r["name"] for r in results["rows"]] == NAMES
    for cells, r in zip(rows, results["rows"]):
        factor, _, m, k, loo, ll, elbo, val, epochs, per_epoch = cells
        mean, se = (float(v) for v in ll.split("±"))
        assert math.isfinite(mean) and mean < 0 and se > 0
        assert float(elbo) <= mean + 1e-6  # ELBO <= the importance-sampled log p(x) on average
        assert float(val) > 0 and int(epochs) == 1 and float(per_epoch) >= 0
        ev = json.loads((ablation_dir / r["name"] / "evaluation.json").read_text())
        assert mean == pytest.approx(ev["log_likelihood"], abs=0.005)  # numbers come from the runs
        config = json.loads((ablation_dir / r["name"] / "config.json").read_text())["prior"]
        assert (int(m), int(k), loo == "on") == (config["exemplars"], config["knn"], config["leave_one_out"])
    assert rows[0][0] == "**base**"
    configs = {n: json.loads((ablation_dir / n / "config.json").read_text())["prior"] for n in NAMES}
    assert configs["loo=off"]["leave_one_out"] is False
    assert all(configs[n]["leave_one_out"] for n in NAMES if n != "loo=off")
    assert configs["M=1N"]["exemplars"] == 1197 and configs["base"]["exemplars"] == 598
    assert [configs[n]["knn"] for n in ("base", "k=1", "k=5")] == [10, 1, 5]


def mtimes(out: Path, name: str) -> dict[str, int]:
    return {n: p.stat().st_mtime_ns for n in NAMES for p in [out / n / name]}


def test_rerun_skips_and_resumes_without_retraining(
    ablation_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best, evaluation = mtimes(ablation_dir, BEST), mtimes(ablation_dir, "evaluation.json")
    capsys.readouterr()
    assert main(["-q", *ABLATE, "--out", str(ablation_dir)]) == 0
    assert capsys.readouterr().out == (ablation_dir / "ablation.md").read_text()
    assert mtimes(ablation_dir, BEST) == best
    assert mtimes(ablation_dir, "evaluation.json") == evaluation  # nothing re-scored either

    (ablation_dir / "k=1" / "evaluation.json").unlink()  # trained, not evaluated: resume, evaluate only
    assert main(["-q", *ABLATE, "--out", str(ablation_dir)]) == 0
    assert mtimes(ablation_dir, BEST) == best
    assert (ablation_dir / "k=1" / "evaluation.json").is_file()
    assert len((ablation_dir / "k=1" / "metrics.jsonl").read_text().splitlines()) == 1

    # a different budget in the same folder is refused before anything is written
    before = sorted(p.relative_to(ablation_dir) for p in ablation_dir.rglob("*"))
    assert main(["-q", *ABLATE, "--seed", "3", "--out", str(ablation_dir)]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert sorted(p.relative_to(ablation_dir) for p in ablation_dir.rglob("*")) == before
    assert mtimes(ablation_dir, BEST) == best
    with pytest.raises(ConfigError, match="already holds a run"):
        run_ablation(
            RunConfig(data=BASE.data, prior=BASE.prior, train=TrainConfig(epochs=1, warmup=1)),
            ablation_dir,
            m_fractions=(0.5, 1.0),
            ks=(1, 5),
            resume=False,
        )


def test_more_epochs_continue_the_runs(tmp_path: Path) -> None:
    base = RunConfig(data=BASE.data, prior=BASE.prior, train=TrainConfig(epochs=1, warmup=1, device="cpu"))
    grid = {"m_fractions": (0.5,), "ks": (10,), "samples": 5, "limit": 5, "progress": False}
    rows = run_ablation(base, tmp_path, **grid)
    assert [r["name"] for r in rows] == ["base", "loo=off"]
    # "loo=off" stopped before its first checkpoint: only config.json and a metrics line are left
    for name in (BEST, BEST_WEIGHTS, LAST, LAST_WEIGHTS, LAST_OPTIMIZER, "evaluation.json"):
        (tmp_path / "loo=off" / name).unlink()
    longer = RunConfig(data=base.data, prior=base.prior, train=TrainConfig(epochs=2, warmup=1, device="cpu"))
    rows = run_ablation(longer, tmp_path, **grid)
    for name in ("base", "loo=off"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert [r["epochs"] for r in rows] == [2, 2]
    assert "epochs 2" in (tmp_path / "ablation.md").read_text().splitlines()[0]


@pytest.mark.parametrize(
    "args, value",
    [
        (["--m-fractions", "0"], "0.0"),
        (["--m-fractions", "0.5", "1.5"], "1.5"),
        (["--ks", "0"], "got 0"),
        (["--ks", "5", "-2"], "-2"),
        (["--samples", "0"], "--samples"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], value: str
) -> None:
    out = tmp_path / "abl"
    code = main(["-q", "ablate", "--dataset", "digits", "--epochs", "1", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and value in err
    assert not out.exists()
