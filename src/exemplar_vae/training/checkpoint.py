"""Training checkpoints: weights and optimizer tensors in safetensors, the rest in JSON; nothing unpickled.

A run folder holds two checkpoints (file names in ``exemplar_vae.io``):

``best`` -- the weights of the epoch with the lowest validation loss:

- ``best.safetensors``: the model's state dict;
- ``best.json``: ``{"format_version": 1, "exemplar_vae_version", "epoch", "val_loss", "config",
  "sha256": {"best.safetensors": hex digest}}``.

``last`` -- everything a resumed run needs:

- ``last.safetensors``: the model's state dict;
- ``last-optimizer.safetensors``: the optimizer's tensors, named ``state.<parameter id>.<key>``
  (e.g. ``state.3.exp_avg``);
- ``last.json``: ``{"format_version": 1, "exemplar_vae_version", "config", "loop"`` (the trainer's
  ``LoopState``; ``best_val`` null while it is infinite), ``"optimizer": {"param_groups": [...], "state":
  {"<id>": {"tensors": [keys in the optimizer file], "values": {key: number}}}}``, ``"rng": {"cpu": base64,
  "cuda": [base64, ...]}`` (the generators' byte states; "cuda" only when saved with CUDA),
  ``"world_size", "batch_size", "scaler"`` (the GradScaler's state, or null), ``"sha256": {file: hex}}``.

Writing: the safetensors files are written first (atomically, as ``NAME.pending``), then the JSON document
(atomically: the commit point), then the pending files are renamed to their names. A reader checks every
file against the SHA-256 in the JSON; a file that does not match while its ``.pending`` twin does (a writer
stopped between the commit and the renames) is read from the twin, and the next save finishes the
renames. So a checkpoint is always the last committed one, whole, or an error -- never a mix.

Loading (``load_checkpoint``) checks the JSON (keys, types, the run configuration), each file's SHA-256,
that every tensor is finite and that the tensors are the ones the JSON describes; ``check_weights`` and
``check_optimizer`` (or the ``model``/``optimizer`` arguments) check them against the model and optimizer
they are about to be loaded into. Every failure is a ``CheckpointError`` of one line naming the file.

Legacy checkpoints: runs written before this format hold ``best.pt``/``last.pt`` (one ``torch.save`` of a
dict). They are still read -- with ``torch.load(weights_only=True)``, which admits tensors and plain data
only and is used for those files alone -- and checked the same way. A resumed legacy run writes the new
format from then on, and each legacy file is removed once the checkpoint that supersedes it is committed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from exemplar_vae.config import RunConfig
from exemplar_vae.errors import CheckpointError, ExemplarVAEError
from exemplar_vae.io import (
    BEST,
    BEST_WEIGHTS,
    CHECKPOINT_FORMAT_VERSION,
    LAST,
    LAST_OPTIMIZER,
    LAST_WEIGHTS,
    LEGACY_BEST,
    LEGACY_LAST,
    PENDING,
    atomic_write_bytes,
    atomic_write_json,
    package_version,
    sha256_bytes,
    sha256_file,
)

__all__ = [
    "LOOP_FIELDS",
    "PENDING",
    "Checkpoint",
    "check_optimizer",
    "check_weights",
    "checkpoint_file",
    "checkpoint_names",
    "has_checkpoint",
    "load_checkpoint",
    "remove_checkpoint",
    "save_checkpoint",
]

WHICH = ("best", "last")
# per checkpoint: its JSON document, its safetensors files, its legacy file
_DOC = {"best": BEST, "last": LAST}
_FILES = {"best": (BEST_WEIGHTS,), "last": (LAST_WEIGHTS, LAST_OPTIMIZER)}
_LEGACY = {"best": LEGACY_BEST, "last": LEGACY_LAST}
# the trainer's LoopState, field by field: (types, whether a legacy checkpoint must hold it). The current
# format holds every field; legacy runs of the first versions saved only epoch, best_val, best_epoch and
# bad_epochs (the trainer fills in the others: see ``Trainer.resume``).
LOOP_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "epoch": ((int,), True),
    "best_val": ((float, int, type(None)), True),
    "best_epoch": ((int,), True),
    "bad_epochs": ((int,), True),
    "step": ((int,), False),
    "epoch_step": ((int,), False),
    "epoch_sums": ((list,), False),
}
_BEST_KEYS = {"format_version", "exemplar_vae_version", "epoch", "val_loss", "config", "sha256"}
_LAST_KEYS = {
    "format_version", "exemplar_vae_version", "config", "loop", "optimizer", "rng", "world_size",
    "batch_size", "scaler", "sha256",
}  # fmt: skip


@dataclass
class Checkpoint:
    """A checkpoint as read from a run folder, checked (see the module docstring).

    Attributes:
        which: "best" or "last".
        path: the file that commits it: RUN/best.json, RUN/last.json, or a legacy ``.pt`` file.
        weights_path: the file the weights came from (named in messages about them).
        legacy: read from a legacy ``.pt`` file.
        config: the run configuration saved with it.
        model: the model's state dict (tensors on ``map_location``).
        epoch: the epoch it was saved at (finished epochs).
        val_loss: "best": its validation loss; "last": the best validation loss so far (inf before the
            first validation).
        optimizer, loop, rng, cuda_rng, world_size, batch_size, scaler: "last" only (None for "best"):
            the optimizer's ``state_dict()``, the loop state (a dict of ``LoopState`` fields), the CPU
            generator's state (a uint8 tensor on the CPU), the CUDA generators' states (None when saved
            without CUDA), the process count and global batch it was trained with, the GradScaler's state
            (None when it was disabled).
    """

    which: str
    path: Path
    weights_path: Path
    legacy: bool
    config: RunConfig
    model: dict[str, Tensor]
    epoch: int
    val_loss: float
    optimizer: dict[str, Any] | None = None
    loop: dict[str, Any] | None = None
    rng: Tensor | None = None
    cuda_rng: list[Tensor] | None = None
    world_size: int | None = None
    batch_size: int | None = None
    scaler: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------- the files


def _check_which(which: str) -> None:
    if which not in WHICH:
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")


def checkpoint_names(which: str) -> tuple[str, ...]:
    """Every file name the checkpoint ``which`` may leave in a run folder: its JSON document, its
    safetensors files and their ``.pending`` twins, its legacy ``.pt`` file."""
    _check_which(which)
    files = _FILES[which]
    return (_DOC[which], *files, *(name + PENDING for name in files), _LEGACY[which])


def checkpoint_file(run_dir: str | Path, which: str = "best") -> Path | None:
    """The file that commits the checkpoint ``which`` of a run folder -- RUN/best.json or RUN/last.json,
    else the legacy RUN/best.pt or RUN/last.pt of an older run -- or None when it has none. Its mtime
    changes exactly when the checkpoint does."""
    _check_which(which)
    for name in (_DOC[which], _LEGACY[which]):
        path = Path(run_dir) / name
        if path.is_file():
            return path
    return None


def has_checkpoint(run_dir: str | Path, which: str = "last") -> bool:
    """Whether the run folder holds the checkpoint ``which`` (in either format)."""
    return checkpoint_file(run_dir, which) is not None


def remove_checkpoint(run_dir: str | Path, which: str) -> None:
    """Delete every file of the checkpoint ``which`` (its JSON document first: the rest is then no
    checkpoint, whatever happens next)."""
    for name in checkpoint_names(which):
        (Path(run_dir) / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- writing


def _cpu_tensors(state: Mapping[str, Any], what: str) -> dict[str, Tensor]:
    """Contiguous CPU copies (no shared storage, which safetensors refuses) of a state dict's tensors."""
    out = {}
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{what} entry '{name}' is a {type(value).__name__}, not a tensor")
        out[name] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return out


