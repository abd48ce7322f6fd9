"""Fuzz the readers of user input: random configs, .npz files, IDX files, image folders and checkpoints.

    python experiments/fuzz_inputs.py 2000 [--seed 0] [--kinds config npz ...] [--examples 3]

Each case builds one random input (from a generator seeded by the run's seed and the case's number, so a
case can be replayed alone) and hands it to the reader a user's input goes through:

- ``config``: a config.json-like dict (random JSON values of random types in random keys and sections)
  through ``RunConfig.from_dict`` and ``validation.validate`` (with random N and D);
- ``npz``: an ``.npz`` file (random arrays of random dtypes, shapes and ranges; missing and extra keys;
  members that are not .npy arrays; .npy headers claiming more than the member holds; truncated or
  damaged archives) through ``load_dataset``;
- ``idx``: an IDX file (random magic, type code, dims, payload length, gzip or not, truncation) through
  ``read_idx``, or as one of the four files of an MNIST folder through ``load_dataset("mnist", ...)``;
- ``images``: a folder of images (random sizes, Pillow modes and formats, damaged bytes, files that are
  not images, class sub-folders, broken links, named pipes) through ``load_dataset``;
- ``checkpoint``: random bytes, truncated or damaged ``torch.save`` files, random JSON documents, through
  ``training.checkpoint.load_checkpoint``.

Every outcome is one of: "clean error" (an ``ExemplarVAEError`` with a one-line message), "valid" (a
result that passes a sanity check: finite values in range, the shapes the input declared), "bad error
message" (an ``ExemplarVAEError`` whose message is empty or spans lines), "invalid result" or "other
exception" (anything else: the bugs). The script prints a table of outcomes per kind and examples of
each bug; ``tests/test_fuzz.py`` runs the same generators and fails on any bug.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import logging
import math
import os
import random
import struct
import sys
import tempfile
import traceback
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from exemplar_vae.config import RunConfig
from exemplar_vae.data import load_dataset
from exemplar_vae.data.formats import read_idx
from exemplar_vae.errors import ExemplarVAEError
from exemplar_vae.training.checkpoint import load_checkpoint
from exemplar_vae.validation import validate

KINDS = ("config", "npz", "idx", "images", "checkpoint")
CLEAN, VALID, BAD_MESSAGE, INVALID, OTHER = (
    "clean error",
    "valid",
    "bad error message",
    "invalid result",
    "other exception",
)
OUTCOMES = (CLEAN, VALID, BAD_MESSAGE, INVALID, OTHER)
BUGS = (BAD_MESSAGE, INVALID, OTHER)

Check = Callable[[Any], None]  # raises AssertionError when a result is not valid


@dataclass(frozen=True)
class Outcome:
    kind: str
    case: int
    status: str
    detail: str  # the error message, or the exception and where it was raised


# --------------------------------------------------------------------------- random values


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: numbers of every kind (huge, negative, NaN, inf), strings, booleans, null,
    lists and objects (nested up to 3 levels)."""
    kinds = ["int", "bigint", "negint", "float", "special", "str", "bool", "null"]
    if depth < 3:
        kinds += ["list", "dict"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(0, 1000)
    if kind == "bigint":
        return rng.choice([2**31, 2**63, 2**64 + 1, 10**30])
    if kind == "negint":
        return -rng.randint(1, 10**6)
    if kind == "float":
        return rng.choice([0.0, -0.5, 1e-9, 0.5, 2.5, 1e30, -1e30, rng.uniform(-10, 10)])
    if kind == "special":
        return rng.choice([math.nan, math.inf, -math.inf])
    if kind == "str":
        return rng.choice(
            ["", "auto", "exemplar", "gaussian", "ivf", "exact", "warn", "stop", "mlp", "x" * 300]
        )
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{rng.randint(0, 9)}": random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


# --------------------------------------------------------------------------- config


def _mutate_config(d: Any, rng: random.Random) -> Any:
    """One random change to a config document (which may already be anything)."""
    sections = sorted(k for k, v in d.items() if isinstance(v, dict) and v) if isinstance(d, dict) else []
    roll = rng.random()
    if roll < 0.3 and sections:  # a plausible value of the right type in a known key
        section = rng.choice(sections)
        key = rng.choice(sorted(d[section]))
        old = d[section][key]
        if isinstance(old, bool):
            d[section][key] = not old
        elif isinstance(old, int) or key in ("exemplars", "train_size", "max_steps", "subsample"):
            d[section][key] = rng.choice([0, 1, 2, 3, 10, 50, 500, 4000])
        elif isinstance(old, float):
            d[section][key] = rng.choice([1e-4, 5e-4, 0.01, 1.0])
    elif roll < 0.6 and sections:  # any JSON value in a known key
        section = rng.choice(sections)
        d[section][rng.choice(sorted(d[section]))] = random_json(rng)
    elif roll < 0.75 and isinstance(d, dict):  # an unknown key, or an unknown section
        section = rng.choice([*sections, "extra"])
        if section in sections:
            d[section][f"unknown{rng.randint(0, 9)}"] = random_json(rng)
        else:
            d[section] = random_json(rng)
    elif roll < 0.9 and isinstance(d, dict) and d:  # a whole section replaced or removed
        section = rng.choice(sorted(d))
        if rng.random() < 0.5:
            d.pop(section)
        else:
            d[section] = random_json(rng)
    else:  # the whole document replaced
        d = random_json(rng)
    return d


def config_case(rng: random.Random, work: Path) -> tuple[Callable[[], Any], Check]:
    """A mutated config dict through ``RunConfig.from_dict`` and ``validate``."""
    d: Any = json.loads(json.dumps(RunConfig().to_dict()))
    for _ in range(rng.randint(0, 4)):
        d = _mutate_config(d, rng)
    d = json.loads(json.dumps(d))  # as config.json would give it back (NaN and inf survive in Python)
    num_train = rng.choice([None, 0, 1, 2, 5, 100, 50_000])
    data_dim = rng.choice([None, 1, 64, 784, 10**9])

    def run() -> RunConfig:
        return validate(RunConfig.from_dict(d), num_train=num_train, data_dim=data_dim)

    def check(result: Any) -> None:
        assert isinstance(result, RunConfig)
        numbers = {f"{k}.{n}": v for k, sec in result.to_dict().items() for n, v in sec.items()}
        odd = {k: v for k, v in numbers.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not odd, f"accepted non-finite values {odd}"

    return run, check


# --------------------------------------------------------------------------- .npz

_DTYPES = ["u1", "i1", "i8", "u8", "f2", "f4", "f8", "?", "c8", "U3", "S2", "M8[s]", "V4"]


def random_array(rng: random.Random) -> np.ndarray:
    """A random array: dtype, shape (0 to 5 dims, sizes 0 to 6) and range (in [0, 1], out of it, NaN)."""
    ndim = rng.choice([0, 1, 2, 2, 3, 3, 4, 5])
    shape = tuple(rng.choice([0, 1, 2, 3, 4, 5, 6, 6]) for _ in range(ndim))
    dtype = np.dtype(rng.choice(_DTYPES))
    nprng = np.random.default_rng(rng.randrange(2**32))
    size = math.prod(shape)
    if dtype.kind in "ui":
        low, high = (0, 256) if rng.random() < 0.7 else (-300, 300)
        info = np.iinfo(dtype)
        ints = nprng.integers(max(low, info.min), min(high, int(info.max) + 1), size=size)
        return ints.astype(dtype).reshape(shape)
    if dtype.kind == "f":
        values = nprng.random(size) * rng.choice([1.0, 1.0, 2.0, 255.0]) - rng.choice([0.0, 0.0, 0.5])
        if size and rng.random() < 0.2:
            values[rng.randrange(size)] = rng.choice([math.nan, math.inf, -math.inf])
        return values.astype(dtype).reshape(shape)
    if dtype.kind == "b":
        return (nprng.random(size) < 0.5).reshape(shape)
    if dtype.kind == "c":
        return (nprng.random(size) + 1j * nprng.random(size)).astype(dtype).reshape(shape)
    return np.zeros(shape, dtype=dtype)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def lying_npy(rng: random.Random) -> bytes:
    """An .npy member whose header declares far more rows than it holds (up to 10^12)."""
    rows = rng.choice([10**12, 10**9, 2**40, 7])
    header = {"descr": "|u1", "fortran_order": False, "shape": (rows, 784)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))


def damage(data: bytes, rng: random.Random) -> bytes:
    """Truncated, or a few bytes flipped, or unchanged."""
    roll = rng.random()
    if roll < 0.35 and data:
        return data[: rng.randrange(len(data))]
    if roll < 0.6 and data:
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    return data


def npz_case(rng: random.Random, work: Path) -> tuple[Callable[[], Any], Check]:
    """A random .npz file through ``load_dataset``."""
    keys = ["x", "y", "x_val", "y_val", "x_test", "y_test", "source_index", "extra"]
    chosen = [k for k in keys if rng.random() < (0.9 if k == "x" else 0.25)]
    plausible = rng.random() < 0.4  # every array a well-formed one, but for one random key
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])) as archive:
        n = rng.choice([1, 3, 5, 8, 12])
        odd = rng.choice(chosen) if chosen and rng.random() < 0.5 else None
        for key in chosen:
            roll = rng.random()
            if plausible and key != odd:
                roll = 0.3 if key.startswith("x") else 0.5
            if roll < 0.08:
                archive.writestr(key, b"not an array")  # a member that is not an .npy
            elif roll < 0.14:
                archive.writestr(f"{key}.npy", lying_npy(rng))
            elif roll < 0.45 and key.startswith("x"):  # a plausible image array
                side = rng.choice([1, 2, 3, 4])
                x = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, size=(n, side, side))
                archive.writestr(f"{key}.npy", npy_bytes(x.astype(np.uint8)))
            elif roll < 0.6 and key.startswith("y"):
                y = np.random.default_rng(rng.randrange(2**32)).integers(-3, 12, size=n)
                archive.writestr(f"{key}.npy", npy_bytes(y.astype(rng.choice(["i8", "u1", "i2", "f4"]))))
            else:
                archive.writestr(f"{key}.npy", npy_bytes(random_array(rng)))
        if rng.random() < 0.1:
            archive.writestr("README.txt", "hello")
    path = work / "data.npz"
    path.write_bytes(damage(buf.getvalue(), rng) if rng.random() < 0.3 and not plausible else buf.getvalue())
    binarize = rng.choice([None, None, True, False])

    def run() -> Any:
        return load_dataset(path, binarize=binarize)

    return run, check_splits


