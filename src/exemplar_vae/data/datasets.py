"""In-memory datasets: fixed train/validation/test splits, binarisation, and an indexed Dataset.

Binary image data follows the protocol of the Exemplar VAE paper (Norouzi et al., NeurIPS 2020) and
its code (sajadn/Exemplar-VAE): the training images stay grey values in [0, 1]; they are the
exemplars, and each training batch is binarised afresh with :func:`dynamic_binarize`. The validation
and test images are binarised once, with a fixed seed (:func:`fixed_binarize`), so that every
evaluation sees the same binary data.

8-bit data (``binary=False``, e.g. CelebA) is modelled as pixel values k/255: nothing is binarised,
and :func:`check_8bit` verifies that data meant to be 8-bit really is.

:class:`IndexedDataset` returns each example's position in the training set, which the exemplar
prior needs to leave the example itself out of its own prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import DataError

__all__ = [
    "EIGHT_BIT_ATOL",
    "DataSplits",
    "IndexedDataset",
    "check_8bit",
    "dynamic_binarize",
    "fixed_binarize",
    "identity_collate",
]

Batch = tuple[Tensor, Tensor, Tensor]

EIGHT_BIT_ATOL = 1e-4  # how far (in units of 1/255) a value may be from k/255 and still be 8-bit
_CHECK_ROWS = 4096


@dataclass(frozen=True)
class DataSplits:
    """A dataset split into train, validation and test sets, flattened to vectors.

    Attributes:
        name: the dataset's name ("fashion-mnist", "mnist", "digits", "omniglot", "celeba", an .npz
            file's stem, or an image folder's name).
        image_shape: (C, H, W) of one example; C * H * W == D.
        train_x: [N, D] float32 grey values in [0, 1], as a tensor or as an ``ExemplarStore`` (uint8,
            possibly memory-mapped: a million exemplars without a float copy). These are the exemplars;
            training batches are binarised from them on the fly when ``binary`` is True.
        train_y: [N] int64 labels, -1 where unlabelled.
        val_x: [Nv, D] float32; in {0, 1} when ``binary`` (binarised once with a fixed seed), else
            8-bit values k/255.
        val_y: [Nv] int64 labels, -1 where unlabelled.
        test_x: [Nt, D] float32; in {0, 1} when ``binary`` (binarised once with a fixed seed), else
            8-bit values k/255.
        test_y: [Nt] int64 labels, -1 where unlabelled.
        binary: True for Bernoulli data with dynamic binarisation of the training set; False for
            8-bit data (values k/255 everywhere, nothing binarised; a discretised likelihood).
        val_grey: [Nv, D] float32 grey values of the validation images before binarisation (kNN probes
            and extra exemplars use grey images), or None when the loader did not keep them. For
            8-bit data, the same tensor as ``val_x``.
        test_grey: [Nt, D] float32 grey values of the test images before binarisation, or None.
    """

    name: str
    image_shape: tuple[int, int, int]
    train_x: Tensor | ExemplarStore
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    binary: bool = True
    val_grey: Tensor | None = None
    test_grey: Tensor | None = None

    def __post_init__(self) -> None:
        dim = math.prod(self.image_shape)
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.ndim != 2 or x.shape[1] != dim:
                raise DataError(
                    f"{self.name}: {split}_x has shape {tuple(x.shape)}, expected [N, {dim}] "
                    f"for image shape {self.image_shape}"
                )
            if y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: {split}_y has shape {tuple(y.shape)}, expected [{x.shape[0]}]")
        for split in ("val", "test"):
            grey, x = getattr(self, f"{split}_grey"), getattr(self, f"{split}_x")
            if grey is not None and grey.shape != x.shape:
                raise DataError(
                    f"{self.name}: {split}_grey has shape {tuple(grey.shape)}, expected {tuple(x.shape)} "
                    f"(the shape of {split}_x)"
                )

    @cached_property
    def train_store(self) -> ExemplarStore:
        """The training inputs as the one ``ExemplarStore`` that training and the exemplar prior share:
        ``train_x`` itself when it is a store, else a compact (uint8) copy when every value is k/255,
        else a float32 view of it (no copy)."""
        if isinstance(self.train_x, ExemplarStore):
            return self.train_x
        return ExemplarStore.from_tensor(self.train_x)

    @property
    def data_dim(self) -> int:
        """D, the number of values in one flattened example."""
        return int(self.train_x.shape[1])

    @property
    def num_train(self) -> int:
        """N, the number of training examples (= exemplars)."""
        return int(self.train_x.shape[0])

    def summary(self) -> str:
        """One line describing the splits, e.g. for a log or a results file."""
        c, h, w = self.image_shape
        kind = "binary (dynamic binarisation)" if self.binary else "8-bit (values k/255)"
        return (
            f"{self.name}: {self.num_train} train / {self.val_x.shape[0]} val / "
            f"{self.test_x.shape[0]} test, images {c}x{h}x{w} (D={self.data_dim}), {kind}"
        )


class IndexedDataset(Dataset[Batch]):
    """Examples together with their row index: item i is ``(x[i], y[i], i)``.

    It implements ``__getitems__``, so a DataLoader fetches a whole batch with one indexing op.
    The batch comes back already stacked, so the loader must not collate it again: pass
    ``collate_fn=identity_collate``::

        loader = DataLoader(IndexedDataset(x, y), batch_size=100, shuffle=True,
                            collate_fn=identity_collate)
        for xb, yb, idx in loader:  # [B, D], [B], [B] int64
            ...

    (``identity_collate`` is a module-level function, so it also works with ``num_workers > 0``.)

    Args:
        x: [N, D] examples.
        y: [N] labels.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise DataError(f"IndexedDataset: x has {x.shape[0]} rows but y has {y.shape[0]}")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> Batch:
        """Returns ``(x[i] [D], y[i] [], i [] int64)``."""
        return self.x[i], self.y[i], torch.tensor(i, dtype=torch.int64)

    def __getitems__(self, indices: list[int]) -> Batch:
        """Returns ``(x [B, D], y [B], index [B] int64)`` for the given row indices."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.x[index], self.y[index], index


def identity_collate(batch: Batch) -> Batch:
    """Collate function for :class:`IndexedDataset`: the batch is already stacked."""
    return batch


def dynamic_binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Samples binary data from Bernoulli(x), afresh on every call.

    Args:
        x: [...] probabilities in [0, 1].
        generator: optional RNG; it must live on ``x.device``.

    Returns:
        [...] tensor with values in {0, 1}, same dtype and device as ``x``.
    """
    return torch.bernoulli(x, generator=generator)


