"""The training loop: epochs, KL warm-up, validation, early stopping, checkpoints, resume.

The loop drives any ``VAE`` with the loss it is given (default ``objectives.elbo_terms``): it calls
``loss(model, x, index, beta, generator, noise)`` for the ELBO terms and
``model.prior.refresh(model.encoder)`` at the start of every epoch and before validation (the exemplar
prior re-encodes its exemplar cache there; the other priors do nothing).

Every step's batch and randomness are keyed: the epoch's order is a permutation seeded by (seed, epoch)
and the step's binarisation, noise and exemplar subset come from a generator seeded by (seed, epoch,
step), drawn for the whole batch. So a run split over W processes (``exemplar_vae.distributed``: each rank
takes its rows of every batch, the gradients are summed over ranks) computes the updates of one process
with the same global batch, and a run resumed at an epoch boundary continues as if it had not stopped (a
run stopped inside an epoch by ``max_steps`` re-encodes the exemplar cache when it resumes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from exemplar_vae import distributed
from exemplar_vae.config import RunConfig
from exemplar_vae.data import DataSplits, dynamic_binarize
from exemplar_vae.errors import CheckpointError, ExemplarVAEError, RunFailed
from exemplar_vae.functional import kl_warmup
from exemplar_vae.io import METRICS, atomic_write_text, read_metrics
from exemplar_vae.models.vae import VAE, StepNoise
from exemplar_vae.objectives.elbo import CompiledElbo, ElboTerms, elbo_terms
from exemplar_vae.training.checkpoint import (
    check_optimizer,
    check_weights,
    load_checkpoint,
    save_checkpoint,
)
from exemplar_vae.training.optim import build_optimizer, load_optimizer_state, normalize_gradients

# settings a resumed run may change (the change is recorded in config.json); the others must be the saved ones
RESUMABLE_CHANGES = frozenset({"epochs", "early_stopping", "device", "max_steps", "divergence", "compile"})
# prior settings a resumed run may change: how the exact prior's gradient is computed, not the model
RESUMABLE_PRIOR_CHANGES = frozenset({"grad_tolerance"})

# (model, x [B, D], dataset indices [B] or None, beta, generator or None, noise or None) -> ElboTerms
Loss = Callable[[VAE, Tensor, Tensor | None, float, torch.Generator | None, StepNoise | None], ElboTerms]

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# what a diverging run does (TrainConfig.divergence, --on-divergence): raise RunFailed, or log a warning
DIVERGENCE_POLICIES = ("stop", "warn")


logger = logging.getLogger(__name__)


class BatchSampler:
    """Global minibatches of dataset indices from a permutation seeded by (seed, epoch).

    Every process of a distributed run sees the same batches and takes its rows of each
    (``distributed.shard``), so all ranks run the same number of steps whatever N, W and the batch size.

    Args:
        n: dataset size.
        batch_size: examples per batch (global: over all processes).
        seed: base seed; epoch e uses seed * 100003 + e.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def batches(self, epoch: int) -> list[Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return list(torch.randperm(self.n, generator=g).split(self.batch_size))  # [B] each

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of one step's generator: a 63-bit mix of (seed, epoch, step) (splitmix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) >> 1


@dataclass
class LoopState:
    """What a resumed run needs besides the weights.

    ``epoch`` counts finished epochs; ``epoch_step`` the steps already taken in the next one (non-zero
    only when ``max_steps`` stopped a run inside an epoch); ``step`` all optimiser steps."""

    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    step: int = 0
    epoch_step: int = 0
    # per step of the unfinished epoch: the batch's summed loss, rec, kl and its size (for the epoch means)
    epoch_sums: list[list[float]] = field(default_factory=list)


class Callback:
    """Hooks called by the trainer (rank 0 only under torchrun); override what you need."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:  # noqa: B027
        pass

    def on_train_end(self, trainer: Trainer) -> None:  # noqa: B027
        pass


@dataclass
class TrainResult:
    """How a ``fit`` ended."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    history: list[dict[str, Any]]


class DivergenceWatch:
    """Tells a diverging run from one whose loss merely wobbles, from its per-step training losses.

    The reference is the lowest mean of ``window`` consecutive steps' losses seen so far (before
    ``window`` steps: the mean of all of them). A step is *over* when its loss exceeds both ``factor``
    times the reference and the reference plus ``margin`` nats (the margin keeps a loss near zero from
    tripping on noise). The run has diverged when ``patience`` consecutive steps are over, so a spike of
    a few steps is tolerated. Defaults: 10x, 10 nats, a 5-step mean, 5 steps in a row. A healthy run's
    loss falls or rises slowly (the KL warm-up adds at most beta's share of the KL, the learning rate
    0.1 spikes to about 2x on digits); learning rates 1 and 10 reach 1e5 to 1e13 nats within one step.
    The watch starts afresh at a resume (its state is not in the checkpoint).
    """

    def __init__(
        self, factor: float = 10.0, margin: float = 10.0, window: int = 5, patience: int = 5
    ) -> None:
        self.factor, self.margin, self.window, self.patience = factor, margin, window, patience
        self.recent: deque[float] = deque(maxlen=window)
        self.best = math.inf  # the lowest window mean so far
        self.over = 0  # consecutive steps over the threshold

    def threshold(self) -> float:
        """The loss above which a step is over (nats)."""
        return max(self.factor * self.best, self.best + self.margin)

    def update(self, loss: float) -> bool:
        """Records one step's loss (nats per example); True when the last ``patience`` steps were over."""
        self.recent.append(loss)
        self.best = min(self.best, sum(self.recent) / len(self.recent))
        self.over = self.over + 1 if loss > self.threshold() else 0
        return self.over >= self.patience

    def describe(self, loss: float) -> str:
        return (
            f"the training loss has been above {self.factor:g}x its lowest {self.window}-step mean "
            f"({self.best:.4g} nats) for {self.over} steps in a row (now {loss:.4g} nats)"
        )


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / max(1, len(values)))


