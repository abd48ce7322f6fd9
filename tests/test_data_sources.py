"""Tests for the data sources beyond MNIST: Omniglot (chardata.mat), CelebA, image folders, and the
binary / 8-bit choice (``load_dataset(..., binarize=...)``)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from exemplar_vae.config import DataConfig, RunConfig
from exemplar_vae.data import (
    DATA_ENV_VAR,
    DATASETS,
    SPLIT_SEED,
    DataSplits,
    canonical_name,
    check_8bit,
    default_data_dir,
    download,
    eight_bit_splits,
    load_celeba,
    load_dataset,
    random_split_indices,
)
from exemplar_vae.data import paths as data_paths
from exemplar_vae.data.celeba import FacePreprocessing, center_crop_box
from exemplar_vae.data.omniglot import omniglot_split, omniglot_validation_size
from exemplar_vae.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps tests away from the real ~/.cache and any EXEMPLAR_VAE_DATA of the user."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)


def values_are(x: torch.Tensor, allowed: set[float]) -> bool:
    return set(x.unique().tolist()) <= allowed


# --------------------------------------------------------------------------- Omniglot


def upright_images(n: int, seed: int = 0) -> np.ndarray:
    """[n, 28, 28] float64 images with an asymmetric "L" (a left bar and a bottom bar), plus noise.

    Row index = height (0 at the top), column index = width. Image i also carries i / 1000 at the
    top-right pixel, so images can be told apart.
    """
    rng = np.random.RandomState(seed)
    images = rng.uniform(0.0, 0.2, size=(n, 28, 28))
    images[:, 3:24, 4] = 1.0  # vertical bar in column 4
    images[:, 23, 4:18] = 0.9  # horizontal bar at the bottom (row 23)
    images[:, 0, 27] = np.arange(n) / 1000.0
    return images


def matlab_columns(images: np.ndarray) -> np.ndarray:
    """[n, 28, 28] upright images -> [784, n], each column an image stored column-major (MATLAB)."""
    return np.stack([image.reshape(784, order="F") for image in images], axis=1)


def write_chardata(
    path: Path, n_train: int = 60, n_test: int = 20, labels: bool = True, **overrides: np.ndarray
) -> dict[str, np.ndarray]:
    """Writes a small chardata.mat; returns the upright images and labels written."""
    train, test = upright_images(n_train, seed=1), upright_images(n_test, seed=2)
    train_y, test_y = np.arange(n_train) % 50, (np.arange(n_test) * 7) % 50
    mat = {"data": matlab_columns(train), "testdata": matlab_columns(test)}
    if labels:
        mat["target"] = np.eye(50)[train_y].T  # [50, n] one-hot columns
        mat["testtarget"] = np.eye(50)[test_y].T
    mat.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {k: v for k, v in mat.items() if v is not None})
    return {"train": train, "test": test, "train_y": train_y, "test_y": test_y}


def test_omniglot_images_are_upright(tmp_path: Path) -> None:
    written = write_chardata(tmp_path / "chardata.mat")
    splits = load_dataset("omniglot", tmp_path, download=False)
    assert splits.image_shape == (1, 28, 28) and splits.binary and splits.name == "omniglot"
    assert splits.test_grey is not None and splits.val_grey is not None
    test = splits.test_grey.reshape(-1, 28, 28).numpy()
    np.testing.assert_allclose(test, written["test"], atol=1e-6)  # test images keep the file's order
    assert (test[:, 3:23, 4] == 1.0).all() and (test[:, 23, 4:18] > 0.89).all()  # the L is upright
    # the VampPrior / Exemplar VAE code's reshape gives the same flattened images
    columns = matlab_columns(written["test"])
    reference = columns.T.reshape((-1, 28, 28)).reshape((-1, 784), order="F")
    np.testing.assert_allclose(splits.test_grey.numpy(), reference, atol=1e-6)


def test_omniglot_split_and_labels(tmp_path: Path) -> None:
    written = write_chardata(tmp_path / "chardata.mat", n_train=60, n_test=20)
    splits = load_dataset("omniglot", tmp_path, download=False)
    assert (splits.num_train, len(splits.val_x), len(splits.test_x)) == (57, 3, 20)
    train_idx, val_idx = omniglot_split(60)
    flat = written["train"].reshape(60, 784)
    torch.testing.assert_close(splits.train_x, torch.from_numpy(flat[train_idx]).float())
    assert splits.val_grey is not None
    torch.testing.assert_close(splits.val_grey, torch.from_numpy(flat[val_idx]).float())
    np.testing.assert_array_equal(splits.train_y.numpy(), written["train_y"][train_idx])
    np.testing.assert_array_equal(splits.test_y.numpy(), written["test_y"])
    assert values_are(splits.val_x, {0.0, 1.0}) and values_are(splits.test_x, {0.0, 1.0})
    again = load_dataset("omniglot", tmp_path, download=False, train_size=10)
    assert torch.equal(again.val_x, splits.val_x) and torch.equal(again.test_x, splits.test_x)
    assert torch.equal(again.train_x, splits.train_x[:10])


def test_omniglot_without_labels(tmp_path: Path) -> None:
    write_chardata(tmp_path / "chardata.mat", labels=False)
    splits = load_dataset("omniglot", tmp_path, download=False)
    for y in (splits.train_y, splits.val_y, splits.test_y):
        assert (y == -1).all()


def test_omniglot_split_is_iwae_s_seeded_permutation() -> None:
    assert omniglot_validation_size(24_345) == 1_345  # the paper's 23,000 / 1,345
    assert [omniglot_validation_size(n) for n in (2, 20, 60, 1000)] == [1, 1, 3, 55]
    train, val = omniglot_split(24_345)
    assert (len(train), len(val)) == (23_000, 1_345)
    perm = np.random.RandomState(123).permutation(24_345)  # IWAE's datasets.py, shuffle_seed=123
    np.testing.assert_array_equal(train, perm[:-1345])
    np.testing.assert_array_equal(val, perm[-1345:])
    for n in (2, 60, 999):
        a, b = omniglot_split(n)
        assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(n))  # disjoint and complete
        assert len(b) == omniglot_validation_size(n) >= 1 and len(a) >= 1
        assert all(np.array_equal(u, v) for u, v in zip((a, b), omniglot_split(n)))  # deterministic
    with pytest.raises(DataError, match="holds 1 images; need at least 2"):
        omniglot_validation_size(1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"testdata": None}, r"no variable 'testdata' \(found: \['data', 'target', 'testtarget'\]\)"),
        ({"data": np.zeros((783, 10))}, r"'data' has shape \(783, 10\), expected \[784, N\]"),
        (
            {"testdata": np.full((784, 4), 1.5)},
            r"'testdata' has values in \[1.5, 1.5\], expected grey values",
        ),
        ({"data": np.full((784, 4), np.nan)}, "'data' has values in"),
        ({"target": np.zeros((50, 7))}, r"'target' has shape \(50, 7\), expected \[K, 60\]"),
    ],
)
def test_omniglot_structural_errors(tmp_path: Path, overrides: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "chardata.mat"
    write_chardata(path, **overrides)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("omniglot", tmp_path, download=False)
    assert str(path) in str(info.value)


def test_omniglot_not_a_mat_file_and_missing(tmp_path: Path) -> None:
    (tmp_path / "chardata.mat").write_bytes(b"not a matlab file at all" * 10)
    with pytest.raises(DataError, match=r"chardata\.mat is not a readable MATLAB v5 file"):
        load_dataset("omniglot", tmp_path, download=False)
    with pytest.raises(DataError) as info:
        load_dataset("omniglot", tmp_path / "empty", download=False)
    for needle in ("omniglot", "empty", "chardata.mat", "downloading is disabled", "--data-dir"):
        assert needle in str(info.value)


def test_omniglot_download_is_checked_structurally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = tmp_path / "mirror" / "good.mat", tmp_path / "mirror" / "bad.mat"
    written = write_chardata(good, n_train=30, n_test=5)
    write_chardata(bad, data=np.zeros((100, 3)))
    monkeypatch.setattr(data_paths, "OMNIGLOT_URLS", (bad.as_uri(), good.as_uri()))  # first mirror is bad
    cache = tmp_path / "home" / ".cache" / "exemplar-vae" / "omniglot"
    assert default_data_dir("omniglot") == cache
    splits = load_dataset("omniglot")
    assert sorted(p.name for p in cache.iterdir()) == ["chardata.mat"]  # no temp files
    assert default_data_dir("omniglot") == cache
    np.testing.assert_allclose(splits.test_grey.reshape(-1, 28, 28).numpy(), written["test"], atol=1e-6)

    monkeypatch.setattr(data_paths, "OMNIGLOT_URLS", (bad.as_uri(),))
    with pytest.raises(DataError, match=r"failed its check .*'data' has shape \(100, 3\)") as info:
        load_dataset("omniglot", tmp_path / "other")
    assert "downloading into" in str(info.value)
    assert list((tmp_path / "other").iterdir()) == []  # the bad file was discarded


def test_download_without_md5_needs_verify(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"

    def reject(path: Path) -> None:
        raise DataError(f"{path.name} is not right")

    with pytest.raises(DataError, match="failed its check"):
        download(source.as_uri(), dest, None, verify=reject)
    assert list(dest.parent.iterdir()) == []
    assert download(source.as_uri(), dest, hashlib.md5(b"payload").hexdigest(), verify=lambda p: None) == dest


def test_omniglot_found_through_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_chardata(tmp_path / "root" / "omniglot" / "chardata.mat", n_train=20, n_test=4)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "root"))
    assert default_data_dir("omniglot") == tmp_path / "root" / "omniglot"
    assert load_dataset("Omniglot", download=False).num_train == 19


# --------------------------------------------------------------------------- CelebA


def face_image(i: int) -> Image.Image:
    """A 178x218 RGB image with smooth gradients (JPEG-friendly), different for each i."""
    yy, xx = np.mgrid[0:218, 0:178]
    pixels = np.stack([(xx + 10 * i) % 256, (yy + 20 * i) % 256, (xx + yy + 30 * i) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def write_celeba(
    root: Path, counts: tuple[int, int, int] = (8, 2, 2), skip: set[int] | None = None
) -> list[str]:
    """Writes img_align_celeba/ (JPEGs) and list_eval_partition.txt; returns the names in order."""
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    codes = [code for code, count in enumerate(counts) for _ in range(count)]
    names = [f"{i + 1:06d}.jpg" for i in range(len(codes))]
    for i, name in enumerate(names):
        if i not in (skip or set()):
            face_image(i).save(root / "img_align_celeba" / name, quality=95)
    lines = [f"{name} {code}" for name, code in zip(names, codes)]
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return names


def reference_face(path: Path) -> np.ndarray:
    """CenterCrop(140) + Resize(64) of a 178x218 image, written out independently: [3*64*64] in [0, 1]."""
    with Image.open(path) as image:
        face = image.convert("RGB").crop((19, 39, 159, 179)).resize((64, 64), Image.Resampling.BILINEAR)
    return np.asarray(face, dtype=np.float32).transpose(2, 0, 1).reshape(-1) / 255.0


def test_celeba_shapes_values_and_partition(tmp_path: Path) -> None:
    names = write_celeba(tmp_path)
    splits = load_dataset("celeba", tmp_path)
    assert splits.name == "celeba" and not splits.binary and splits.image_shape == (3, 64, 64)
    assert (splits.num_train, len(splits.val_x), len(splits.test_x)) == (8, 2, 2)
    assert splits.data_dim == 12288 and splits.train_x.dtype == torch.float32
    assert splits.val_grey is splits.val_x and splits.test_grey is splits.test_x  # 8-bit: nothing binarised
    for x in (splits.train_x, splits.val_x, splits.test_x):
        assert 0.0 <= x.min() and x.max() <= 1.0
        check_8bit(x, "celeba")
    for y in (splits.train_y, splits.val_y, splits.test_y):
        assert (y == -1).all()
    image_dir = tmp_path / "img_align_celeba"
    np.testing.assert_allclose(splits.train_x[0].numpy(), reference_face(image_dir / names[0]), atol=1e-6)
    np.testing.assert_allclose(splits.val_x[1].numpy(), reference_face(image_dir / names[9]), atol=1e-6)
    np.testing.assert_allclose(splits.test_x[0].numpy(), reference_face(image_dir / names[10]), atol=1e-6)
    assert "8-bit" in splits.summary()


def test_center_crop_box_matches_torchvision_rounding() -> None:
    assert center_crop_box(178, 218, 140) == (19, 39, 159, 179)
    assert center_crop_box(141, 141, 140) == (0, 0, 140, 140)  # round(0.5) == 0, as torchvision
    with pytest.raises(ConfigError, match="unknown resample filter 'cubic'"):
        FacePreprocessing(resample="cubic")


def test_celeba_cache_is_reused(tmp_path: Path) -> None:
    names = write_celeba(tmp_path)
    first = load_dataset("celeba", tmp_path)
    caches = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert len(caches) == 3 and all("crop140-64px-bilinear" in name for name in caches)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    for name in names:  # change every image: a reused cache still gives the first result
        Image.new("RGB", (178, 218)).save(tmp_path / "img_align_celeba" / name)
    again = load_dataset("celeba", tmp_path)
    for split in ("train_x", "val_x", "test_x"):
        assert torch.equal(getattr(again, split), getattr(first, split))
    small = load_dataset("celeba", tmp_path, train_size=3)  # another selection: decoded afresh
    assert small.num_train == 3 and float(small.train_x.max()) == 0.0
    assert torch.equal(small.val_x, first.val_x)  # the validation cache is shared


def test_celeba_limits_apply_before_decoding(tmp_path: Path) -> None:
    write_celeba(tmp_path, skip={3, 4, 5, 6, 7, 9, 11})  # only 3 train, 1 val, 1 test images exist
    splits = load_celeba(tmp_path, train_size=3, eval_size=1)
    assert (splits.num_train, len(splits.val_x), len(splits.test_x)) == (3, 1, 1)
    with pytest.raises(
        DataError, match=r"names 5 images missing from .*img_align_celeba, e\.g\. 000004\.jpg"
    ):
        load_dataset("celeba", tmp_path)
    with pytest.raises(ConfigError, match="train_size=9 is out of range: celeba has 8 training examples"):
        load_dataset("celeba", tmp_path, train_size=9)
    with pytest.raises(ConfigError, match="eval_size=0"):
        load_celeba(tmp_path, eval_size=0)


def test_celeba_missing_partition_file(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("celeba", tmp_path)
    message = str(info.value)
    for needle in (
        "list_eval_partition.txt",
        "img_align_celeba",
        str(tmp_path),
        "Google Drive",
        "--data-dir",
    ):
        assert needle in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("000001.jpg 0\n000002.jpg\n", r"line 2: malformed line '000002\.jpg'"),
        ("000001.jpg 0\n000002.jpg 3\n", r"line 2: malformed line '000002\.jpg 3'"),
        ("000001.jpg 0\n../x.jpg 1\n", "line 2: malformed line"),
        ("000001.jpg 0\n000001.jpg 1\n", r"line 2: 000001\.jpg is listed twice"),
        ("000001.jpg 0\n000002.jpg 2\n", "lists no images for the val split"),
    ],
)
def test_celeba_bad_partition_file(tmp_path: Path, content: str, message: str) -> None:
    write_celeba(tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("celeba", tmp_path)
    assert "list_eval_partition.txt" in str(info.value)


def test_celeba_partition_names_a_missing_image(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    with (tmp_path / "list_eval_partition.txt").open("a") as f:
        f.write("999999.jpg 2\n")
    with pytest.raises(DataError, match=r"names 1 images missing .*999999\.jpg"):
        load_dataset("celeba", tmp_path)


def test_celeba_unreadable_or_too_small_image(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    (tmp_path / "img_align_celeba" / "000003.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*000003\.jpg"):
        load_dataset("celeba", tmp_path)
    Image.new("RGB", (100, 120)).save(tmp_path / "img_align_celeba" / "000003.jpg")
    with pytest.raises(DataError, match=r"000003\.jpg: image is 100x120, smaller than the 140x140 crop"):
        load_dataset("celeba", tmp_path)


def test_celeba_can_be_binarised(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    eight_bit = load_dataset("Celeb_A", tmp_path)
    binary = load_dataset("celeba", tmp_path, binarize=True)
    assert binary.binary and values_are(binary.val_x, {0.0, 1.0}) and values_are(binary.test_x, {0.0, 1.0})
    assert torch.equal(binary.val_grey, eight_bit.val_x) and torch.equal(binary.train_x, eight_bit.train_x)


# --------------------------------------------------------------------------- image folders


def grey_pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, 5, 6)).astype(np.uint8)  # H=5, W=6


def test_flat_grey_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    folder.mkdir()
    pixels = grey_pixels(20)
    for i, image in enumerate(pixels):
        Image.fromarray(image, "L").save(folder / f"img{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    splits = load_dataset(str(folder))
    assert splits.name == "shapes" and splits.image_shape == (1, 5, 6) and splits.binary
    assert (splits.num_train, len(splits.val_x), len(splits.test_x)) == (16, 2, 2)
    train, val, test = random_split_indices(20, 2, 2, seed=SPLIT_SEED)
    flat = torch.from_numpy(pixels.reshape(20, 30)).float() / 255.0
    torch.testing.assert_close(splits.train_x, flat[train])
    assert splits.val_grey is not None and torch.equal(splits.val_grey, flat[val])
    assert values_are(splits.val_x, {0.0, 1.0}) and (splits.train_y == -1).all()
    eight_bit = load_dataset(folder, binarize=False)
    assert not eight_bit.binary and torch.equal(eight_bit.test_x, flat[test])


def test_class_folders_and_colour(tmp_path: Path) -> None:
    folder = tmp_path / "pets"
    pixels = grey_pixels(12, seed=1)
    for i, image in enumerate(pixels):
        cls = "b_cat" if i % 3 else "a_dog"
        (folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(folder / cls / f"{i:02d}.png")
    colour = np.random.RandomState(2).randint(0, 256, size=(5, 6, 3)).astype(np.uint8)
    Image.fromarray(colour, "RGB").save(folder / "a_dog" / "99.png")  # one RGB image: all become RGB
    (folder / "empty_class").mkdir()  # a folder without images is not a class
    splits = load_dataset(folder, binarize=False)
    assert splits.image_shape == (3, 5, 6) and not splits.binary
    x = torch.cat([splits.train_x, splits.val_x, splits.test_x]).reshape(-1, 3, 5, 6)
    y = torch.cat([splits.train_y, splits.val_y, splits.test_y])
    assert sorted(y.tolist()) == [0] * 5 + [1] * 8  # a_dog = 0 (4 grey + 1 RGB), b_cat = 1
    grey = x[(x[:, 0] == x[:, 1]).all(dim=(1, 2)) & (x[:, 1] == x[:, 2]).all(dim=(1, 2))]
    assert len(grey) == 12  # grey images were converted with equal channels
    rgb = torch.from_numpy(colour).permute(2, 0, 1).float() / 255.0
    assert any(torch.equal(row, rgb) for row in x)


def test_binary_folder_stays_binary(tmp_path: Path) -> None:
    folder = tmp_path / "bits"
    folder.mkdir()
    pixels = (np.random.RandomState(3).rand(10, 4, 4) > 0.5).astype(np.uint8) * 255
    for i, image in enumerate(pixels):
        Image.fromarray(image, "L").save(folder / f"{i}.png")
    splits = load_dataset(folder)
    assert splits.binary and values_are(splits.train_x, {0.0, 1.0})
    assert torch.equal(splits.val_x, splits.val_grey) and torch.equal(splits.test_x, splits.test_grey)


def test_folder_errors(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        load_dataset(folder)
    for i in range(4):
        Image.new("L", (6, 5)).save(folder / f"{i}.png")
    Image.new("L", (7, 5)).save(folder / "odd.png")
    with pytest.raises(DataError, match=r"same size; 4 are 6x5 but 1 differ: .*odd\.png \(7x5\)"):
        load_dataset(folder)
    (folder / "odd.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read image .*odd\.png"):
        load_dataset(folder)
    (folder / "odd.png").unlink()
    Image.new("I;16", (6, 5)).save(folder / "deep.png")
    with pytest.raises(DataError, match=r"deep\.png: Pillow mode 'I;16' is not supported"):
        load_dataset(folder)
    (folder / "deep.png").unlink()
    (folder / "cls").mkdir()
    Image.new("L", (6, 5)).save(folder / "cls" / "a.png")
    with pytest.raises(DataError, match="both image files .* and class sub-folders"):
        load_dataset(folder)
    few = tmp_path / "few"
    few.mkdir()
    for i in range(2):
        Image.new("L", (3, 3)).save(few / f"{i}.png")
    with pytest.raises(DataError, match="the folder holds 2 examples; needs at least 3"):
        load_dataset(few)


# --------------------------------------------------------------------------- binary vs 8-bit


def test_binarize_false_keeps_8_bit_values(tmp_path: Path) -> None:
    x = np.random.RandomState(0).randint(0, 256, size=(30, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "u8.npz", x=x)
    binary = load_dataset(tmp_path / "u8.npz")
    eight_bit = load_dataset(tmp_path / "u8.npz", binarize=False, train_size=10)
    assert binary.binary and not eight_bit.binary
    assert torch.equal(eight_bit.val_x, binary.val_grey) and torch.equal(eight_bit.test_x, binary.test_grey)
    assert torch.equal(eight_bit.train_x, binary.train_x[:10])
    assert load_dataset(tmp_path / "u8.npz", binarize=True).binary  # the default, unchanged
    np.savez(tmp_path / "k255.npz", x=x.astype(np.float64) / 255.0)  # floats that are k/255 are 8-bit
    assert not load_dataset(tmp_path / "k255.npz", binarize=False).binary


@pytest.mark.parametrize("name", ["digits", "grey.npz", "omniglot"])
def test_binarize_false_rejects_data_that_is_not_8_bit(tmp_path: Path, name: str) -> None:
    np.savez(tmp_path / "grey.npz", x=np.random.RandomState(0).rand(30, 16))
    write_chardata(tmp_path / "chardata.mat", n_train=20, n_test=5)
    source = str(tmp_path / name) if name.endswith(".npz") else name
    with pytest.raises(DataError, match=r"are not 8-bit values: e\.g\. .*/255 is not k/255"):
        load_dataset(source, tmp_path, binarize=False)


def test_check_8bit_tolerance() -> None:
    k = torch.arange(256, dtype=torch.float32) / 255.0
    check_8bit(k.reshape(16, 16), "k/255")
    check_8bit(torch.empty(0, 4), "empty")
    with pytest.raises(DataError, match=r"half are not 8-bit values: e\.g\. 0\.5 = 127\.5/255"):
        check_8bit(torch.tensor([[0.0, 0.5]]), "half")


def test_data_config_binarize_round_trips(tmp_path: Path) -> None:
    assert DataConfig().binarize is None
    config = RunConfig(data=DataConfig(dataset="celeba", binarize=False))
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json").data == config.data


def test_registry_names() -> None:
    assert {"omniglot", "celeba"} <= set(DATASETS)
    assert canonical_name(" Celeb-A ") == "celeba"
    with pytest.raises(ConfigError, match=r"omniglot, celeba .*\.npz file or to a folder of images"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match="datasets with files"):
        default_data_dir("digits")


def test_8_bit_splits_validate_like_any_splits() -> None:
    x, y = torch.zeros(4, 12), torch.full((4,), -1)
    splits = eight_bit_splits("t", (3, 2, 2), (x, y), (x[:2], y[:2]), (x[:1], y[:1]))
    assert isinstance(splits, DataSplits) and not splits.binary and splits.val_grey is splits.val_x
    with pytest.raises(DataError, match="val_x has shape"):
        dataclasses.replace(splits, val_x=torch.zeros(2, 5))