def check_splits(splits: Any, classes: int = 2**31) -> None:
    """A loaded dataset: non-empty splits of [n, D] finite values in [0, 1], D = C * H * W, int64 labels
    in -1 (unlabelled), 0, ..., ``classes`` - 1."""
    c, h, w = splits.image_shape
    assert min(c, h, w) >= 1
    for x, y in (
        (splits.train_x, splits.train_y),
        (splits.val_x, splits.val_y),
        (splits.test_x, splits.test_y),
    ):
        x = x if isinstance(x, torch.Tensor) else x.gather(torch.arange(len(x)))
        assert x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] == c * h * w, (
            tuple(x.shape),
            splits.image_shape,
        )
        assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],), (y.dtype, tuple(y.shape))
        assert int(y.min()) >= -1 and int(y.max()) < classes, f"labels in [{int(y.min())}, {int(y.max())}]"


# --------------------------------------------------------------------------- IDX

_IDX_CODES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def random_idx(rng: random.Random) -> tuple[bytes, tuple[int, ...] | None]:
    """Random IDX bytes, and the dims they declare when the header is well formed."""
    code = rng.choice([*_IDX_CODES, *_IDX_CODES, 0x0A, 0x00, 0xFF])
    ndim = rng.choice([0, 1, 1, 2, 3, 3, 4])
    dims = tuple(
        rng.choice([0, 1, 2, 5, 28, 60, 10**6, 2**32 - 1]) if rng.random() < 0.15 else rng.randint(0, 6)
        for _ in range(ndim)
    )
    magic = b"\x00\x00" if rng.random() < 0.9 else bytes([rng.randrange(256), rng.randrange(256)])
    header = magic + bytes([code, ndim]) + b"".join(struct.pack(">I", d) for d in dims)
    itemsize = np.dtype(_IDX_CODES.get(code, "u1")).itemsize
    length = math.prod(dims) * itemsize
    if length > 10**6 or rng.random() < 0.3:
        length = rng.choice([0, 1, 3, 100, min(length, 10**6) + rng.choice([-1, 1, 7])])
    payload = bytes(rng.randrange(256) for _ in range(max(0, min(length, 4096)))) + bytes(
        max(0, length - 4096)
    )
    data = header + payload
    if rng.random() < 0.15:
        data = data[: rng.randrange(len(data) + 1)]
    return data, dims if magic == b"\x00\x00" and code in _IDX_CODES and ndim > 0 else None


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(
        b"\x00\x00" + bytes([code, array.ndim]) + dims + array.astype(_IDX_CODES[code]).tobytes()
    )


