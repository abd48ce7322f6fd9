"""Tests for exemplar_vae.data.store: the compact exemplar store, its gathers, and its .npy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exemplar_vae.data import ExemplarStore
from exemplar_vae.data import store as store_module
from exemplar_vae.errors import DataError


def eight_bit(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 codes [n, d] and their float values, converted as the loaders do."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (n, d), generator=gen, dtype=torch.uint8)
    return codes, codes.to(torch.float32).div_(255.0)


def random_ids(n: int, count: int, seed: int = 1) -> torch.Tensor:
    """Unsorted int64 ids in [0, n) with repeats (the first id appears three times)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n, (count,), generator=gen, dtype=torch.int64)
    ids[5] = ids[0]
    ids[-1] = ids[0]
    assert not torch.equal(ids, ids.sort().values)
    return ids


def assert_reads_equal(store: ExemplarStore, x: torch.Tensor) -> None:
    """Every kind of read of ``store`` is bit-identical to the same read of the float tensor ``x``."""
    n = x.shape[0]
    ids = random_ids(n, 257)
    for got, want in [
        (store.gather(ids), x[ids]),
        (store.gather(ids.to(torch.int32)), x[ids]),
        (store.gather(ids[:0]), x[:0]),
        (store.rows(0, n), x),
        (store.rows(3, min(n, 40)), x[3 : min(n, 40)]),
        (store.rows(n, n), x[n:n]),
        (store[ids], x[ids]),
        (store[ids.reshape(-1, 1)[:256].reshape(16, 16)], x[ids[:256].reshape(16, 16)]),
        (store[torch.tensor(2)], x[2]),
        (store[x[:, 0] > 0.5], x[x[:, 0] > 0.5]),
        (store[1], x[1]),
        (store[-1], x[-1]),
        (store[2:9], x[2:9]),
        (store[::7], x[::7]),
        (store[-5:], x[-5:]),
        (store[5:2], x[5:2]),
        (store.float(), x),
    ]:
        assert got.dtype == torch.float32
        assert got.device == x.device
        assert got.shape == want.shape
        assert torch.equal(got, want)
        # bit for bit, not only equal values (e.g. -0.0 vs 0.0)
        assert torch.equal(got.contiguous().view(torch.int32), want.contiguous().view(torch.int32))


def test_from_tensor_8bit_is_compact_and_exact() -> None:
    codes, x = eight_bit(300, 37)
    store = ExemplarStore.from_tensor(x)
    assert store.compact
    assert isinstance(store.backing, torch.Tensor) and store.backing.dtype == torch.uint8
    assert torch.equal(store.backing, codes)
    assert store.nbytes == 300 * 37
    assert store.mapped_bytes == 0
    assert store.shape == (300, 37) and len(store) == 300 and store.num_rows == 300 and store.dim == 37
    assert store.device == torch.device("cpu")
    assert_reads_equal(store, x)


def test_reads_reject_bad_indices() -> None:
    store = ExemplarStore.from_tensor(eight_bit(10, 4)[1])
    with pytest.raises(IndexError):
        store[10]
    with pytest.raises(IndexError):
        store.rows(2, 11)
    with pytest.raises(IndexError):
        store.rows(5, 4)
    with pytest.raises(TypeError):
        store.gather(torch.zeros(3))
    with pytest.raises(TypeError):
        store["a"]  # type: ignore[index]


def test_binary_data_is_compact_and_exact() -> None:
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(200, 50, generator=gen) < 0.3).to(torch.float32)
    store = ExemplarStore.from_tensor(x)
    assert store.compact
    assert set(store.backing.unique().tolist()) == {0, 255}  # type: ignore[union-attr]
    assert_reads_equal(store, x)


@pytest.mark.parametrize("kind", ["half", "digits"])
def test_data_that_is_not_8bit_is_float32_and_exact(kind: str) -> None:
    _, x = eight_bit(120, 64, seed=3)
    if kind == "half":
        x[60, 10] = 0.5  # 127.5 / 255
    else:  # scikit-learn digits: k/16
        gen = torch.Generator().manual_seed(4)
        x = torch.randint(0, 17, (120, 64), generator=gen).to(torch.float32) / 16.0
    store = ExemplarStore.from_tensor(x)
    assert not store.compact
    assert isinstance(store.backing, torch.Tensor) and store.backing.dtype == torch.float32
    assert store.backing.data_ptr() == x.data_ptr()  # contiguous float32: shared, not copied
    assert store.nbytes == 120 * 64 * 4
    assert_reads_equal(store, x)


def test_8bit_check_is_bitwise_and_runs_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_BLOCK_ELEMENTS", 64)  # 64 // 16 = 4 rows a block
    _, x = eight_bit(40, 16, seed=5)
    assert ExemplarStore.from_tensor(x).compact
    # a value a hair off k/255, in the last block only
    y = x.clone()
    y[38, 3] = torch.nextafter(torch.tensor(100 / 255), torch.tensor(1.0)).item()
    store = ExemplarStore.from_tensor(y)
    assert not store.compact
    assert_reads_equal(store, y)
    # an out-of-range value in a block after the 8-bit check has failed is still found
    y[39, 0] = 1.5
    with pytest.raises(DataError, match="1.5"):
        ExemplarStore.from_tensor(y)


