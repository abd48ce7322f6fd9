"""The machine's rates and the FLOP model every floor of the benchmark is built on.

Decoder and encoder FLOPs are counted from the model's ``nn.Linear`` layers (2 x in x out per row; the
gates' element-wise work is left out, so the floors are lower bounds). The decoder-shaped matmul rate is
sampled at several moments of the run, because this machine's speed drifts within minutes: the floors use
the fastest sample (the strictest floor), and a spread above ``UNSTEADY`` flags the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from exemplar_vae.config import PriorConfig
from exemplar_vae.models.layers import GatedDense
from exemplar_vae.models.vae import VAE


class TrainRow(Protocol):
    """What the FLOP model needs of a training row (``train_rows.TrainRow``): its prior and how many
    exemplars a step re-encodes."""

    prior: PriorConfig
    union: int | None


UNSTEADY = 1.25  # slowest-to-fastest spread of the run's matmul-rate samples above which a run is flagged

Shape = tuple[int, int, int]  # a matrix product [m, k] @ [k, n]


def linear_flops(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """FLOPs per input row of the ``nn.Linear`` layers of ``module`` (2 x in x out each), except those in
    ``skip``; element-wise work (gates, activations) is not counted."""
    skipped = {id(m) for part in skip for m in part.modules()}
    return sum(
        2 * m.in_features * m.out_features
        for m in module.modules()
        if isinstance(m, nn.Linear) and id(m) not in skipped
    )


def matmul_rate(shapes: list[Shape], repeats: int = 3) -> float:
    """GFLOP/s of the float32 products [m, k] @ [k, n] over ``shapes``, taken together (best of repeats)."""
    gen = torch.Generator().manual_seed(0)
    mats = [(torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in mats:  # warm-up
        a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in mats:
            a @ b
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


@dataclass
class Rates:
    square_gflops: float  # a large square float32 product
    decoder_shapes: list[Shape]  # the decoder's products on one evaluation chunk of rows
    decoder_samples: list[float]  # their rate (GFLOP/s), measured at several moments of the run
    decoder_flops: int  # per importance sample
    encoder_flops: int  # per input (both heads)
    encoder_mean_flops: int  # per input, the mean path the exemplar prior re-encodes
    encoder_layers: list[tuple[int, int]]  # (in, out) of each product of the encoder, in forward order
    encoder_mean_layers: list[tuple[int, int]]  # the same without the log-variance head
    softplus_ns: float  # seconds x 1e9 per element of F.softplus on one evaluation chunk of logits
    exp_ns: float  # seconds x 1e9 per element of an in-place exp on one chunk of prior exponents
    round_rates: list[float] = field(default_factory=list)  # training round -> its local decoder rate

    @property
    def decoder_layers(self) -> list[tuple[int, int]]:
        """(in, out) of each product of the decoder, in forward order."""
        return [(k, n) for _, k, n in self.decoder_shapes]

    @property
    def decoder_gflops(self) -> float:
        """The fastest rate measured: this machine's speed drifts within minutes, and the floors use the
        best it showed (the strictest floor)."""
        return max(self.decoder_samples)

    @property
    def spread(self) -> float:
        """Fastest over slowest decoder-rate sample: how much the machine's speed drifted in the run."""
        return max(self.decoder_samples) / min(self.decoder_samples)

    @property
    def unsteady(self) -> bool:
        """Whether the rate drifted more than ``UNSTEADY``: other load shared the machine."""
        return self.spread > UNSTEADY

    def resample(self) -> None:
        """Measure the decoder-shaped rate once more (between the benchmark's sections)."""
        self.decoder_samples.append(matmul_rate(self.decoder_shapes))

    def resample_around(self) -> float:
        """Measure the rate after a section; returns the faster of it and the one measured before the
        section (the section's local rate: the floor of the machine as it ran at that time)."""
        before = self.decoder_samples[-1]
        self.resample()
        return max(before, self.decoder_samples[-1])


def product_shapes(module: nn.Module, rows: int, skip: tuple[nn.Module, ...] = ()) -> list[Shape]:
    """The matrix products [rows, in] @ [in, out] one forward of ``module`` runs (except in ``skip``): a
    ``GatedDense`` runs its two maps as one product of width 2 x out, every other ``nn.Linear`` one of its
    own."""
    shapes: list[Shape] = []
    fused = {id(m) for part in skip for m in part.modules()}
    for m in module.modules():
        if isinstance(m, GatedDense):
            shapes.append((rows, m.h.in_features, 2 * m.h.out_features))
            fused.update({id(m.h), id(m.g)})
        elif isinstance(m, nn.Linear) and id(m) not in fused:
            shapes.append((rows, m.in_features, m.out_features))
    return shapes


