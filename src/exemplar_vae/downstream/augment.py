"""Generative data augmentation with a trained Exemplar VAE (Norouzi et al. 2020, Sec. 5; docs/paper.md §9).

Each input x is replaced by new images drawn around it: z ~ r(z|x) = N(mu(x), (T * sigma)^2 I), where
r is the exemplar prior's transition kernel (``Prior.variation_kernel``; for other priors a draw from
q(z|x)) and T a temperature, then decoded. The label of x is copied to each of its variations. The paper
uses one fresh variation per image and training step, shown as the decoder's Bernoulli mean rounded to a
multiple of 1/255 (the "rounded" output form).

Use it as a callable on batches inside any training loop::

    augmenter = ExemplarAugmenter(model, variations=1)
    x_aug, y_aug = augmenter(x, y)  # [B, D] grey in [0, 1] -> [B * n, D], [B * n]

or wrap a dataset (a fresh augmentation on every access)::

    loader = DataLoader(AugmentedDataset(x, y, augmenter), batch_size=100, shuffle=True,
                        collate_fn=identity_collate)
    for x, y, x_aug, y_aug in loader: ...

``augment_run`` writes augmented copies of a run's training images to an ``.npz`` file that
``load_dataset`` reads back.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.generation import check_temperature
from exemplar_vae.io import atomic_write_bytes
from exemplar_vae.models.vae import VAE
from exemplar_vae.runs import load_run

logger = logging.getLogger(__name__)

OUTPUTS = ("rounded", "mean", "sample")
"""Output forms: the decoder's Bernoulli mean rounded to a multiple of 1/255 (the paper's), the mean
itself, or a binary Bernoulli sample."""

AugmentedBatch = tuple[Tensor, Tensor, Tensor, Tensor]


def round_to_8bit(p: Tensor) -> Tensor:
    """Pixel values in [0, 1] rounded to the nearest multiple of 1/255 (as an 8-bit image stores them)."""
    return torch.round(p * 255.0) / 255.0


def check_output(output: str) -> str:
    """``output`` if it names an output form, else ConfigError listing the valid ones."""
    if output not in OUTPUTS:
        raise ConfigError(f"unknown --pixels '{output}'; valid: {', '.join(OUTPUTS)}")
    return output


def check_positive(name: str, value: int) -> int:
    """``value`` if it is an integer >= 1, else ConfigError naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value}")
    return int(value)


