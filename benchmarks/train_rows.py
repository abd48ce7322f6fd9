"""The training rows: each prior's step, the official-code-style retrieval step written out on the same
networks, and the exemplar prior's cache refresh, kNN search, IVF index and recall, and validation.

Every row is a ``Stepper``: prepared (model built, weights loaded, warmed up) once, then asked for timed
steps in ``bench_training``'s interleaved rounds, so that all rows see the machine in the same state.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from common import exemplar_count, fresh_model, load_trained_weights, prior_label, sync, timed
from rates import Rates, products_seconds, step_products
from torch import Tensor

from exemplar_vae import DataSplits, PriorConfig
from exemplar_vae.data import dynamic_binarize
from exemplar_vae.functional import log_normal_diag, reparameterize
from exemplar_vae.models.vae import VAE
from exemplar_vae.priors.exemplar import ExemplarPrior
from exemplar_vae.retrieval import ApproximateIndex, recall
from exemplar_vae.training import Trainer

logger = logging.getLogger("bench")

RECALL_BATCHES = 20  # training batches the IVF search's recall is averaged over


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
    compiled: bool = False  # the step ran through torch.compile (``TrainConfig.compile``)
    compile_s: float | None = None  # compile time of a compiled row (inside its warm-up steps)
    step_round: list[int] = field(default_factory=list)  # [steps] the round each timed step ran in
    products_s: dict[int, float] = field(default_factory=dict)  # round -> the step's products alone (s)

    @property
    def median(self) -> float:
        return statistics.median(self.step_s)


@dataclass
class Stepper:
    """A training row under measurement: ``run(n)`` takes n more training steps and returns their seconds
    (one full iteration each); ``finish()`` takes the row's other measurements after the timed steps."""

    row: TrainRow
    run: Callable[[int], list[float]]
    finish: Callable[[], None]


# -- our priors, through the package's Trainer -----------------------------------------------------------
def prepare_training(
    prior: PriorConfig, args: argparse.Namespace, data: DataSplits, extras: bool, compile: str = "off"
) -> Stepper:
    """A row of ``Trainer.step`` iterations, warmed up by ``args.warmup`` steps (a compiled row,
    ``compile="on"``, compiles in its first warm-up step; its compile time is recorded).

    Exemplar rows also time the cache refresh and count the exemplars retrieved for one batch; with
    ``extras`` (the kNN rows) ``finish`` times the kNN search of one batch, the IVF index build and recall,
    and (exact search) ``Trainer.validate()``.
    """
    model, config = fresh_model(prior, args, data, compile)
    if prior.name == "exemplar" and args.run is not None:
        # the number of exemplars retrieved (and re-encoded) per step depends on the weights: ~130 for an
        # untrained encoder, ~1000 for a trained one; so does the mass-carrying union of the exact prior
        # with a gradient tolerance (all M while the kernel is wide); time them with the trained weights
        load_trained_weights(model, args)
    trainer = Trainer(model, data, config, None, progress=False)
    row = TrainRow(config.prior, [], len(trainer.sampler), [])
    exemplar = model.prior if isinstance(model.prior, ExemplarPrior) else None
    if exemplar is not None:
        row.refresh_s = [
            timed(lambda: exemplar.refresh(model.encoder), args.device) for _ in range(args.repeats)
        ]
        row.union = config.prior.exemplars  # exact: the whole subset is re-encoded
        if prior.knn > 0:  # the union one batch retrieves (and a step re-encodes)
            idx, mean = first_batch_means(trainer)
            with torch.no_grad():
                row.union = exemplar.retrieve(mean, idx, exemplar.draw_subset()).numel()

    def finish() -> None:
        if extras and exemplar is not None:
            retrieval_measurements(row, trainer, exemplar, args)

    run = step_timer(trainer)
    run(args.warmup)
    if exemplar is not None and exemplar.grad_stats is not None:  # the mass-carrying exemplars of a step
        row.union = exemplar.grad_stats[1]
    compiled = trainer.compile_report()
    if compiled is not None:
        row.compiled, row.compile_s = compiled["used"], compiled["compile_seconds"]
    return Stepper(row, run, finish)