def _plain(value: Any, what: str) -> Any:
    """A parameter-group or scaler value as JSON: numbers, strings, booleans, None, lists of numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    raise CheckpointError(f"{what} is a {type(value).__name__}, which a checkpoint cannot hold")


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An ``Optimizer.state_dict()`` as (its tensors, named ``state.<id>.<key>``; the JSON layout)."""
    tensors: dict[str, Tensor] = {}
    layout: dict[str, Any] = {}
    for pid, entry in state["state"].items():
        names, values = [], {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{key}"] = (
                    value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
                )
                names.append(key)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = value
            else:
                raise CheckpointError(
                    f"optimizer state {pid}.{key} is a {type(value).__name__}, which a checkpoint cannot hold"
                )
        layout[str(int(pid))] = {"tensors": names, "values": values}
    groups = [
        {k: (list(v) if k == "params" else _plain(v, f"optimizer setting '{k}'")) for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "state": layout}


def _b64(state: Tensor) -> str:
    return base64.b64encode(state.detach().to("cpu").contiguous().numpy().tobytes()).decode("ascii")


def _settle(run_dir: Path, which: str) -> None:
    """Finish a save that stopped between its commit and its renames: a ``.pending`` file matching the
    committed JSON becomes the file it stands for; one that does not (a save stopped before its commit)
    is dropped."""
    pending = [name for name in _FILES[which] if (run_dir / (name + PENDING)).is_file()]
    if not pending:
        return
    try:
        digests = json.loads((run_dir / _DOC[which]).read_text(encoding="utf-8")).get("sha256", {})
    except (OSError, ValueError, AttributeError, RecursionError):
        digests = {}
    for name in pending:
        path = run_dir / (name + PENDING)
        if isinstance(digests, dict) and digests.get(name) == sha256_file(path):
            os.replace(path, run_dir / name)
        else:
            path.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | Path, which: str, payload: Mapping[str, Any]) -> None:
    """Write the checkpoint ``which`` ("best" or "last") of a run folder (format in the module docstring).

    Args:
        run_dir: the run folder.
        which: "best" (the weights, the epoch and its validation loss) or "last" (everything).
        payload: ``Trainer._payload()``: "model" and "optimizer" (state dicts), "config" (a
            ``RunConfig.to_dict()``), "loop" (the ``LoopState`` fields), "rng" (the CPU generator's state),
            "world_size", "batch_size", and optionally "cuda_rng" (a list of states) and "scaler".

    The safetensors files first, the JSON document last (each atomically); a legacy ``.pt`` file of the
    same checkpoint is removed once the new one is committed.
    """
    from safetensors.torch import save as safetensors_bytes

    _check_which(which)
    run_dir = Path(run_dir)
    _settle(run_dir, which)
    loop = dict(payload["loop"])
    best_val = float(loop["best_val"])
    loop["best_val"] = best_val if math.isfinite(best_val) else None  # JSON has no infinity
    blobs = {_FILES[which][0]: safetensors_bytes(_cpu_tensors(payload["model"], "model state"))}
    doc: dict[str, Any] = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "exemplar_vae_version": package_version(),
        "config": payload["config"],
    }
    if which == "best":
        doc.update(epoch=int(loop["epoch"]), val_loss=best_val)
    else:
        tensors, layout = _flatten_optimizer(payload["optimizer"])
        blobs[LAST_OPTIMIZER] = safetensors_bytes(tensors)
        rng: dict[str, Any] = {"cpu": _b64(payload["rng"])}
        if payload.get("cuda_rng") is not None:
            rng["cuda"] = [_b64(s) for s in payload["cuda_rng"]]
        scaler = payload.get("scaler")
        doc.update(
            loop=loop,
            optimizer=layout,
            rng=rng,
            world_size=int(payload["world_size"]),
            batch_size=int(payload["batch_size"]),
            scaler={k: _plain(v, f"scaler setting '{k}'") for k, v in scaler.items()} if scaler else None,
        )
    doc["sha256"] = {name: sha256_bytes(blob) for name, blob in blobs.items()}
    for name, blob in blobs.items():
        atomic_write_bytes(run_dir / (name + PENDING), blob)
    atomic_write_json(run_dir / _DOC[which], doc)  # the commit point
    for name in blobs:
        os.replace(run_dir / (name + PENDING), run_dir / name)
    (run_dir / _LEGACY[which]).unlink(missing_ok=True)  # superseded by the checkpoint just committed


