"""Speed of training and evaluation of the Exemplar VAE against FLOP floors, on real Fashion-MNIST.

Everything is measured in one run, so that the ratios compare like with like:

0. Machine rates: GFLOP/s of float32 matrix products of the decoder's shapes and of a large square one.
   Decoder and encoder FLOPs are counted from the model's ``nn.Linear`` layers (2 x in x out per row; the
   gates' element-wise work is left out, so the floors are lower bounds).
1. Training step time per prior (batch 100, gated MLP 2x300, z = 40): the median over ``--steps`` steps of
   one iteration of ``Trainer.train_epoch`` (after ``--warmup`` steps; timed between optimiser steps by a
   post-step hook, so no training math is repeated here), against its FLOP floor: the batch's forward +
   backward (3x the forward FLOPs) plus what the prior adds (VampPrior: its K pseudo-inputs through the
   encoder; exemplar prior with k > 0: the retrieved union re-encoded with gradient, mean path only).
   Epoch time = steps x median + the cache refresh, against the same floors. The kNN search of one batch
   is timed apart (exact search: recall 1). The rows (and an official-code-style step) are timed
   interleaved in ``--rounds`` rounds with the matmul rate measured between rounds, so that ratios between
   rows, and each step against the rate measured around it, compare the machine in one state.
2. Evaluation at the paper's protocol (10k test points, S = 5000, all N = 50k training images as
   exemplars): ``evaluate_density`` with its defaults (prior truncated to the K = 1000 exemplars nearest
   each test point) timed on ``--eval-points`` test points and extrapolated, against the decoder-FLOP
   floor (10k x S x decoder FLOPs / decoder-shaped matmul rate). Beside it, on a few points with the same
   importance samples: the brute force at matrix-product speed (the full prior over all N, float32
   blocks), which also gives the truncation error of the default; an official-code-style brute force (one
   test point at a time, the encoder re-run on all S copies, the full prior in float64); and the
   certified evaluation (``certify=True``), with how often it certifies below 0.01 nats.
3. Peak memory (peak RSS, VmHWM) of the evaluation and of training steps, each run in a child process.

With ``--run RUN_DIR`` (default runs/fashion/exemplar when it exists) the evaluation uses that trained
exemplar model, so the truncation error and the certificates are those of a trained model; otherwise an
untrained one. Training rows use fresh models (cost does not depend on the weights), except the kNN
exemplar row, which loads that run's weights: the number of exemplars retrieved and re-encoded per step
is ~130 for an untrained encoder and ~1000 for a trained one.

Run (about 5-10 minutes with the defaults on 2 CPU cores; ``--quick`` is a smoke run on tiny sizes):

    .venv/bin/python benchmarks/bench_train_eval.py                # report on stdout
    .venv/bin/python benchmarks/bench_train_eval.py --write        # ... also benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_train_eval.py --quick --dataset digits

Progress goes to stderr; the markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from exemplar_vae import (
    DataConfig,
    DataSplits,
    ModelConfig,
    PriorConfig,
    RunConfig,
    TrainConfig,
    load_dataset,
)
from exemplar_vae.config import validate
from exemplar_vae.data import dynamic_binarize
from exemplar_vae.evaluation import evaluate_density
from exemplar_vae.functional import log_normal_diag, reparameterize
from exemplar_vae.models.layers import GatedDense
from exemplar_vae.models.vae import VAE
from exemplar_vae.pipeline import build_model, load_run
from exemplar_vae.priors.exemplar import ExemplarPrior, exemplar_log_kernel
from exemplar_vae.retrieval import ApproximateIndex, recall
from exemplar_vae.training.checkpoint import load_checkpoint
from exemplar_vae.training.loop import BatchSampler, Trainer

logger = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
UNSTEADY = 1.25  # slowest-to-fastest spread of the run's matmul-rate samples above which a run is flagged
TRAINED_RUN = Path(__file__).resolve().parents[1] / "runs" / "fashion" / "exemplar"


# -- helpers -----------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by one call of ``fn``."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class FirstBatches(BatchSampler):
    """The first ``count`` batches of another sampler's epoch: a short epoch for ``Trainer.train_epoch``."""

    def __init__(self, base: BatchSampler, count: int) -> None:
        super().__init__(base.n, base.batch_size, base.seed, base.rank, base.world_size)
        self.count = count

    def batches(self, epoch: int) -> list[Tensor]:
        full = super().batches(epoch)
        if len(full) < self.count:
            raise SystemExit(f"asked for {self.count} batches but an epoch has only {len(full)}")
        return full[: self.count]

    def __len__(self) -> int:
        return self.count


def machine_lines(device: torch.device) -> list[str]:
    """Date, CPU (or GPU), cores, torch version, threads, load: the context every figure was taken in."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import faiss  # type: ignore[import-untyped]

        knn = f"faiss {faiss.__version__}"
    except ImportError:
        knn = "torch (faiss not installed)"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu}, {cores} cores available; load average (1, 5, 15 min) at start: {load}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads (`torch.get_num_threads()`), "
        f"device {device}; kNN search: {knn}; Python {platform.python_version()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    if hasattr(os, "getloadavg") and cores and os.getloadavg()[0] > 0.5 * cores:
        lines.append(
            f"- **warning: the machine was busy at start (1-min load {os.getloadavg()[0]:.1f} on {cores} "
            "cores); other processes disturb these timings**"
        )
    lines.append(f"- command: `{shlex.join(sys.orig_argv)}`")
    return lines


def run_config(prior: PriorConfig, args: argparse.Namespace, num_train: int) -> RunConfig:
    """The paper's MLP VAE and optimiser with ``prior``, validated against the data (resolves M)."""
    config = RunConfig(
        data=DataConfig(args.dataset, args.data_dir),
        model=ModelConfig(),
        prior=prior,
        train=TrainConfig(batch_size=args.batch_size, seed=args.seed, device=str(args.device)),
    )
    return validate(config, num_train)