def step_timer(trainer: Trainer) -> Callable[[int], list[float]]:
    """``run(n)``: n + 1 steps on the next batches of the epoch, returning the n intervals between the ends
    of consecutive steps (the first step only starts the clock, so no row is timed cold after another row
    ran). An interval is one full iteration of ``Trainer.train_epoch``'s loop: ``Trainer.step`` (binarise,
    forward, backward, normalise, Adam) and reading the batch's loss terms, which waits for the device.

    Each call continues where the last one stopped (into the next epoch's batches after the last), as a
    run does and as the official-code-style rows draw fresh batches: repeating the same few batches trains
    the model on them, and on trained weights the exact prior's backward then fills with subnormal floats
    and slows step after step. The cache refresh that starts an epoch is timed apart."""
    if not trainer.sampler.batches(1):
        raise SystemExit("the training data gives no batches to time")

    def batches() -> Iterator[tuple[int, int, Tensor]]:
        """(epoch, step, batch indices) of epoch 1, then of the epochs after it."""
        for epoch in itertools.count(1):
            for i, idx in enumerate(trainer.sampler.batches(epoch)):
                yield epoch, i, idx

    stream = batches()

    def run(n: int) -> list[float]:
        trainer.model.train()
        stamps: list[float] = []
        for epoch, i, idx in itertools.islice(stream, n + 1):
            sums = trainer.step(idx, beta=1.0, epoch=epoch, step=i)  # [4] the batch's loss sums
            sums.tolist()  # read on the host, as train_epoch reads each step's loss
            stamps.append(time.perf_counter())
        return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]  # [n]

    return run


def first_batch_means(trainer: Trainer) -> tuple[Tensor, Tensor]:
    """The first training batch of epoch 1 ([B] dataset indices) and its encoder means [B, d], computed
    without gradient in training mode, as a step computes them."""
    trainer.model.train()
    with torch.no_grad():
        idx = trainer.sampler.batches(1)[0].to(trainer.device)  # [B]
        mean, _ = trainer.model.encode(dynamic_binarize(trainer.train_store.gather(idx)))  # [B, d]
    return idx, mean


def retrieval_measurements(
    row: TrainRow, trainer: Trainer, prior: ExemplarPrior, args: argparse.Namespace
) -> None:
    """A kNN row's measurements besides its steps: one batch's search (median of 5), for the IVF search
    the index build and its recall, for the exact search one ``Trainer.validate()`` with the cache fresh."""
    idx, mean = first_batch_means(trainer)
    with torch.no_grad():
        subset = prior.draw_subset()
        searches = [timed(lambda: prior.retrieve(mean, idx, subset), args.device) for _ in range(5)]
        row.search_s = statistics.median(searches)
        if row.prior.search == "ivf":
            codes = prior.cache.get()
            searcher = prior.searcher
            row.index_s = timed(lambda: ApproximateIndex(codes, searcher.nlist, searcher.nprobe), args.device)
            row.recall = search_recall(prior, trainer, args)
    if row.prior.search == "exact":
        trainer.validate()  # refreshes the stale cache
        row.validate_s = timed(trainer.validate, args.device)


def search_recall(
    prior: ExemplarPrior, trainer: Trainer, args: argparse.Namespace, batches: int = RECALL_BATCHES
) -> float:
    """Recall of the prior's IVF search against the exact subset search, averaged over ``batches``
    training batches (codes drawn from q(z|x) as in training, a fresh subset for each, leave-one-out)."""
    codes = prior.cache.get()  # [N, d]
    index, _ = prior.searcher.index(codes)
    k = prior.knn + 1
    found = []
    with torch.no_grad():
        for idx in trainer.sampler.batches(2)[:batches]:
            x = trainer.train_store.gather(idx).to(args.device)  # [B, D]
            mean, log_var = trainer.model.encode(dynamic_binarize(x))
            z = reparameterize(mean, log_var, torch.randn_like(mean))
            subset = prior.draw_subset()  # keyed: O(1) membership, as in a training step
            approx = index.search_subset(
                z, subset.contains, codes, k, subset_rows=subset.members, subset_size=len(subset)
            )
            found.append(recall(approx, prior.searcher.exact(z, subset, codes, k)))
    return statistics.mean(found)