def idx_case(rng: random.Random, work: Path) -> tuple[Callable[[], Any], Check]:
    """A random IDX file through ``read_idx``, or as one file of an MNIST folder through ``load_dataset``."""
    data, dims = random_idx(rng)
    if rng.random() < 0.3:
        data = gzip.compress(data)
        if rng.random() < 0.3:
            data = damage(data, rng)
    if rng.random() < 0.5:
        path = work / "file.idx"
        path.write_bytes(data)

        def check(array: Any) -> None:
            assert isinstance(array, np.ndarray) and array.shape == dims, (
                getattr(array, "shape", None),
                dims,
            )

        return (lambda: read_idx(path)), check
    folder = work / "mnist"
    folder.mkdir()
    nprng = np.random.default_rng(rng.randrange(2**32))
    write_idx(folder / "train-images-idx3-ubyte", nprng.integers(0, 256, size=(12, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte", nprng.integers(0, 10, size=12))
    write_idx(folder / "t10k-images-idx3-ubyte", nprng.integers(0, 256, size=(3, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", nprng.integers(0, 10, size=3))
    victim = rng.choice(sorted(p.name for p in folder.iterdir()))
    (folder / victim).unlink()
    (folder / (victim + (".gz" if data[:2] == b"\x1f\x8b" else ""))).write_bytes(data)
    return (lambda: load_dataset("mnist", folder, download=False)), lambda s: check_splits(s, classes=10)


# --------------------------------------------------------------------------- image folders

_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
_FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "tif": "TIFF", "webp": "WEBP"}


def random_image(rng: random.Random, size: tuple[int, int], mode: str, suffix: str) -> bytes:
    nprng = np.random.default_rng(rng.randrange(2**32))
    image = Image.new(mode, size)
    if mode in ("L", "P", "1", "RGB", "RGBA", "LA", "CMYK"):
        noise = Image.fromarray(nprng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8), "L")
        image = noise.convert(mode)
    buf = io.BytesIO()
    try:
        image.save(buf, format=_FORMATS[suffix])
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        image.save(buf, format="TIFF")  # TIFF takes every mode used here
    return buf.getvalue()


def images_case(rng: random.Random, work: Path) -> tuple[Callable[[], Any], Check]:
    """A random folder of images through ``load_dataset``."""
    folder = work / "images"
    folder.mkdir()
    classes = [folder / f"class{i}" for i in range(rng.randint(1, 3))] if rng.random() < 0.3 else [folder]
    size = (rng.randint(1, 8), rng.randint(1, 8))
    mode = rng.choice(_MODES)
    for target in classes:
        target.mkdir(exist_ok=True)
        for i in range(rng.randint(0, 5)):
            suffix = rng.choice(sorted(_FORMATS))
            this_size = size if rng.random() < 0.85 else (rng.randint(1, 8), rng.randint(1, 8))
            this_mode = mode if rng.random() < 0.8 else rng.choice(_MODES)
            data = random_image(rng, this_size, this_mode, suffix)
            roll = rng.random()
            if roll < 0.1:
                data = damage(data, rng)
            elif roll < 0.15:
                data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))  # not an image at all
            (target / f"img{i}.{suffix}").write_bytes(data)
    extra = rng.random()
    if extra < 0.08:
        (folder / "notes.txt").write_text("not an image")
    elif extra < 0.14:
        (folder / "gone.png").symlink_to(work / "nowhere.png")  # a broken link
    elif extra < 0.2 and hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.png")  # a named pipe: must never be opened
    elif extra < 0.24:
        (folder / "mixed.png").write_bytes(random_image(rng, size, mode, "png"))  # beside class folders

    binarize = rng.choice([None, True, False])

    def run() -> Any:
        return load_dataset(folder, binarize=binarize)

    return run, check_splits


# --------------------------------------------------------------------------- checkpoints


def random_payload(rng: random.Random) -> Any:
    """A legacy (``torch.save``) checkpoint payload: a well-formed one (model, config, loop, optimizer,
    generator state) with 0 to 3 parts dropped, replaced by random JSON or given non-finite tensors; now
    and then something else entirely."""
    if rng.random() < 0.1:
        return random_json(rng)
    weights = {"encoder.w": torch.randn(3, 2), "decoder.b": torch.zeros(2)}
    payload: dict[str, Any] = {
        "model": weights,
        "config": RunConfig().to_dict(),
        "loop": {"epoch": 2, "best_val": 100.0, "best_epoch": 2, "bad_epochs": 0, "step": 20},
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
        "rng": torch.get_rng_state(),
        "world_size": 1,
        "batch_size": 100,
    }
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        key = rng.choice(sorted(payload))
        roll = rng.random()
        if roll < 0.3:
            payload.pop(key)
        elif roll < 0.6:
            payload[key] = random_json(rng)
        elif roll < 0.8:
            weights[rng.choice(sorted(weights))] = torch.full((2,), rng.choice([math.nan, math.inf, 1.0]))
        elif isinstance(payload[key], dict) and payload[key]:
            payload[key][rng.choice(sorted(payload[key]))] = random_json(rng)
    return payload


def checkpoint_case(rng: random.Random, work: Path) -> tuple[Callable[[], Any], Check]:
    """Random bytes, a damaged ``torch.save`` file or a random JSON document through ``load_checkpoint``."""
    roll = rng.random()
    if roll < 0.25:
        path = work / rng.choice(["best.pt", "last.pt"])
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 512))))
    elif roll < 0.75:
        path = work / rng.choice(["best.pt", "last.pt"])
        buf = io.BytesIO()
        torch.save(random_payload(rng), buf)
        path.write_bytes(damage(buf.getvalue(), rng))
    else:
        path = work / rng.choice(["best.json", "last.json"])
        doc = random_json(rng) if rng.random() < 0.5 else {"format_version": 1, "config": random_json(rng)}
        text = json.dumps(doc)
        path.write_text(text if rng.random() < 0.7 else text[: rng.randrange(len(text) + 1)])

    def check(result: Any) -> None:
        """The weights are a dict of finite tensors, whatever the checkpoint object looks like."""
        model = result["model"] if isinstance(result, dict) else getattr(result, "model", None)
        assert isinstance(model, dict), f"weights of type {type(model).__name__}"
        bad = [
            k
            for k, v in model.items()
            if not isinstance(v, torch.Tensor) or not bool(torch.isfinite(v).all())
        ]
        assert not bad, f"accepted weights that are not finite tensors: {bad}"

    return (lambda: load_checkpoint(path)), check


