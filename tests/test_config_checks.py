"""Configs are checked by type and range in one place, before anything is allocated or written; a resumed
run keeps the settings of its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exemplar_vae.config import RunConfig
from exemplar_vae.errors import ConfigError, ExemplarVAEError
from exemplar_vae.pipeline import train
from exemplar_vae.validation import validate


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"train": {"epochs": "3"}}, r"train.epochs must be int"),
        ({"train": {"epochs": True}}, r"train.epochs must be int, got true"),
        ({"train": {"epochs": 2.5}}, r"train.epochs must be int"),
        ({"train": {"lr": None}}, r"train.lr must be float"),
        ({"train": {"seed": 2.0}}, r"train.seed must be int"),
        ({"prior": {"leave_one_out": "false"}}, r"prior.leave_one_out must be bool"),
        ({"data": {"binarize": "yes"}}, r"data.binarize must be bool or null"),
        ({"model": {"hidden": None}}, r"model.hidden must be int"),
        ({"model": []}, r"section 'model' must be an object"),
        ([1, 2], r"JSON object of sections"),
    ],
)
def test_values_of_the_wrong_type_are_refused(doc: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(doc)  # type: ignore[arg-type]


def test_a_float_field_takes_an_integer_and_null_where_optional() -> None:
    config = RunConfig.from_dict({"train": {"lr": 1}, "data": {"train_size": None, "binarize": None}})
    assert config.train.lr == 1 and config.data.train_size is None


def test_deep_or_broken_json_files_give_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ConfigError, match="nested too deeply|not valid JSON"):
        RunConfig.load(deep)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.load(binary)


@pytest.mark.parametrize(("train", "match"), [({"seed": -1}, "--seed"), ({"seed": 2**70}, "--seed")])
def test_ranges_are_checked(train: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(RunConfig.from_dict({"train": train}))


def test_networks_too_large_for_the_machine_are_refused_before_allocating() -> None:
    config = RunConfig.from_dict({"model": {"hidden": 10**9}})
    with pytest.raises(ConfigError, match="GiB"):
        validate(config, 1000, data_dim=784)
    validate(RunConfig(), 1000, data_dim=784)  # the paper's sizes pass


def digits_config(**train: object) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"dataset": "digits"}, "model": {"hidden": 16, "latent_dim": 4}, "prior": {"name": "gaussian"},
        "train": {"epochs": 2, "warmup": 1, "batch_size": 200, "device": "cpu", **train},
    })  # fmt: skip


def test_a_resumed_run_keeps_its_checkpoint_settings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(digits_config(), run, progress=False)
    saved = {p.name: p.read_bytes() for p in run.iterdir()}
    edited = json.loads((run / "config.json").read_text())
    edited["train"]["lr"] = 0.1  # an edit of config.json must not change the optimiser silently
    with pytest.raises(ExemplarVAEError, match=r"other settings \(lr\)"):
        train(RunConfig.from_dict(edited), run, resume=True, progress=False)
    with pytest.raises(ExemplarVAEError, match="has trained 2 epochs already"):
        train(digits_config(epochs=1), run, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == saved  # nothing rewritten
    _, result = train(digits_config(epochs=3), run, resume=True, progress=False)  # more epochs: allowed
    assert result.epochs_run == 3 and json.loads((run / "config.json").read_text())["train"]["epochs"] == 3
