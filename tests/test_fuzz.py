"""Fuzzing the readers of user input (``experiments/fuzz_inputs.py``): random configs, .npz files, IDX
files, image folders and checkpoint files give a one-line ``ExemplarVAEError`` or a valid result, never
another exception. A fixed seed and a bounded number of cases (a few seconds)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

CASES = 200
SEED = 0


def load_script() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "experiments" / "fuzz_inputs.py"
    spec = importlib.util.spec_from_file_location("fuzz_inputs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_inputs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    return load_script()


def test_fuzzed_inputs_give_clean_errors_or_valid_results(fuzz: ModuleType, tmp_path: Path) -> None:
    outcomes = fuzz.fuzz(CASES, SEED, root=tmp_path)
    bugs = [f"{o.kind} case {o.case} ({o.status}): {o.detail}" for o in outcomes if o.status in fuzz.BUGS]
    assert not bugs, "\n" + fuzz.table(outcomes) + "\n" + "\n".join(bugs)
    counts = Counter((o.kind, o.status) for o in outcomes)
    for kind in fuzz.KINDS:  # every generator reaches its reader, and most reach its checks
        assert counts[(kind, fuzz.CLEAN)] + counts[(kind, fuzz.VALID)] == CASES // len(fuzz.KINDS)
        assert counts[(kind, fuzz.CLEAN)] > 0
    assert sum(counts[(kind, fuzz.VALID)] for kind in fuzz.KINDS) > CASES // 20


def test_a_case_replays_alone(fuzz: ModuleType, tmp_path: Path) -> None:
    first = fuzz.fuzz(10, SEED, root=tmp_path / "a")
    (tmp_path / "b").mkdir()
    with fuzz.quiet():
        again = fuzz.run_case(first[7].kind, SEED, 7, tmp_path / "b")
    assert (again.status, again.detail.split(tmp_path.name)[0]) == (
        first[7].status,
        first[7].detail.split(tmp_path.name)[0],
    )


def test_the_script_prints_a_table(fuzz: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["10", "--seed", "3", "--kinds", "config", "idx"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| kind | cases | clean error | valid |")
    assert "| config | 5 |" in out and "| idx | 5 |" in out and "| all | 10 |" in out