GENERATORS: dict[str, Callable[[random.Random, Path], tuple[Callable[[], Any], Check]]] = {
    "config": config_case,
    "npz": npz_case,
    "idx": idx_case,
    "images": images_case,
    "checkpoint": checkpoint_case,
}


# --------------------------------------------------------------------------- running cases


def case_rng(seed: int, case: int) -> random.Random:
    return random.Random(seed * 1_000_003 + case)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The library's warnings (skipped files, ignored keys) and Python warnings, silenced."""
    logger = logging.getLogger("exemplar_vae")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def run_case(kind: str, seed: int, case: int, root: Path) -> Outcome:
    """Builds case ``case`` of ``kind`` in a fresh folder under ``root`` and classifies what its reader did."""
    rng = case_rng(seed, case)
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-{case}-", dir=root))
    run, check = GENERATORS[kind](rng, work)  # outside the try: a generator's own failure is not an outcome
    try:
        result = run()
    except ExemplarVAEError as err:
        message = str(err)
        if not message.strip() or "\n" in message:
            return Outcome(kind, case, BAD_MESSAGE, f"{type(err).__name__}: {message!r}"[:400])
        return Outcome(kind, case, CLEAN, f"{type(err).__name__}: {message}"[:400])
    except Exception as err:  # noqa: BLE001 -- the point: anything else is a bug
        where = traceback.extract_tb(err.__traceback__)[-1]
        detail = f"{type(err).__name__}: {' '.join(str(err).split())[:200]} (at {Path(where.filename).name}:{where.lineno})"
        return Outcome(kind, case, OTHER, detail)
    try:
        check(result)
    except AssertionError as err:
        return Outcome(kind, case, INVALID, f"{type(result).__name__}: {err}"[:400])
    return Outcome(kind, case, VALID, type(result).__name__)