class Trainer:
    """Trains a VAE on ``data`` as ``config.train`` says, writing into ``run_dir`` (if given).

    Args:
        model: the VAE (already on its device).
        data: the splits; training batches are gathered from ``data.train_store`` (binary data,
            ``data.binary``, is binarised afresh each step; 8-bit data is used as it is).
        config: the full, validated run configuration (saved in every checkpoint).
        run_dir: folder for checkpoints and metrics.jsonl; None trains in memory.
        callbacks: extra hooks.
        progress: show a tqdm bar per epoch.
        loss: the objective, ``elbo_terms`` by default (any function with its signature).

    Under torchrun (``exemplar_vae.distributed``) every rank builds the same Trainer; ``batch_size`` is
    the global batch, rank 0 writes the files and the others wait for it.
    """

    def __init__(
        self,
        model: VAE,
        data: DataSplits,
        config: RunConfig,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        loss: Loss = elbo_terms,
    ) -> None:
        self.model, self.data, self.config, self.loss = model, data, config, loss
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks, self.progress, self.is_main = list(callbacks), progress, distributed.is_main()
        self.world_size = distributed.world_size()
        t = config.train
        self.device = model.device
        self.train_store = data.train_store  # the training inputs, shared with the exemplar prior
        self.val_x = data.val_x.to(self.device)
        self.sampler = BatchSampler(data.num_train, t.batch_size, t.seed)
        self.optimizer = build_optimizer(t.optimizer, model.parameters(), t.lr)
        # mixed precision for the training steps only (validation and evaluation stay float32)
        self.amp_dtype = AMP_DTYPES[t.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.state = LoopState()
        self.history: list[dict[str, Any]] = []
        self._prior_fresh = False  # the prior's cache matches the current weights
        self._stop_requested = False
        self.divergence = DivergenceWatch()  # per-step losses -> diverged or not (TrainConfig.divergence)
        self._warned_epoch = 0  # "warn" mode: the last epoch a divergence warning was logged in
        self.step_loss = self._step_loss(loss)  # the training step's loss: ``loss``, or compiled

    def _step_loss(self, loss: Loss) -> Loss:
        """The loss of the training steps: ``loss`` itself, or (``config.train.compile``, the default
        objective, one process) ``CompiledElbo``. Validation always runs ``loss`` eagerly."""
        t = self.config.train
        if t.compile != "on":
            return loss
        if loss is not elbo_terms or self.world_size > 1:
            logger.warning(
                "--compile: only the default objective in one process is compiled; training eagerly"
            )
            return loss
        return CompiledElbo(self.model)

    def compile_report(self) -> dict[str, Any] | None:
        """What the compiled step cost so far (``CompiledElbo.report``), None when the step is eager."""
        return self.step_loss.report() if isinstance(self.step_loss, CompiledElbo) else None

    # -- state ---------------------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        """What ``save_checkpoint`` writes: the model's and optimizer's state dicts, the configuration, the
        loop state, the generators' states, the process count, the global batch and the scaler's state."""
        payload: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "loop": vars(self.state).copy(),
            "rng": torch.get_rng_state(),
            "world_size": self.world_size,
            "batch_size": self.config.train.batch_size,
        }
        if torch.cuda.is_available():
            payload["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.scaler.is_enabled():
            payload["scaler"] = self.scaler.state_dict()
        return payload

    def resume(self) -> None:
        """Continue from the run folder's last checkpoint (RUN_DIR/last.json, or the last.pt of an older
        run): weights, optimizer, loop state, RNG state and metrics.

        Everything is checked before anything is loaded: the checkpoint's files (``load_checkpoint``), its
        configuration against this run's (data, model and prior the same: this run's configuration was
        validated against the data, the networks' memory included, before the model was built), and its
        tensors against this model and optimizer. The next checkpoint is written in the current format.
        """
        assert self.run_dir is not None
        ckpt = load_checkpoint(self.run_dir, "last", map_location=self.device)
        where, saved = ckpt.path, ckpt.config
        same_prior = (
            dataclasses.replace(
                saved.prior, **{k: getattr(self.config.prior, k) for k in RESUMABLE_PRIOR_CHANGES}
            )
            == self.config.prior
        )
        if saved.model != self.config.model or not same_prior or saved.data != self.config.data:
            raise ExemplarVAEError(f"{where} was trained with a different data/model/prior configuration")
        changed = sorted(
            k for k, v in vars(saved.train).items()
            if k not in RESUMABLE_CHANGES and getattr(self.config.train, k) != v
        )  # fmt: skip
        if "batch_size" not in changed and changed:
            raise ExemplarVAEError(
                f"{where} was trained with other settings ({', '.join(changed)}); a resumed run "
                f"keeps them (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
            )
        assert ckpt.loop is not None and ckpt.optimizer is not None and ckpt.rng is not None
        state = LoopState(**ckpt.loop)
        if "step" not in ckpt.loop:  # a legacy checkpoint of the first versions: whole epochs only
            state.step = state.epoch * len(self.sampler)
        if self.config.train.epochs < state.epoch:
            raise ExemplarVAEError(
                f"{where} has trained {state.epoch} epochs already; --epochs "
                f"{self.config.train.epochs} would end it before it resumed (ask for more epochs)"
            )
        if ckpt.batch_size != self.config.train.batch_size:
            raise ExemplarVAEError(
                f"{where} was trained with a global batch of {ckpt.batch_size}; resume it with that "
                f"--batch-size (got {self.config.train.batch_size}; the process count may change)"
            )
        check_weights(ckpt, self.model.state_dict())
        check_optimizer(ckpt, self.optimizer)
        self.model.load_state_dict(ckpt.model)
        load_optimizer_state(self.optimizer, ckpt.optimizer)
        self.state = state
        if ckpt.scaler is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt.scaler)
        self._prior_fresh = False
        torch.set_rng_state(ckpt.rng)
        if ckpt.cuda_rng is not None and torch.cuda.is_available():
            # training draws from keyed generators; the global CUDA states only matter to user code, and a
            # run may resume on fewer GPUs than it was saved on: restore those that fit
            for device, cuda_state in enumerate(ckpt.cuda_rng[: torch.cuda.device_count()]):
                try:
                    torch.cuda.set_rng_state(cuda_state, device)
                except (RuntimeError, IndexError) as err:
                    raise CheckpointError(
                        f"{where}: the CUDA generator states do not fit here ({err})"
                    ) from err
        metrics_path = self.run_dir / METRICS
        if metrics_path.exists():  # keep the epochs the checkpoint has seen, drop any written after it
            try:
                self.history = [m for m in read_metrics(self.run_dir) if m["epoch"] <= self.state.epoch]
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(
                    f"{metrics_path} is damaged ({type(err).__name__}: {err}); fix or remove the bad line"
                ) from err
            kept = "".join(json.dumps(m) + "\n" for m in self.history)
            distributed.on_rank0(lambda: atomic_write_text(metrics_path, kept), f"rewriting {metrics_path}")
        logger.info(
            "resumed from epoch %d (best validation loss %.3f)", self.state.epoch, self.state.best_val
        )

    def request_stop(self) -> None:
        """Stop after the current epoch (a callback may call it: a time budget, a custom criterion).
        Under torchrun the request of rank 0 (the rank that runs callbacks) is what counts."""
        self._stop_requested = True

    # -- one epoch -----------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, beta: float) -> dict[str, float]:
        """One pass over the training set (from step ``state.epoch_step`` when resuming inside the epoch,
        up to ``max_steps``); returns the mean loss, rec and kl over the epoch's steps (global batches)."""
        model, t, s = self.model, self.config.train, self.state
        model.train()
        if not self._prior_fresh:  # validation of the previous epoch already refreshed it for these weights
            model.prior.refresh(model.encoder)  # explicit: the exemplar prior re-encodes its cache here
        batches = self.sampler.batches(epoch)
        sums = s.epoch_sums  # per step: global sums of loss, rec, kl over the batch, and its size
        bar = tqdm(
            range(s.epoch_step, len(batches)),
            desc=f"epoch {epoch}/{t.epochs}",
            leave=False,
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
        )
        for i in bar:
            if t.max_steps is not None and s.step >= t.max_steps:
                break
            sums.append(self.step(batches[i], beta, epoch, i).tolist())
            self._watch(sums[-1][0] / sums[-1][3], epoch, i)
            s.step, s.epoch_step = s.step + 1, i + 1
            bar.set_postfix(loss=f"{sums[-1][0] / sums[-1][3]:.2f}")
        if not sums:
            return {"train_loss": math.nan, "train_rec": math.nan, "train_kl": math.nan}
        per_step = torch.tensor(sums, dtype=torch.float64)  # [steps, 4]
        mean = (per_step[:, :3] / per_step[:, 3:]).mean(0)  # mean over steps of each batch's mean
        if s.epoch_step >= len(batches):
            s.epoch_step, s.epoch_sums = 0, []  # the epoch is finished
        return {"train_loss": float(mean[0]), "train_rec": float(mean[1]), "train_kl": float(mean[2])}

    def step(self, idx: Tensor, beta: float, epoch: int = 0, step: int = 0) -> Tensor:
        """One optimiser step on the global batch ``idx`` [B] (this rank computes its rows): binarise
        (binary data), the loss with KL weight ``beta``, backward, the gradients summed over ranks,
        gradient normalisation (AdamNormGrad), update. The batch's randomness comes from the generator
        keyed by (seed, ``epoch``, ``step``), drawn for the whole batch on every rank. The prior must be
        ready (``train_epoch`` refreshes it at the start of an epoch).

        Returns:
            [4] the global batch's summed loss, rec and kl (nats) and its size (identical on every rank).

        Raises:
            RunFailed: the loss is not finite (``epoch`` is named in the message), whatever
                ``divergence`` says: the update would write NaN into the weights.
        """
        model, t = self.model, self.config.train
        idx = idx.to(self.device)
        g = torch.Generator(device=self.device).manual_seed(step_seed(t.seed, epoch, step))
        x = self.train_store.gather(idx).to(self.device)  # [B, D], the global batch
        if self.data.binary:
            x = dynamic_binarize(x, g)  # [B, D] in {0, 1}
        noise = model.draw_noise(idx.shape[0], g)
        rows = distributed.shard(torch.arange(idx.shape[0], device=self.device))  # this rank's rows
        mine = StepNoise(noise.z[rows], noise.lower[rows] if noise.lower is not None else None)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            terms = self.step_loss(model, x[rows], idx[rows], beta, g, mine)
        # this rank's share of the global batch mean: summed over ranks, the gradient of the mean
        loss = (terms.rec + beta * terms.kl).sum() / idx.shape[0]
        if self.world_size == 1:
            loss = terms.loss  # the loss's own mean (the same value, one reduction fewer)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.all_reduce_gradients(model.parameters())
        sums = torch.stack(
            [(terms.rec + beta * terms.kl).sum(), terms.rec.sum(), terms.kl.sum(), loss.new_tensor(0.0)]
        ).detach()
        sums = distributed.all_reduce_sum(sums)
        sums[3] = idx.shape[0]
        if not torch.isfinite(sums[0]):
            raise RunFailed(
                f"training diverged at epoch {epoch}, step {step + 1} (loss {float(sums[0] / sums[3])}); "
                f"try a smaller --lr (now {t.lr:g})"
            )
        self.scaler.unscale_(self.optimizer)  # no-op when the scaler is disabled
        if t.optimizer == "adamnormgrad":
            normalize_gradients(model.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._prior_fresh = False
        return sums

    def _watch(self, loss: float, epoch: int, step: int) -> None:
        """Feeds step ``step``'s loss to the divergence watch; a diverged run raises RunFailed
        (``divergence="stop"``) or logs a warning, at most one per epoch (``"warn"``). Every rank sees
        the same global losses, so every rank decides the same."""
        if not self.divergence.update(loss):
            return
        t = self.config.train
        what = f"training diverged at epoch {epoch}, step {step + 1}: {self.divergence.describe(loss)}"
        if t.divergence != "warn":
            raise RunFailed(
                f"{what}; try a smaller --lr (now {t.lr:g}), or --on-divergence warn to train on regardless"
            )
        if self._warned_epoch != epoch:
            self._warned_epoch = epoch
            logger.warning(
                "%s; training on (--on-divergence warn); a smaller --lr (now %g) may help", what, t.lr
            )

    @torch.no_grad()
    def validate(self, batch_size: int = 500) -> dict[str, float]:
        """Negative ELBO (beta = 1, full prior, fixed noise) on the validation split.

        The noise of every batch is drawn in order from one generator on every rank; each rank scores a
        contiguous block of whole batches and the per-example terms are gathered, so the figures do not
        depend on the number of processes."""
        model = self.model
        model.eval()
        if not self._prior_fresh:
            model.prior.refresh(model.encoder)
            self._prior_fresh = True
        g = torch.Generator(device=self.device).manual_seed(12345)
        batches = self.val_x.split(batch_size)
        mine = set(distributed.shard(torch.arange(len(batches))).tolist())
        rec, kl = [], []
        for j, xb in enumerate(batches):
            noise = model.draw_noise(xb.shape[0], g)  # drawn on every rank: the stream stays the same
            if j in mine:
                terms = self.loss(model, xb, None, 1.0, g, noise)
                rec.append(terms.rec)
                kl.append(terms.kl)
        empty = self.val_x.new_zeros(0)
        r = distributed.gather_rows(torch.cat(rec) if rec else empty)
        k = distributed.gather_rows(torch.cat(kl) if kl else empty)
        return {"val_loss": float((r + k).mean()), "val_rec": float(r.mean()), "val_kl": float(k.mean())}

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``epochs``, early stopping or ``max_steps``; returns how it ended."""
        t, s = self.config.train, self.state
        stopped = bool(t.early_stopping) and s.bad_epochs >= t.early_stopping  # resumed after it stopped
        for epoch in range(s.epoch + 1, t.epochs + 1) if not stopped else ():
            if t.max_steps is not None and s.step >= t.max_steps:
                break
            start = time.perf_counter()
            beta = kl_warmup(epoch, t.warmup)
            metrics: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch, beta)}
            if s.epoch_step > 0:  # max_steps stopped the run inside the epoch: save where it stands
                self._save_partial(epoch)
                break
            metrics.update(self.validate())
            metrics.update(beta=beta, seconds=round(time.perf_counter() - start, 3), step=s.step)
            metrics.update(self.model.prior.extra_metrics())
            compiled = self.compile_report()
            if compiled is not None:  # compile time so far, inside this and earlier epochs' seconds
                metrics.update(compile_seconds=compiled["compile_seconds"], compiled=compiled["used"])
            s.epoch = epoch
            improved = metrics["val_loss"] < s.best_val
            if improved:
                s.best_val, s.best_epoch, s.bad_epochs = metrics["val_loss"], epoch, 0
            elif epoch > t.warmup:  # the paper holds the counter during warm-up
                s.bad_epochs += 1
            metrics["best_epoch"] = s.best_epoch
            self._write(metrics, improved)
            self.history.append(metrics)
            logger.info(
                "epoch %d: train %.3f  val %.3f (rec %.3f, kl %.3f)  beta %.3f  %.1fs%s",
                epoch, metrics["train_loss"], metrics["val_loss"], metrics["val_rec"], metrics["val_kl"],
                beta, metrics["seconds"], "  *" if improved else "",
            )  # fmt: skip

            distributed.on_rank0(functools.partial(self._epoch_callbacks, metrics), "in a callback")
            # rank 0 decides (every rank holds the same figures; the decision must be one)
            if distributed.broadcast_flag(bool(t.early_stopping) and s.bad_epochs >= t.early_stopping):
                logger.info("early stopping: %d epochs without improvement", s.bad_epochs)
                stopped = True
                break
            if distributed.broadcast_flag(self._stop_requested):
                logger.info("stopped after epoch %d on request", epoch)
                break

        def finish() -> None:
            for cb in self.callbacks:
                cb.on_train_end(self)

        distributed.on_rank0(finish, "in a callback")
        return TrainResult(s.epoch, s.best_epoch, s.best_val, stopped, self.history)

    def _epoch_callbacks(self, metrics: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)

    def _write(self, metrics: dict[str, Any], improved: bool) -> None:
        run_dir = self.run_dir
        if run_dir is None:
            return

        def write() -> None:
            # metrics first: a resume drops metric lines newer than the last checkpoint, so a crash in
            # between is harmless
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            payload = self._payload()
            if improved:
                save_checkpoint(run_dir, "best", payload)
            save_checkpoint(run_dir, "last", payload)

        # rank 0 writes; if it fails (e.g. the disk is full) every rank stops instead of waiting for it
        distributed.on_rank0(write, f"writing the checkpoint of {run_dir}")

    def _save_partial(self, epoch: int) -> None:
        """The last checkpoint of a run stopped by ``max_steps`` inside ``epoch`` (no metrics line: the epoch
        has not ended). A resume continues the epoch from the next step, with the cache refreshed at resume."""
        logger.info(
            "max_steps=%d reached at step %d of epoch %d",
            self.config.train.max_steps,
            self.state.epoch_step,
            epoch,
        )
        run_dir = self.run_dir
        if run_dir is not None:
            distributed.on_rank0(
                lambda: save_checkpoint(run_dir, "last", self._payload()), f"writing {run_dir}"
            )