def fresh_model(prior: PriorConfig, args: argparse.Namespace, data: DataSplits) -> tuple[VAE, RunConfig]:
    torch.manual_seed(args.seed)
    config = run_config(prior, args, data.num_train)
    return build_model(config, data, args.device), config


def prior_label(p: PriorConfig) -> tuple[str, str, str]:
    """(prior, k, M) columns of the tables."""
    if p.name == "exemplar":
        return p.name, str(p.knn) if p.knn else "exact", f"{p.exemplars:,}"
    if p.name in ("mog", "vampprior"):
        return p.name, "-", f"K={p.components}"
    return p.name, "-", "-"


# -- 0. machine rates and FLOP counts ------------------------------------------------------------------
def linear_flops(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """FLOPs per input row of the ``nn.Linear`` layers of ``module`` (2 x in x out each), except those in
    ``skip``; element-wise work (gates, activations) is not counted."""
    skipped = {id(m) for part in skip for m in part.modules()}
    return sum(
        2 * m.in_features * m.out_features
        for m in module.modules()
        if isinstance(m, nn.Linear) and id(m) not in skipped
    )


def matmul_rate(shapes: list[tuple[int, int, int]], repeats: int = 3) -> float:
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
    decoder_shapes: list[tuple[int, int, int]]  # the decoder's products on one evaluation chunk of rows
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

    def resample(self) -> None:
        """Measure the decoder-shaped rate once more (between the benchmark's sections)."""
        self.decoder_samples.append(matmul_rate(self.decoder_shapes))

    def resample_around(self) -> float:
        """Measure the rate after a section; returns the faster of it and the one measured before the
        section (the section's local rate: the floor of the machine as it ran at that time)."""
        before = self.decoder_samples[-1]
        self.resample()
        return max(before, self.decoder_samples[-1])


def product_shapes(
    module: nn.Module, rows: int, skip: tuple[nn.Module, ...] = ()
) -> list[tuple[int, int, int]]:
    """The matrix products [rows, in] @ [in, out] one forward of ``module`` runs (except in ``skip``): a
    ``GatedDense`` runs its two maps as one product of width 2 x out, every other ``nn.Linear`` one of its
    own."""
    shapes: list[tuple[int, int, int]] = []
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
    dec = product_shapes(model.decoder, rows)
    head = getattr(model.encoder, "log_var_head", None)
    skip = (head,) if head is not None else ()
    return Rates(
        matmul_rate([(square, square, square)]),
        dec,
        [matmul_rate(dec)],
        linear_flops(model.decoder),
        linear_flops(model.encoder),
        linear_flops(model.encoder, skip),
        [(k, n) for _, k, n in product_shapes(model.encoder, 1)],
        [(k, n) for _, k, n in product_shapes(model.encoder, 1, skip)],
        elementwise_ns(lambda t: torch.nn.functional.softplus(t, threshold=20.0), (rows, data_dim)),
        elementwise_ns(lambda t: t.exp_(), (rows, candidates)),
    )


def products_seconds(shapes: list[tuple[int, int, int]]) -> float:
    """Seconds the products ``shapes`` take, run one after the other on random matrices (best of 3)."""
    return sum(2 * m * k * n for m, k, n in shapes) / (1e9 * matmul_rate(shapes))


def step_products(row: TrainRow, rates: Rates, batch: int) -> list[tuple[int, int, int]]:
    """The matrix products [m, k] @ [k, n] of one training step, forward and backward: the batch through
    encoder and decoder, and the rows the prior adds through the encoder (VampPrior's K pseudo-inputs;
    the exemplar prior's re-encoded exemplars, mean path). Backward: a weight gradient for every product
    and an input gradient for every product but the first of an encoder pass over images."""

    def passes(layers: list[tuple[int, int]], rows: int, input_grad: bool) -> list[tuple[int, int, int]]:
        out = [(rows, k, n) for k, n in layers]
        for i, (k, n) in enumerate(layers):
            out.append((n, rows, k))  # dW = dY^T X
            if i > 0 or input_grad:
                out.append((rows, n, k))  # dX = dY W
        return out

    shapes = passes(rates.encoder_layers, batch, False) + passes(rates.decoder_layers, batch, True)
    if row.prior.name == "vampprior":
        shapes += passes(rates.encoder_layers, row.prior.components, True)
    if row.prior.name == "exemplar" and row.union is not None:
        shapes += passes(rates.encoder_mean_layers, row.union, False)
    return shapes


def rates_report(r: Rates, args: argparse.Namespace) -> list[str]:
    return [
        "## 0. Machine rates and FLOP counts",
        "",
        f"- float32 matmul, {args.square}x{args.square} square: **{r.square_gflops:.1f} GFLOP/s**",
        f"- float32 matmul, the decoder's products on {args.chunk_rows:,} rows (one evaluation chunk; each gated "
        "layer's two maps as one product of twice the width, as the model runs them): "
        f"**{r.decoder_gflops:.1f} GFLOP/s**, the fastest of {len(r.decoder_samples)} measurements taken between "
        f"the sections of this run ({', '.join(f'{g:.0f}' for g in r.decoder_samples)}; the machine's speed "
        "drifts): the rate every floor below uses",
        f"- decoder: {r.decoder_flops / 1e6:.3f} MFLOP per importance sample (its nn.Linear layers, "
        f"2 x in x out; gates not counted); encoder: {r.encoder_flops / 1e6:.3f} MFLOP per input, of "
        f"which the mean path (what the exemplar prior re-encodes) {r.encoder_mean_flops / 1e6:.3f}",
        *(
            [
                f"- **warning: the matmul rate varied {spread:.2f}x during this run (slowest to fastest "
                f"sample; above {UNSTEADY:.2f}x counts as unsteady): other load shared the machine, and the "
                "ratios against the strictest floor overstate the overheads; the local-rate columns are "
                "the steadier figures**"
            ]
            if (spread := max(r.decoder_samples) / min(r.decoder_samples)) > UNSTEADY
            else []
        ),
    ]


# -- 1. training ---------------------------------------------------------------------------------------
@dataclass
class TrainRow:
    prior: PriorConfig
    step_s: list[float]  # [steps] seconds per timed step
    steps_per_epoch: int
    refresh_s: list[float]  # explicit prior.refresh(encoder) calls (exemplar rows)
    union: int | None = None  # distinct exemplars re-encoded per step (kNN: measured; exact: M)
    search_s: float | None = None  # one batch's kNN search (median), kNN rows
    recall: float | None = None  # recall of the row's search against the exact one (ivf rows)
    index_s: float | None = None  # building the IVF index after a refresh (ivf rows)
    validate_s: float | None = None  # validate() with the cache fresh
    label: str | None = None  # a row that is not one of our priors (the official-style step)
    step_round: list[int] = field(default_factory=list)  # [steps] the round each timed step ran in
    products_s: dict[int, float] = field(default_factory=dict)  # round -> the step's products alone (s)

    @property
    def median(self) -> float:
        return statistics.median(self.step_s)


def step_floor_flops(row: TrainRow, rates: Rates, batch: int) -> float:
    """Forward + backward (3x forward) FLOPs of one step: the batch through encoder and decoder, plus the
    encoder passes the prior adds."""
    flops = batch * (rates.encoder_flops + rates.decoder_flops)
    if row.prior.name == "vampprior":
        flops += row.prior.components * rates.encoder_flops
    if row.prior.name == "exemplar" and row.union is not None:
        flops += row.union * rates.encoder_mean_flops
    return 3.0 * flops


@dataclass
class Stepper:
    """A training row under measurement: ``run(n)`` takes n more training steps and returns their seconds
    (one full iteration each); ``finish()`` takes the row's other measurements after the timed steps."""

    row: TrainRow
    run: Callable[[int], list[float]]
    finish: Callable[[], None]


def prepare_training(prior: PriorConfig, args: argparse.Namespace, data: DataSplits, extras: bool) -> Stepper:
    """A row of ``Trainer.train_epoch`` steps, warmed up by ``args.warmup`` steps.

    Exemplar rows also time the cache refresh and count the exemplars retrieved for one batch; with
    ``extras`` (the kNN rows) ``finish`` times the kNN search of one batch, the IVF index build and recall,
    and (exact search) ``Trainer.validate()``.
    """
    model, config = fresh_model(prior, args, data)
    if prior.name == "exemplar" and prior.knn > 0 and args.run is not None:
        # the number of exemplars retrieved (and re-encoded) per step depends on the weights: ~130 for an
        # untrained encoder, ~1000 for a trained one; time the step with the trained run's weights
        model.load_state_dict(load_checkpoint(Path(args.run) / "best.pt", map_location=args.device)["model"])
    trainer = Trainer(model, data, config, None, progress=False)
    row = TrainRow(config.prior, [], len(trainer.sampler), [])
    base = trainer.sampler
    prior_module = model.prior
    if isinstance(prior_module, ExemplarPrior):
        refresh = prior_module.refresh
        row.refresh_s = [timed(lambda: refresh(model.encoder), args.device) for _ in range(args.repeats)]
        row.union = config.prior.exemplars  # exact: the whole subset is re-encoded
    if isinstance(prior_module, ExemplarPrior) and prior.knn > 0:
        model.train()
        with torch.no_grad():  # the union one batch retrieves (and a step re-encodes), trained weights
            idx = base.batches(1)[0].to(args.device)  # [B]
            mean, _ = model.encode(dynamic_binarize(trainer.train_x[idx]))  # [B, d]
            row.union = prior_module.retrieve(mean, idx, prior_module.draw_subset()).numel()

    def run(n: int) -> list[float]:
        # n + 1 steps of the first batches of an epoch; an interval between the ends of two consecutive
        # optimiser steps is one full iteration (binarise, forward, backward, normalise, Adam, .item()s).
        # The calls time steps inside one epoch, so the cache refresh that starts an epoch is skipped.
        trainer.sampler = FirstBatches(base, n + 1)
        trainer._prior_fresh = True
        stamps: list[float] = []
        hook = trainer.optimizer.register_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
        try:
            trainer.train_epoch(1, beta=1.0)
        finally:
            hook.remove()
        return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]  # [n]

    def finish() -> None:
        if not (extras and isinstance(prior_module, ExemplarPrior)):
            return
        model.train()
        with torch.no_grad():
            idx = base.batches(1)[0].to(args.device)  # [B]
            mean, _ = model.encode(dynamic_binarize(trainer.train_x[idx]))  # [B, d]
            subset = prior_module.draw_subset()
            searches = [
                timed(lambda: prior_module.retrieve(mean, idx, subset), args.device) for _ in range(5)
            ]
            row.search_s = statistics.median(searches)
            if prior.search == "ivf":
                codes = prior_module.cache.get()
                row.index_s = timed(lambda: ApproximateIndex(codes, None, prior.nprobe), args.device)
                row.recall = search_recall(prior_module, trainer, args)
        if prior.search == "exact":
            trainer.validate()  # refreshes the stale cache
            row.validate_s = timed(trainer.validate, args.device)

    run(args.warmup)
    return Stepper(row, run, finish)