def fuzz(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS, root: Path | None = None) -> list[Outcome]:
    """Runs ``n`` cases, the kinds in turn (case i is of kind ``kinds[i % len(kinds)]``)."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fuzz-")))
        root.mkdir(parents=True, exist_ok=True)
        with quiet():
            return [run_case(kinds[i % len(kinds)], seed, i, root) for i in range(n)]


def table(outcomes: list[Outcome]) -> str:
    """A markdown table: cases per kind and outcome."""
    counts = Counter((o.kind, o.status) for o in outcomes)
    kinds = [k for k in KINDS if any(o.kind == k for o in outcomes)]
    lines = ["| kind | cases | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for kind in [*kinds, "all"]:
        row = [counts[(kind, s)] if kind != "all" else sum(counts[(k, s)] for k in kinds) for s in OUTCOMES]
        lines.append(f"| {kind} | {sum(row)} | " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, help="number of cases (the kinds in turn)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generators (default 0)")
    p.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="kinds of input (default all)"
    )
    p.add_argument("--examples", type=int, default=3, help="examples shown per kind of bug (default 3)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    outcomes = fuzz(args.n, args.seed, tuple(args.kinds))
    print(table(outcomes))
    bugs = defaultdict(list)
    for o in outcomes:
        if o.status in BUGS:
            bugs[(o.kind, o.status, o.detail.split(":")[0])].append(o)
    if bugs:
        print("\nexamples (replay one: fuzz(1, seed) runs case 0; run_case(kind, seed, case, folder) any):")
    for (kind, status, _), cases in sorted(bugs.items()):
        for o in cases[: args.examples]:
            print(f"- {kind} case {o.case} ({status}): {o.detail}")
    clean = Counter(o.detail.split(":")[0] for o in outcomes if o.status == CLEAN)
    print("\nclean errors by class: " + ", ".join(f"{k} {v}" for k, v in clean.most_common()))
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
