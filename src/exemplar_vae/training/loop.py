"""The training loop: epochs, KL warm-up, validation, early stopping, checkpoints, resume.

The loop drives any ``VAE`` with the loss it is given (default ``objectives.elbo_terms``): it calls
``loss(model, x, index, beta)`` for the ELBO terms and
``model.prior.refresh(model.encoder)`` at the start of every epoch and before validation (the exemplar
prior re-encodes its exemplar cache there; the other priors do nothing). Batches are index tensors drawn
from a seeded permutation; ``BatchSampler`` takes ``rank``/``world_size`` so each process of a
torch.distributed run can take its shard of the same permutation (wrap the model in
DistributedDataParallel and write files from rank 0 only).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from exemplar_vae.config import RunConfig
from exemplar_vae.data import DataSplits, dynamic_binarize
from exemplar_vae.errors import ExemplarVAEError
from exemplar_vae.functional import kl_warmup
from exemplar_vae.io import BEST, LAST, METRICS, atomic_write_text, read_metrics
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.elbo import ElboTerms, elbo_terms
from exemplar_vae.training.checkpoint import load_checkpoint, save_checkpoint
from exemplar_vae.training.optim import build_optimizer, load_optimizer_state, normalize_gradients

# (model, x [B, D], dataset indices [B] or None, beta, generator or None) -> ElboTerms
Loss = Callable[[VAE, Tensor, Tensor | None, float, torch.Generator | None], ElboTerms]

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

logger = logging.getLogger(__name__)


class BatchSampler:
    """Minibatches of dataset indices from a permutation seeded by (seed, epoch).

    Args:
        n: dataset size.
        batch_size: examples per batch (per process).
        seed: base seed; epoch e uses seed * 100003 + e.
        rank, world_size: this process's shard of every permutation (torch.distributed).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size

    def batches(self, epoch: int) -> list[Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(self.n, generator=g)[self.rank :: self.world_size]  # [n / world]
        return list(perm.split(self.batch_size))

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world_size) / self.batch_size)


@dataclass
class LoopState:
    """What a resumed run needs besides the weights."""

    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0


class Callback:
    """Hooks called by the trainer; override what you need."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:  # noqa: B027
        pass


@dataclass
class TrainResult:
    """How a ``fit`` ended."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    history: list[dict[str, Any]]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / max(1, len(values)))


