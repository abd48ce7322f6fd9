"""Training checkpoints: safetensors weights and optimizer state with their SHA-256 in a JSON document,
checked before use (hashes, structure, shapes against the model, finite values), never unpickled; legacy
``best.pt``/``last.pt`` runs still load and resume; a save stopped at any point leaves a whole checkpoint."""

from __future__ import annotations

import builtins
import copy
import dataclasses
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from exemplar_vae import runs
from exemplar_vae.config import PriorConfig, RunConfig
from exemplar_vae.data import load_dataset
from exemplar_vae.errors import CheckpointError, ExemplarVAEError
from exemplar_vae.io import (
    BEST,
    BEST_WEIGHTS,
    LAST,
    LAST_OPTIMIZER,
    LAST_WEIGHTS,
    LEGACY_BEST,
    LEGACY_LAST,
    PENDING,
    sha256_file,
)
from exemplar_vae.pipeline import train
from exemplar_vae.runs import build_model, load_run
from exemplar_vae.training import Trainer
from exemplar_vae.training import checkpoint as ck
from exemplar_vae.training.checkpoint import (
    LOOP_FIELDS,
    Checkpoint,
    checkpoint_file,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from exemplar_vae.training.loop import LoopState
from exemplar_vae.validation import validate

CONFIG = {
    "data": {"dataset": "digits"},
    "model": {"hidden": 16, "latent_dim": 4},
    "prior": {"name": "exemplar", "knn": 5},
    "train": {"epochs": 2, "warmup": 1, "seed": 3, "device": "cpu"},
}
NEW_FILES = (BEST, BEST_WEIGHTS, LAST, LAST_WEIGHTS, LAST_OPTIMIZER)


def config(**train: Any) -> RunConfig:
    return RunConfig.from_dict({**CONFIG, "train": {**CONFIG["train"], **train}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch exemplar run on digits, written in the current format (tests work on copies)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    train(config(), run, progress=False)
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, free to damage."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def edit_doc(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def rewrite(run: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a safetensors file of a checkpoint and record its new SHA-256, as a consistent writer would:
    only the content checks can then catch what is wrong with it."""
    save_file(tensors, str(run / name))
    doc = BEST if name == BEST_WEIGHTS else LAST
    edit_doc(run / doc, lambda d: d["sha256"].__setitem__(name, sha256_file(run / name)))


def plant(run: Path, name: str, data: bytes) -> None:
    """Put ``data`` in place of a checkpoint file, its SHA-256 recorded."""
    (run / name).write_bytes(data)
    doc = BEST if name == BEST_WEIGHTS else LAST
    edit_doc(run / doc, lambda d: d["sha256"].__setitem__(name, sha256_file(run / name)))


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message, message
    assert "trust" not in message  # none of torch's advice to load with weights_only=False
    return message


def payload_of(c: Checkpoint) -> dict[str, Any]:
    """A Trainer._payload() rebuilt from a loaded checkpoint."""
    assert c.loop is not None
    return {
        "model": c.model, "optimizer": c.optimizer, "config": c.config.to_dict(), "loop": c.loop,
        "rng": c.rng, "world_size": c.world_size, "batch_size": c.batch_size,
    }  # fmt: skip


def make_legacy(run: Path, oldest: bool = False) -> None:
    """Turn a run folder into one written before this format: best.pt and last.pt (torch.save of the
    payload dict) in place of the JSON documents and safetensors files. ``oldest``: the loop state and
    keys of the first versions (no step counts, no world size or batch)."""
    for which, name in (("best", LEGACY_BEST), ("last", LEGACY_LAST)):
        c = load_checkpoint(run, "last")  # the old trainer saved the same payload in both
        if which == "best":
            c.model = load_checkpoint(run, "best").model
        payload = payload_of(c)
        if oldest:
            payload["loop"] = {
                k: payload["loop"][k] for k in ("epoch", "best_val", "best_epoch", "bad_epochs")
            }
            del payload["world_size"], payload["batch_size"]
        torch.save(payload, run / name)
    for name in NEW_FILES:
        (run / name).unlink()


class Planted:
    """Unpickling this creates the marker file (what a malicious checkpoint would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


# --------------------------------------------------------------------------------------------- the format


def test_the_run_folder_holds_json_documents_and_safetensors(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert set(NEW_FILES) <= names
    assert not names & {LEGACY_BEST, LEGACY_LAST} and not [n for n in names if n.endswith((PENDING, ".tmp"))]
    best = json.loads((trained / BEST).read_text())
    assert set(best) == {"format_version", "exemplar_vae_version", "epoch", "val_loss", "config", "sha256"}
    assert best["format_version"] == 1 and best["sha256"] == {
        BEST_WEIGHTS: sha256_file(trained / BEST_WEIGHTS)
    }
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    winner = min(metrics, key=lambda m: m["val_loss"])
    assert (best["epoch"], best["val_loss"]) == (winner["epoch"], winner["val_loss"])
    last = json.loads((trained / LAST).read_text())
    assert last["sha256"] == {name: sha256_file(trained / name) for name in (LAST_WEIGHTS, LAST_OPTIMIZER)}
    assert last["loop"]["epoch"] == 2 and last["world_size"] == 1 and last["batch_size"] == 100
    assert last["scaler"] is None and set(last["rng"]) == {"cpu"}
    assert last["optimizer"]["param_groups"][0]["fused"] is True
    assert last["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    optimizer = load_file(str(trained / LAST_OPTIMIZER))
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(optimizer)
    assert last["optimizer"]["state"]["0"] == {"tensors": ["step", "exp_avg", "exp_avg_sq"], "values": {}}
    weights = load_file(str(trained / LAST_WEIGHTS))
    model, _, _ = load_run(trained, checkpoint="last", device="cpu", refresh=False)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_load_checkpoint_reads_what_was_saved(trained: Path) -> None:
    best, last = load_checkpoint(trained, "best"), load_checkpoint(trained, "last")
    assert (best.which, best.path, best.legacy, best.optimizer) == ("best", trained / BEST, False, None)
    assert last.path == trained / LAST and last.epoch == 2 and last.config == best.config
    assert last.loop is not None and last.loop["step"] == 24 and last.rng is not None
    assert last.rng.dtype == torch.uint8 and last.rng.numel() == torch.get_rng_state().numel()
    assert load_checkpoint(trained / LAST).which == "last"  # a document given by path says which it is
    assert checkpoint_file(trained, "best") == trained / BEST and has_checkpoint(trained, "last")
    # the loader's view of the loop state is the trainer's
    assert set(LOOP_FIELDS) == {f.name for f in fields(LoopState)}


def test_the_optimizer_state_and_generator_round_trip_exactly(tmp_path: Path) -> None:
    """Fused Adam's state (moments, step counts, group settings) and the CPU generator come back bit for
    bit through last.json + last-optimizer.safetensors, loaded by Trainer.resume."""
    data = load_dataset("digits")
    cfg = validate(config(epochs=1), data.num_train, data.data_dim)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    torch.manual_seed(0)
    a = Trainer(build_model(cfg, data), data, cfg, first, progress=False)
    a.fit()
    assert a.optimizer.param_groups[0]["fused"] is True
    payload = a._payload()
    save_checkpoint(second, "last", payload)
    torch.manual_seed(1)  # another initialisation and generator state: all of it must be replaced
    b = Trainer(build_model(cfg, data), data, cfg, second, progress=False)
    b.resume()
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid, entry in sa["state"].items():
        assert entry.keys() == sb["state"][pid].keys()
        for key, value in entry.items():
            other = sb["state"][pid][key]
            assert value.dtype == other.dtype and value.device == other.device and torch.equal(value, other)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), payload["rng"])
    assert vars(b.state) == vars(a.state)


def test_a_run_resumed_inside_an_epoch_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """Bit for bit (the Gaussian prior: the exemplar prior's cache is refreshed at a resume, not only at
    the start of the epoch, so inside an epoch it resumes close to, not equal to, the uninterrupted run)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    gaussian = {"prior": PriorConfig(name="gaussian")}
    model, result = train(dataclasses.replace(config(), **gaussian), straight, progress=False)
    stopped = dataclasses.replace(config(max_steps=17), **gaussian)  # stops at step 5 of epoch 2
    train(stopped, split, progress=False)
    assert json.loads((split / LAST).read_text())["loop"]["epoch_step"] == 5  # and its epoch_sums
    resumed, again = train(dataclasses.replace(config(), **gaussian), split, resume=True, progress=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [m["val_loss"] for m in again.history] == [m["val_loss"] for m in result.history]
    assert [m["train_loss"] for m in again.history] == [m["train_loss"] for m in result.history]
    a, b = load_checkpoint(straight, "last"), load_checkpoint(split, "last")
    assert a.optimizer is not None and b.optimizer is not None
    for pid, entry in a.optimizer["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, b.optimizer["state"][pid][key]), (pid, key)


# --------------------------------------------------------------------------------------------- refusals


def flip_byte(path: Path, at: int = -7) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def without(name: str) -> Callable[[dict[str, Any]], object]:
    return lambda d: d.pop(name)


def first_weight(run: Path, name: str) -> tuple[dict[str, torch.Tensor], str]:
    tensors = load_file(str(run / name))
    return tensors, sorted(k for k, v in tensors.items() if v.is_floating_point() and v.ndim == 2)[0]


def break_missing_tensor(run: Path, name: str) -> None:
    tensors, key = first_weight(run, name)
    del tensors[key]
    rewrite(run, name, tensors)


def break_shape(run: Path, name: str) -> None:
    tensors, key = first_weight(run, name)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    rewrite(run, name, tensors)


def break_nan(run: Path, name: str) -> None:
    tensors, key = first_weight(run, name)
    tensors[key][0, 0] = float("nan")
    rewrite(run, name, tensors)


def break_extra(run: Path, name: str) -> None:
    tensors, _ = first_weight(run, name)
    tensors["planted.weight"] = torch.zeros(2)
    rewrite(run, name, tensors)


BEST_BREAKS: dict[str, tuple[Callable[[Path], object], str]] = {
    "flipped byte": (lambda r: flip_byte(r / BEST_WEIGHTS), "best.safetensors: sha256 mismatch"),
    "missing file": (lambda r: (r / BEST_WEIGHTS).unlink(), "best.safetensors: file missing"),
    "missing tensor": (lambda r: break_missing_tensor(r, BEST_WEIGHTS), "is missing"),
    "wrong shape": (lambda r: break_shape(r, BEST_WEIGHTS), "has shape ["),
    "unexpected tensor": (lambda r: break_extra(r, BEST_WEIGHTS), "unexpected tensor planted.weight"),
    "nan weights": (lambda r: break_nan(r, BEST_WEIGHTS), "non-finite values in"),
    "random bytes as weights": (
        lambda r: plant(r, BEST_WEIGHTS, os.urandom(3000)),
        "not a readable safetensors",
    ),
    "random bytes as document": (
        lambda r: (r / BEST).write_bytes(os.urandom(300)),
        "best.json: not readable JSON",
    ),
    "truncated document": (lambda r: (r / BEST).write_text('{"epoch": 1'), "best.json: not readable JSON"),
    "a list": (lambda r: (r / BEST).write_text("[]"), "expected a JSON object"),
    "no sha256": (lambda r: edit_doc(r / BEST, without("sha256")), "missing 'sha256'"),
    "no config": (lambda r: edit_doc(r / BEST, without("config")), "missing 'config'"),
    "bad epoch": (lambda r: edit_doc(r / BEST, lambda d: d.__setitem__("epoch", "2")), "'epoch' must be"),
    "newer format": (
        lambda r: edit_doc(r / BEST, lambda d: d.__setitem__("format_version", 2)),
        "format_version 2",
    ),
    "unknown entry": (
        lambda r: edit_doc(r / BEST, lambda d: d.__setitem__("extra", 1)),
        "unknown entries 'extra'",
    ),
    "bad config": (
        lambda r: edit_doc(r / BEST, lambda d: d["config"]["model"].__setitem__("hidden", "16")),
        "run configuration is not valid",
    ),
}


@pytest.mark.parametrize("case", list(BEST_BREAKS))
def test_a_damaged_best_checkpoint_is_refused_in_one_line(run: Path, case: str) -> None:
    damage, message = BEST_BREAKS[case]
    damage(run)
    with pytest.raises(CheckpointError) as err:
        load_run(run, device="cpu")
    assert message in one_line(err)


def bad_rng(value: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: d.__setitem__("rng", value)


LAST_BREAKS: dict[str, tuple[Callable[[Path], object], str]] = {
    "flipped weights byte": (lambda r: flip_byte(r / LAST_WEIGHTS), "last.safetensors: sha256 mismatch"),
    "flipped optimizer byte": (
        lambda r: flip_byte(r / LAST_OPTIMIZER),
        "last-optimizer.safetensors: sha256 mismatch",
    ),
    "missing optimizer file": (lambda r: (r / LAST_OPTIMIZER).unlink(), "file missing"),
    "no loop": (lambda r: edit_doc(r / LAST, without("loop")), "missing 'loop'"),
    "no rng": (lambda r: edit_doc(r / LAST, without("rng")), "missing 'rng'"),
    "no optimizer": (lambda r: edit_doc(r / LAST, without("optimizer")), "missing 'optimizer'"),
    "rng a number": (lambda r: edit_doc(r / LAST, bad_rng(123)), "'rng' must hold"),
    "rng a list of ints": (lambda r: edit_doc(r / LAST, bad_rng({"cpu": [1, 2, 3]})), "must be base64 text"),
    "rng not base64": (lambda r: edit_doc(r / LAST, bad_rng({"cpu": "%%%"})), "not valid base64"),
    "rng too short": (lambda r: edit_doc(r / LAST, bad_rng({"cpu": "AAAA"})), "generator state has 3 bytes"),
    "loop entry of the wrong type": (
        lambda r: edit_doc(r / LAST, lambda d: d["loop"].__setitem__("epoch", 1.5)),
        "loop state 'epoch' has the wrong type",
    ),
    "loop without step": (lambda r: edit_doc(r / LAST, lambda d: d["loop"].pop("step")), "lacks 'step'"),
    "nan in the optimizer": (lambda r: break_nan(r, LAST_OPTIMIZER), "non-finite values in"),
    "optimizer tensor missing": (lambda r: break_missing_tensor(r, LAST_OPTIMIZER), "is missing"),
    "optimizer tensor of another shape": (lambda r: break_shape(r, LAST_OPTIMIZER), "its parameter"),
    "optimizer state for a parameter it lacks": (
        lambda r: edit_doc(
            r / LAST, lambda d: d["optimizer"]["state"].__setitem__("99", d["optimizer"]["state"]["0"])
        ),
        "unknown parameter '99'",
    ),
    "a zero batch": (
        lambda r: edit_doc(r / LAST, lambda d: d.__setitem__("batch_size", 0)),
        "'batch_size' must be",
    ),
}


@pytest.mark.parametrize("case", list(LAST_BREAKS))
def test_a_damaged_last_checkpoint_is_refused_in_one_line(run: Path, case: str) -> None:
    damage, message = LAST_BREAKS[case]
    damage(run)
    with pytest.raises(CheckpointError) as err:
        train(config(epochs=3), run, resume=True, progress=False)
    assert message in one_line(err)
    assert not (run / "metrics.jsonl").read_text().count('"epoch": 3')  # nothing was trained


def test_a_config_asking_for_huge_networks_is_refused_before_building(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(runs, "build_model", no_build)
    edit_doc(run / BEST, lambda d: d["config"]["model"].__setitem__("hidden", 10**9))
    with pytest.raises(CheckpointError) as err:
        load_run(run, device="cpu")
    message = one_line(err)
    assert "best.json: its configuration cannot be used here" in message and "GiB" in message
    # a resumed run's model is built from its validated configuration, which the checkpoint's must equal
    monkeypatch.undo()
    edit_doc(run / LAST, lambda d: d["config"]["model"].__setitem__("hidden", 10**9))
    data = load_dataset("digits")
    cfg = validate(config(epochs=3), data.num_train, data.data_dim)
    trainer = Trainer(build_model(cfg, data), data, cfg, run, progress=False)
    with pytest.raises(ExemplarVAEError, match="last.json was trained with a different data/model/prior"):
        trainer.resume()


def test_weights_of_another_model_are_refused_when_loaded_into_it(trained: Path) -> None:
    data = load_dataset("digits")
    other = validate(dataclasses.replace(config(), model=dataclasses.replace(config().model, hidden=8)), 1197)
    with pytest.raises(
        CheckpointError, match=r"best\.safetensors: tensor \S+ has shape \[16, 64\], expected \[8, 64\]"
    ):
        load_checkpoint(trained, "best", model=build_model(other, data))


# --------------------------------------------------------------------------------------------- never unpickled


def test_the_planted_payload_is_live(tmp_path: Path) -> None:
    """The pickle the next tests plant does run code when unpickled (so their checks mean something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Planted(marker))).close()
    assert marker.exists()


def test_a_pickle_planted_as_weights_is_never_executed(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plant(run, BEST_WEIGHTS, pickle.dumps({"model": Planted(marker)}))
    with pytest.raises(CheckpointError) as err:
        load_run(run, device="cpu")
    assert "best.safetensors: not a readable safetensors file" in one_line(err)
    plant(run, LAST_OPTIMIZER, pickle.dumps(Planted(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(run, "last")
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_planted_as_a_legacy_checkpoint_is_never_executed(
    run: Path, tmp_path: Path, writer: str
) -> None:
    marker = tmp_path / "ran"
    for name in NEW_FILES:
        (run / name).unlink()
    payload = {"model": Planted(marker), "config": CONFIG, "loop": {}}
    for name in (LEGACY_BEST, LEGACY_LAST):
        if writer == "pickle":
            (run / name).write_bytes(pickle.dumps(payload))
        else:
            torch.save(payload, run / name)
    with pytest.raises(CheckpointError) as err:
        load_run(run, device="cpu")
    message = one_line(err)
    assert "best.pt: refused" in message
    assert writer == "pickle" or "Unsupported global: GLOBAL io.open" in message  # builtins.open
    with pytest.raises(CheckpointError, match="last.pt: refused"):
        train(config(epochs=3), run, resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("name", [LEGACY_BEST, BEST])
def test_random_bytes_give_one_clean_line(run: Path, name: str) -> None:
    for old in (BEST, BEST_WEIGHTS):
        (run / old).unlink()
    (run / name).write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError) as err:
        load_run(run, device="cpu")
    assert name in one_line(err)


# --------------------------------------------------------------------------------------------- legacy runs


@pytest.mark.parametrize("oldest", [False, True])
def test_a_legacy_run_loads_and_resumes_into_the_new_format(
    trained: Path, tmp_path: Path, oldest: bool
) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    shutil.copytree(trained, new)
    shutil.copytree(trained, old)
    make_legacy(old, oldest)
    assert checkpoint_file(old, "best") == old / LEGACY_BEST and has_checkpoint(old, "last")
    legacy = load_checkpoint(old, "last")
    assert legacy.legacy and legacy.epoch == 2 and legacy.world_size == 1 and legacy.batch_size == 100
    a, _, _ = load_run(new, device="cpu")
    b, _, _ = load_run(old, device="cpu")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # resumed: the same training as from the new format, and the new format from then on
    ma, ra = train(config(epochs=3), new, resume=True, progress=False)
    mb, rb = train(config(epochs=3), old, resume=True, progress=False)
    assert all(torch.equal(v, mb.state_dict()[k]) for k, v in ma.state_dict().items())
    assert [m["val_loss"] for m in ra.history] == [m["val_loss"] for m in rb.history]
    assert (old / LAST).is_file() and not (old / LEGACY_LAST).exists()
    assert load_checkpoint(old, "last").loop == load_checkpoint(new, "last").loop  # step counts included
    improved = ra.best_epoch == 3
    assert (old / BEST).is_file() == improved and (old / LEGACY_BEST).is_file() == (not improved)
    assert load_checkpoint(old, "best").epoch == load_checkpoint(new, "best").epoch


def test_a_damaged_legacy_checkpoint_is_refused_in_one_line(run: Path) -> None:
    make_legacy(run)
    payload = torch.load(run / LEGACY_LAST, weights_only=True)
    for part, message in (("loop", "no 'loop'"), ("rng", "'rng' part"), ("optimizer", "'optimizer' part")):
        broken = copy.copy(payload)
        del broken[part]
        torch.save(broken, run / LEGACY_LAST)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(run, "last")
        assert message in one_line(err)
    torch.save({**payload, "rng": [1, 2, 3]}, run / LEGACY_LAST)
    with pytest.raises(CheckpointError, match="'rng'.* not a byte tensor"):
        load_checkpoint(run, "last")
    model = dict(payload["model"])
    key = next(k for k, v in model.items() if v.is_floating_point())
    model[key] = torch.full_like(model[key], float("nan"))
    torch.save({**payload, "model": model}, run / LEGACY_BEST)
    with pytest.raises(CheckpointError, match="non-finite values in .*best.pt"):
        load_run(run, device="cpu")
    data = (run / LEGACY_LAST).read_bytes()
    (run / LEGACY_LAST).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run, "last")
    assert "last.pt: corrupt or unreadable" in one_line(err)


# --------------------------------------------------------------------------------------------- interrupted saves


def later(run: Path) -> dict[str, Any]:
    """The payload of a checkpoint one epoch on: other weights, another loop state."""
    payload = payload_of(load_checkpoint(run, "last"))
    payload["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in payload["model"].items()}
    payload["loop"] = {**payload["loop"], "epoch": 3, "step": 36}
    return payload


def test_a_save_stopped_after_its_commit_is_read_whole_and_finished(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace

    def stop_at_the_renames(src: Any, dst: Any) -> None:
        if str(src).endswith(PENDING):
            raise KeyboardInterrupt
        real(src, dst)

    payload = later(run)
    monkeypatch.setattr(ck.os, "replace", stop_at_the_renames)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, "last", payload)
    monkeypatch.undo()
    assert (run / (LAST_WEIGHTS + PENDING)).is_file()  # committed, not yet renamed
    got = load_checkpoint(run, "last")
    assert got.epoch == 3 and all(torch.equal(got.model[k], v) for k, v in payload["model"].items())
    save_checkpoint(run, "last", {**payload, "loop": {**payload["loop"], "epoch": 4}})
    assert not [p for p in run.iterdir() if p.name.endswith(PENDING)]
    assert load_checkpoint(run, "last").epoch == 4


def test_a_save_stopped_before_its_commit_leaves_the_previous_checkpoint(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = load_checkpoint(run, "last")

    def stop(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "atomic_write_json", stop)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, "last", later(run))
    monkeypatch.undo()
    got = load_checkpoint(run, "last")
    assert got.epoch == before.epoch and all(torch.equal(got.model[k], v) for k, v in before.model.items())
    save_checkpoint(run, "last", payload_of(before))  # the next save drops the uncommitted files
    assert not [p for p in run.iterdir() if p.name.endswith(PENDING)]


def test_the_scaler_and_cuda_generator_states_round_trip(run: Path) -> None:
    """What an fp16 run on a GPU adds to last.json: the GradScaler's state and the CUDA generators'."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    cuda = [torch.randint(0, 256, (16,), dtype=torch.uint8) for _ in range(2)]
    payload = {**payload_of(load_checkpoint(run, "last")), "scaler": scaler.state_dict(), "cuda_rng": cuda}
    save_checkpoint(run, "last", payload)
    doc = json.loads((run / LAST).read_text())
    assert doc["scaler"]["scale"] == 1024.0 and len(doc["rng"]["cuda"]) == 2
    got = load_checkpoint(run, "last")
    assert got.scaler == scaler.state_dict()
    assert got.cuda_rng is not None and all(
        torch.equal(a, b) for a, b in zip(got.cuda_rng, cuda, strict=True)
    )
    edit_doc(run / LAST, lambda d: d.__setitem__("scaler", {"scale": "big"}))
    with pytest.raises(CheckpointError, match="scaler state"):
        load_checkpoint(run, "last")