class ExemplarAugmenter:
    """New images drawn around each input from a trained VAE: z ~ r(z|x), decoded.

    Never trains or changes the model: each call runs under ``no_grad`` with the model in eval mode, and
    puts the model back in the mode it found it in.

    Args:
        model: a trained VAE (for the exemplar prior, r(z|x) = N(mu(x), sigma^2 I) with the prior's learned
            sigma; for other priors the variations are draws from q(z|x)).
        variations: n, new images per input.
        temperature: T >= 0, multiplies the standard deviation of r(z|x); 0 returns the decoded mean code
            (the reconstruction of x through mu(x)).
        output: "rounded" (decoder mean rounded to a multiple of 1/255, the paper's), "mean" (decoder
            Bernoulli mean) or "sample" (a Bernoulli draw from it, values in {0, 1}).
        generator: RNG for the draws; it must live on the model's device. None uses the global RNG.
    """

    def __init__(
        self,
        model: VAE,
        variations: int = 1,
        temperature: float = 1.0,
        output: str = "rounded",
        generator: torch.Generator | None = None,
    ) -> None:
        self.model = model
        self.variations = check_positive("variations", variations)
        self.temperature = check_temperature(temperature)
        self.output = check_output(output)
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"ExemplarAugmenter(variations={self.variations}, temperature={self.temperature}, "
            f"output='{self.output}')"
        )

    def __call__(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Augment a batch.

        Args:
            x: [B, D] grey images in [0, 1] (the same D as the model's data).
            y: [B] labels, or None.

        Returns:
            (x_aug [B * n, D] float32 on x's device, y_aug [B * n] = each label repeated n times, or None).
            Rows b * n ... b * n + n - 1 are the variations of x[b].
        """
        if x.ndim != 2:
            raise DataError(f"augmenter input must be a [B, D] batch, got shape {tuple(x.shape)}")
        if y is not None and y.shape != (x.shape[0],):
            raise DataError(f"labels must have shape [{x.shape[0]}] to match x, got {tuple(y.shape)}")
        n = self.variations
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                xm = x.to(device=self.model.device, dtype=torch.float32)
                mean = self.model.exemplar_variations(xm, n, self.generator, self.temperature)  # [B, n, D]
                mean = mean.reshape(x.shape[0] * n, -1)  # [B * n, D]
                x_aug = self._output_form(mean)
        finally:
            self.model.train(was_training)
        y_aug = y.repeat_interleave(n, dim=0) if y is not None else None  # [B * n]
        return x_aug.to(device=x.device, dtype=torch.float32), y_aug

    def _output_form(self, mean: Tensor) -> Tensor:
        """Bernoulli means [M, D] -> the requested output form [M, D]."""
        if self.output == "mean":
            return mean
        if self.output == "rounded":
            return round_to_8bit(mean)
        return torch.bernoulli(mean, generator=self.generator)


class AugmentedDataset(Dataset[AugmentedBatch]):
    """A dataset that pairs each example with fresh augmentations of it, drawn on every access.

    Item i is ``(x[i] [D], y[i], x_aug [n, D], y_aug [n])``. ``__getitems__`` augments a whole batch in one
    call to the model and returns it already stacked, so give the DataLoader
    ``collate_fn=exemplar_vae.data.identity_collate`` (and keep ``num_workers=0``, since the model runs in
    the loader)::

        for x, y, x_aug, y_aug in DataLoader(ds, batch_size=100, shuffle=True, collate_fn=identity_collate):
            ...  # [B, D], [B], [B * n, D], [B * n]

    Args:
        x: [N, D] grey images in [0, 1].
        y: [N] labels.
        augmenter: an ``ExemplarAugmenter`` (or any callable with its signature).
    """

    def __init__(self, x: Tensor, y: Tensor, augmenter: ExemplarAugmenter) -> None:
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise DataError(
                f"AugmentedDataset needs x [N, D] and y [N]; got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        self.x, self.y, self.augmenter = x, y, augmenter

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> AugmentedBatch:
        """``(x [D], y [], x_aug [n, D], y_aug [n])``."""
        x_aug, y_aug = self.augmenter(self.x[i : i + 1], self.y[i : i + 1])  # [n, D], [n]
        assert y_aug is not None
        return self.x[i], self.y[i], x_aug, y_aug

    def __getitems__(self, indices: list[int]) -> AugmentedBatch:
        """``(x [B, D], y [B], x_aug [B * n, D], y_aug [B * n])`` for the given rows."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        x, y = self.x[index], self.y[index]
        x_aug, y_aug = self.augmenter(x, y)
        assert y_aug is not None
        return x, y, x_aug, y_aug


def _to_storage(x: Tensor, output: str) -> np.ndarray:
    """[M, D] augmented images -> the array stored in the .npz: uint8 0..255 ("rounded"), bool ("sample"),
    float32 ("mean")."""
    if output == "rounded":
        return torch.round(x * 255.0).to(torch.uint8).cpu().numpy()
    if output == "sample":
        return (x > 0.5).cpu().numpy()
    return x.to(torch.float32).cpu().numpy()


def augment_run(
    run_dir: str | Path,
    out: str | Path,
    per_example: int = 1,
    temperature: float = 1.0,
    output: str = "rounded",
    limit: int | None = None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 500,
) -> dict[str, Any]:
    """Write augmented copies of a run's training images to an ``.npz`` file.

    The file holds ``x`` ([n, H, W] for one channel, else [n, C, H, W]; uint8 0..255 for "rounded", bool
    for "sample", float32 in [0, 1] for "mean"), ``y`` ([n] int64 labels copied from the source images) and
    ``source_index`` ([n] int64 row of the source image in the training set), with n = sources *
    per_example; the variations of one source are consecutive. ``load_dataset(out)`` reads it back.

    Args:
        run_dir: a folder written by ``train`` (its best checkpoint is used).
        out: the ``.npz`` file to write (atomically).
        per_example: variations per training image.
        temperature: multiplies the standard deviation of r(z|x).
        output: "rounded", "mean" or "sample" (see ``ExemplarAugmenter``).
        limit: augment only the first ``limit`` training images (None: all).
        seed: seeds the draws.
        device: where the model runs.
        batch_size: source images augmented together.

    Returns:
        A summary: out, run_dir, dataset, prior, sources, per_example, examples, temperature, output,
        dtype, image_shape, seed, seconds.

    Raises:
        ConfigError: a bad option, ``out`` not an .npz file, or a missing run folder.
    """
    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise ConfigError(f"--out must be an .npz file, got '{out}'")
    per_example = check_positive("--variations", per_example)
    temperature = check_temperature(temperature)
    output = check_output(output)
    if limit is not None:
        limit = check_positive("--limit", limit)
    batch_size = check_positive("batch size", batch_size)
    start = time.perf_counter()
    model, data, config = load_run(run_dir, device=device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    augmenter = ExemplarAugmenter(model, per_example, temperature, output, generator)
    sources = data.num_train if limit is None else min(limit, data.num_train)
    xs, ys = [], []
    for lo in range(0, sources, batch_size):
        x = data.train_x[lo : min(lo + batch_size, sources)]  # [b, D] grey
        y = data.train_y[lo : min(lo + batch_size, sources)]
        x_aug, y_aug = augmenter(x, y)  # [b * n, D], [b * n]
        assert y_aug is not None
        xs.append(_to_storage(x_aug, output))
        ys.append(y_aug.numpy())
    c, h, w = data.image_shape
    x_all = np.concatenate(xs)  # [n, D]
    x_all = x_all.reshape(-1, h, w) if c == 1 else x_all.reshape(-1, c, h, w)
    arrays: dict[str, Any] = {
        "x": x_all,
        "y": np.concatenate(ys).astype(np.int64),
        "source_index": np.repeat(np.arange(sources, dtype=np.int64), per_example),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out, buf.getvalue())
    summary = {
        "out": str(out),
        "run_dir": str(run_dir),
        "dataset": data.name,
        "prior": config.prior.name,
        "sources": sources,
        "per_example": per_example,
        "examples": int(x_all.shape[0]),
        "temperature": temperature,
        "output": output,
        "dtype": str(x_all.dtype),
        "image_shape": list(data.image_shape),
        "seed": seed,
        "seconds": time.perf_counter() - start,
    }
    logger.info("wrote %d augmented images of %d sources to %s", summary["examples"], sources, out)
    return summary