def search_recall(
    prior: ExemplarPrior, trainer: Trainer, args: argparse.Namespace, batches: int = 20
) -> float:
    """Recall of the prior's IVF search against the exact subset search, averaged over ``batches``
    training batches (codes drawn from q(z|x) as in training, a fresh subset for each, leave-one-out)."""
    index, _ = prior.approximate_index()
    k = prior.knn + 1
    found = []
    with torch.no_grad():
        for idx in trainer.sampler.batches(2)[:batches]:
            mean, log_var = trainer.model.encode(dynamic_binarize(trainer.train_x[idx.to(args.device)]))
            z = reparameterize(mean, log_var, torch.randn_like(mean))
            subset = prior.draw_subset()
            approx = index.search_subset(z, subset, prior.cache.get(), k)
            found.append(recall(approx, prior.exact_neighbours(z, subset, k)))
    return statistics.mean(found)


def prepare_official(args: argparse.Namespace, data: DataSplits) -> Stepper:
    """The official code's retrieval step, written out on our networks, for a side-by-side time.

    Its structure: M exemplar indices drawn with replacement, the batch's encoder means written into the
    code cache, torch pairwise distances of the batch's means to the M cached codes and ``topk``, the union
    of neighbours re-encoded with gradient (and written back into the cache), a float32 Gaussian kernel
    with a self-mask, a max-shifted log-sum-exp, the same loss, and the official AdamNormGrad: each
    parameter's gradient divided by its norm in a loop, then torch's per-tensor Adam. The trained run's
    weights are loaded, as for the kNN rows. Warmed up by ``args.warmup`` steps.
    """
    m = args.exemplars if args.exemplars is not None else data.num_train // 2
    prior_cfg = PriorConfig("exemplar", exemplars=m, knn=args.knn)
    model, config = fresh_model(prior_cfg, args, data)
    if args.run is not None:
        model.load_state_dict(load_checkpoint(Path(args.run) / "best.pt", map_location=args.device)["model"])
    prior = model.prior
    assert isinstance(prior, ExemplarPrior)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=config.train.lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    train_x = data.train_x.to(args.device)
    n = train_x.shape[0]
    with torch.no_grad():
        model.eval()
        cache = torch.cat([model.encoder.mean(xb) for xb in train_x.split(10_000)])  # [N, d]
    model.train()
    gen = torch.Generator().manual_seed(args.seed)
    row = TrainRow(prior_cfg, [], math.ceil(n / args.batch_size), [], label="official-code style")

    def step() -> None:
        idx = torch.randint(n, (args.batch_size,), generator=gen).to(args.device)  # [B]
        x = dynamic_binarize(train_x[idx])
        mean, log_var = model.encode(x)  # [B, d]
        z = reparameterize(mean, log_var, torch.randn_like(mean))
        log_px = model.lower_terms(x, z).log_px  # [B]
        ex = torch.randint(n, (m,), generator=gen).to(args.device)  # [M] with replacement
        cache[idx] = mean.detach()
        sub = cache[ex]  # [M, d]
        dist = (mean.detach() ** 2).sum(1, keepdim=True) + (sub**2).sum(1) - 2 * mean.detach() @ sub.T
        nearest = torch.unique(dist.topk(args.knn, largest=False, dim=1).indices.reshape(-1))
        chosen = ex[nearest]  # [U]
        centers = model.encoder.mean(train_x[chosen])  # [U, d] with gradient
        cache[chosen] = centers.detach()
        log_k = -0.5 * ((z.unsqueeze(1) - centers.unsqueeze(0)) ** 2).sum(2) / prior.log_var.exp()
        log_k = log_k - 0.5 * z.shape[1] * (math.log(2 * math.pi) + prior.log_var)  # [B, U]
        mask = idx.unsqueeze(1) == chosen.unsqueeze(0)
        log_k = log_k.masked_fill(mask, float("-inf")) - torch.log(
            torch.full((z.shape[0],), float(chosen.shape[0]), device=z.device) - mask.sum(1)
        ).unsqueeze(1)
        top = log_k.max(1, keepdim=True).values
        log_pz = top[:, 0] + torch.log(torch.exp(log_k - top).sum(1))
        loss = (-log_px + log_normal_diag(z, mean, log_var) - log_pz).mean()
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.div_(p.grad.norm() + 1e-7)
        optimizer.step()
        float(loss.detach())
        row.union = int(chosen.shape[0])

    def run(k: int) -> list[float]:
        # k + 1 steps, the first untimed: as for our rows (``prepare_training``), whose first step of a call
        # only starts the clock, no row is timed cold after another row ran
        times = []
        for i in range(k + 1):
            sync(args.device)
            start = time.perf_counter()
            step()
            sync(args.device)
            if i > 0:
                times.append(time.perf_counter() - start)
        return times

    run(args.warmup)
    return Stepper(row, run, lambda: None)