def test_from_tensor_options_and_bad_input() -> None:
    codes, x = eight_bit(30, 8)
    assert not ExemplarStore.from_tensor(x, compact=False).compact
    doubled = ExemplarStore.from_tensor(x.double())  # other float dtypes are cast to float32 first
    assert doubled.compact and torch.equal(doubled.float(), x)
    strided = ExemplarStore.from_tensor(x.t().contiguous().t())  # non-contiguous input
    assert strided.compact and torch.equal(strided.float(), x)
    for bad in [x * 2, x - 0.5, torch.full((3, 4), float("nan")), torch.zeros(0, 8), x[0], codes]:
        with pytest.raises(DataError):
            ExemplarStore.from_tensor(bad)


def test_from_uint8_flattens_images() -> None:
    codes, x = eight_bit(50, 3 * 4 * 5, seed=6)
    sources: list[torch.Tensor | np.ndarray] = [
        codes.reshape(50, 3, 4, 5),
        codes.reshape(50, 3, 20).numpy(),
        codes.numpy(),
    ]
    for source in sources:
        store = ExemplarStore.from_uint8(source)
        assert store.compact and store.shape == (50, 60)
        assert isinstance(store.backing, torch.Tensor)
        assert_reads_equal(store, x)
    with pytest.raises(DataError, match="uint8"):
        ExemplarStore.from_uint8(codes.to(torch.int64))
    with pytest.raises(DataError):
        ExemplarStore.from_uint8(codes[0])


def test_from_npy_memory_maps_uint8_file(tmp_path: Path) -> None:
    n, d = 5000, 784
    codes, x = eight_bit(n, d, seed=7)
    path = tmp_path / "train.npy"
    np.save(path, codes.numpy())
    mapped = ExemplarStore.from_npy(path)
    assert isinstance(mapped.backing, np.memmap)
    assert mapped.compact and mapped.shape == (n, d) and mapped.device == torch.device("cpu")
    assert mapped.nbytes < 1024  # nothing held beyond the mapping
    assert mapped.mapped_bytes == n * d
    in_memory = ExemplarStore.from_tensor(x)
    ids = random_ids(n, 1000, seed=8)
    assert torch.equal(mapped.gather(ids), in_memory.gather(ids))
    assert torch.equal(mapped.rows(4000, 4500), in_memory.rows(4000, 4500))
    assert_reads_equal(mapped, x)
    # [N, H, W] files are flattened, still mapped
    np.save(tmp_path / "images.npy", codes.numpy().reshape(n, 28, 28))
    images = ExemplarStore.from_npy(tmp_path / "images.npy")
    assert isinstance(images.backing, np.memmap) and images.shape == (n, d)
    assert torch.equal(images.gather(ids), x[ids])
    # without mmap the file is read into a tensor
    loaded = ExemplarStore.from_npy(str(path), mmap=False)
    assert isinstance(loaded.backing, torch.Tensor) and loaded.compact and loaded.nbytes == n * d
    assert torch.equal(loaded.gather(ids), x[ids])


def test_from_npy_float32_file(tmp_path: Path) -> None:
    _, x = eight_bit(64, 20, seed=9)
    path = tmp_path / "float.npy"
    np.save(path, x.numpy())
    mapped = ExemplarStore.from_npy(path)
    assert isinstance(mapped.backing, np.memmap) and not mapped.compact
    assert mapped.mapped_bytes == 64 * 20 * 4
    assert_reads_equal(mapped, x)
    loaded = ExemplarStore.from_npy(path, mmap=False)  # read in: 8-bit-exact floats become compact
    assert loaded.compact
    assert_reads_equal(loaded, x)


def test_to_cpu_round_trip(tmp_path: Path) -> None:
    codes, x = eight_bit(100, 12, seed=10)
    store = ExemplarStore.from_tensor(x)
    moved = store.to("cpu")
    assert moved.compact and torch.equal(moved.backing, codes)  # type: ignore[arg-type]
    assert_reads_equal(moved, x)
    np.save(tmp_path / "codes.npy", codes.numpy())
    mapped = ExemplarStore.from_npy(tmp_path / "codes.npy")
    read_in = mapped.to(torch.device("cpu"))
    assert isinstance(read_in.backing, torch.Tensor) and read_in.compact and read_in.nbytes == 100 * 12
    assert read_in.mapped_bytes == 0
    assert_reads_equal(read_in, x)