# -- the official code's retrieval step ---------------------------------------------------------------
def official_log_prior(z: Tensor, centers: Tensor, idx: Tensor, chosen: Tensor, log_var: Tensor) -> Tensor:
    """The official code's log p(z) over the retrieved exemplars: a float32 Gaussian kernel to each of the
    U ``centers`` (dataset indices ``chosen``), each point's own exemplar masked out and the mixture
    divided by the exemplars left, then a max-shifted log-sum-exp: [B, d], [U, d] -> [B]."""
    log_k = -0.5 * ((z.unsqueeze(1) - centers.unsqueeze(0)) ** 2).sum(2) / log_var.exp()
    log_k = log_k - 0.5 * z.shape[1] * (math.log(2 * math.pi) + log_var)  # [B, U]
    mask = idx.unsqueeze(1) == chosen.unsqueeze(0)
    log_k = log_k.masked_fill(mask, float("-inf")) - torch.log(
        torch.full((z.shape[0],), float(chosen.shape[0]), device=z.device) - mask.sum(1)
    ).unsqueeze(1)
    top = log_k.max(1, keepdim=True).values
    return top[:, 0] + torch.log(torch.exp(log_k - top).sum(1))


def official_exact_log_prior(
    z: Tensor, centers: Tensor, idx: Tensor, chosen: Tensor, log_var: Tensor
) -> Tensor:
    """The official code's exact log p(z) over the M drawn exemplars, in float64 (its distances are
    float64), the squared distances by the matrix-product expansion (the cheapest reading; a broadcast
    [B, M, d] difference would cost several times more at M = 25,000), each point's own exemplar masked
    and the mixture divided by the exemplars left: [B, d], [M, d] -> [B] float32."""
    z64, c64, lv = z.double(), centers.double(), log_var.double()
    sq = (z64.pow(2).sum(1, keepdim=True) + c64.pow(2).sum(1) - 2 * z64 @ c64.T).clamp_min(0)  # [B, M]
    log_k = -0.5 * sq / lv.exp() - 0.5 * z.shape[1] * (math.log(2 * math.pi) + lv)
    own = idx.unsqueeze(1) == chosen.unsqueeze(0)  # [B, M]
    log_k = log_k.masked_fill(own, float("-inf"))
    return (torch.logsumexp(log_k, 1) - torch.log((~own).sum(1).double())).float()