def bench_training(
    priors: list[tuple[PriorConfig, int]], args: argparse.Namespace, data: DataSplits, rates: Rates
) -> list[TrainRow]:
    """Every training row, interleaved: after warm-up, ``args.rounds`` rounds in which each row takes its
    share of timed steps (a row of n steps, n / rounds a round, the first rounds taking the remainder), with
    the decoder-shaped matmul rate measured at the start of every round and at the end, and each row's own
    matrix products (``step_products``) timed in every round it ran. Steps of different rows are thus
    taken minutes apart at most, and each is compared with rates measured around it: this machine's speed
    drifts within minutes. The last row is the official-code-style step."""
    steppers = []
    for prior, _ in priors:
        logger.info("training: preparing %s (%d warm-up steps)", " ".join(prior_label(prior)), args.warmup)
        steppers.append(prepare_training(prior, args, data, prior.name == "exemplar" and prior.knn > 0))
    logger.info("training: preparing the official-code style step")
    steppers.append(prepare_official(args, data))
    counts = [steps for _, steps in priors] + [args.steps]
    rates.round_rates = []
    rates.resample()  # the first round's start: after the preparation (loads, refreshes, warm-ups)
    for r in range(args.rounds):
        logger.info("training: round %d of %d", r + 1, args.rounds)
        for stepper, total in zip(steppers, counts, strict=True):
            n = total // args.rounds + (1 if r < total % args.rounds else 0)
            if n == 0:
                continue
            times = stepper.run(n)
            stepper.row.step_s += times
            stepper.row.step_round += [r] * len(times)
            stepper.row.products_s[r] = products_seconds(step_products(stepper.row, rates, args.batch_size))
        rates.round_rates.append(rates.resample_around())
    for stepper in steppers:
        stepper.finish()
    return [stepper.row for stepper in steppers]