def fixed_binarize(x: Tensor, seed: int = 777) -> Tensor:
    """Samples binary data from Bernoulli(x) with a fixed seed: the same result on every call.

    Uses numpy's legacy ``RandomState``, whose stream is frozen across numpy versions, so the
    binarised validation and test sets never change.

    Args:
        x: [...] probabilities in [0, 1].
        seed: the RNG seed (777 in the paper's code).

    Returns:
        [...] tensor with values in {0, 1}, same dtype and device as ``x``.
    """
    uniform = np.random.RandomState(seed).random_sample(tuple(x.shape))  # in [0, 1)
    probs = x.detach().cpu().double().numpy()
    return torch.from_numpy(uniform < probs).to(dtype=x.dtype, device=x.device)


def check_8bit(x: Tensor, what: str, atol: float = EIGHT_BIT_ATOL) -> None:
    """Checks that every value is a multiple of 1/255 (an 8-bit pixel scaled to [0, 1]).

    Args:
        x: [N, D] values in [0, 1]; checked in blocks of rows, in float64.
        what: names the data in the error message, e.g. "mnist: training images".
        atol: tolerance, in units of 1/255 (float32 k/255 is within ~1e-5 of k/255).

    Raises:
        DataError: some value is not k/255; the message gives one such value.
    """
    for block in x.split(_CHECK_ROWS):
        scaled = block.detach().cpu().double() * 255.0
        off = (scaled - scaled.round()).abs()
        if off.numel() and off.max().item() > atol:
            value = block.flatten()[off.flatten().argmax()].item()
            raise DataError(
                f"{what} are not 8-bit values: e.g. {value:.6g} = {value * 255:.4g}/255 is not k/255 for an "
                "integer k. 8-bit modelling (binarize=False) needs pixels saved as uint8 (or k/255); "
                "keep binarize=True to model these grey values as Bernoulli probabilities"
            )
