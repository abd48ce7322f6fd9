"""A cache of the encoder means of all exemplars, refreshed by an explicit call."""

from __future__ import annotations

import torch
from torch import Tensor

from exemplar_vae import distributed
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.interfaces import Encoder


@torch.no_grad()
def encode_means(
    encoder: Encoder, x: Tensor | ExemplarStore, batch_size: int = 2000, device: torch.device | None = None
) -> Tensor:
    """mu_phi(x) for many inputs without gradient, in batches: [N, D] -> [N, d] (on ``device``, where
    each batch is moved; None: where ``x`` is). ``x`` may be a store (rows read batch by batch).

    The encoder is put in eval mode for the pass and restored afterwards. In a distributed run each rank
    encodes a contiguous block of whole batches and the codes are gathered (every rank gets all N), so
    every row is computed in the same batch as in one process: the cache is the same bit for bit.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        starts = distributed.shard(torch.arange(0, x.shape[0], batch_size)).tolist()  # this rank's batches

        def rows(i: int, j: int) -> Tensor:
            xb = x[i:j]  # [j - i, D] float32
            return xb.to(device) if device is not None else xb

        mine = [encoder.mean(rows(i, i + batch_size)) for i in starts]
        if not mine:
            mine = [encoder.mean(rows(0, 0))]  # [0, d]: no batch for this rank
        return distributed.gather_rows(torch.cat(mine))  # [N, d]
    finally:
        encoder.train(was_training)


class CodeCache:
    """Encoder means of the N exemplars, valid until the encoder changes.

    Retrieval augmented training refreshes it at the start of every epoch (a deliberate staleness: the
    retrieved exemplars are re-encoded with gradients, only the neighbour choice uses stale codes), and
    evaluation refreshes it before scoring.
    """

    def __init__(self) -> None:
        self.codes: Tensor | None = None  # [N, d]

    def refresh(
        self, encoder: Encoder, exemplars: Tensor | ExemplarStore, device: torch.device | None = None
    ) -> Tensor:
        """Encode all exemplars and store their means (on ``device``); returns the [N, d] codes."""
        self.codes = encode_means(encoder, exemplars, device=device)
        return self.codes

    def get(self) -> Tensor:
        """The cached [N, d] codes; raises if refresh() was never called."""
        if self.codes is None:
            raise RuntimeError("the exemplar code cache is empty: call prior.refresh(encoder) first")
        return self.codes

    def invalidate(self) -> None:
        self.codes = None
