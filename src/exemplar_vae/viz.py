"""Pictures, written atomically: image grids (Pillow, a core dependency) and plots (matplotlib, optional).

matplotlib is the ``plots`` extra (``pip install 'exemplar-vae[plots]'``). Without it,
:func:`plot_training_curves` logs a warning and skips the picture (a training run or report still
completes, without curves.png), while :func:`plot_embedding`, asked for explicitly, raises
:class:`~exemplar_vae.errors.ConfigError` naming the extra.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from exemplar_vae.errors import ConfigError
from exemplar_vae.io import atomic_write_bytes
from exemplar_vae.optional import require

logger = logging.getLogger(__name__)

_SKIPPED: set[str] = set()  # curve files already warned about (the curves callback redraws every epoch)


def grid_array(images: Tensor, image_shape: tuple[int, ...], pad: int = 1) -> np.ndarray:
    """Tile a [rows, cols, D] tensor of pixel values in [0, 1] into one uint8 picture.

    Returns:
        [H_total, W_total] (grey) or [H_total, W_total, 3] (colour) uint8 array, with ``pad`` white pixels
        between tiles.
    """
    c, h, w = image_shape
    rows, cols = images.shape[0], images.shape[1]
    imgs = images.detach().float().clamp(0, 1).cpu().numpy().reshape(rows, cols, c, h, w)
    out = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for r in range(rows):
        for k in range(cols):
            top, left = pad + r * (h + pad), pad + k * (w + pad)
            out[:, top : top + h, left : left + w] = imgs[r, k]
    arr = (out * 255).round().astype(np.uint8)
    return arr[0] if c == 1 else arr.transpose(1, 2, 0)


def save_image_grid(images: Tensor, image_shape: tuple[int, ...], path: str | Path, scale: int = 2) -> Path:
    """Write a [rows, cols, D] tensor of images as a PNG grid (upscaled ``scale`` times)."""
    from PIL import Image

    img = Image.fromarray(grid_array(images, image_shape))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _pyplot(what: str) -> Any:
    """matplotlib.pyplot on the file-only Agg backend (imported lazily: it is slow to import, and optional).

    Raises:
        ConfigError: matplotlib is not installed (the message names ``what`` and the ``plots`` extra).
    """
    matplotlib = require("matplotlib", "plots", what)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "plots", what)


def _save_figure(plt: Any, fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Plot train/validation loss (and the exemplar prior's log-variance if present) per epoch as PNG.

    Returns:
        ``path``; or None when matplotlib (the ``plots`` extra) is not installed: then nothing is
        written and a warning is logged (once per file), so a training run or report goes on without
        its curves.png.
    """
    try:
        plt = _pyplot("plotting the training curves")
    except ConfigError as err:
        if str(path) not in _SKIPPED:
            _SKIPPED.add(str(path))
            logger.warning("skipping %s: %s", path, err)
        return None

    epochs = [m["epoch"] for m in history]
    has_var = any("prior_log_var" in m for m in history)
    fig, axes = plt.subplots(1, 2 if has_var else 1, figsize=(10 if has_var else 5, 3.5), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [m["train_loss"] for m in history], label="train loss (beta-weighted)")
    ax.plot(epochs, [m["val_loss"] for m in history], label="validation -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.legend()
    ax.grid(alpha=0.3)
    if has_var:
        ax2 = axes[0, 1]
        ax2.plot(epochs, [m.get("prior_log_var", float("nan")) for m in history])
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("exemplar prior log sigma^2")
        ax2.grid(alpha=0.3)
    return _save_figure(plt, fig, path)


def plot_embedding(
    points: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    title: str = "",
    label_names: list[str] | None = None,
) -> Path:
    """Scatter a 2-D embedding coloured by label, with a legend, as PNG (written atomically).

    Args:
        points: [n, 2] coordinates (e.g. a t-SNE map of latent codes).
        labels: [n] integer labels; -1 (unlabelled) is drawn in grey.
        path: the PNG file.
        title: the figure's title.
        label_names: names of labels 0, 1, ... for the legend (default: the numbers).

    Raises:
        ConfigError: matplotlib (the ``plots`` extra) is not installed.
    """
    plt = _pyplot("plotting an embedding")

    classes = sorted(int(c) for c in np.unique(labels))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6.5, 6))
    size = float(np.clip(8000 / max(1, len(labels)), 3, 30))  # marker area: smaller for more points
    for i, c in enumerate(classes):
        sel = labels == c
        name = "unlabelled" if c < 0 else (label_names[c] if label_names and c < len(label_names) else str(c))
        color = "0.6" if c < 0 else cmap(i % cmap.N)
        ax.scatter(points[sel, 0], points[sel, 1], s=size, color=color, label=name, alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save_figure(plt, fig, path)