class Trainer:
    """Trains a VAE on ``data`` as ``config.train`` says, writing into ``run_dir`` (if given).

    Args:
        model: the VAE (already on its device).
        data: the splits; for binary data (``data.binary``) training batches are binarised dynamically
            from ``data.train_x``, 8-bit data is used as it is.
        config: the full, validated run configuration (saved in every checkpoint).
        run_dir: folder for checkpoints and metrics.jsonl; None trains in memory.
        callbacks: extra hooks.
        progress: show a tqdm bar per epoch.
        loss: the objective, ``elbo_terms`` by default (any function with its signature).
        rank, world_size: for torch.distributed (files are written by rank 0 only).
    """

    def __init__(
        self,
        model: VAE,
        data: DataSplits,
        config: RunConfig,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        rank: int = 0,
        world_size: int = 1,
        loss: Loss = elbo_terms,
    ) -> None:
        self.model, self.data, self.config, self.loss = model, data, config, loss
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks, self.progress, self.is_main = list(callbacks), progress, rank == 0
        t = config.train
        self.device = model.device
        self.train_x = data.train_x.to(self.device)
        self.val_x = data.val_x.to(self.device)
        self.sampler = BatchSampler(self.train_x.shape[0], t.batch_size, t.seed, rank, world_size)
        self.optimizer = build_optimizer(t.optimizer, model.parameters(), t.lr)
        # mixed precision for the training steps only (validation and evaluation stay float32)
        self.amp_dtype = AMP_DTYPES[t.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.state = LoopState()
        self.history: list[dict[str, Any]] = []
        self._prior_fresh = False  # the prior's cache matches the current weights

    # -- state ---------------------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "loop": vars(self.state).copy(),
            "rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            payload["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.scaler.is_enabled():
            payload["scaler"] = self.scaler.state_dict()
        return payload

    def resume(self) -> None:
        """Continue from RUN_DIR/last.pt: weights, optimizer, loop state, RNG state and metrics."""
        assert self.run_dir is not None
        ckpt = load_checkpoint(self.run_dir / LAST, map_location=self.device)
        saved = RunConfig.from_dict(ckpt["config"])
        if (
            saved.model != self.config.model
            or saved.prior != self.config.prior
            or saved.data != self.config.data
        ):
            raise ExemplarVAEError(
                f"{self.run_dir / LAST} was trained with a different data/model/prior configuration"
            )
        self.model.load_state_dict(ckpt["model"])
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self.state = LoopState(**ckpt["loop"])
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self._prior_fresh = False
        torch.set_rng_state(ckpt["rng"].cpu())
        if "cuda_rng" in ckpt and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
        metrics_path = self.run_dir / METRICS
        if metrics_path.exists():  # keep the epochs the checkpoint has seen, drop any written after it
            self.history = [m for m in read_metrics(self.run_dir) if m["epoch"] <= self.state.epoch]
            atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in self.history))
        logger.info(
            "resumed from epoch %d (best validation loss %.3f)", self.state.epoch, self.state.best_val
        )

    # -- one epoch -----------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, beta: float) -> dict[str, float]:
        """One pass over the training set; returns mean loss, rec and kl."""
        model, t = self.model, self.config.train
        model.train()
        if not self._prior_fresh:  # validation of the previous epoch already refreshed it for these weights
            model.prior.refresh(model.encoder)  # explicit: the exemplar prior re-encodes its cache here
        losses, recs, kls = [], [], []
        bar = tqdm(
            self.sampler.batches(epoch),
            desc=f"epoch {epoch}/{t.epochs}",
            leave=False,
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
        )
        for idx in bar:
            terms = self.step(idx, beta, epoch)
            losses.append(terms.loss.item())
            recs.append(terms.rec.mean().item())
            kls.append(terms.kl.mean().item())
            bar.set_postfix(loss=f"{losses[-1]:.2f}")
        return {"train_loss": _mean(losses), "train_rec": _mean(recs), "train_kl": _mean(kls)}

    def step(self, idx: Tensor, beta: float, epoch: int = 0) -> ElboTerms:
        """One optimiser step on the training examples ``idx`` [B]: binarise (binary data), the loss with
        KL weight ``beta``, backward, gradient normalisation (AdamNormGrad), update. The prior must be
        ready (``train_epoch`` refreshes it at the start of an epoch). Returns the batch's ELBO terms.

        Raises:
            ExemplarVAEError: the loss is not finite (``epoch`` is named in the message).
        """
        model, t = self.model, self.config.train
        idx = idx.to(self.device)
        x = self.train_x[idx]  # [B, D]
        if self.data.binary:
            x = dynamic_binarize(x)  # [B, D] in {0, 1}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            terms = self.loss(model, x, idx, beta, None)
        if not torch.isfinite(terms.loss):
            raise ExemplarVAEError(
                f"training diverged at epoch {epoch} (loss {terms.loss.item()}); try a smaller --lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.loss).backward()
        self.scaler.unscale_(self.optimizer)  # no-op when the scaler is disabled
        if t.optimizer == "adamnormgrad":
            normalize_gradients(model.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._prior_fresh = False
        return terms

    @torch.no_grad()
    def validate(self, batch_size: int = 500) -> dict[str, float]:
        """Negative ELBO (beta = 1, full prior, fixed noise) on the validation split."""
        model = self.model
        model.eval()
        if not self._prior_fresh:
            model.prior.refresh(model.encoder)
            self._prior_fresh = True
        g = torch.Generator(device=self.device).manual_seed(12345)
        rec, kl = [], []
        for xb in self.val_x.split(batch_size):
            terms = self.loss(model, xb, None, 1.0, g)
            rec.append(terms.rec)
            kl.append(terms.kl)
        r, k = torch.cat(rec), torch.cat(kl)
        return {"val_loss": float((r + k).mean()), "val_rec": float(r.mean()), "val_kl": float(k.mean())}

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``epochs`` or early stopping; returns how it ended."""
        t, s = self.config.train, self.state
        stopped = bool(t.early_stopping) and s.bad_epochs >= t.early_stopping  # resumed after it stopped
        for epoch in range(s.epoch + 1, t.epochs + 1) if not stopped else ():
            start = time.perf_counter()
            beta = kl_warmup(epoch, t.warmup)
            metrics: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch, beta)}
            metrics.update(self.validate())
            metrics.update(beta=beta, seconds=round(time.perf_counter() - start, 3))
            metrics.update(self.model.prior.extra_metrics())
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
            for cb in self.callbacks:
                cb.on_epoch_end(self, metrics)
            if t.early_stopping and s.bad_epochs >= t.early_stopping:
                logger.info("early stopping: %d epochs without improvement", s.bad_epochs)
                stopped = True
                break
        return TrainResult(s.epoch, s.best_epoch, s.best_val, stopped, self.history)

    def _write(self, metrics: dict[str, Any], improved: bool) -> None:
        if self.run_dir is None or not self.is_main:
            return
        # metrics first: a resume drops metric lines newer than last.pt, so a crash in between is harmless
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        payload = self._payload()
        if improved:
            save_checkpoint(self.run_dir / BEST, payload)
        save_checkpoint(self.run_dir / LAST, payload)