def elementwise_ns(fn: Callable[[Tensor], object], shape: tuple[int, ...], repeats: int = 5) -> float:
    """Nanoseconds per element of ``fn`` on a random float32 tensor of ``shape`` (best of repeats)."""
    t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    fn(t.clone())  # warm-up
    best = math.inf
    for _ in range(repeats):
        u = t.clone()
        start = time.perf_counter()
        fn(u)
        best = min(best, time.perf_counter() - start)
    return 1e9 * best / t.numel()


def measure_rates(model: VAE, rows: int, square: int, data_dim: int, candidates: int) -> Rates:
    """The machine's rates at start and the model's FLOP counts: the decoder's products on ``rows`` rows
    (one evaluation chunk), a ``square`` product, and the element-wise functions evaluation runs per
    sample (a softplus per logit, an exp per kept kernel term)."""
    dec = product_shapes(model.decoder, rows)
    encoder = model.encoder
    assert isinstance(encoder, nn.Module)  # its layers are counted
    head = getattr(encoder, "log_var_head", None)
    skip = (head,) if head is not None else ()
    return Rates(
        matmul_rate([(square, square, square)]),
        dec,
        [matmul_rate(dec)],
        linear_flops(model.decoder),
        linear_flops(encoder),
        linear_flops(encoder, skip),
        [(k, n) for _, k, n in product_shapes(encoder, 1)],
        [(k, n) for _, k, n in product_shapes(encoder, 1, skip)],
        elementwise_ns(lambda t: torch.nn.functional.softplus(t, threshold=20.0), (rows, data_dim)),
        elementwise_ns(lambda t: t.exp_(), (rows, candidates)),
    )


def products_seconds(shapes: list[Shape]) -> float:
    """Seconds the products ``shapes`` take, run one after the other on random matrices (best of 3)."""
    return sum(2 * m * k * n for m, k, n in shapes) / (1e9 * matmul_rate(shapes))


def pass_products(layers: list[tuple[int, int]], rows: int, input_grad: bool) -> list[Shape]:
    """The products of one pass of ``rows`` rows through ``layers``, forward and backward: a weight
    gradient for every layer, an input gradient for every layer but the first unless ``input_grad``."""
    out = [(rows, k, n) for k, n in layers]
    for i, (k, n) in enumerate(layers):
        out.append((n, rows, k))  # dW = dY^T X
        if i > 0 or input_grad:
            out.append((rows, n, k))  # dX = dY W
    return out


def step_products(row: TrainRow, rates: Rates, batch: int) -> list[Shape]:
    """The matrix products [m, k] @ [k, n] of one training step, forward and backward: the batch through
    encoder and decoder, and the rows the prior adds through the encoder (VampPrior's K pseudo-inputs;
    the exemplar prior's re-encoded exemplars, mean path). Backward: a weight gradient for every product
    and an input gradient for every product but the first of an encoder pass over images."""
    shapes = pass_products(rates.encoder_layers, batch, False) + pass_products(
        rates.decoder_layers, batch, True
    )
    if row.prior.name == "vampprior":
        shapes += pass_products(rates.encoder_layers, row.prior.components, True)
    if row.prior.name == "exemplar" and row.union is not None:
        shapes += pass_products(rates.encoder_mean_layers, row.union, False)
    if _encodes_subset_without_grad(row):  # all M through the mean path, forward only
        shapes += [(row.prior.exemplars or 0, k, n) for k, n in rates.encoder_mean_layers]
    return shapes


def _encodes_subset_without_grad(row: TrainRow) -> bool:
    """The exact exemplar prior with a gradient tolerance: all M exemplars are encoded without gradient,
    only the ``union`` of mass-carrying ones with it."""
    p = row.prior
    return p.name == "exemplar" and p.knn == 0 and p.grad_tolerance is not None


def step_floor_flops(row: TrainRow, rates: Rates, batch: int) -> float:
    """Forward + backward (3x forward) FLOPs of one step: the batch through encoder and decoder, plus the
    encoder passes the prior adds (the exact prior with a gradient tolerance: the forward of all M and
    the forward + backward of the mass-carrying union)."""
    flops = batch * (rates.encoder_flops + rates.decoder_flops)
    if row.prior.name == "vampprior":
        flops += row.prior.components * rates.encoder_flops
    if row.prior.name == "exemplar" and row.union is not None:
        flops += row.union * rates.encoder_mean_flops
    no_grad = (
        (row.prior.exemplars or 0) * rates.encoder_mean_flops if _encodes_subset_without_grad(row) else 0
    )
    return 3.0 * flops + no_grad
