"""Data passed from Python (``data.as_splits``): every form trains the same model as the same arrays saved
to an ``.npz`` file; the fingerprint of splits; run folders that record their data (data.json) and
``load_run`` refusing to load a run without its data or with other data; one clear DataError per bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from exemplar_vae.config import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.data import ExemplarStore, as_splits, fingerprint, load_dataset, load_npz
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.models import VAE
from exemplar_vae.pipeline import train
from exemplar_vae.runs import DATA_RECORD, load_run, load_run_config, run_data
from exemplar_vae.training import TrainResult


def tiny_config(dataset: str = "fashion-mnist", **train: Any) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=dataset),
        model=ModelConfig(hidden=16, latent_dim=4),
        prior=PriorConfig(name="exemplar", knn=3),
        train=TrainConfig(**{"epochs": 2, "warmup": 1, "seed": 0, "device": "cpu", **train}),
    )


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as grey values [N, 64] float32 in [0, 1], and their labels [N] int64."""
    d = load_dataset("digits")
    assert d.val_grey is not None and d.test_grey is not None
    x = torch.cat([d.train_x, d.val_grey, d.test_grey]).numpy()
    y = torch.cat([d.train_y, d.val_y, d.test_y]).numpy()
    return x, y


@pytest.fixture(scope="module")
def digits_uint8(digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The digits as uint8 colour images, channels last: [N, 8, 8, 3] (three different channels, so that
    reading them as channels first would give other images)."""
    codes = np.round(digits[0] * 255).astype(np.uint8).reshape(-1, 8, 8)
    return np.stack([codes, 255 - codes, codes // 2], axis=-1)


def same_model(a: tuple[VAE, TrainResult], b: tuple[VAE, TrainResult]) -> None:
    (model_a, result_a), (model_b, result_b) = a, b
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, p in params_a.items():
        assert torch.equal(p, params_b[name]), name

    def losses(r: TrainResult) -> list[dict[str, Any]]:
        return [{k: v for k, v in m.items() if k != "seconds"} for m in r.history]

    assert len(result_a.history) == 2 and losses(result_a) == losses(result_b)


@pytest.fixture(scope="module")
def npz_runs(
    tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray], digits_uint8: np.ndarray
) -> dict[str, tuple[VAE, TrainResult]]:
    """The reference runs: the same arrays saved to .npz files, trained by name (float and uint8 NCHW)."""
    root = tmp_path_factory.mktemp("npz")
    x, y = digits
    np.savez(root / "grey.npz", x=x, y=y)
    np.savez(root / "codes.npz", x=digits_uint8.transpose(0, 3, 1, 2), y=y)  # [N, 3, 8, 8]
    return {name: train(tiny_config(str(root / f"{name}.npz")), progress=False) for name in ("grey", "codes")}


# --------------------------------------------------------------------------- the same model as an .npz run


def test_a_numpy_array_trains_the_model_of_the_npz_file(npz_runs: dict, digits: tuple) -> None:
    x, y = digits
    same_model(train(tiny_config(), progress=False, data=x), npz_runs["grey"])


def test_a_tensor_dataset_trains_the_model_of_the_npz_file(npz_runs: dict, digits: tuple) -> None:
    x, y = digits
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    same_model(train(tiny_config(), progress=False, data=data), npz_runs["grey"])


def test_a_data_loader_trains_the_model_of_the_npz_file(npz_runs: dict, digits: tuple) -> None:
    x, y = digits
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=128)
    same_model(train(tiny_config(), progress=False, data=loader), npz_runs["grey"])


def test_nhwc_uint8_images_train_the_model_of_the_npz_file(npz_runs: dict, digits_uint8: np.ndarray) -> None:
    assert digits_uint8.shape[1:] == (8, 8, 3)
    same_model(train(tiny_config(), progress=False, data=digits_uint8), npz_runs["codes"])


def test_every_form_gives_the_splits_of_the_npz_loader(tmp_path: Path, digits: tuple) -> None:
    x, y = digits
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ref = load_npz(tmp_path / "d.npz")
    forms = {
        "array": as_splits(x, labels=y),
        "tensor": as_splits(torch.from_numpy(x), labels=torch.from_numpy(y)),
        "tuple": as_splits((x, y)),
        "dataset": as_splits(TensorDataset(torch.from_numpy(x), torch.from_numpy(y))),
        "loader": as_splits(DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=50)),
        "items": as_splits(ItemDataset([(torch.from_numpy(row).reshape(1, 8, 8), int(c)) for row, c in zip(x, y)])),
    }  # fmt: skip
    for form, splits in forms.items():
        assert splits.image_shape == (1, 8, 8) and splits.binary, form
        for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "val_grey", "test_grey"):
            assert torch.equal(getattr(splits, field), getattr(ref, field)), (form, field)


class ItemDataset(Dataset):
    """A map-style Dataset of the given items."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


# --------------------------------------------------------------------------- what as_splits accepts


def test_layouts_labels_and_given_splits() -> None:
    rng = np.random.RandomState(0)
    nchw = rng.randint(0, 256, size=(30, 3, 5, 6)).astype(np.uint8)
    nhwc = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    a, b = as_splits(nchw), as_splits(nhwc)
    assert a.image_shape == b.image_shape == (3, 5, 6)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_grey, b.val_grey)
    # [N, 3, 4, 3] reads as channels first; image_shape says it is channels last
    small = rng.randint(0, 256, size=(30, 3, 4, 3)).astype(np.uint8)
    assert as_splits(small).image_shape == (3, 4, 3)
    assert as_splits(small, image_shape=(3, 3, 4)).image_shape == (3, 3, 4)
    # flat rows: a square D is one square channel; otherwise image_shape says
    flat = rng.rand(30, 60).astype(np.float32)
    assert as_splits(flat, image_shape=(3, 4, 5)).image_shape == (3, 4, 5)
    assert as_splits(rng.rand(30, 49)).image_shape == (1, 7, 7)
    assert as_splits(rng.rand(30, 7, 7) > 0.5).image_shape == (1, 7, 7)  # bool
    # float16/64 are converted to float32 values
    x = rng.rand(30, 16)
    assert torch.equal(
        as_splits(x.astype(np.float16)).train_x, as_splits(x.astype(np.float16).astype(np.float32)).train_x
    )
    assert as_splits(x).train_x.dtype == torch.float32
    # no labels: -1; given val/test: kept whole and in order, nothing drawn from the data
    val, test = rng.rand(4, 16).astype(np.float32), (rng.rand(5, 4, 4).astype(np.float32), np.arange(5))
    s = as_splits(x, val=val, test=test)
    assert s.num_train == 30 and bool((s.train_y == -1).all()) and bool((s.val_y == -1).all())
    assert torch.equal(s.val_grey, torch.from_numpy(val)) and torch.equal(s.test_y, torch.arange(5))
    # another seed draws another split of the same sizes; the default is the .npz loader's (SPLIT_SEED)
    s0, s5 = as_splits(x), as_splits(x, seed=5)
    assert s0.num_train == s5.num_train == 24 and not torch.equal(s0.train_x, s5.train_x)
    assert s0.name == "python" and as_splits(x, name="mine").name == "mine"


