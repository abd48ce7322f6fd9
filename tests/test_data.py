"""Tests for exemplar_vae.data: IDX reading, downloads, loaders, splits and binarisation."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from exemplar_vae.data import (
    DATA_ENV_VAR,
    DATASETS,
    IDX_SOURCES,
    DataSplits,
    IdxSource,
    IndexedDataset,
    default_data_dir,
    download,
    dynamic_binarize,
    find_file,
    fixed_binarize,
    identity_collate,
    load_dataset,
    random_split_indices,
    read_idx,
    validation_size,
)
from exemplar_vae.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# IDX type codes, written here independently of the reader under test
_IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray, dtype: str = "u1") -> bytes:
    """Encodes ``array`` in the IDX format: 00 00 <type> <ndim>, big-endian uint32 dims, payload."""
    header = struct.pack(">BBBB", 0, 0, _IDX_CODES[dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, dtype: str = "u1", compress: bool = False) -> Path:
    data = idx_bytes(array, dtype)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fake_mnist(
    folder: Path, n_train: int = 120, n_test: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """Writes the four MNIST files (gzip) with random content; returns the arrays written."""
    rng = np.random.RandomState(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, size=(n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": rng.randint(0, 10, size=n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, size=(n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, size=n_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / f"{stem}.gz", array, compress=True)
    return arrays


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps tests away from the real ~/.cache and any EXEMPLAR_VAE_DATA of the user."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", list(_IDX_CODES))
def test_read_idx_round_trips_every_type(tmp_path: Path, dtype: str, compress: bool) -> None:
    rng = np.random.RandomState(1)
    array = (rng.rand(3, 4, 5) * 100 - (0 if dtype == "u1" else 50)).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, dtype, compress)  # name says nothing about gzip
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 7  # writable


def test_read_idx_one_dimensional_labels(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l", labels)), labels)


def test_read_idx_rejects_wrong_magic(tmp_path: Path) -> None:
    data = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    data[0] = 0x12
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"not an IDX file.*12 00.*expected 00 00"):
        read_idx(tmp_path / "bad")


def test_read_idx_rejects_unknown_type_code(tmp_path: Path) -> None:
    data = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    data[2] = 0x0A
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(DataError, match="unknown IDX type code 0x0a"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_rejects_truncated_payload(tmp_path: Path, compress: bool) -> None:
    data = idx_bytes(np.zeros((4, 3, 3), np.uint8))[:-5]
    path = tmp_path / "trunc"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match=r"trunc: IDX payload truncated.*need 36 bytes, found 31"):
        read_idx(path)


def test_read_idx_rejects_too_long_payload(tmp_path: Path) -> None:
    (tmp_path / "long").write_bytes(idx_bytes(np.zeros((4, 3), np.uint8)) + b"\x00\x00")
    with pytest.raises(DataError, match=r"too long.*need 12 bytes, found 14"):
        read_idx(tmp_path / "long")


def test_read_idx_rejects_truncated_header(tmp_path: Path) -> None:
    (tmp_path / "h").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(tmp_path / "h")


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_read_idx_rejects_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    packed = bytearray(gzip.compress(idx_bytes(np.arange(600, dtype=np.uint8).reshape(20, 30) % 7)))
    if damage == "cut":
        packed = packed[: len(packed) // 2]
    else:
        packed[len(packed) // 2] ^= 0xFF
    (tmp_path / "x.gz").write_bytes(bytes(packed))
    with pytest.raises(DataError, match=r"corrupt gzip file .*x\.gz"):
        read_idx(tmp_path / "x.gz")


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file .*nope"):
        read_idx(tmp_path / "nope")


def test_find_file_prefers_raw_then_gz(tmp_path: Path) -> None:
    assert find_file(tmp_path, "f") is None
    (tmp_path / "f.gz").write_bytes(b"")
    assert find_file(tmp_path, "f") == tmp_path / "f.gz"
    (tmp_path / "f").write_bytes(b"")
    assert find_file(tmp_path, "f") == tmp_path / "f"


# --------------------------------------------------------------------------- download


def test_download_success(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"exemplar" * 1000)
    dest = tmp_path / "out" / "file.gz"
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    assert download(source.as_uri(), dest, md5) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.gz"]  # no temp files left


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(
        DataError, match=r"md5 mismatch .*expected 0{32}, got " + hashlib.md5(b"payload").hexdigest()
    ):
        download(source.as_uri(), dest, "0" * 32)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_download_failure_suggests_data_dir(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(DataError, match=r"download of .*missing\.gz failed.*--data-dir"):
        download((tmp_path / "missing.gz").as_uri(), dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []


# --------------------------------------------------------------------------- MNIST-type loader


def test_mnist_loader_on_fake_folder(tmp_path: Path) -> None:
    arrays = write_fake_mnist(tmp_path / "mnist", n_train=120, n_test=20)
    splits = load_dataset("mnist", tmp_path / "mnist", download=False)
    images = arrays["train-images-idx3-ubyte"].reshape(120, 784)
    labels = arrays["train-labels-idx1-ubyte"]
    # not the paper's 60,000 images, so the last sixth is the validation set
    assert (splits.num_train, len(splits.val_x), len(splits.test_x)) == (100, 20, 20)
    assert splits.image_shape == (1, 28, 28) and splits.data_dim == 784 and splits.binary
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    torch.testing.assert_close(splits.train_x, torch.from_numpy(images[:100] / 255.0).float())
    np.testing.assert_array_equal(splits.train_y.numpy(), labels[:100])
    np.testing.assert_array_equal(splits.val_y.numpy(), labels[100:])
    np.testing.assert_array_equal(splits.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # the validation set is binarised from the last 20 images: 0 stays 0, 255 becomes 1
    val_grey = images[100:]
    assert set(splits.val_x.unique().tolist()) <= {0.0, 1.0}
    assert (splits.val_x.numpy()[val_grey == 0] == 0).all()
    assert (splits.val_x.numpy()[val_grey == 255] == 1).all()
    assert abs(splits.val_x.mean().item() - val_grey.mean() / 255) < 0.02
    assert "100 train / 20 val / 20 test" in splits.summary()


def test_validation_size_rule() -> None:
    assert validation_size(60_000) == 10_000
    assert validation_size(120) == 20
    assert validation_size(59_999) == 9_999


def test_mnist_loader_count_mismatch(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, n_train=30)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8), compress=True)
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte\.gz holds 30 images but .*labels.* 29 labels"
    ):
        load_dataset("mnist", tmp_path, download=False)


def test_mnist_loader_wrong_image_size(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, n_train=30)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 27, 28), np.uint8))  # raw file wins
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: expected uint8 images .*\(20, 27, 28\)"):
        load_dataset("mnist", tmp_path, download=False)


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path / "empty", download=False)
    message = str(info.value)
    for needle in (
        "empty",
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "--data-dir",
        "apt-get install",
    ):
        assert needle in message


def test_download_failure_names_searched_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = IDX_SOURCES["mnist"]
    dead = IdxSource(source.files, ((tmp_path / "no-mirror").as_uri() + "/",))
    monkeypatch.setitem(IDX_SOURCES, "mnist", dead)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "root"))
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert str(tmp_path / "root" / "mnist") in message
    assert "downloading into" in message and "--data-dir" in message
    assert "apt-get" not in message  # no Debian package for MNIST


def test_download_then_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    arrays = write_fake_mnist(mirror, n_train=60, n_test=10)
    files = {
        role: (name, hashlib.md5((mirror / name).read_bytes()).hexdigest())
        for role, (name, _) in IDX_SOURCES["mnist"].files.items()
    }
    monkeypatch.setitem(IDX_SOURCES, "mnist", IdxSource(files, (mirror.as_uri() + "/",)))
    assert default_data_dir("mnist") == tmp_path / "home" / ".cache" / "exemplar-vae" / "mnist"
    splits = load_dataset("mnist")
    cache = default_data_dir("mnist")  # now holds the files
    assert sorted(p.name for p in cache.iterdir()) == sorted(name for name, _ in files.values())
    np.testing.assert_array_equal(splits.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert splits.num_train == 50


def test_env_var_folder_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_mnist(tmp_path / "root" / "mnist", n_train=12, n_test=3)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "root"))
    assert default_data_dir("mnist") == tmp_path / "root" / "mnist"
    assert load_dataset("mnist", download=False).num_train == 10


# --------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion() -> DataSplits:
    if find_file(FASHION_DIR, "train-images-idx3-ubyte") is None:
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    return load_dataset("fashion-mnist", FASHION_DIR, download=False)


def test_fashion_mnist_paper_split(fashion: DataSplits) -> None:
    assert (fashion.num_train, len(fashion.val_x), len(fashion.test_x)) == (50_000, 10_000, 10_000)
    assert fashion.image_shape == (1, 28, 28) and fashion.data_dim == 784
    assert 0.0 <= fashion.train_x.min() and fashion.train_x.max() <= 1.0
    assert len(fashion.train_x[:1000].unique()) > 200  # grey values, not binarised
    for x in (fashion.val_x, fashion.test_x):
        assert ((x == 0) | (x == 1)).all() and (x == 1).any() and (x == 0).any()
    for y in (fashion.train_y, fashion.val_y, fashion.test_y):
        assert set(y.unique().tolist()) == set(range(10))
    assert abs(fashion.val_x.mean().item() - 0.286) < 0.01  # Fashion-MNIST's mean pixel


def test_fashion_mnist_deterministic_and_train_size(fashion: DataSplits) -> None:
    again = load_dataset("fashion_mnist", download=False, train_size=1000)  # alias, default folder
    assert torch.equal(again.val_x, fashion.val_x) and torch.equal(again.test_x, fashion.test_x)
    assert torch.equal(again.train_x, fashion.train_x[:1000])
    assert torch.equal(again.train_y, fashion.train_y[:1000])


# --------------------------------------------------------------------------- digits


def test_digits_split_disjoint_and_deterministic() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (a.num_train, len(a.val_x), len(a.test_x)) == (1197, 300, 300)
    assert a.image_shape == (1, 8, 8) and a.binary
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    train, val, test = random_split_indices(1797, 300, 300, seed=0)
    everything = torch.cat([train, val, test])
    assert torch.equal(everything.sort().values, torch.arange(1797))  # disjoint and complete
    torch.testing.assert_close(a.train_x, torch.from_numpy(bunch.data[train.numpy()] / 16).float())
    np.testing.assert_array_equal(a.val_y.numpy(), bunch.target[val.numpy()])
    np.testing.assert_array_equal(a.test_y.numpy(), bunch.target[test.numpy()])
    assert set(a.test_x.unique().tolist()) == {0.0, 1.0}


def test_random_split_indices_sorted_and_seeded() -> None:
    train, val, test = random_split_indices(50, 5, 7, seed=3)
    assert (len(train), len(val), len(test)) == (38, 5, 7)
    for part in (train, val, test):
        assert torch.equal(part, part.sort().values)
    assert not torch.equal(val, random_split_indices(50, 5, 7, seed=4)[1])
    with pytest.raises(DataError, match="cannot split 5 examples"):
        random_split_indices(5, 3, 3)


# --------------------------------------------------------------------------- .npz files


def test_npz_uint8_images_with_labels(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(50, 6, 5)).astype(np.uint8)
    y = rng.randint(0, 4, size=50)
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    splits = load_dataset(str(tmp_path / "toy.npz"))
    assert splits.name == "toy" and splits.image_shape == (1, 6, 5) and splits.data_dim == 30
    assert (splits.num_train, len(splits.val_x), len(splits.test_x)) == (40, 5, 5)
    train, _, test = random_split_indices(50, 5, 5, seed=0)
    torch.testing.assert_close(
        splits.train_x, torch.from_numpy(x.reshape(50, 30)[train.numpy()] / 255).float()
    )
    np.testing.assert_array_equal(splits.test_y.numpy(), y[test.numpy()])
    assert set(splits.val_x.unique().tolist()) <= {0.0, 1.0}


def test_npz_without_labels_and_given_splits(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    x = rng.rand(20, 16).astype(np.float32)  # D = 16 is a square -> 1x4x4
    x_test = rng.rand(4, 16) > 0.5
    np.savez(tmp_path / "given.npz", x=x, x_test=x_test, y_test=np.arange(4))
    splits = load_dataset(tmp_path / "given.npz")
    assert splits.image_shape == (1, 4, 4)
    assert (splits.num_train, len(splits.val_x), len(splits.test_x)) == (18, 2, 4)
    assert (splits.train_y == -1).all() and (splits.val_y == -1).all()
    assert torch.equal(splits.test_x, torch.from_numpy(x_test).float())  # binary data is unchanged
    assert torch.equal(splits.test_y, torch.arange(4))

    np.savez(tmp_path / "all.npz", x=x, x_val=x[:3], x_test=x[3:5])
    splits = load_dataset(tmp_path / "all.npz")
    assert splits.num_train == 20 and torch.equal(splits.train_x, torch.from_numpy(x))  # order kept


@pytest.mark.parametrize(
    ("shape", "image_shape"),
    [
        ((6, 10), (1, 1, 10)),
        ((6, 9), (1, 3, 3)),
        ((6, 3, 4), (1, 3, 4)),
        ((6, 3, 2, 2), (3, 2, 2)),
        ((6, 1, 2, 3), (1, 2, 3)),
    ],
)
def test_npz_shapes(tmp_path: Path, shape: tuple[int, ...], image_shape: tuple[int, int, int]) -> None:
    np.savez(tmp_path / "s.npz", x=np.ones(shape, dtype=bool))
    splits = load_dataset(tmp_path / "s.npz")
    assert splits.image_shape == image_shape
    assert splits.data_dim == int(np.prod(shape[1:])) and splits.num_train == 4


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(3)}, r"has no array 'x' \(found keys: \['y'\]\)"),
        ({"x": np.zeros((0, 4), np.uint8)}, "holds no examples.*empty"),
        ({"x": np.zeros((2, 4), np.uint8)}, "x holds 2 examples; needs at least 3"),
        ({"x": np.zeros((5, 4), np.uint8), "y": np.zeros(4, int)}, r"y has shape \(4,\), expected \(5,\)"),
        ({"x": np.zeros((5, 4), np.uint8), "y": np.zeros(5)}, "labels must be integers"),
        ({"x": np.full((5, 4), np.nan)}, "NaN or inf"),
        ({"x": np.full((5, 4), 2.0)}, r"values in \[2.0, 2.0\]"),
        ({"x": np.zeros((5, 4), np.int64)}, "dtype int64; expected uint8"),
        ({"x": np.zeros((5, 2, 3, 3), np.uint8)}, r"C in \{1, 3\}"),
        ({"x": np.zeros((5, 4), np.uint8), "x_test": np.zeros((2, 5), np.uint8)}, "x_test has image shape"),
        ({"x": np.zeros((5, 4), np.uint8), "y_val": np.zeros(2, int)}, "has y_val but no x_val"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_npz_missing_or_not_npz(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.npz does not exist"):
        load_dataset(str(tmp_path / "nothere.npz"))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npz is not a readable \.npz file"):
        load_dataset(str(tmp_path / "text.npz"))
    np.save(tmp_path / "plain.npy", np.zeros((5, 4)))
    with pytest.raises(DataError, match=r"plain\.npy is not an \.npz archive"):
        load_dataset(str(tmp_path / "plain.npy"))


# --------------------------------------------------------------------------- registry errors


def test_unknown_dataset_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar'.*fashion-mnist, mnist, digits.*\.npz"):
        load_dataset("cifar")
    assert set(DATASETS) == {"fashion-mnist", "mnist", "digits", "omniglot", "celeba"}


@pytest.mark.parametrize("train_size", [0, 1198])
def test_train_size_out_of_range(train_size: int) -> None:
    with pytest.raises(ConfigError, match=rf"train_size={train_size} .*1197 training examples"):
        load_dataset("digits", train_size=train_size)


def test_train_size_keeps_first_examples() -> None:
    full, small = load_dataset("digits"), load_dataset("digits", train_size=10)
    assert torch.equal(small.train_x, full.train_x[:10]) and torch.equal(small.val_x, full.val_x)


def test_data_splits_validates_shapes() -> None:
    x, y = torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(DataError, match=r"val_x has shape \(3, 4\), expected \[N, 5\]"):
        DataSplits("t", (1, 1, 5), torch.zeros(3, 5), y, x, y, torch.zeros(3, 5), y)


# --------------------------------------------------------------------------- IndexedDataset and binarisation


def test_indexed_dataset_loader_batches() -> None:
    x = torch.arange(23 * 3, dtype=torch.float32).reshape(23, 3)
    y = torch.arange(23) % 5
    dataset = IndexedDataset(x, y)
    loader = DataLoader(
        dataset,
        batch_size=5,
        shuffle=True,
        collate_fn=identity_collate,
        generator=torch.Generator().manual_seed(0),
    )
    seen = []
    for xb, yb, idx in loader:
        assert xb.shape[1:] == (3,) and idx.dtype == torch.int64
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])
        seen.append(idx)
    assert [len(i) for i in seen] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(23))
    x7, y7, i7 = dataset[7]
    assert torch.equal(x7, x[7]) and y7 == y[7] and i7.dtype == torch.int64 and i7 == 7
    assert len(dataset) == 23
    with pytest.raises(DataError, match="23 rows but y has 22"):
        IndexedDataset(x, y[:22])


def test_dynamic_binarize() -> None:
    x = torch.rand(2000, 50, generator=torch.Generator().manual_seed(0))
    a = dynamic_binarize(x, torch.Generator().manual_seed(1))
    b = dynamic_binarize(x, torch.Generator().manual_seed(2))
    assert a.dtype == x.dtype and a.shape == x.shape
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(a.mean().item() - x.mean().item()) < 0.005
    assert not torch.equal(a, b)  # fresh noise each call
    assert torch.equal(a, dynamic_binarize(x, torch.Generator().manual_seed(1)))
    edges = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert torch.equal(dynamic_binarize(edges), edges)


def test_fixed_binarize() -> None:
    x = torch.rand(500, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = fixed_binarize(x), fixed_binarize(x)
    assert torch.equal(a, b) and a.dtype == torch.float64
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(a.mean().item() - x.mean().item()) < 0.01
    assert not torch.equal(a, fixed_binarize(x, seed=778))
    # per-pixel frequency over many seeds approaches the probability
    probs = torch.tensor([0.1, 0.5, 0.9])
    freq = torch.stack([fixed_binarize(probs, seed=s) for s in range(2000)]).mean(0)
    torch.testing.assert_close(freq, probs, atol=0.04, rtol=0)
