"""The paper's permutation-invariant MLP classifier, trained with and without generative augmentation.

Protocol (Norouzi et al. 2020, Sec. 5; docs/paper.md §9): an MLP D -> H -> H -> C with ReLU, no dropout, no
weight decay, on grey pixels in [0, 1]; cross-entropy with label smoothing 0.1 (for 10 classes: target
0.01 on every class plus 0.9 on the true one); SGD with momentum 0.9, batch 100, learning rate lr0 in
epoch e (counted from 0) equal to lr0 * (1 - 0.99 * e / E), i.e. decayed linearly towards 1% of lr0; no
early stopping, the test error is read after the last epoch. With an augmenter, every step also draws one
fresh variation of each real image in the batch and the loss is

    real_weight * CE(real batch) + (1 - real_weight) * CE(augmented batch),   real_weight = 0.4.

Differences from the paper's code, on purpose: float32 instead of float64 (the classifier is small and
well conditioned; float32 is what every GPU and CPU runs fast), and the training set is the dataset's
``train_x`` (for MNIST-type data the first 50,000 training images, the same images the VAE was trained
on; the paper took a random 50,000 with numpy seed 1). The test set is the grey test images when the
data kept them (``DataSplits.test_grey``), else ``test_x``; the result says which.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from exemplar_vae.data import DATASETS, DataSplits, as_tensor, canonical_name, fingerprint, load_dataset
from exemplar_vae.downstream.augment import ExemplarAugmenter, check_output
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.generation import check_temperature
from exemplar_vae.io import atomic_write_text
from exemplar_vae.runs import load_run, load_run_config, resolve_device

logger = logging.getLogger(__name__)

LABEL_SMOOTHING = 0.1
MOMENTUM = 0.9
FINAL_LR_FRACTION = 0.01  # the learning rate decays linearly to 1% of its start value

Augmenter = Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]


def build_classifier(data_dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    """The permutation-invariant MLP: [B, D] -> Linear(D, H), ReLU, Linear(H, H), ReLU, Linear(H, C) -> [B, C]."""
    return nn.Sequential(
        nn.Linear(data_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def lr_at_epoch(lr0: float, epoch: int, epochs: int) -> float:
    """Learning rate during epoch ``epoch`` (from 0) of ``epochs``: lr0 * (1 - 0.99 * epoch / epochs)."""
    return lr0 * (1.0 - (1.0 - FINAL_LR_FRACTION) * epoch / epochs)


def smoothed_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy against targets (1 - 0.1) * onehot(y) + 0.1 / C: logits [B, C], y [B] -> []."""
    return F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)