# --------------------------------------------------------------------------------------------- checks


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _one_line(err: BaseException) -> str:
    """The informative line of an exception's message: torch's weights-only refusal puts its reason after
    several lines of advice (e.g. "Unsupported global: GLOBAL io.open was not an allowed global by
    default"), which is kept without the advice that follows it."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        if reason:
            return reason.split(". ", 1)[0].rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_finite(tensors: Mapping[str, Tensor], where: Path) -> None:
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"non-finite values in {where}: tensor {key} holds NaN or inf")


def _check_state_dict(value: Any, where: Path, what: str) -> dict[str, Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    ):
        raise CheckpointError(f"{where}: the {what} is not a mapping of names to tensors")
    return value


def _check_config(value: Any, where: Path) -> RunConfig:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: 'config' must be a JSON object, got {type(value).__name__}")
    try:
        return RunConfig.from_dict(value)
    except (ExemplarVAEError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: the run configuration is not valid: {_one_line(err)}") from err


def _check_loop(value: Any, where: Path, legacy: bool) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: the loop state ('loop') is missing or not a mapping")
    unknown = sorted(set(value) - set(LOOP_FIELDS))
    if unknown:
        raise CheckpointError(f"{where}: the loop state has unknown entries {', '.join(unknown)}")
    loop = dict(value)
    for key, (types, in_legacy) in LOOP_FIELDS.items():
        if key not in loop:
            if in_legacy or not legacy:
                raise CheckpointError(f"{where}: the loop state lacks '{key}'")
            continue
        v = loop[key]
        if not isinstance(v, types) or isinstance(v, bool):
            raise CheckpointError(f"{where}: loop state '{key}' has the wrong type ({type(v).__name__})")
        if isinstance(v, int) and key != "best_val" and v < 0:
            raise CheckpointError(f"{where}: loop state '{key}' is negative ({v})")
    loop["best_val"] = math.inf if loop["best_val"] is None else float(loop["best_val"])
    if math.isnan(loop["best_val"]):
        raise CheckpointError(f"{where}: loop state 'best_val' is NaN")
    for row in loop.get("epoch_sums", []):  # per step: summed loss, rec, kl, batch size (for the means)
        if not (isinstance(row, list) and len(row) == 4 and all(_is_number(x) for x in row)):
            raise CheckpointError(f"{where}: loop state 'epoch_sums' must hold rows of 4 numbers")
    return loop


def _check_positive(value: Any, where: Path, key: str) -> int:
    if not _is_int(value) or value < 1:
        raise CheckpointError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return int(value)


def _check_scaler(value: Any, where: Path) -> dict[str, Any] | None:
    """The GradScaler's state: None (disabled) or a mapping of names to numbers."""
    if value is not None and (
        not isinstance(value, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in value.items())
    ):
        raise CheckpointError(f"{where}: the scaler state ('scaler') is not a mapping of names to numbers")
    return value


