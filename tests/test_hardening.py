"""Nothing lost, nothing wrong, nothing stuck: diverging runs stop, non-finite models are not scored, and
inputs that gave tracebacks, hung or were accepted silently give one clear line (or the right result)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import os
import signal
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exemplar_vae import pipeline
from exemplar_vae.cli.main import main
from exemplar_vae.config import DataConfig, EvalConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.data import formats as formats_module
from exemplar_vae.data import load_dataset
from exemplar_vae.data.formats import read_idx
from exemplar_vae.errors import CheckpointError, ConfigError, DataError, RunFailed
from exemplar_vae.evaluation import density
from exemplar_vae.evaluation.density import evaluate_density
from exemplar_vae.runs import build_model, prepare
from exemplar_vae.training.loop import DivergenceWatch
from exemplar_vae.validation import validate

# --------------------------------------------------------------------------- helpers


def digits_config(lr: float = 5e-4, divergence: str = "stop", epochs: int = 1) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(hidden=16, latent_dim=4),
        prior=PriorConfig(name="gaussian"),
        train=TrainConfig(
            epochs=epochs, warmup=1, early_stopping=0, seed=0, device="cpu", lr=lr, divergence=divergence
        ),
    )


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fails the test instead of hanging (e.g. on a named pipe that something opened)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    dtype = {0x08: "u1", 0x09: "i1", 0x0C: ">i4"}[code]
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(b"\x00\x00" + bytes([code, array.ndim]) + dims + array.astype(dtype).tobytes())
    return path


def fake_mnist(folder: Path, labels: np.ndarray | None = None, code: int = 0x08) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, size=(12, 28, 28)))
    train_labels = rng.integers(0, 10, size=12) if labels is None else labels
    write_idx(folder / "train-labels-idx1-ubyte", train_labels, code)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, size=(3, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, size=3))
    return folder


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height (a lazy open reads only that)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def grey_pngs(folder: Path, n: int = 5, size: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8), "L").save(
            folder / f"{i}.png"
        )
    return folder


# --------------------------------------------------------------------------- divergence


def test_watch_ignores_a_falling_loss_warmup_and_short_spikes() -> None:
    watch = DivergenceWatch()
    falling = [240 + 400 * 0.97**i for i in range(300)]  # Fashion-MNIST-like: 640 nats falling to ~240
    assert not any(watch.update(loss) for loss in falling)
    rising = [240 * (1 + i / 100) for i in range(100)]  # the KL warm-up: the loss doubles, slowly
    assert not any(watch.update(loss) for loss in rising)
    spike = [5000.0] * 4 + [250.0] * 10  # 4 steps far above the threshold, then back: tolerated
    assert not any(watch.update(loss) for loss in spike)


def test_watch_margin_keeps_a_loss_near_zero_from_tripping() -> None:
    watch = DivergenceWatch()
    noisy = [0.01, 0.02, 0.5, 1.2, 0.8, 2.0, 3.0, 1.5, 0.9, 4.0] * 5  # 100x its minimum but a few nats
    assert not any(watch.update(loss) for loss in noisy)


def test_watch_trips_on_a_sustained_blow_up() -> None:
    watch = DivergenceWatch()
    losses = [54.0, 5e5, 8.7e6, 4.3e6, 6.8e6, 5.4e7]  # digits at --lr 1, step by step
    assert [watch.update(loss) for loss in losses] == [False] * 5 + [True]
    assert "above 10x its lowest 5-step mean (54 nats) for 5 steps in a row" in watch.describe(losses[-1])


def test_diverging_run_stops_with_run_failed() -> None:
    with pytest.raises(
        RunFailed, match=r"training diverged at epoch 1, step \d+: .*smaller --lr \(now 10\)"
    ) as err:
        pipeline.train(digits_config(lr=10.0), progress=False)
    one_line(err)


def test_diverging_run_warns_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="exemplar_vae"):
        _, result = pipeline.train(digits_config(lr=10.0, divergence="warn"), progress=False)
    assert result.epochs_run == 1
    warnings = [r.getMessage() for r in caplog.records if "training diverged" in r.getMessage()]
    assert len(warnings) == 1 and "--on-divergence warn" in warnings[0]  # once per epoch


def test_a_normal_run_never_trips(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="exemplar_vae"):
        _, result = pipeline.train(digits_config(divergence="warn", epochs=3), progress=False)
    assert result.epochs_run == 3 and "diverged" not in caplog.text


def test_divergence_option_is_checked() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown divergence policy \(--on-divergence\) 'maybe'; valid: stop, warn"
    ):
        validate(digits_config(divergence="maybe"))
    with pytest.raises(ConfigError, match=r"config train.divergence must be str, got 3"):
        RunConfig.from_dict({"train": {"divergence": 3}})
    assert RunConfig.from_dict({"train": {"divergence": "warn"}}).train.divergence == "warn"


def test_cli_diverging_run_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--dataset", "digits", "--prior", "gaussian", "--hidden", "16", "--latent-dim", "4"]
    argv += ["--epochs", "1", "--warmup", "1", "--device", "cpu", "--no-progress", "--lr", "10"]
    code, err = cli([*argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and err.startswith("error: training diverged") and "smaller --lr" in err
    code, err = cli([*argv, "--on-divergence", "maybe", "--out", str(tmp_path / "run2")], capsys)
    assert code == 2 and "--on-divergence" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- evaluation of non-finite models


@pytest.fixture(scope="module")
def digits_model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    config, data = prepare(digits_config())
    return build_model(config, data), data.test_x[:4]


FAST_EVAL = EvalConfig(samples=3, batch_size=2, candidates=None, check_exact=0)


def test_evaluate_refuses_nan_weights(digits_model: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = digits_model
    name, param = next(iter(model.named_parameters()))
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.view(-1)[0] = math.nan
        with pytest.raises(CheckpointError, match=f"NaN or infinite values \\(first in {name}\\)") as err:
            evaluate_density(model, x, FAST_EVAL, progress=False)
        one_line(err)
    finally:
        with torch.no_grad():
            param.copy_(saved)


def test_evaluate_refuses_a_non_finite_result(
    digits_model: tuple[torch.nn.Module, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = digits_model
    scores = torch.tensor([-50.0, -math.inf, -60.0, -55.0], dtype=torch.float64)
    monkeypatch.setattr(density, "_score", lambda *args, **kwargs: (scores, scores, None))
    with pytest.raises(RunFailed, match=r"non-finite result \(log-likelihood -inf.*1 of 4 examples") as err:
        evaluate_density(model, x, FAST_EVAL, progress=False)
    one_line(err)


def test_one_example_has_no_standard_error(digits_model: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = digits_model
    result = evaluate_density(model, x[:1], FAST_EVAL, progress=False)
    assert result["log_likelihood_std_error"] is None and math.isfinite(result["log_likelihood"])
    assert '"log_likelihood_std_error": null' in json.dumps(result, allow_nan=False)
    two = evaluate_density(model, x[:2], FAST_EVAL, progress=False)
    assert two["log_likelihood_std_error"] > 0


@pytest.mark.parametrize("value", ["0", "-1"])
def test_evaluate_refuses_batch_size_below_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, err = cli(["evaluate", str(tmp_path / "run"), "--batch-size", value], capsys)
    assert code == 2 and err == f"error: --batch-size must be at least 1, got {value}\n"


# --------------------------------------------------------------------------- .npz files


def test_npz_member_that_is_not_an_array(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x", b"pixels, honestly")
    with pytest.raises(DataError, match=r"odd\.npz: member 'x' is not an \.npy array") as err:
        load_dataset(path)
    one_line(err)
    with zipfile.ZipFile(path, "w") as archive:  # an extra file beside the arrays is ignored, with a warning
        buf = io.BytesIO()
        np.save(buf, np.zeros((6, 4), np.uint8))
        archive.writestr("x.npy", buf.getvalue())
        archive.writestr("README.txt", "made by hand")
    with caplog.at_level(logging.WARNING):
        assert load_dataset(path).num_train == 4
    assert "README.txt" in caplog.text


def lying_npy(rows: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (rows, 784)})
    return buf.getvalue() + bytes(784 * 3)


def test_npy_header_claiming_10_12_rows_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", lying_npy(10**12))
    with pytest.raises(
        DataError, match=r"member 'x.npy' is truncated or corrupt: .*\(1000000000000, 784\)"
    ) as err:
        load_dataset(path)
    one_line(err)
    plain = tmp_path / "plain.npy"
    plain.write_bytes(lying_npy(10**12))  # np.load would try to allocate 784 TB here
    with pytest.raises(DataError, match=r"plain\.npy is not an \.npz archive but a single \.npy array"):
        load_dataset(plain)


def test_npz_too_big_for_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 16), np.uint8))
    monkeypatch.setattr(formats_module, "available_memory", lambda: 100)
    with pytest.raises(DataError, match=r"d\.npz: its arrays would take about 0\.0 GiB .* available"):
        load_dataset(tmp_path / "d.npz")


def test_npz_labels_below_minus_1(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 4), np.uint8), y=np.array([0, 1, -7, 2, 3, 4]))
    with pytest.raises(DataError, match=r"y holds the label -7; labels are class indices"):
        load_dataset(tmp_path / "d.npz")


# --------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize(("label", "code"), [(255, 0x08), (-7, 0x09), (10, 0x0C)])
def test_idx_labels_outside_0_to_9(tmp_path: Path, label: int, code: int) -> None:
    labels = np.arange(12) % 10
    labels[4] = label
    folder = fake_mnist(tmp_path / "mnist", labels, code)
    with pytest.raises(
        DataError, match=f"train-labels-idx1-ubyte: label {label} at index 4 is not a class 0..9"
    ):
        load_dataset("mnist", folder, download=False)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_header_claiming_billions_of_rows(tmp_path: Path, compress: bool) -> None:
    # the largest count an IDX header holds: 2**32 - 1 images of 28x28 (3.4 TB), with 100 bytes behind it
    data = b"\x00\x00\x08\x03" + struct.pack(">III", 2**32 - 1, 28, 28) + bytes(100)
    path = tmp_path / "huge"
    path.write_bytes(gzip.compress(data) if compress else data)
    # a raw file's size is known: truncated; a gzip stream's is not: refused for memory before reading it
    message = r"huge: IDX payload truncated: dims \(4294967295, 28, 28\)|huge: IDX dims .* would take about"
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_idx_too_big_for_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_idx(tmp_path / "ok", np.zeros((100, 28, 28)))
    monkeypatch.setattr(formats_module, "available_memory", lambda: 1000)
    with pytest.raises(DataError, match=r"ok: IDX dims \(100, 28, 28\) of uint8 would take about"):
        read_idx(path)


def test_broken_file_in_data_dir_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "fm"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + bytes(40))
    with pytest.raises(DataError, match=r"corrupt gzip file .*fm/train-images-idx3-ubyte\.gz") as err:
        load_dataset("fashion-mnist", folder, download=False)
    assert "not found" not in one_line(err)


# --------------------------------------------------------------------------- image folders and special files


def test_huge_pngs_are_refused_before_decoding(tmp_path: Path) -> None:
    folder = tmp_path / "huge"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(png_claiming(12000, 12000))
    with deadline(20):
        with pytest.raises(
            DataError, match=r"12000x12000 = 144,000,000 pixels each .*decompression-bomb"
        ) as err:
            load_dataset(folder)
    one_line(err)


def test_image_folder_too_big_for_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = grey_pngs(tmp_path / "imgs")
    monkeypatch.setattr(formats_module, "available_memory", lambda: 100)
    with pytest.raises(DataError, match=r"5 images of 4x4x1, decoded .* would take about .* available"):
        load_dataset(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipe_and_broken_link_are_skipped_never_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = grey_pngs(tmp_path / "imgs")
    os.mkfifo(folder / "pipe.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with deadline(20), caplog.at_level(logging.WARNING):
        splits = load_dataset(folder)
    assert splits.num_train + len(splits.val_x) + len(splits.test_x) == 5
    assert "skipping 2 entries that are not regular files" in caplog.text
    os.mkfifo(tmp_path / "data.npz")
    os.mkfifo(tmp_path / "labels-idx1")
    with deadline(20):
        with pytest.raises(DataError, match=r"data\.npz is not a regular file"):
            load_dataset(tmp_path / "data.npz")
        with pytest.raises(DataError, match=r"labels-idx1: not a regular file"):
            read_idx(tmp_path / "labels-idx1")
