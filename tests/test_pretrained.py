"""Self-contained model folders: ``VAE.save_pretrained``, ``from_pretrained`` and ``exemplar-vae export``.

A tiny model trained on an .npz dataset is exported, then loaded in a fresh Python process with the
dataset and the run folder gone; its samples, importance-sampled log-likelihoods and augmentations equal
those of ``load_run`` on the run folder. Damaged folders (a tensor of the wrong shape, missing or extra,
a flipped byte, a planted pickle, a missing exemplar file) are refused with one clear line, and a planted
pickle is never executed.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save
from safetensors.torch import save_file as save_tensors

import exemplar_vae
from exemplar_vae.cli import export
from exemplar_vae.config import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import CheckpointError, ConfigError
from exemplar_vae.io import sha256_bytes, sha256_file
from exemplar_vae.models import build_vae
from exemplar_vae.models.decoders import MLPDecoder
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.vae import VAE
from exemplar_vae.pipeline import train
from exemplar_vae.pretrained import from_pretrained
from exemplar_vae.priors import GaussianPrior
from exemplar_vae.runs import load_run

RUNS = {"mlp": ("mlp", "exemplar"), "hvae": ("hvae", "exemplar"), "gaussian": ("mlp", "gaussian")}

# the same computation in this process (on load_run's model) and in the fresh one (on from_pretrained's)
COMPUTE = """
import torch
from exemplar_vae.downstream.augment import ExemplarAugmenter
from exemplar_vae.objectives import importance_sampled_log_likelihood


def compute(model, x):
    est = importance_sampled_log_likelihood(model, x, 100, generator=torch.Generator().manual_seed(1))
    augmenter = ExemplarAugmenter(
        model, variations=1, output="rounded", generator=torch.Generator().manual_seed(2)
    )
    augmented, _ = augmenter(x[:5])
    return {
        "samples": model.generate(16, torch.Generator().manual_seed(0)),
        "log_likelihood": est.log_likelihood,
        "elbo": est.elbo,
        "augmented": augmented,
    }
"""

FRESH = (
    COMPUTE
    + """
import json, sys
from pathlib import Path
import numpy as np
from safetensors.torch import save_file
from exemplar_vae.pretrained import from_pretrained

jobs = json.loads(sys.argv[1])
x = torch.from_numpy(np.load(jobs["x"], allow_pickle=False)["x"])
for folder, out in jobs["models"]:
    model = from_pretrained(folder, device="cpu")
    assert not model.training
    save_file({k: v.contiguous() for k, v in compute(model, x).items()}, out)