def test_binarize_and_data_splits() -> None:
    codes = np.random.RandomState(0).randint(0, 256, size=(20, 16)).astype(np.uint8)
    eight = as_splits(codes, binarize=False)
    assert not eight.binary and torch.equal(eight.val_x, eight.val_grey)
    assert as_splits(codes).binary and as_splits(codes, binarize=True).binary
    with pytest.raises(DataError, match="not 8-bit values"):
        as_splits(np.full((20, 16), 0.3), binarize=False)
    assert as_splits(eight) is eight  # a DataSplits is returned as it is
    assert as_splits(eight, binarize=True).binary
    with pytest.raises(DataError, match="labels, val cannot be combined with a DataSplits"):
        as_splits(eight, labels=np.zeros(16, np.int64), val=codes)


def test_a_data_loader_leaves_the_global_random_state_alone() -> None:
    x = torch.rand(20, 16)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    as_splits(DataLoader(TensorDataset(x), batch_size=7, shuffle=False))
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- bad inputs, one clear DataError


class Ragged(Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(64) if i < 3 else torch.rand(1, 8, 8)


class Mixed(Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> Any:
        return (torch.rand(64), 1) if i == 0 else torch.rand(64)


GOOD = np.random.RandomState(0).rand(20, 64).astype(np.float32)
BAD_INPUTS = {
    "int64": (dict(data=np.zeros((20, 64), np.int64)), r"data: x has dtype int64; integer pixels must be uint8"),
    "int32 val": (dict(data=GOOD, val=np.zeros((4, 64), np.int32)), r"val: x has dtype int32; integer pixels"),
    "range": (dict(data=GOOD * 2), r"data: x has values in \[0\.\d+, 1\.\d+\]; float data must lie in \[0, 1\]"),
    "negative": (dict(data=GOOD - 0.5), r"float data must lie in \[0, 1\]"),
    "nan": (dict(data=np.where(GOOD > 0.5, np.nan, GOOD)), r"data: x contains NaN or inf values"),
    "complex": (dict(data=GOOD.astype(np.complex64)), r"data: x has dtype complex64; expected uint8"),
    "empty": (dict(data=np.zeros((0, 64), np.float32)), r"data holds no examples \(shape \(0, 64\)\)"),
    "empty dataset": (dict(data=ItemDataset([])), r"data holds no examples; the dataset is empty"),
    "one image": (dict(data=GOOD[0]), r"data: x has shape \(64,\); expected images as \[N, D\]"),
    "5-d": (dict(data=np.zeros((2, 1, 1, 8, 8), np.uint8)), r"data: x has shape \(2, 1, 1, 8, 8\); expected"),
    "zero width": (dict(data=np.zeros((20, 0, 8), np.uint8)), r"with an empty image dimension"),
    "not square": (dict(data=GOOD[:, :60]), r"D=60 values, which is not a square image; pass image_shape"),
    "channels": (dict(data=np.zeros((20, 5, 5, 5), np.uint8)), r"C in \{1, 3, 4\} \(pass image_shape"),
    "image_shape": (dict(data=GOOD, image_shape=(1, 8, 9)), r"64 values per example, but image_shape \(1, 8, 9\) has 72"),
    "bad image_shape": (dict(data=GOOD, image_shape=(8, 8)), r"image_shape must be \(C, H, W\)"),
    "val shape": (dict(data=GOOD, val=np.zeros((4, 7, 7), np.uint8)), r"val: x holds images of shape \(1, 7, 7\), but the data's image shape is \(1, 8, 8\)"),
    "labels length": (dict(data=GOOD, labels=np.zeros(19, np.int64)), r"labels has shape \(19,\), expected \(20,\): one label per example"),
    "labels -2": (dict(data=GOOD, labels=np.full(20, -2)), r"labels holds the label -2; labels must be class indices >= 0, or -1"),
    "labels float": (dict(data=GOOD, labels=np.zeros(20)), r"labels has dtype float64; labels must be integers"),
    "item labels": (dict(data=(GOOD, np.zeros(3, np.int64))), r"data: y has shape \(3,\), expected \(20,\)"),
    "test labels": (dict(data=GOOD, test=(GOOD[:4], np.full(4, -5))), r"test: y holds the label -5"),
    "labels twice": (dict(data=TensorDataset(torch.rand(20, 64), torch.zeros(20, dtype=torch.int64)), labels=np.zeros(20, np.int64)), r"data carries its own labels .* and labels= is given too"),
    "ragged": (dict(data=Ragged()), r"data: item 3 has shape \(1, 8, 8\) but item 0 has shape \(64,\); every example must have the same shape"),
    "mixed": (dict(data=Mixed()), r"data: item 1 is x alone but item 0 is \(x, y\)"),
    "item dtype": (dict(data=ItemDataset([np.zeros(64, np.uint8), np.zeros(64, np.float32)])), r"item 1 has dtype float32 but item 0 has dtype uint8"),
    "three tensors": (dict(data=TensorDataset(torch.rand(20, 64), torch.zeros(20), torch.zeros(20))), r"data: a TensorDataset of 3 tensors; expected \(x,\) or \(x, y\)"),
    "batch of three": (dict(data=DataLoader(ItemDataset([(torch.rand(64), 0, 1)] * 20), batch_size=5)), r"data: batch 0 holds 3 values; batches must be x or \(x, y\)"),
    "float item label": (dict(data=ItemDataset([(torch.rand(64), 0.5)] * 20)), r"data: item 0 has label 0.5 .*a label must be one integer"),
    "list": (dict(data=[GOOD]), r"data must be a DataSplits, a torch Tensor, a NumPy array, .* got list"),
    "splits as val": (dict(data=GOOD, val=as_splits(GOOD)), r"val: a DataSplits can only be passed as the data itself"),
    "too few": (dict(data=GOOD[:2]), r"data: x holds 2 examples; needs at least 3"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_give_one_clear_data_error(case: str) -> None:
    kwargs, message = BAD_INPUTS[case]
    with pytest.raises(DataError, match=message) as err:
        as_splits(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_data_is_refused_by_train_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data: x has dtype int64"):
        train(tiny_config(), tmp_path / "run", progress=False, data=np.zeros((20, 64), np.int64))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_the_data_and_nothing_else(digits: tuple) -> None:
    x, y = digits
    base = fingerprint(as_splits(x, labels=y))
    assert len(base) == 64 and base == fingerprint(as_splits(x.copy(), labels=y.copy(), name="other"))
    assert base == fingerprint(as_splits(torch.from_numpy(x), labels=torch.from_numpy(y)))
    changed = {
        "a training pixel": as_splits(np.where(np.arange(x.size).reshape(x.shape) == 5, 0.5, x), labels=y),
        "a label": as_splits(x, labels=np.where(np.arange(len(y)) == 0, 9 - y, y)),
        "no labels": as_splits(x),
        "8-bit": as_splits(np.round(x * 255).astype(np.uint8), labels=y),
    }
    prints = {what: fingerprint(splits) for what, splits in changed.items()}
    for what, fp in prints.items():
        assert fp != base, what
    assert len(set(prints.values())) == len(prints)
    # a validation pixel: its grey value is hashed even where the binarised image stays the same
    given = as_splits(x[:1500], val=x[1500:])
    val = x[1500:].copy()
    val[0, 30] = val[0, 30] * 0.5 + 0.01
    other = as_splits(x[:1500], val=val)
    assert torch.equal(other.val_x, given.val_x) and not torch.equal(other.val_grey, given.val_grey)
    assert fingerprint(other) != fingerprint(given)


def test_fingerprint_of_binary_and_8_bit_and_of_a_store(digits_uint8: np.ndarray) -> None:
    binary, eight = as_splits(digits_uint8), as_splits(digits_uint8, binarize=False)
    assert fingerprint(binary) != fingerprint(eight)
    assert torch.equal(binary.train_x, eight.train_x)
    # a store (compact codes, or float32 rows, or memory-mapped) has the fingerprint of its tensor
    compact = dataclasses.replace(eight, train_x=ExemplarStore.from_tensor(eight.train_x))
    as_float = dataclasses.replace(eight, train_x=ExemplarStore.from_tensor(eight.train_x, compact=False))
    assert compact.train_x.compact and not as_float.train_x.compact
    assert fingerprint(compact) == fingerprint(as_float) == fingerprint(eight)
    grey = as_splits(digits_uint8.astype(np.float32) / 255 * 0.999)  # not 8-bit: hashed as float32
    assert fingerprint(
        dataclasses.replace(grey, train_x=ExemplarStore.from_tensor(grey.train_x))
    ) == fingerprint(grey)


def test_fingerprint_of_a_memory_mapped_store(tmp_path: Path, digits_uint8: np.ndarray) -> None:
    eight = as_splits(digits_uint8, binarize=False)
    ExemplarStore.from_tensor(eight.train_x).save_npy(tmp_path / "x.npy")
    mapped = ExemplarStore.from_npy(tmp_path / "x.npy")
    assert mapped.mapped_bytes > 0
    assert fingerprint(dataclasses.replace(eight, train_x=mapped)) == fingerprint(eight)


# --------------------------------------------------------------------------- run folders and load_run


@pytest.fixture(scope="module")
def python_run(tmp_path_factory: pytest.TempPathFactory, digits: tuple) -> Path:
    x, y = digits
    out = tmp_path_factory.mktemp("py") / "run"
    train(tiny_config(), out, progress=False, data=(x, y))
    return out


def test_a_python_data_run_records_its_data(python_run: Path, digits: tuple) -> None:
    x, y = digits
    record = json.loads((python_run / DATA_RECORD).read_text())
    splits = as_splits(x, labels=y)
    assert record == {
        "source": "python",
        "name": "python",
        "fingerprint": fingerprint(splits),
        "num_train": 1439,
        "image_shape": [1, 8, 8],
        "binary": True,
    }


def test_load_run_refuses_a_python_data_run_without_its_data(python_run: Path) -> None:
    record = json.loads((python_run / DATA_RECORD).read_text())
    with pytest.raises(ConfigError, match=r"was trained on data passed from Python \(fingerprint ") as err:
        load_run(python_run, device="cpu")
    text = str(err.value)
    assert record["fingerprint"][:16] in text and "pass data=... to load_run" in text
    assert "save_pretrained" in text


def test_load_run_with_its_data_in_any_form(python_run: Path, digits: tuple) -> None:
    x, y = digits
    model, data, _ = load_run(python_run, device="cpu", data=(x, y))
    again, _, _ = load_run(
        python_run, device="cpu", data=TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    )
    assert data.num_train == 1439
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_load_run_refuses_other_data(python_run: Path, digits: tuple) -> None:
    x, y = digits
    record = json.loads((python_run / DATA_RECORD).read_text())
    other = x.copy()
    other[0, 0] = 1.0 - other[0, 0]
    with pytest.raises(
        DataError, match=r"the data differs from the data the run was trained on: fingerprint"
    ) as err:
        load_run(python_run, device="cpu", data=(other, y))
    assert f"!= {record['fingerprint'][:16]}" in str(err.value)
    with pytest.raises(DataError, match="the data differs"):
        load_run(python_run, device="cpu", data=x)  # no labels: other data too
    with pytest.raises(DataError, match="the data differs"):
        load_run(python_run, device="cpu", data=load_dataset("digits"))  # the dataset it was not trained on


def test_resume_checks_the_data(python_run: Path, digits: tuple) -> None:
    x, y = digits
    config = load_run_config(python_run)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=3))
    before = {p.name: p.read_bytes() for p in python_run.iterdir()}
    with pytest.raises(ConfigError, match=r"trained on data passed from Python .*pass data=\.\.\. to train"):
        train(config, python_run, resume=True, progress=False)
    with pytest.raises(DataError, match="the data differs"):
        train(config, python_run, resume=True, progress=False, data=x[::-1].copy())
    assert {p.name: p.read_bytes() for p in python_run.iterdir()} == before


def test_a_dataset_run_records_its_dataset_and_is_checked(tmp_path: Path, digits: tuple) -> None:
    config = tiny_config("digits", epochs=1)
    train(config, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / DATA_RECORD).read_text())
    assert record["source"] == "dataset" and record["name"] == "digits"
    assert record["fingerprint"] == fingerprint(load_dataset("digits"))
    load_run(tmp_path / "run", device="cpu")  # re-reads the dataset: the same fingerprint
    load_run(tmp_path / "run", device="cpu", data=load_dataset("digits"))
    with pytest.raises(DataError, match="the data differs"):
        load_run(tmp_path / "run", device="cpu", data=as_splits(digits[0]))
    record["fingerprint"] = "0" * 64  # as if the dataset's files had changed since training
    (tmp_path / "run" / DATA_RECORD).write_text(json.dumps(record))
    with pytest.raises(
        DataError, match=r"fingerprint [0-9a-f]{16} != 0000000000000000 .*trained on the dataset 'digits'"
    ):
        load_run(tmp_path / "run", device="cpu")
    (tmp_path / "run" / DATA_RECORD).unlink()  # a run from before data.json: loads as before
    load_run(tmp_path / "run", device="cpu")


def test_where_passed_data_counts_as_from() -> None:
    digits = load_dataset("digits")
    config = tiny_config("digits")
    assert run_data(config, digits) == (digits, "dataset")  # e.g. what prepare loaded
    assert run_data(tiny_config("mnist"), digits)[1] == "python"
    x = np.random.RandomState(0).rand(20, 16).astype(np.float32)
    splits, source = run_data(
        dataclasses.replace(config, data=DataConfig(train_size=10, binarize=False)),
        (x * 255).astype(np.uint8),
    )
    assert source == "python" and splits.num_train == 10 and not splits.binary
