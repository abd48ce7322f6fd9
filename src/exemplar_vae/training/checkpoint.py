"""Checkpoints (model, optimizer, loop state, RNG state, config), written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from exemplar_vae.errors import CheckpointError
from exemplar_vae.io import atomic_write_bytes


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Serialise ``payload`` (state dicts, numbers, RNG tensors, plain dicts) atomically with torch.save."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain data only: weights_only=True).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path} is not an exemplar-vae checkpoint (no model state or config)")
    return payload
