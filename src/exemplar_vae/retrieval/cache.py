"""A cache of the encoder means of all exemplars, refreshed by an explicit call."""

from __future__ import annotations

import torch
from torch import Tensor

from exemplar_vae.interfaces import Encoder


@torch.no_grad()
def encode_means(encoder: Encoder, x: Tensor, batch_size: int = 2000) -> Tensor:
    """mu_phi(x) for many inputs without gradient, in batches: [N, D] -> [N, d].

    The encoder is put in eval mode for the pass and restored afterwards.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        return torch.cat([encoder.mean(xb) for xb in x.split(batch_size)])
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

    def refresh(self, encoder: Encoder, exemplars: Tensor) -> Tensor:
        """Encode all exemplars and store their means; returns the [N, d] codes."""
        self.codes = encode_means(encoder, exemplars)
        return self.codes

    def get(self) -> Tensor:
        """The cached [N, d] codes; raises if refresh() was never called."""
        if self.codes is None:
            raise RuntimeError("the exemplar code cache is empty: call prior.refresh(encoder) first")
        return self.codes

    def invalidate(self) -> None:
        self.codes = None