class OfficialStep:
    """One training step structured as the official code's: M exemplar indices drawn with replacement,
    the batch's encoder means written into a code cache of all N training images, torch pairwise distances
    to the M cached codes and ``topk``, the union re-encoded with gradient (and written back), the same
    loss, and the official AdamNormGrad (each gradient divided by its norm in a loop, then torch's
    per-tensor Adam). ``union`` is the number of exemplars the last step re-encoded."""

    def __init__(
        self, model: VAE, data: DataSplits, args: argparse.Namespace, m: int, lr: float, knn: int
    ) -> None:
        assert isinstance(model.prior, ExemplarPrior)
        self.model, self.prior, self.m = model, model.prior, m
        self.knn, self.batch, self.device = knn, args.batch_size, args.device
        self.params = list(model.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
        assert isinstance(data.train_x, Tensor)  # the benchmark's data is in memory
        self.train_x = data.train_x.to(args.device)
        with torch.no_grad():
            model.eval()
            self.cache = torch.cat([model.encoder.mean(xb) for xb in self.train_x.split(10_000)])  # [N, d]
        model.train()
        self.gen = torch.Generator().manual_seed(args.seed)
        self.union = 0

    def __call__(self) -> None:
        model, n = self.model, self.train_x.shape[0]
        idx = torch.randint(n, (self.batch,), generator=self.gen).to(self.device)  # [B]
        x = dynamic_binarize(self.train_x[idx])
        mean, log_var = model.encode(x)  # [B, d]
        z = reparameterize(mean, log_var, torch.randn_like(mean))
        log_px = model.lower_terms(x, z).log_px  # [B]
        if self.knn == 0:  # the exact prior: all M drawn exemplars encoded with gradient, float64 kernel
            chosen = torch.randint(n, (self.m,), generator=self.gen).to(self.device)  # [M]
            centers = model.encoder.mean(self.train_x[chosen])  # [M, d] with gradient
            log_pz = official_exact_log_prior(z, centers, idx, chosen, self.prior.log_var)
        else:
            chosen, centers = self.retrieve(idx, mean)
            log_pz = official_log_prior(z, centers, idx, chosen, self.prior.log_var)
        loss = (-log_px + log_normal_diag(z, mean, log_var) - log_pz).mean()
        self.optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(p.grad.norm() + 1e-7)
        self.optimizer.step()
        float(loss.detach())
        self.union = int(chosen.shape[0])

    def retrieve(self, idx: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        """The union of the batch's k nearest among M exemplars drawn with replacement ([U] dataset
        indices) and their codes re-encoded with gradient [U, d]; the cache takes both sets of codes."""
        ex = torch.randint(self.train_x.shape[0], (self.m,), generator=self.gen).to(self.device)  # [M]
        self.cache[idx] = mean.detach()
        sub = self.cache[ex]  # [M, d]
        dist = (mean.detach() ** 2).sum(1, keepdim=True) + (sub**2).sum(1) - 2 * mean.detach() @ sub.T
        nearest = torch.unique(dist.topk(self.knn, largest=False, dim=1).indices.reshape(-1))
        chosen = ex[nearest]  # [U]
        centers = self.model.encoder.mean(self.train_x[chosen])  # [U, d] with gradient
        self.cache[chosen] = centers.detach()
        return chosen, centers


def prepare_official(args: argparse.Namespace, data: DataSplits, knn: int) -> Stepper:
    """The official code's retrieval step (``OfficialStep``; ``knn`` = 0: its exact-prior step) on our
    networks, for a side-by-side time. The trained run's weights are loaded, as for the exemplar rows.
    Warmed up by ``args.warmup`` steps."""
    m = exemplar_count(args, data)
    prior_cfg = PriorConfig("exemplar", exemplars=m, knn=knn)
    model, config = fresh_model(prior_cfg, args, data)
    if args.run is not None:
        load_trained_weights(model, args)
    step = OfficialStep(model, data, args, m, config.train.lr, knn)
    steps_per_epoch = math.ceil(data.train_x.shape[0] / args.batch_size)
    row = TrainRow(prior_cfg, [], steps_per_epoch, [], label="official-code style")

    def run(k: int) -> list[float]:
        # k + 1 steps, the first untimed: as for our rows (``step_timer``), whose first step of a call
        # only starts the clock, no row is timed cold after another row ran
        times = []
        for i in range(k + 1):
            sync(args.device)
            start = time.perf_counter()
            step()
            sync(args.device)
            if i > 0:
                times.append(time.perf_counter() - start)
        row.union = step.union
        return times

    run(args.warmup)
    return Stepper(row, run, lambda: None)


# -- the interleaved rounds ----------------------------------------------------------------------------
def bench_training(
    priors: list[tuple[PriorConfig, int, str]], args: argparse.Namespace, data: DataSplits, rates: Rates
) -> list[TrainRow]:
    """Every training row, interleaved: after warm-up, ``args.rounds`` rounds in which each row takes its
    share of timed steps (a row of n steps, n / rounds a round, the first rounds taking the remainder), with
    the decoder-shaped matmul rate measured at the start of every round and at the end, and each row's own
    matrix products (``step_products``) timed in every round it ran. Steps of different rows are thus
    taken minutes apart at most, and each is compared with rates measured around it: this machine's speed
    drifts within minutes. The last row is the official-code-style step."""
    steppers = []
    for prior, _, compile in priors:
        logger.info(
            "training: preparing %s%s (%d warm-up steps)", " ".join(prior_label(prior)),
            ", compiled" if compile == "on" else "", args.warmup,
        )  # fmt: skip
        extras = prior.name == "exemplar" and prior.knn > 0 and compile == "off"
        steppers.append(prepare_training(prior, args, data, extras, compile))
    logger.info("training: preparing the official-code style steps (retrieval, exact)")
    steppers += [prepare_official(args, data, args.knn), prepare_official(args, data, 0)]
    counts = [steps for _, steps, _ in priors] + [args.steps, args.exact_steps]
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