print("ok")
"""
)


def compute(model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    scope: dict[str, Any] = {}
    exec(COMPUTE, scope)
    return scope["compute"](model, x)


def write_dataset(path: Path) -> Path:
    rng = np.random.RandomState(0)
    base = rng.randint(0, 256, size=(4, 8, 8))

    def make(n: int) -> np.ndarray:  # noisy copies of four patterns, 8-bit
        noisy = base[rng.randint(0, 4, n)] + rng.randint(-40, 41, size=(n, 8, 8))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=make(120), x_val=make(30), x_test=make(30))
    return path


def run_config(dataset: Path, arch: str, prior: str) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=str(dataset)),
        model=ModelConfig(arch=arch, hidden=16, latent_dim=4),
        prior=PriorConfig(name=prior, knn=3),
        train=TrainConfig(epochs=2, warmup=1, seed=0, device="cpu", batch_size=40),
    )


def export_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exemplar-vae")
    sub = parser.add_subparsers(dest="command", required=True)
    export.add_parsers(sub)
    return parser.parse_args(["export", *argv])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pretrained")
    npz = write_dataset(root / "data" / "tiny.npz")
    runs = {}
    for name, (arch, prior) in RUNS.items():
        train(run_config(npz, arch, prior), root / "runs" / name, progress=False)
        runs[name] = root / "runs" / name
    exported = {}
    for name, run in runs.items():
        assert export.COMMANDS["export"](export_args(str(run), "--out", str(root / "export" / name))) == 0
        exported[name] = root / "export" / name
    return {"root": root, "npz": npz, "runs": runs, "exported": exported}


# --------------------------------------------------------------------------- round trip


def test_a_fresh_process_without_the_data_or_the_run_reproduces_load_run(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    _, data, _ = load_run(trained["runs"]["mlp"], device="cpu")
    x = data.test_x[:8].clone()  # [8, 64] binarised test images
    np.savez(tmp_path / "x.npz", x=x.numpy())
    expected = {}
    for name, run in trained["runs"].items():
        model, _, _ = load_run(run, device="cpu")
        expected[name] = compute(model, x)
    # another machine: only the exported folders, copied elsewhere; no dataset, no run folders
    machine = tmp_path / "machine"
    jobs: dict[str, Any] = {"x": str(tmp_path / "x.npz"), "models": []}
    for name, folder in trained["exported"].items():
        shutil.copytree(folder, machine / name)
        jobs["models"].append([str(machine / name), str(tmp_path / f"{name}.out.safetensors")])
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    npz, runs_dir = trained["npz"], trained["runs"]["mlp"].parent
    npz.rename(hidden / "tiny.npz")
    runs_dir.rename(hidden / "runs")
    empty = tmp_path / "empty"
    empty.mkdir()
    try:
        assert not npz.exists() and not runs_dir.exists()
        env = {**os.environ, "EXEMPLAR_VAE_DATA": str(empty)}
        done = subprocess.run(
            [sys.executable, "-c", FRESH, json.dumps(jobs)], cwd=empty, env=env, capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
    finally:
        (hidden / "tiny.npz").rename(npz)
        (hidden / "runs").rename(runs_dir)
    assert done.returncode == 0, done.stderr
    for (name, want), (_, out) in zip(expected.items(), jobs["models"]):
        got = load_file(out)
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key].shape == value.shape, (name, key)
            assert torch.allclose(got[key], value, rtol=0, atol=1e-6), (name, key)
        assert torch.equal(got["samples"], want["samples"]), name


def test_the_folder_holds_the_config_the_weights_and_the_exemplar_set(trained: dict[str, Any]) -> None:
    folder = trained["exported"]["mlp"]
    model, data, config = load_run(trained["runs"]["mlp"], device="cpu")
    doc = json.loads((folder / "config.json").read_text())
    assert RunConfig.from_dict({k: doc[k] for k in ("data", "model", "prior", "train")}) == config
    assert doc["image_shape"] == [1, 8, 8]
    assert doc["likelihood"] == "bernoulli" and doc["binary"] is True
    assert doc["format_version"] == 1 and doc["exemplar_vae_version"] == exemplar_vae.__version__
    assert sorted(doc["files"]) == ["exemplars.safetensors", "model.safetensors"]
    for name, digest in doc["files"].items():
        assert sha256_file(folder / name) == digest
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", *doc["files"]])  # no temp files
    exemplars = load_file(folder / "exemplars.safetensors")
    assert list(exemplars) == ["exemplars"]
    assert exemplars["exemplars"].dtype == torch.uint8  # the store is compact: codes k / 255
    assert torch.equal(exemplars["exemplars"].float() / 255, data.train_store.float())
    weights = load_file(folder / "model.safetensors")
    state = model.state_dict()
    assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)
    loaded = from_pretrained(folder, device="cpu")
    assert loaded.config == config
    assert not loaded.training
    assert loaded.prior.exemplar_set() is not None
    mixture, reference = loaded.prior.kernel_mixture(), model.prior.kernel_mixture()
    assert mixture is not None and reference is not None
    assert torch.equal(mixture.centers, reference.centers)  # the prior was refreshed: codes of all N


def test_a_gaussian_prior_folder_has_no_exemplar_file(trained: dict[str, Any]) -> None:
    folder = trained["exported"]["gaussian"]
    assert not (folder / "exemplars.safetensors").exists()
    assert list(json.loads((folder / "config.json").read_text())["files"]) == ["model.safetensors"]
    assert from_pretrained(folder, device="cpu").prior.exemplar_set() is None


@pytest.mark.parametrize("binary", [True, False])
def test_float_exemplars_and_the_logistic_likelihood_round_trip(tmp_path: Path, binary: bool) -> None:
    torch.manual_seed(0)
    x = torch.rand(12, 2 * 4 * 4)  # not 8-bit exact: kept as float32
    config = RunConfig(
        data=DataConfig(dataset="user.npz", binarize=binary),
        model=ModelConfig(arch="hvae", hidden=8, latent_dim=2),
        prior=PriorConfig(name="exemplar", exemplars=6, knn=2),
    )
    model = build_vae(config.model, config.prior, x, (2, 4, 4), binary, config=config)
    assert model.config is config
    model.save_pretrained(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["likelihood"] == ("bernoulli" if binary else "logistic") and doc["binary"] is binary
    assert doc["image_shape"] == [2, 4, 4] and doc["data"]["dataset"] == "user.npz"
    saved = load_file(tmp_path / "m" / "exemplars.safetensors")["exemplars"]
    assert saved.dtype == torch.float32 and torch.equal(saved, x)
    loaded = from_pretrained(tmp_path / "m", device="cpu")
    assert loaded.observation.name == model.observation.name and loaded.config == config
    model.eval()
    model.prior.refresh(model.encoder)
    assert torch.equal(
        loaded.generate(5, torch.Generator().manual_seed(3)),
        model.generate(5, torch.Generator().manual_seed(3)),
    )
    assert torch.equal(compute(loaded, x[:4])["log_likelihood"], compute(model, x[:4])["log_likelihood"])


def test_saving_again_over_a_folder_replaces_it(tmp_path: Path) -> None:
    x = torch.randint(0, 256, (10, 16)).float() / 255
    shape = (1, 4, 4)
    store = ExemplarStore.from_tensor(x)  # compact: uint8 codes
    exemplar = build_vae(ModelConfig(hidden=8, latent_dim=2), PriorConfig(exemplars=5, knn=2), store, shape)
    gaussian = build_vae(ModelConfig(hidden=8, latent_dim=2), PriorConfig(name="gaussian"), x, shape)
    exemplar.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "exemplars.safetensors").is_file()
    assert load_file(tmp_path / "m" / "exemplars.safetensors")["exemplars"].dtype == torch.uint8
    gaussian.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "exemplars.safetensors").exists()  # a stale exemplar set is removed
    assert from_pretrained(tmp_path / "m", device="cpu").prior.exemplar_set() is None


def test_a_model_without_a_configuration_cannot_be_saved(tmp_path: Path) -> None:
    model = VAE(MLPEncoder(16, 8, 2), MLPDecoder(2, 8, 16), GaussianPrior(2), (1, 4, 4))
    assert model.config is None
    with pytest.raises(ConfigError, match="no run configuration"):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_build_vae_refuses_a_config_that_disagrees_with_its_sections() -> None:
    config = RunConfig(model=ModelConfig(hidden=8, latent_dim=2), prior=PriorConfig(name="gaussian"))
    with pytest.raises(ConfigError, match="config.model"):
        build_vae(
            ModelConfig(hidden=9, latent_dim=2), config.prior, torch.zeros(2, 16), (1, 4, 4), config=config
        )
    model = build_vae(config.model, config.prior, torch.zeros(2, 16), (1, 4, 4))
    assert model.config == RunConfig(model=config.model, prior=config.prior)


# --------------------------------------------------------------------------- refusals


def copy_of(trained: dict[str, Any], tmp_path: Path, name: str = "mlp") -> Path:
    folder = tmp_path / "m"
    shutil.copytree(trained["exported"][name], folder)
    return folder


def record_digest(folder: Path, name: str) -> None:
    """Write the file's current SHA-256 into config.json (a damage that the digest alone would not catch)."""
    doc = json.loads((folder / "config.json").read_text())
    doc["files"][name] = sha256_file(folder / name)
    (folder / "config.json").write_text(json.dumps(doc))


def rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], object]) -> None:
    weights = load_file(folder / "model.safetensors")
    change(weights)
    (folder / "model.safetensors").write_bytes(save(weights))
    record_digest(folder, "model.safetensors")


def refused(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        from_pretrained(folder, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    return message


FIRST = "encoder.body.0.h.weight"  # [hidden, D] = [16, 64]


def test_a_tensor_of_the_wrong_shape_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_of(trained, tmp_path)
    assert load_file(folder / "model.safetensors")[FIRST].shape == (16, 64)
    rewrite_weights(folder, lambda w: w.__setitem__(FIRST, torch.zeros(16, 63)))
    assert refused(folder) == f"model.safetensors: tensor {FIRST} has shape [16, 63], expected [16, 64]"


def test_a_missing_tensor_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_of(trained, tmp_path)
    rewrite_weights(folder, lambda w: w.pop("prior.log_var"))
    assert refused(folder) == "model.safetensors: tensor prior.log_var is missing"


def test_an_extra_tensor_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_of(trained, tmp_path)
    rewrite_weights(folder, lambda w: w.__setitem__("backdoor.weight", torch.zeros(3)))
    assert refused(folder).startswith("model.safetensors: unexpected tensor backdoor.weight")


def test_a_tensor_of_another_dtype_or_not_finite_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_of(trained, tmp_path)
    rewrite_weights(folder, lambda w: w.__setitem__(FIRST, w[FIRST].double()))
    assert (
        refused(folder)
        == f"model.safetensors: tensor {FIRST} has dtype torch.float64, expected torch.float32"
    )

    def poison(w: dict[str, torch.Tensor]) -> None:
        w[FIRST] = w[FIRST].double().float()
        w[FIRST][0, 0] = float("nan")

    rewrite_weights(folder, poison)
    assert refused(folder) == f"model.safetensors: tensor {FIRST} holds non-finite values (NaN or inf)"


@pytest.mark.parametrize("name", ["model.safetensors", "exemplars.safetensors"])
def test_a_flipped_byte_is_refused(trained: dict[str, Any], tmp_path: Path, name: str) -> None:
    folder = copy_of(trained, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[-3] ^= 0x01  # a tensor value, still a well-formed file
    (folder / name).write_bytes(bytes(data))
    message = refused(folder)
    assert message.startswith(f"{name}: SHA-256 ") and "does not match" in message


class Planted:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
@pytest.mark.parametrize("digest", ["recorded", "stale"])
def test_a_planted_pickle_is_refused_and_never_run(
    trained: dict[str, Any], tmp_path: Path, form: str, digest: str
) -> None:
    folder = copy_of(trained, tmp_path)
    marker = tmp_path / "pwned"
    payload = {"model": Planted(marker)}
    if form == "pickle":
        (folder / "model.safetensors").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, folder / "model.safetensors")
    assert not marker.exists()
    if digest == "recorded":  # even with a matching digest, safetensors parses it and refuses
        record_digest(folder, "model.safetensors")
    message = refused(folder)
    assert message.startswith("model.safetensors: ")
    assert ("not a readable safetensors file" in message) == (digest == "recorded")
    assert not marker.exists()


def test_a_missing_exemplar_file_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_of(trained, tmp_path)
    (folder / "exemplars.safetensors").unlink()
    assert refused(folder).startswith("exemplars.safetensors: file missing")
    doc = json.loads((folder / "config.json").read_text())
    del doc["files"]["exemplars.safetensors"]
    (folder / "config.json").write_text(json.dumps(doc))
    assert "does not list exemplars.safetensors" in refused(folder)


def test_exemplars_of_the_wrong_width_or_dtype_are_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_of(trained, tmp_path)
    codes = load_file(folder / "exemplars.safetensors")["exemplars"]
    save_tensors({"exemplars": codes[:, :60].contiguous()}, str(folder / "exemplars.safetensors"))
    record_digest(folder, "exemplars.safetensors")
    assert refused(folder) == (
        f"exemplars.safetensors: tensor exemplars has shape [{codes.shape[0]}, 60], expected [N, 64] with N >= 1"
    )
    save_tensors({"exemplars": codes.to(torch.int32)}, str(folder / "exemplars.safetensors"))
    record_digest(folder, "exemplars.safetensors")
    assert "dtype torch.int32" in refused(folder)
    save_tensors({"exemplars": codes.float() * 2}, str(folder / "exemplars.safetensors"))  # values up to 2
    record_digest(folder, "exemplars.safetensors")
    assert "outside [0, 1]" in refused(folder)


def test_a_bad_config_json_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_of(trained, tmp_path)
    good = json.loads((folder / "config.json").read_text())

    def with_doc(change: Callable[[dict[str, Any]], None]) -> str:
        doc = json.loads(json.dumps(good))
        change(doc)
        (folder / "config.json").write_text(json.dumps(doc))
        return refused(folder)

    assert "format_version 2" in with_doc(lambda d: d.__setitem__("format_version", 2))
    assert "unknown files '../../etc/passwd'" in with_doc(
        lambda d: d["files"].__setitem__("../../etc/passwd", sha256_bytes(b""))
    )
    assert "likelihood 'logistic'" in with_doc(lambda d: d.__setitem__("likelihood", "logistic"))
    assert "lacks the entries image_shape" in with_doc(lambda d: d.pop("image_shape"))
    assert "has shape [120, 64], expected [N, 49]" in with_doc(
        lambda d: d.__setitem__("image_shape", [1, 7, 7])
    )
    assert with_doc(lambda d: d["model"].__setitem__("hidden", 17)) == (
        f"model.safetensors: tensor {FIRST} has shape [16, 64], expected [17, 64]"
    )
    assert "run configuration is not valid" in with_doc(lambda d: d["model"].__setitem__("depth", 3))
    (folder / "config.json").write_text("{not json")
    assert "not readable JSON" in refused(folder)
    (folder / "config.json").unlink()
    assert "config.json" in refused(folder) and "missing" in refused(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere", device="cpu")


# --------------------------------------------------------------------------- the export command


def test_export_refuses_a_non_empty_folder_unless_forced(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = trained["runs"]["mlp"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export.COMMANDS["export"](export_args(str(run), "--out", str(out)))
    assert not (out / "config.json").exists()
    assert (
        export.COMMANDS["export"](export_args(str(run), "--out", str(out), "--force", "--checkpoint", "last"))
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (config.json, model.safetensors, exemplars.safetensors)")
    assert (out / "notes.txt").read_text() == "mine"
    last, _, _ = load_run(run, checkpoint="last", device="cpu")
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in last.state_dict().items())
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        export.COMMANDS["export"](export_args(str(run), "--out", str(tmp_path / "file")))
    args = export_args(str(run), "--out", str(tmp_path / "x"))
    assert args.checkpoint == "best" and args.force is False
