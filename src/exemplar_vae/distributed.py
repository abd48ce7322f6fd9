"""Several processes, one run: torchrun + torch.distributed, and no-ops in a single process.

A run launched with ``torchrun --nproc_per_node=W -m exemplar_vae train ...`` finds the process group in
the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``): gloo on CPU,
nccl on CUDA, device ``cuda:LOCAL_RANK``. Every collective here returns its input unchanged when no process
group is running, so the same code serves one process and many.

How a W-process run computes what one process computes (docs/distributed.md):

* the global batch is the same on every rank; rank r takes ``torch.tensor_split(batch, W)[r]``;
* all randomness of a step is drawn from one generator keyed by (seed, epoch, step), for the whole global
  batch, on every rank; each rank keeps its rows;
* codes every rank needs (the exemplar cache, the retrieved union, the exact prior's subset) are encoded
  in shards and gathered (``gather_rows``; with gradient ``gather_rows_with_grad``, whose backward sums the
  gradients from every rank to the rows' owner);
* each rank's loss is its rows' share of the global mean; the gradients are summed over ranks
  (``all_reduce_gradients``), which gives the gradient of the global mean.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
T = TypeVar("T")


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files."""
    return rank() == 0


def shard(x: Tensor, of: int | None = None, at: int | None = None) -> Tensor:
    """This rank's part of ``x`` along dim 0: ``torch.tensor_split(x, W)[r]`` (possibly empty).

    ``of``/``at`` override the world size and rank (for tests and for replaying another rank's share)."""
    w = world_size() if of is None else of
    r = rank() if at is None else at
    return torch.tensor_split(x, w)[r]


def _sizes(rows: int, device: torch.device) -> list[int]:
    """Every rank's row count."""
    mine = torch.tensor([rows], dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(everyone, mine)
    return [int(s) for s in everyone]


def _padded(t: Tensor, rows: int) -> Tensor:
    """``t`` [n, ...] padded with zero rows to [rows, ...]."""
    if t.shape[0] == rows:
        return t.contiguous()
    pad = t.new_zeros((rows - t.shape[0], *t.shape[1:]))
    return torch.cat([t, pad]).contiguous()


@torch.no_grad()
def gather_rows(t: Tensor) -> Tensor:
    """Concatenate every rank's rows, in rank order: [n_r, ...] -> [sum_r n_r, ...] on every rank.

    Ranks may hold different numbers of rows (padded to the largest for ``all_gather_into_tensor``)."""
    if not active():
        return t
    sizes = _sizes(t.shape[0], t.device)
    top = max(sizes)
    out = t.new_empty((top * len(sizes), *t.shape[1:]))
    dist.all_gather_into_tensor(out, _padded(t, top))
    return torch.cat([out[i * top : i * top + n] for i, n in enumerate(sizes)])


def gather_rows_with_grad(t: Tensor) -> Tensor:
    """``gather_rows`` through autograd: the backward pass sends each rank the summed gradients of its
    own rows (torch.distributed.nn's all_gather), so a row encoded on one rank and used by all gets the
    gradient of every rank's loss."""
    if not active():
        return t
    from torch.distributed.nn.functional import all_gather

    sizes = _sizes(t.shape[0], t.device)
    top = max(sizes)
    parts = all_gather(_padded(t, top))
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks, in place; returns it."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks, as one flat all-reduce (missing gradients count as 0).

    This is the reduction DistributedDataParallel performs; done here as one call after ``backward`` so a
    rank whose share of a small last batch is empty still takes part (a DDP bucket would wait for it)."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def collective_device() -> torch.device:
    """Where small tensors for a collective must live: the current GPU under nccl, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. its early-stopping decision)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=collective_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def on_rank0(action: Callable[[], T], what: str) -> T | None:
    """``action()`` on rank 0 only (the rank that writes files); when it fails, every rank raises (rank 0
    its own error, the others a ``RunFailed`` pointing to it), so no rank waits for one that has left.
    Returns rank 0's result (None on the other ranks)."""
    result: T | None = None
    failure: Exception | None = None
    if is_main():
        try:
            result = action()
        except Exception as err:  # noqa: BLE001 - re-raised below, once the other ranks are told
            failure = err
    if broadcast_flag(failure is not None):
        if failure is not None:
            raise failure
        from exemplar_vae.errors import RunFailed

        raise RunFailed(f"rank 0 failed {what}: its error message says why")
    return result


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if active():
        dist.barrier()


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a torchrun launch.

    Attributes:
        rank, world_size: the global rank and the number of processes.
        local_rank, local_world_size: the same on this machine.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> Launch:
        """Read the torchrun environment; a single process when it is not set."""
        if not all(v in os.environ for v in TORCHRUN_VARIABLES):
            return cls()
        world = int(os.environ["WORLD_SIZE"])
        return cls(
            rank=int(os.environ["RANK"]),
            world_size=world,
            local_rank=int(os.environ["LOCAL_RANK"]),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: str = "auto", timeout_s: float = 1800.0) -> Launch:
    """Join the process group of a torchrun launch (no-op in a single process or if already joined).

    CPU processes use gloo and share the machine's cores (threads per process = cores / local world
    size); CUDA processes use nccl on ``cuda:LOCAL_RANK``. Returns where this process stands.
    """
    launch = Launch.from_env()
    if not launch.distributed or (dist.is_available() and dist.is_initialized()):
        return launch
    cuda = torch.cuda.is_available() and device != "cpu" and not device.startswith("cpu")
    if cuda:
        torch.cuda.set_device(launch.local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // launch.local_world_size))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return launch


def stop() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """The device a process should use: under torchrun on CUDA, ``cuda:LOCAL_RANK`` for "auto"/"cuda"."""
    launch = Launch.from_env()
    if launch.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{launch.local_rank}"
    return device