def test_concat_keeps_compactness_and_values(tmp_path: Path) -> None:
    _, x = eight_bit(80, 16, seed=11)
    _, extra = eight_bit(20, 16, seed=12)
    both = torch.cat([x, extra])
    joined = ExemplarStore.from_tensor(x).concat(extra)
    assert joined.compact and joined.shape == (100, 16)
    assert_reads_equal(joined, both)
    # a value that is not k/255 makes the result float32, still exact
    odd = extra.clone()
    odd[0, 0] = 0.5
    widened = ExemplarStore.from_tensor(x).concat(odd)
    assert not widened.compact
    assert_reads_equal(widened, torch.cat([x, odd]))
    # a float32 store stays float32
    floats = ExemplarStore.from_tensor(x, compact=False).concat(extra)
    assert not floats.compact
    assert_reads_equal(floats, both)
    # a memory-mapped store is read in
    ExemplarStore.from_tensor(x).save_npy(tmp_path / "x.npy")
    from_map = ExemplarStore.from_npy(tmp_path / "x.npy").concat(extra)
    assert from_map.compact and from_map.mapped_bytes == 0
    assert_reads_equal(from_map, both)
    with pytest.raises(DataError, match="append"):
        ExemplarStore.from_tensor(x).concat(extra[:, :8])
    with pytest.raises(DataError):
        ExemplarStore.from_tensor(x).concat(extra + 1.0)


@pytest.mark.parametrize("compact", [True, False])
def test_save_npy_round_trip(tmp_path: Path, compact: bool) -> None:
    _, x = eight_bit(70, 9, seed=13)
    store = ExemplarStore.from_tensor(x, compact=compact)
    path = tmp_path / "sub" / "store.npy"
    store.save_npy(path)
    assert np.load(path).dtype == (np.uint8 if compact else np.float32)
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.npy"]  # no temporary left behind
    back = ExemplarStore.from_npy(path)
    assert back.compact == compact
    assert_reads_equal(back, x)
    # saving a memory-mapped store over its own file
    back.save_npy(path)
    assert_reads_equal(ExemplarStore.from_npy(path), x)


def _write_bad(path: Path, kind: str) -> None:
    rng = np.random.RandomState(14)
    arrays: dict[str, np.ndarray] = {
        "int64": rng.randint(0, 256, size=(10, 4)).astype(np.int64),
        "float16": rng.rand(10, 4).astype(np.float16),
        "float64": rng.rand(10, 4),
        "ndim1": rng.randint(0, 256, size=40).astype(np.uint8),
        "ndim5": rng.randint(0, 256, size=(2, 1, 2, 2, 2)).astype(np.uint8),
        "above1": np.full((10, 4), 1.5, dtype=np.float32),
        "negative": np.full((10, 4), -0.25, dtype=np.float32),
        "nan": np.full((10, 4), np.nan, dtype=np.float32),
        "empty": np.zeros((0, 784), dtype=np.uint8),
        "empty_width": np.zeros((5, 0), dtype=np.uint8),
    }
    if kind == "text":
        path.write_text("this is not an array\n")
    elif kind == "truncated":
        np.save(path, rng.randint(0, 256, size=(100, 50)).astype(np.uint8))
        path.write_bytes(path.read_bytes()[:-10])
    elif kind != "missing":
        np.save(path, arrays[kind])


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("int64", "int64"),
        ("float16", "float16"),
        ("float64", "float64"),
        ("ndim1", "shape"),
        ("ndim5", "shape"),
        ("above1", "outside"),
        ("negative", "outside"),
        ("nan", "outside"),
        ("empty", "empty"),
        ("empty_width", "empty"),
        ("text", "not a .npy"),
        ("truncated", "truncated"),
        ("missing", "does not exist"),
    ],
)
@pytest.mark.parametrize("mmap", [True, False])
def test_bad_files_raise_data_error(tmp_path: Path, kind: str, reason: str, mmap: bool) -> None:
    path = tmp_path / f"bad_{kind}.npy"
    _write_bad(path, kind)
    with pytest.raises(DataError) as info:
        ExemplarStore.from_npy(path, mmap=mmap)
    message = str(info.value)
    assert path.name in message
    assert reason in message
    assert "\n" not in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_store(tmp_path: Path) -> None:  # pragma: no cover - runs where there is a GPU
    codes, x = eight_bit(3000, 784, seed=15)
    np.save(tmp_path / "codes.npy", codes.numpy())
    store = ExemplarStore.from_npy(tmp_path / "codes.npy").to("cuda")
    assert store.device.type == "cuda" and store.compact and isinstance(store.backing, torch.Tensor)
    ids = random_ids(3000, 500)
    for where in ["cpu", "cuda"]:
        got = store.gather(ids.to(where))
        assert got.device.type == "cuda"
        assert torch.equal(got.cpu(), x[ids])
    assert torch.equal(store.rows(100, 900).cpu(), x[100:900])
    on_gpu = ExemplarStore.from_tensor(x.cuda())
    assert on_gpu.compact and on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.gather(ids).cpu(), x[ids])
    assert torch.equal(on_gpu.concat(x[:10].cuda()).float().cpu(), torch.cat([x, x[:10]]))
    assert torch.equal(on_gpu.to("cpu").float(), x)