def round_median(row: TrainRow, rd: int) -> float:
    """The median of a row's steps in round ``rd``."""
    return statistics.median(t for t, r in zip(row.step_s, row.step_round, strict=True) if r == rd)


def paired_ratio(a: TrainRow, b: TrainRow) -> float:
    """Row a's step over row b's, the median over the rounds both ran in of their rounds' medians."""
    rounds = sorted(set(a.step_round) & set(b.step_round))
    return statistics.median(round_median(a, rd) / round_median(b, rd) for rd in rounds)


def training_report(
    rows: list[TrainRow], rates: Rates, args: argparse.Namespace, data: DataSplits
) -> list[str]:
    base = rows[0].median
    rate = rates.decoder_gflops * 1e9
    refresh_floor = data.num_train * rates.encoder_mean_flops / rate
    out = [
        f"## 1. Training step (batch {args.batch_size}): forward, backward, AdamNormGrad",
        "",
        f"Median over the timed steps (after {args.warmup} warm-up steps) of one iteration of "
        "`Trainer.train_epoch`. The rows are timed interleaved, in "
        f"{args.rounds} rounds in which every row takes its share of steps, with the decoder-shaped matmul "
        "rate measured between rounds, so that all rows see the same machine (its speed drifts within "
        "minutes). FLOP floor = 3 x forward FLOPs (forward + backward) of the batch through "
        "encoder and decoder, plus the prior's encoder passes (VampPrior: K pseudo-inputs; exemplar prior: "
        "the exemplars re-encoded with gradient, mean path), at the decoder-shaped matmul rate (the fastest "
        "of the run: the strictest floor); `x floor, local rate` is the median over steps of each step against "
        "the floor at its round's rate (the faster of the rates measured at the round's start and end); "
        "`x own products` is the median over rounds of the round's median step against the time the step's "
        "own matrix products take alone in that round (forward, weight and input gradients at the step's "
        "shapes, on random matrices): what is left above 1 is everything but the products. The floor's FLOPs "
        "(3x the forward) exceed the products' (the first encoder layer needs no input gradient for images) "
        "by the factor in parentheses after the row's floor, so `x own products` / `x floor` / that factor "
        "is the products' speed at the step's shapes against the floor's rate. "
        f"`s/epoch` = {rows[0].steps_per_epoch} steps (N = {data.num_train:,}) x median step, plus the "
        "cache refresh for the exemplar prior (floor: N codes through the mean path).",
        "",
        "| prior | k | M | exemplars re-encoded / step | steps timed | median ms/step | floor ms/step "
        "| x floor | x floor, local rate | x own products | x Gaussian | s/epoch | floor s/epoch "
        "| epoch x floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, k, m = prior_label(r.prior)
        if r.label is not None:
            name = r.label
        elif r.prior.name == "exemplar" and r.prior.knn > 0:
            name += f", {r.prior.search} search" + (
                f" (nprobe {r.prior.nprobe})" if r.prior.search == "ivf" else ""
            )
        floor = step_floor_flops(r, rates, args.batch_size) / rate
        flops = step_floor_flops(r, rates, args.batch_size)
        local = statistics.median(
            t / (flops / (1e9 * rates.round_rates[rd])) for t, rd in zip(r.step_s, r.step_round, strict=True)
        )
        own = statistics.median(round_median(r, rd) / products for rd, products in r.products_s.items())
        refresh = statistics.median(r.refresh_s) if r.refresh_s else 0.0
        refresh += r.index_s or 0.0
        epoch = r.steps_per_epoch * r.median + refresh
        epoch_floor = r.steps_per_epoch * floor + (refresh_floor if r.refresh_s else 0.0)
        union = f"{r.union:,}" if r.union is not None else "-"
        out.append(
            f"| {name} | {k} | {m} | {union} | {len(r.step_s)} | {1e3 * r.median:.1f} | {1e3 * floor:.1f} "
            f"({flops / sum(2 * a * b * c for a, b, c in step_products(r, rates, args.batch_size)):.2f}) "
            f"| {r.median / floor:.2f} | {local:.2f} | {own:.2f} "
            f"| {r.median / base:.2f} | {epoch:.1f} | {epoch_floor:.1f} "
            f"| {epoch / epoch_floor:.2f} |"
        )
    knn_rows = [r for r in rows if r.label is None and r.prior.name == "exemplar" and r.prior.knn > 0]
    official = [r for r in rows if r.label is not None]
    if official:
        o = official[0]
        out += [
            "",
            f"Against the official code's retrieval step written out on the same networks ({o.label}: M "
            "indices drawn with replacement, torch distances + `topk` over the M cached codes, the union "
            f"re-encoded with gradient, same loss and optimiser; {'trained' if args.run else 'untrained'} "
            f"weights, {o.union:,} exemplars re-encoded in its last step; the official code's per-tensor "
            "gradient normalisation and Adam), its step divided by ours, the median over rounds of the "
            "rounds' median steps (above 1: ours is faster): "
            + "; ".join(
                f"{r.prior.search} search **{paired_ratio(o, r):.2f}** (overall medians {1e3 * o.median:.1f} / "
                f"{1e3 * r.median:.1f} ms)"
                for r in knn_rows
            ),
        ]
    for r in knn_rows:
        if r.search_s is None or r.recall is None:
            continue
        out += [
            "",
            f"IVF search (k = {r.prior.knn}, M = {r.prior.exemplars:,}, nprobe {r.prior.nprobe}): an inverted-file "
            f"index over all {data.num_train:,} codes, built after each cache refresh in {r.index_s:.2f} s "
            f"(counted in its epoch), over-fetching to stay inside each step's M-subset: median "
            f"{1e3 * r.search_s:.1f} ms per batch ({r.search_s / r.median:.0%} of its step), recall "
            f"{r.recall:.4f} against the exact search (20 batches of codes drawn from q(z|x)); "
            f"{r.union} distinct exemplars retrieved for one batch.",
        ]
    for r in rows:
        if r.search_s is None or r.validate_s is None:
            continue
        out += [
            "",
            f"Exemplar prior (k = {r.prior.knn}, M = {r.prior.exemplars:,}):",
            "",
            f"- cache refresh (encoding all {data.num_train:,} training images): median "
            f"{statistics.median(r.refresh_s):.2f} s over {len(r.refresh_s)} calls (floor "
            f"{refresh_floor:.2f} s)",
            f"- kNN search of one batch ({args.batch_size} codes among M = {r.prior.exemplars:,}, k + 1 = "
            f"{r.prior.knn + 1} each, exact flat search: recall 1): median {1e3 * r.search_s:.1f} ms "
            f"({r.search_s / r.median:.0%} of a step)",
            f"- retrieval: one batch retrieved {r.union} distinct exemplars (at most "
            f"{args.batch_size * (r.prior.knn + 1)}), re-encoded with gradient at every step",
            f"- one `Trainer.validate()` on {data.val_x.shape[0]:,} validation images (full prior over all "
            f"{data.num_train:,} exemplars), cache fresh: {r.validate_s:.2f} s",
        ]
    return out


# -- 2. evaluation -------------------------------------------------------------------------------------
def evaluation_model(args: argparse.Namespace, data: DataSplits) -> tuple[VAE, str]:
    """The trained exemplar model of ``args.run`` if given, else a fresh one; eval mode, cache fresh."""
    if args.run is not None:
        model, _, _ = load_run(args.run, device=str(args.device), data=data)
        label = f"trained model `{args.run}`"
    else:
        model, _ = fresh_model(PriorConfig("exemplar"), args, data)
        label = "untrained model (random initialisation; truncation errors not representative)"
    model.eval()
    model.prior.refresh(model.encoder)
    return model, label


@torch.no_grad()
def official_style_log_likelihood(model: VAE, x: Tensor, num_samples: int, chunk: int, seed: int) -> float:
    """The official code's evaluation of one test point: x repeated S times, the encoder re-run on every
    copy, and the full prior over all N exemplars in float64, ``chunk`` samples at a time. Nats."""
    prior = model.prior
    assert isinstance(prior, ExemplarPrior)
    codes = prior.cache.get().double()  # [N, d]
    log_var = prior.log_var.detach().double()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    for start in range(0, num_samples, chunk):
        xs = x.unsqueeze(0).expand(min(chunk, num_samples - start), -1)  # [n, D]
        mean, lv = model.encode(xs)  # [n, d] each: the encoder runs on every copy
        z = reparameterize(mean, lv, torch.randn(mean.shape, generator=gen, device=x.device))  # [n, d]
        log_px = model.lower_terms(xs, z).log_px.double()  # [n]
        log_pz = torch.logsumexp(exemplar_log_kernel(z, codes, log_var), 1) - math.log(codes.shape[0])
        out.append(log_px + log_pz - log_normal_diag(z, mean, lv).double())
    return float(torch.logsumexp(torch.cat(out), 0) - math.log(num_samples))


@dataclass
class EvalResults:
    model: str
    refresh_s: float
    points: int
    default_s: float  # evaluate_density seconds on `points` test points (refresh excluded)
    default_ll: float
    check_points: int
    check_default_s: float  # default path on the check points
    check_exact_s: float  # matmul brute force on the same points and samples
    check_mean_error: float
    check_max_error: float
    official_points: int
    official_s: float
    official_ll: list[float]
    certify_points: int
    certify_s: float
    certified: dict
    local_gflops: float  # the faster of the rates measured just before and just after the default path


def bench_evaluation(
    model: VAE, label: str, args: argparse.Namespace, data: DataSplits, rates: Rates
) -> EvalResults:
    device, samples, k = args.device, args.samples, args.candidates
    refresh = timed(lambda: model.prior.refresh(model.encoder), device)
    x = data.test_x.to(device)
    common = dict(candidates=k, seed=args.seed, progress=False)
    logger.info("evaluation: default path, %d points at S=%d", args.eval_points, samples)
    evaluate_density(model, x[:2], min(samples, 100), batch_size=2, **common)  # warm-up
    rates.resample()
    default = evaluate_density(model, x[: args.eval_points], samples, batch_size=args.eval_batch, **common)
    local = rates.resample_around()
    logger.info("evaluation: matmul brute force on %d points", args.check_points)
    cp = args.check_points
    check = evaluate_density(model, x[:cp], samples, batch_size=cp, check_exact=cp, **common)
    logger.info("evaluation: official-style brute force on %d points", args.official_points)
    start = time.perf_counter()
    official = [
        official_style_log_likelihood(model, x[i], samples, args.official_chunk, args.seed)
        for i in range(args.official_points)
    ]
    official_s = time.perf_counter() - start
    logger.info("evaluation: certified, %d points", args.certify_points)
    cert = evaluate_density(
        model, x[: args.certify_points], samples, batch_size=min(args.eval_batch, args.certify_points),
        certify=True, **common,
    )  # fmt: skip
    tc = check["truncation_check"]
    return EvalResults(
        label, refresh, default["examples"], default["seconds"], default["log_likelihood"],
        cp, check["seconds"], tc["exact_seconds"], tc["mean_error"], tc["max_error"],
        args.official_points, official_s, official,
        args.certify_points, cert["seconds"], cert["certified"], local,
    )  # fmt: skip


def evaluation_report(e: EvalResults, rates: Rates, args: argparse.Namespace, data: DataSplits) -> list[str]:
    n_test, s = data.test_x.shape[0], args.samples
    floor = n_test * s * rates.decoder_flops / (rates.decoder_gflops * 1e9)
    per_point = e.default_s / e.points
    # the element-wise functions the default evaluates per sample, at the per-element rates measured at
    # start: a softplus for each of the D logits, an exp for each of the K kept kernel terms
    elem = floor + n_test * s * 1e-9 * (data.data_dim * rates.softplus_ns + args.candidates * rates.exp_ns)
    full = e.refresh_s + n_test * per_point
    bf = e.check_exact_s / e.check_points
    off = e.official_s / e.official_points
    c = e.certified
    return [
        f"## 2. Evaluation at the protocol: {n_test:,} test points, S = {s:,}, N = {data.num_train:,} "
        "exemplars",
        "",
        f"On the {e.model}. Default = `evaluate_density(model, x, S, candidates={args.candidates})` (the prior "
        f"truncated to the {args.candidates} exemplars nearest each test point's encoder mean, batches of "
        f"{args.eval_batch}). Full-protocol time = one cache refresh ({e.refresh_s:.2f} s) + {n_test:,} x "
        f"(seconds per point measured on the first {e.points} test points). Decoder-FLOP floor = {n_test:,} "
        f"x {s:,} x {rates.decoder_flops / 1e6:.3f} MFLOP / {rates.decoder_gflops:.1f} GFLOP/s.",
        "",
        "| evaluation | points timed | s / test point | est. s for the protocol | x decoder floor "
        "| default is faster by |",
        "|---|---|---|---|---|---|",
        f"| decoder-FLOP floor | - | {floor / n_test:.4f} | {floor:.0f} | 1.00 | - |",
        f"| decoder-FLOP floor + the default's element-wise functions (a softplus per logit, an exp per "
        f"kept kernel term) | - | {elem / n_test:.4f} | {elem:.0f} | {elem / floor:.2f} | - |",
        f"| **default (truncated, K = {args.candidates})** | {e.points} | {per_point:.4f} | {full:.0f} "
        f"| **{full / floor:.2f}** | - |",
        f"| brute force at matmul speed (full prior, float32 blocks) | {e.check_points} | {bf:.4f} "
        f"| {n_test * bf:.0f} | {n_test * bf / floor:.2f} | **{bf / per_point:.1f}x** |",
        f"| official-code style (per point, encoder on S copies, float64 full prior) | {e.official_points} "
        f"| {off:.3f} | {n_test * off:.0f} | {n_test * off / floor:.1f} | **{off / per_point:.0f}x** |",
        f"| certified (`certify=True`, tolerance {c['tolerance']} nats) | {e.certify_points} "
        f"| {e.certify_s / e.certify_points:.4f} | {n_test * e.certify_s / e.certify_points:.0f} "
        f"| {n_test * e.certify_s / e.certify_points / floor:.2f} | - |",
        "",
        f"- truncation error of the default against the matmul brute force, same importance samples, "
        f"{e.check_points} points: mean {e.check_mean_error:.2e} nats, max {e.check_max_error:.2e} nats "
        f"(the default on these points: {e.check_default_s:.2f} s)",
        f"- against the decoder-FLOP floor plus its element-wise functions (softplus {rates.softplus_ns:.2f} ns "
        f"and exp {rates.exp_ns:.2f} ns per element, measured on one chunk) the default is "
        f"**{full / elem:.2f}x**",
        f"- at the rate measured just before and after the default path ({e.local_gflops:.1f} GFLOP/s, the "
        f"faster of the two; the machine as it ran then) the default is **{full / floor * e.local_gflops / rates.decoder_gflops:.2f}x** "
        "its decoder floor",
        f"- official-style log-likelihood of the first {e.official_points} point(s) (its own samples): "
        + ", ".join(f"{v:.2f}" for v in e.official_ll)
        + " nats",
        f"- certified on {e.certify_points} points: {100 * c['fraction_below_0.01']:.0f}% certified below 0.01 "
        f"nats; mean bound {c['mean_bound']:.2e}, max {c['max_bound']:.2e} nats; "
        f"{c['exemplars_evaluated_per_point']:.0f} exemplars evaluated exactly per point beyond the "
        f"{args.candidates} candidates, {c['nodes_per_point']:.0f} tree nodes bounded per point; "
        f"{c['bound_seconds']:.2f} s of the {e.certify_s:.2f} s spent bounding (tree build included)",
    ]


# -- 3. memory -------------------------------------------------------------------------------------------
def memory_job(job: str, args: argparse.Namespace) -> dict:
    """Run one measured job in this process and return its peak RSS (the child side of ``bench_memory``)."""
    data = load_dataset(args.dataset, args.data_dir)
    if job == "eval":
        model, _ = evaluation_model(args, data)
        evaluate_density(
            model, data.test_x[: args.eval_points].to(args.device), args.samples,
            batch_size=args.eval_batch, candidates=args.candidates, progress=False,
        )  # fmt: skip
    else:
        m = args.exemplars if args.exemplars is not None else data.num_train // 2
        prepare_training(PriorConfig("exemplar", exemplars=m, knn=args.knn), args, data, False).run(
            args.steps
        )
    return {"job": job, "max_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB: VmHWM of /proc/self/status (the current address space;
    ``ru_maxrss`` would also count the parent's peak, which Linux carries through fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_memory(job: str, argv: list[str]) -> float:
    """Peak RSS (MiB) of ``job`` run in a child process with the same options."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-job", job]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["max_rss_mib"])


# -- main ----------------------------------------------------------------------------------------------
QUICK = dict(
    steps=2, exact_steps=1, rounds=2, warmup=1, repeats=1, components=10, candidates=100, samples=50, eval_points=4,
    eval_batch=2, check_points=2, official_points=1, certify_points=2, square=256, chunk_rows=2000,
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed training steps per prior (default 30)")
    p.add_argument(
        "--exact-steps", type=int, default=3, help="timed steps for the exact exemplar prior (default 3)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per prior (default 3)")
    p.add_argument(
        "--rounds", type=int, default=6, help="training rows are timed interleaved, in this many rounds (6)"
    )
    p.add_argument("--repeats", type=int, default=3, help="exemplar cache refreshes timed (default 3)")
    p.add_argument("--components", type=int, default=500, help="K for MoG and VampPrior (default 500)")
    p.add_argument("--knn", type=int, default=10, help="k for retrieval augmented training (default 10)")
    p.add_argument("--nprobe", type=int, default=16, help="lists probed by the IVF search row (default 16)")
    p.add_argument(
        "--candidates", type=int, default=1000, help="K of the truncated evaluation (default 1000)"
    )
    p.add_argument("--exemplars", type=int, default=None, help="M exemplars per training step (default N/2)")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size (default 100)")
    p.add_argument("--samples", type=int, default=5000, help="importance samples S (default 5000)")
    p.add_argument("--eval-points", type=int, default=200, help="test points of the default path (200)")
    p.add_argument("--eval-batch", type=int, default=100, help="test points per batch (default 100)")
    p.add_argument("--check-points", type=int, default=10, help="points of the matmul brute force (10)")
    p.add_argument("--official-points", type=int, default=1, help="points of the official style (1)")
    p.add_argument("--official-chunk", type=int, default=500, help="official style: samples per pass")
    p.add_argument("--certify-points", type=int, default=20, help="points of the certified path (20)")
    p.add_argument("--square", type=int, default=2048, help="size of the square matmul (default 2048)")
    p.add_argument(
        "--chunk-rows", type=int, default=None,
        help="rows of the decoder-shaped matmul (default: the model's evaluation chunk on the device)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="folder with the data files (default search path)")
    p.add_argument(
        "--run", default=None,
        help=f"trained exemplar run for the evaluation (default {TRAINED_RUN} if it exists; 'none': untrained)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, batches and samples (0)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (overrides the sizes)")
    p.add_argument("--no-memory", action="store_true", help="skip the child processes measuring RSS")
    p.add_argument("--memory-job", choices=("eval", "train"), help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true", help=f"also write the report to {RESULTS}")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    for key in ("steps", "exact_steps", "rounds", "repeats", "components", "knn", "batch_size", "samples",
                "eval_points", "eval_batch", "check_points", "official_points", "certify_points"):  # fmt: skip
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.warmup < 1:
        p.error(f"--warmup must be at least 1 (the first step starts the clock), got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.run is None and args.dataset == "fashion-mnist" and (TRAINED_RUN / "best.pt").is_file():
        args.run = str(TRAINED_RUN)
    if args.run in ("none", ""):
        args.run = None
    args.device = torch.device(args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_job:
        print(json.dumps(memory_job(args.memory_job, args)))
        return
    header = machine_lines(args.device)  # load average before the benchmark loads the machine
    start = time.perf_counter()

    logger.info("loading %s", args.dataset)
    data = load_dataset(args.dataset, args.data_dir)
    model, _ = fresh_model(PriorConfig("gaussian"), args, data)
    if args.chunk_rows is None:
        args.chunk_rows = model.evaluation_rows(args.device)
    rates = measure_rates(model, args.chunk_rows, args.square, data.data_dim, args.candidates)
    m = args.exemplars if args.exemplars is not None else data.num_train // 2
    priors = [
        (PriorConfig("gaussian"), args.steps),
        (PriorConfig("mog", components=args.components), args.steps),
        (PriorConfig("vampprior", components=args.components), args.steps),
        (PriorConfig("exemplar", exemplars=m, knn=args.knn), args.steps),
        (PriorConfig("exemplar", exemplars=m, knn=args.knn, search="ivf", nprobe=args.nprobe), args.steps),
        (PriorConfig("exemplar", exemplars=m, knn=0), args.exact_steps),
    ]
    train_rows = bench_training(priors, args, data, rates)
    eval_model, label = evaluation_model(args, data)
    evaluation = bench_evaluation(eval_model, label, args, data, rates)
    del eval_model
    memory: list[str] = []
    if not args.no_memory:
        pass_on = [a for a in raw if a not in ("--write",)]
        logger.info("memory: evaluation and training in child processes")
        eval_rss, train_rss = bench_memory("eval", pass_on), bench_memory("train", pass_on)
        memory = [
            "## 3. Peak memory (peak RSS, VmHWM, of a child process running the job alone)",
            "",
            f"- evaluation (default path, {args.eval_points} test points, S = {args.samples:,}, batches of "
            f"{args.eval_batch}, model and data loaded): **{eval_rss:,.0f} MiB** ({eval_rss / 1024:.2f} GiB)",
            f"- training (exemplar prior k = {args.knn}, M = {m:,}: cache refreshes + "
            f"{args.warmup + args.steps + 2} steps, data loaded): **{train_rss:,.0f} MiB** ({train_rss / 1024:.2f} GiB)",
            "",
        ]

    lines = [
        "# Exemplar VAE: training and evaluation speed against FLOP floors",
        "",
        *header,
        f"- data: {data.summary()}; MLP VAE (gated 2x{ModelConfig().hidden}, z = {ModelConfig().latent_dim})",
        f"- total benchmark time: {time.perf_counter() - start:.0f} s",
        "",
        "Every figure below was measured in this one run (same machine and load); compare the ratios, not "
        "absolute times from different runs or machines.",
        "",
        *rates_report(rates, args),
        "",
        *training_report(train_rows, rates, args, data),
        "",
        *evaluation_report(evaluation, rates, args, data),
        "",
        *memory,
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        RESULTS.write_text(report)
        logger.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