def _check_groups(value: Any, where: Path) -> list[dict[str, Any]]:
    """Optimizer parameter groups: a list of mappings, each with its parameters' ids ("params")."""
    if not isinstance(value, list) or not all(isinstance(g, dict) for g in value):
        raise CheckpointError(f"{where}: the optimizer's param_groups must be a list of mappings")
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for g in value:
        ids = g.get("params")
        if not isinstance(ids, list) or not all(_is_int(i) and i >= 0 for i in ids) or seen & set(ids):
            raise CheckpointError(f"{where}: an optimizer param group has no valid 'params' (parameter ids)")
        seen |= set(ids)
        group: dict[str, Any] = {}
        for k, v in g.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: an optimizer param group has a non-text key {k!r}")
            if k == "params":
                group[k] = list(ids)
            elif isinstance(v, (list, tuple)):  # tuples (Adam's betas) come back from JSON as lists
                if not all(_is_number(x) for x in v):
                    raise CheckpointError(f"{where}: optimizer setting '{k}' is not a list of numbers")
                group[k] = tuple(v)
            elif v is None or isinstance(v, (bool, int, float, str)):
                group[k] = v
            else:
                raise CheckpointError(f"{where}: optimizer setting '{k}' has the type {type(v).__name__}")
        groups.append(group)
    return groups