@torch.no_grad()
def error_rate(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Classification error in percent of ``net`` on x [N, D], y [N] (same device as ``net``)."""
    wrong = 0
    for lo in range(0, x.shape[0], batch_size):
        pred = net(x[lo : lo + batch_size]).argmax(dim=1)  # [b]
        wrong += int((pred != y[lo : lo + batch_size]).sum())
    return 100.0 * wrong / x.shape[0]


def classifier_test_set(data: DataSplits) -> tuple[Tensor, str]:
    """The test images the classifier is scored on: grey when the data kept them, else ``test_x``."""
    if data.test_grey is not None:
        return data.test_grey, "grey"
    return data.test_x, "binarised" if data.binary else "as loaded"


def _check_labels(data: DataSplits) -> int:
    """The number of classes C (labels must be 0..C-1 in both train and test)."""
    low = min(int(data.train_y.min()), int(data.test_y.min()))
    if low < 0:
        raise DataError(f"{data.name}: the classifier needs labels, but some examples are unlabelled (-1)")
    classes = max(int(data.train_y.max()), int(data.test_y.max())) + 1
    if classes < 2:
        raise DataError(f"{data.name}: the classifier needs at least 2 classes, found {classes}")
    return classes


def _check_options(hidden: int, epochs: int, real_weight: float, lr: float, batch_size: int) -> None:
    for name, value in (("--hidden", hidden), ("--epochs", epochs), ("--batch-size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value}")
    if not (math.isfinite(real_weight) and 0.0 <= real_weight <= 1.0):
        raise ConfigError(f"--real-weight must lie in [0, 1], got {real_weight}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a positive number, got {lr}")


def train_classifier(
    data: DataSplits,
    hidden: int = 1024,
    epochs: int = 100,
    seed: int = 0,
    augmenter: Augmenter | None = None,
    real_weight: float = 0.4,
    lr: float = 0.1,
    batch_size: int = 100,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the paper's MLP classifier on ``data.train_x`` and score it on the test set.

    Args:
        data: labelled data; inputs are grey pixels in [0, 1].
        hidden: H, the width of both hidden layers.
        epochs: E, passes over the training set (no early stopping).
        seed: seeds the initialisation and the batch order (the global RNG is left as it was).
        augmenter: called as ``augmenter(x [B, D], y [B]) -> (x_aug [B', D], y_aug [B'])`` every step (e.g.
            ``generation.ExemplarAugmenter``, whose own generator seeds its draws); None trains on real
            data only.
        real_weight: weight of the real batch's loss when augmenting (the paper's 0.4).
        lr: lr0, the learning rate of the first epoch.
        batch_size: real images per step.
        device: where to train ("auto", "cpu", "cuda", ... or a torch.device).
        progress: show a progress bar over epochs.

    Returns:
        test_error and train_error (percent, after the last epoch), final_loss (mean training loss of the
        last epoch), train_seconds, and the settings: dataset, hidden, epochs, seed, lr, batch_size,
        real_weight (None without augmentation), augmented, augmenter, label_smoothing, momentum, dtype,
        classes, train_examples, test_examples, test_inputs ("grey" or "binarised"), device.
    """
    _check_options(hidden, epochs, real_weight, lr, batch_size)
    classes = _check_labels(data)
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_classifier(data.data_dim, hidden, classes).to(dev)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=MOMENTUM)
    x_train, y_train = as_tensor(data.train_x).to(dev), data.train_y.to(dev)  # [N, D], [N]
    n = x_train.shape[0]
    start = time.perf_counter()
    epoch_loss = float("nan")
    bar = tqdm(range(epochs), desc=f"classifier seed {seed}", disable=not progress, leave=False)
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at_epoch(lr, epoch, epochs)
        net.train()
        perm = torch.randperm(n, generator=order).to(dev)  # [N]
        total, steps = 0.0, 0
        for lo in range(0, n, batch_size):
            idx = perm[lo : lo + batch_size]  # [B]
            xb, yb = x_train[idx], y_train[idx]  # [B, D], [B]
            loss = smoothed_cross_entropy(net(xb), yb)
            if augmenter is not None:
                x_aug, y_aug = augmenter(xb, yb)  # [B * n, D], [B * n]: fresh draws every step
                assert y_aug is not None
                loss = real_weight * loss + (1.0 - real_weight) * smoothed_cross_entropy(net(x_aug), y_aug)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        epoch_loss = total / steps
        bar.set_postfix(loss=f"{epoch_loss:.4f}")
    seconds = time.perf_counter() - start
    net.eval()
    x_test, test_kind = classifier_test_set(data)
    return {
        "test_error": error_rate(net, x_test.to(dev), data.test_y.to(dev)),
        "train_error": error_rate(net, x_train, y_train),
        "final_loss": epoch_loss,
        "train_seconds": seconds,
        "dataset": data.name,
        "hidden": int(hidden),
        "epochs": int(epochs),
        "seed": int(seed),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "real_weight": float(real_weight) if augmenter is not None else None,
        "augmented": augmenter is not None,
        "augmenter": repr(augmenter) if augmenter is not None else None,
        "label_smoothing": LABEL_SMOOTHING,
        "momentum": MOMENTUM,
        "dtype": "float32",
        "classes": classes,
        "train_examples": int(n),
        "test_examples": int(x_test.shape[0]),
        "test_inputs": test_kind,
        "device": str(dev),
    }


def _same_dataset(a: str, b: str) -> bool:
    """Whether two dataset arguments name the same data (a registered name, or the same .npz file)."""
    ca, cb = canonical_name(a), canonical_name(b)
    if ca in DATASETS or cb in DATASETS:
        return ca == cb
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _summarise(method: str, augmented: bool, runs: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["test_error"] for r in runs]
    return {
        "method": method,
        "augmented": augmented,
        "errors": errors,
        "mean": statistics.fmean(errors),
        "std": statistics.stdev(errors) if len(errors) > 1 else None,  # sample std (n - 1) over seeds
        "train_seconds": sum(r["train_seconds"] for r in runs),
        "runs": runs,
    }


def model_digest(model: nn.Module) -> str:
    """A short sha256 of a model's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class _ResultStore:
    """Finished classifier results in a folder, one JSON file per (row key, seed), reused when the settings
    written beside them match."""

    def __init__(
        self, folder: str | Path, data: DataSplits, hidden: int, epochs: int, lr: float, batch_size: int
    ) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--work '{folder}' exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = {
            "format": 1, "dataset": data.name, "data": fingerprint(data), "train_examples": data.num_train,
            "hidden": int(hidden), "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
        }  # fmt: skip

    def _path(self, key: str, seed: int) -> Path:
        return self.folder / f"{key}-seed{seed}.json"

    def get(self, key: str, seed: int) -> dict[str, Any] | None:
        path = self._path(key, seed)
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("ignoring unreadable %s: training that classifier again", path)
            return None
        if not isinstance(saved, dict) or saved.get("settings") != self.settings:
            logger.warning("%s was written with other settings: training that classifier again", path)
            return None
        logger.info("reusing %s", path)
        result: dict[str, Any] = saved["result"]
        return result

    def put(self, key: str, seed: int, result: dict[str, Any]) -> None:
        payload = {"settings": self.settings, "result": result}
        atomic_write_text(self._path(key, seed), json.dumps(payload, indent=2) + "\n")


def compare_augmentation(
    dataset: str,
    run_dir: str | Path | None = None,
    hidden: int = 1024,
    epochs: int = 100,
    seeds: int | Sequence[int] = 3,
    real_weight: float = 0.4,
    lr: float = 0.1,
    batch_size: int = 100,
    temperature: float = 1.0,
    output: str = "rounded",
    data_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Test error of the MLP classifier over several seeds, without and (given a run) with augmentation.

    Args:
        dataset: the data to classify (a name or an .npz file, as ``load_dataset`` takes).
        run_dir: a trained run on the same dataset whose model augments the data (its best checkpoint);
            None: only the row without augmentation.
        hidden: H, width of the two hidden layers.
        epochs: training epochs of every classifier.
        seeds: a number n (seeds 1..n, as in the CLI and ``reproduce``) or the list of seeds; each seed is
            one classifier per row.
        real_weight: weight of the real batch's loss in the augmented rows.
        lr: initial learning rate.
        batch_size: real images per step.
        temperature, output: of the ``ExemplarAugmenter`` (one fresh variation per image and step).
        data_dir: folder with the dataset's files.
        device: where classifiers and the augmenting model run.
        progress: show progress bars.
        work_dir: a folder keeping each finished classifier's result (one JSON file per row and seed, with
            the settings and the augmenting model's digest); a later call with the same settings reuses
            them, so a long comparison interrupted between classifiers resumes where it stopped.

    Returns:
        The settings (dataset, hidden, epochs, seeds, lr, batch_size, real_weight, temperature, output,
        run_dir, prior, train_examples, test_examples, test_inputs) and "rows": one dict per method with
        method, augmented, errors (percent, one per seed), mean, std (None for one seed), train_seconds,
        runs (the ``train_classifier`` results).

    Raises:
        ConfigError: a bad option, a missing run folder, or a run trained on another dataset.
    """
    _check_options(hidden, epochs, real_weight, lr, batch_size)
    seed_list = list(range(1, seeds + 1)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if (isinstance(seeds, int) and seeds < 1) or not seed_list:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    temperature = check_temperature(temperature)
    output = check_output(output)
    dev = resolve_device(device)
    run_config = None
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise ConfigError(f"run folder {run_dir} does not exist")
        run_config = load_run_config(run_dir)
        if not _same_dataset(run_config.data.dataset, str(dataset)):
            raise ConfigError(
                f"the run in {run_dir} was trained on '{run_config.data.dataset}', but --dataset is "
                f"'{dataset}'; augment with a model trained on the same dataset"
            )
    data = load_dataset(dataset, data_dir)
    _check_labels(data)
    x_test, test_kind = classifier_test_set(data)
    if test_kind != "grey":
        logger.warning("%s keeps no grey test images: scoring the classifier on test_x", data.name)
    common = dict(hidden=hidden, epochs=epochs, lr=lr, batch_size=batch_size, device=dev, progress=progress)
    model, prior = None, None
    if run_dir is not None:
        assert run_config is not None
        same_train = run_config.data.train_size is None  # else the run's exemplar set is a prefix
        model, run_data, run_config = load_run(run_dir, device=str(dev), data=data if same_train else None)
        if run_data.data_dim != data.data_dim:
            raise ConfigError(
                f"the run in {run_dir} models D={run_data.data_dim} values per image, {data.name} has "
                f"D={data.data_dim}"
            )
        prior = run_config.prior.name
    store = _ResultStore(work_dir, data, hidden, epochs, lr, batch_size) if work_dir is not None else None
    baseline: list[dict[str, Any]] = []
    augmented: list[dict[str, Any]] = []
    # the augmented rows' key: the model (its weights), the augmentation's settings (repr: exact floats)
    key = (
        f"augmented-{model_digest(model)}-t{temperature!r}-{output}-w{real_weight!r}"
        if model is not None
        else ""
    )
    for s in seed_list:  # seed by seed, so that an interrupted comparison leaves paired rows
        result = store.get("real", s) if store is not None else None
        if result is None:
            result = train_classifier(data, seed=s, **common)  # type: ignore[arg-type]
            if store is not None:
                store.put("real", s, result)
        baseline.append(result)
        if model is None:
            continue
        result = store.get(key, s) if store is not None else None
        if result is None:
            generator = torch.Generator(device=model.device).manual_seed(s)
            augmenter = ExemplarAugmenter(model, 1, temperature, output, generator)
            result = train_classifier(data, seed=s, augmenter=augmenter, real_weight=real_weight, **common)  # type: ignore[arg-type]
            if store is not None:
                store.put(key, s, result)
        augmented.append(result)
    rows = [_summarise("MLP, label smoothing", False, baseline)]
    if model is not None:
        rows.append(
            _summarise(f"MLP, label smoothing + Exemplar VAE augmentation ({prior} prior)", True, augmented)
        )
    return {
        "dataset": data.name,
        "hidden": int(hidden),
        "epochs": int(epochs),
        "seeds": seed_list,
        "lr": float(lr),
        "batch_size": int(batch_size),
        "real_weight": float(real_weight),
        "temperature": temperature,
        "output": output,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "prior": prior,
        "train_examples": data.num_train,
        "test_examples": int(x_test.shape[0]),
        "test_inputs": test_kind,
        "device": str(dev),
        "dtype": "float32",
        "rows": rows,
    }


def classification_table(result: dict[str, Any]) -> str:
    """A markdown table of a ``compare_augmentation`` result, then one line stating the budget."""
    n = len(result["seeds"])
    header = (
        f"| method | hidden layers | epochs | test error % (mean ± std, {n} seed{'s' if n > 1 else ''}) "
        "| per-seed test error % |\n|---|---|---|---|---|"
    )
    lines = [header]
    for row in result["rows"]:
        error = f"{row['mean']:.2f}" + (f" ± {row['std']:.2f}" if row["std"] is not None else "")
        per_seed = ", ".join(f"{e:.2f}" for e in row["errors"])
        lines.append(
            f"| {row['method']} | 2x{result['hidden']} | {result['epochs']} | {error} | {per_seed} |"
        )
    note = (
        f"\n{result['dataset']}: {result['train_examples']} training images, {result['test_examples']} "
        f"{result['test_inputs']} test images; seeds {', '.join(map(str, result['seeds']))}; SGD momentum "
        f"{MOMENTUM}, lr {result['lr']:g} decayed linearly to 1%, batch {result['batch_size']}, label "
        f"smoothing {LABEL_SMOOTHING}, {result['dtype']}, no early stopping."
    )
    if result["run_dir"] is not None:
        w = result["real_weight"]
        note += (
            f" Augmentation: model {result['run_dir']}, loss {w:g}·CE(real) + {1 - w:g}·CE(augmented), one "
            f"fresh variation per image and step, temperature {result['temperature']:g}, output "
            f"{result['output']}."
        )
    return "\n".join(lines) + "\n" + note + "\n"