def _check_legacy_optimizer(value: Any, where: Path) -> dict[str, Any]:
    """A legacy checkpoint's ``Optimizer.state_dict()``, checked."""
    if not isinstance(value, dict) or "state" not in value or "param_groups" not in value:
        raise CheckpointError(f"{where}: the optimizer state ('optimizer') is missing or malformed")
    groups = _check_groups(value["param_groups"], where)
    ids = {i for g in groups for i in g["params"]}
    state = value["state"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the optimizer's state is not a mapping")
    out: dict[int, dict[str, Any]] = {}
    for pid, entry in state.items():
        if not _is_int(pid) or pid not in ids or not isinstance(entry, dict):
            raise CheckpointError(f"{where}: optimizer state for an unknown parameter {pid!r}")
        for key, v in entry.items():
            if not isinstance(key, str) or not (isinstance(v, Tensor) or _is_number(v)):
                raise CheckpointError(f"{where}: optimizer state {pid}.{key} is not a tensor or a number")
        _check_finite({f"state.{pid}.{k}": v for k, v in entry.items() if isinstance(v, Tensor)}, where)
        out[pid] = dict(entry)
    return {"state": out, "param_groups": groups}


def check_weights(ckpt: Checkpoint, expected: Mapping[str, Any]) -> None:
    """Refuse weights that are not the ones ``expected`` (a model's ``state_dict()``) has: every name,
    no other, the same shapes and dtypes.

    Raises:
        CheckpointError: naming the weights file and the tensor.
    """
    check_tensors(str(ckpt.weights_path), ckpt.model, expected)


def check_tensors(
    where: str, tensors: Mapping[str, Tensor], expected: Mapping[str, Any], finite: bool = False
) -> None:
    """Every expected tensor present with its shape and dtype, no other (and, with ``finite``, no NaN/inf).

    Raises:
        CheckpointError: naming ``where`` and the tensor.
    """
    for key in expected:
        if key not in tensors:
            raise CheckpointError(f"{where}: tensor {key} is missing")
    for key in sorted(tensors):
        if key not in expected:
            raise CheckpointError(
                f"{where}: unexpected tensor {key} (the configuration builds no such tensor)"
            )
    for key, want in expected.items():
        got = tensors[key]
        if got.shape != want.shape:
            raise CheckpointError(
                f"{where}: tensor {key} has shape {_shape(got.shape)}, expected {_shape(want.shape)}"
            )
        if got.dtype != want.dtype:
            raise CheckpointError(f"{where}: tensor {key} has dtype {got.dtype}, expected {want.dtype}")
        if finite and got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise CheckpointError(f"{where}: tensor {key} holds non-finite values (NaN or inf)")


def check_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer state that does not fit ``optimizer``: as many groups and parameters, and
    every state tensor either a scalar (a step count) or of its parameter's shape and dtype.

    Raises:
        CheckpointError: naming the file and the entry.
    """
    assert ckpt.optimizer is not None, "a 'last' checkpoint"
    where = ckpt.path if ckpt.legacy else ckpt.path.with_name(LAST_OPTIMIZER)
    saved = ckpt.optimizer["param_groups"]
    if len(saved) != len(optimizer.param_groups):
        raise CheckpointError(
            f"{where}: {len(saved)} parameter groups, the optimizer has {len(optimizer.param_groups)}"
        )
    params: dict[int, Tensor] = {}
    for i, (sg, g) in enumerate(zip(saved, optimizer.param_groups)):
        if len(sg["params"]) != len(g["params"]):
            raise CheckpointError(
                f"{where}: parameter group {i} has {len(sg['params'])} parameters, the optimizer's "
                f"{len(g['params'])}"
            )
        params.update(zip(sg["params"], g["params"]))
    for pid, entry in ckpt.optimizer["state"].items():
        p = params[pid]
        for key, value in entry.items():
            if not isinstance(value, Tensor) or value.ndim == 0:
                continue
            if value.shape != p.shape:
                raise CheckpointError(
                    f"{where}: tensor state.{pid}.{key} has shape {_shape(value.shape)}, its parameter "
                    f"{_shape(p.shape)}"
                )
            if value.dtype != p.dtype:
                raise CheckpointError(
                    f"{where}: tensor state.{pid}.{key} has dtype {value.dtype}, its parameter {p.dtype}"
                )


# --------------------------------------------------------------------------------------------- reading


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({_one_line(err)})") from err
    except RecursionError as err:
        raise CheckpointError(f"{path}: nested too deeply to be a checkpoint") from err
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: holds a {type(doc).__name__}, expected a JSON object")
    return doc


def _read_tensors(run_dir: Path, name: str, digest: Any, doc_path: Path) -> dict[str, Tensor]:
    """The tensors of one safetensors file of a checkpoint, after its SHA-256 matched ``digest`` (read
    from its ``.pending`` twin when only that one matches: see ``save_checkpoint``)."""
    from safetensors.torch import load as safetensors_load

    path = run_dir / name
    if not isinstance(digest, str) or len(digest) != 64:
        raise CheckpointError(f"{doc_path}: no valid sha256 for {name}")
    found = False
    for candidate in (path, run_dir / (name + PENDING)):
        try:
            data = candidate.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise CheckpointError(f"{candidate}: not readable ({_one_line(err)})") from err
        found = True
        if sha256_bytes(data) == digest.lower():
            break
    else:
        if not found:
            raise CheckpointError(f"{path}: file missing (listed in {doc_path.name})")
        raise CheckpointError(
            f"{path}: sha256 mismatch with {doc_path.name} (the file was changed or corrupted)"
        )
    try:
        return safetensors_load(data)
    except Exception as err:  # safetensors raises its own error types; it never unpickles
        raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(err)})") from err


def _decode_rng(value: Any, where: Path, what: str) -> Tensor:
    if not isinstance(value, str):
        raise CheckpointError(
            f"{where}: the {what} generator state must be base64 text, got {type(value).__name__}"
        )
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise CheckpointError(f"{where}: the {what} generator state is not valid base64") from err
    if not raw:
        raise CheckpointError(f"{where}: the {what} generator state is empty")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def _check_rng(rng: Tensor, where: Path) -> Tensor:
    if not isinstance(rng, Tensor) or rng.dtype != torch.uint8 or rng.ndim != 1:
        raise CheckpointError(f"{where}: the generator state ('rng') is not a byte tensor")
    if rng.numel() != torch.get_rng_state().numel():
        raise CheckpointError(
            f"{where}: the CPU generator state has {rng.numel()} bytes, expected {torch.get_rng_state().numel()}"
        )
    return rng.cpu()


def _load_new(run_dir: Path, which: str, map_location: str | torch.device) -> Checkpoint:
    doc_path = run_dir / _DOC[which]
    doc = _read_doc(doc_path)
    version = doc.get("format_version")
    if not _is_int(version) or version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{doc_path}: format_version {version!r} (written by exemplar-vae "
            f"{doc.get('exemplar_vae_version', 'unknown')}); this version reads {CHECKPOINT_FORMAT_VERSION}"
        )
    keys = _BEST_KEYS if which == "best" else _LAST_KEYS
    missing = sorted(keys - set(doc) - {"exemplar_vae_version"})
    if missing:
        raise CheckpointError(f"{doc_path}: missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise CheckpointError(f"{doc_path}: unknown entries {', '.join(repr(k) for k in unknown)}")
    config = _check_config(doc["config"], doc_path)
    digests = doc["sha256"]
    if not isinstance(digests, dict) or set(digests) != set(_FILES[which]):
        raise CheckpointError(f"{doc_path}: 'sha256' must list exactly {', '.join(_FILES[which])}")
    weights_path = run_dir / _FILES[which][0]
    model = _read_tensors(run_dir, _FILES[which][0], digests[_FILES[which][0]], doc_path)
    _check_finite(model, weights_path)
    if which == "best":
        epoch, val_loss = doc["epoch"], doc["val_loss"]
        if not _is_int(epoch) or epoch < 0:
            raise CheckpointError(f"{doc_path}: 'epoch' must be a non-negative integer, got {epoch!r}")
        if not _is_number(val_loss) or not math.isfinite(val_loss):
            raise CheckpointError(f"{doc_path}: 'val_loss' must be a finite number, got {val_loss!r}")
        return Checkpoint(which, doc_path, weights_path, False, config, _to(model, map_location), epoch,
                          float(val_loss))  # fmt: skip
    loop = _check_loop(doc["loop"], doc_path, legacy=False)
    layout = doc["optimizer"]
    if not isinstance(layout, dict) or set(layout) != {"param_groups", "state"}:
        raise CheckpointError(f"{doc_path}: 'optimizer' must hold param_groups and state")
    groups = _check_groups(layout["param_groups"], doc_path)
    ids = {i for g in groups for i in g["params"]}
    opt_path = run_dir / LAST_OPTIMIZER
    tensors = _read_tensors(run_dir, LAST_OPTIMIZER, digests[LAST_OPTIMIZER], doc_path)
    _check_finite(tensors, opt_path)
    if not isinstance(layout["state"], dict):
        raise CheckpointError(f"{doc_path}: the optimizer's state layout is not a mapping")
    state: dict[int, dict[str, Any]] = {}
    named = set()
    for pid_text, entry in layout["state"].items():
        pid = int(pid_text) if pid_text.isascii() and pid_text.isdigit() else -1
        if pid not in ids:
            raise CheckpointError(f"{doc_path}: optimizer state for an unknown parameter {pid_text!r}")
        if (
            not isinstance(entry, dict)
            or set(entry) != {"tensors", "values"}
            or not isinstance(entry["tensors"], list)
            or not all(isinstance(k, str) for k in entry["tensors"])
            or not isinstance(entry["values"], dict)
            or not all(_is_number(v) for v in entry["values"].values())
        ):
            raise CheckpointError(f"{doc_path}: the optimizer state layout of parameter {pid} is malformed")
        state[pid] = dict(entry["values"])
        for key in entry["tensors"]:
            name = f"state.{pid}.{key}"
            if name not in tensors:
                raise CheckpointError(f"{opt_path}: tensor {name} is missing")
            state[pid][key] = tensors[name]
            named.add(name)
    extra = sorted(set(tensors) - named)
    if extra:
        raise CheckpointError(f"{opt_path}: unexpected tensor {extra[0]} (not in {doc_path.name})")
    rng_doc = doc["rng"]
    if not isinstance(rng_doc, dict) or "cpu" not in rng_doc or set(rng_doc) - {"cpu", "cuda"}:
        raise CheckpointError(
            f"{doc_path}: 'rng' must hold the 'cpu' generator state (and optionally 'cuda')"
        )
    rng = _check_rng(_decode_rng(rng_doc["cpu"], doc_path, "CPU"), doc_path)
    cuda_rng = None
    if "cuda" in rng_doc:
        if not isinstance(rng_doc["cuda"], list):
            raise CheckpointError(f"{doc_path}: the CUDA generator states must be a list")
        cuda_rng = [_decode_rng(s, doc_path, "CUDA") for s in rng_doc["cuda"]]
    scaler = _check_scaler(doc["scaler"], doc_path)
    return Checkpoint(
        which, doc_path, weights_path, False, config, _to(model, map_location), loop["epoch"],
        loop["best_val"], optimizer={"state": _to_state(state, map_location), "param_groups": groups},
        loop=loop, rng=rng, cuda_rng=cuda_rng, world_size=_check_positive(doc["world_size"], doc_path,
        "world_size"), batch_size=_check_positive(doc["batch_size"], doc_path, "batch_size"), scaler=scaler,
    )  # fmt: skip


def _to(tensors: dict[str, Tensor], map_location: str | torch.device) -> dict[str, Tensor]:
    if torch.device(map_location).type == "cpu":
        return tensors
    return {k: v.to(map_location) for k, v in tensors.items()}


def _to_state(
    state: dict[int, dict[str, Any]], map_location: str | torch.device
) -> dict[int, dict[str, Any]]:
    return {
        pid: {k: v.to(map_location) if isinstance(v, Tensor) else v for k, v in entry.items()}
        for pid, entry in state.items()
    }


def _load_legacy(path: Path, which: str, map_location: str | torch.device) -> Checkpoint:
    """A ``.pt`` checkpoint of an older run (the legacy path): ``torch.load(weights_only=True)`` --
    tensors and plain containers only, never arbitrary objects -- then the same checks as the new format."""
    try:
        with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol of a planted file
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: not a checkpoint of tensors and plain data ({_one_line(err)})"
        ) from err
    except Exception as err:  # torch raises several types for a damaged file
        raise CheckpointError(
            f"{path}: corrupt or unreadable ({type(err).__name__}: {_one_line(err)})"
        ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not an exemplar-vae checkpoint (a {type(payload).__name__})")
    for part in ("model", "config", "loop"):
        if part not in payload:
            raise CheckpointError(f"{path}: not an exemplar-vae checkpoint (no '{part}')")
    model = _check_state_dict(payload["model"], path, "model state")
    _check_finite(model, path)
    config = _check_config(payload["config"], path)
    loop = _check_loop(payload["loop"], path, legacy=True)
    if which == "best":
        return Checkpoint(which, path, path, True, config, model, loop["epoch"], loop["best_val"])
    for part in ("optimizer", "rng"):
        if part not in payload:
            raise CheckpointError(f"{path}: the '{part}' part of the checkpoint is missing")
    optimizer = _check_legacy_optimizer(payload["optimizer"], path)
    rng = _check_rng(payload["rng"], path)
    cuda_rng = payload.get("cuda_rng")
    if cuda_rng is not None:
        if not isinstance(cuda_rng, (list, tuple)) or not all(
            isinstance(s, Tensor) and s.dtype == torch.uint8 for s in cuda_rng
        ):
            raise CheckpointError(f"{path}: the CUDA generator states ('cuda_rng') are not byte tensors")
        cuda_rng = [s.cpu() for s in cuda_rng]
    scaler = _check_scaler(payload.get("scaler"), path)
    world_size = _check_positive(payload.get("world_size", 1), path, "world_size")
    batch_size = _check_positive(payload.get("batch_size", config.train.batch_size), path, "batch_size")
    return Checkpoint(
        which, path, path, True, config, model, loop["epoch"], loop["best_val"], optimizer=optimizer,
        loop=loop, rng=rng, cuda_rng=cuda_rng, world_size=world_size, batch_size=batch_size, scaler=scaler,
    )  # fmt: skip


def load_checkpoint(
    source: str | Path,
    which: str = "best",
    map_location: str | torch.device = "cpu",
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Checkpoint:
    """Read and check a checkpoint of a run folder.

    Args:
        source: a run folder (its checkpoint ``which``: RUN/best.json or RUN/last.json, else the legacy
            RUN/best.pt or RUN/last.pt), or one of those files itself.
        which: "best" (the weights) or "last" (everything a resumed run needs). For a legacy ``.pt`` file
            given by path, which parts are read; a JSON document's name says which it is.
        map_location: where the weights and optimizer tensors go (generator states stay on the CPU).
        model: if given, the weights are checked against its ``state_dict()`` (``check_weights``).
        optimizer: if given ("last"), the optimizer state is checked against it (``check_optimizer``).

    Returns:
        The checkpoint (``Checkpoint``).

    Raises:
        CheckpointError: no such checkpoint; a JSON document that is unreadable or lacks an entry or has
            one of the wrong type; a file whose SHA-256 differs from the one recorded; a file that is not
            safetensors; a missing, unexpected, misshapen or non-finite tensor; a legacy file that is not a
            checkpoint of tensors and plain data (it is never unpickled beyond that). One line, naming
            the file.
    """
    _check_which(which)
    source = Path(source)
    if source.is_dir():
        path = checkpoint_file(source, which)
        if path is None:
            raise CheckpointError(
                f"no {which} checkpoint in {source} (neither {_DOC[which]} nor {_LEGACY[which]})"
            )
    elif source.is_file():
        path = source
        if source.name in (BEST, LAST):
            which = "best" if source.name == BEST else "last"
        elif source.suffix != ".pt":
            raise CheckpointError(f"{source} is not a checkpoint ({BEST}, {LAST} or a legacy .pt file)")
    else:
        raise CheckpointError(f"no checkpoint at {source}")
    if path.suffix == ".pt":
        ckpt = _load_legacy(path, which, map_location)
    else:
        ckpt = _load_new(path.parent, which, map_location)
    if model is not None:
        check_weights(ckpt, model.state_dict())
    if optimizer is not None and ckpt.optimizer is not None:
        check_optimizer(ckpt, optimizer)
    return ckpt
