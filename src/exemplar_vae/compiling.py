"""Optional ``torch.compile`` of hot inner functions, with the eager function as fallback and reference.

Inductor fuses the element-wise work around the matrix products (the decoder's gates, the likelihood's
softplus and its sum) into single loops and removes the per-operation overhead, on CPU (through a C++
compiler) and on CUDA. It is opt-in (``COMPILE_MODES``: "on" or "off", the default): on the CPUs
measured it gained 0-13% and not in every case (docs/speed.md, "Compiled evaluation and training step").
Compilation is never required: without a C++ compiler (CPU) or when compiling fails, the eager function
runs, after one warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch

from exemplar_vae.errors import ConfigError, ExemplarVAEError

logger = logging.getLogger(__name__)

COMPILE_MODES = ("on", "off")


def check_compile_mode(mode: str, flag: str = "--compile") -> str:
    """The mode, if it is one of ``COMPILE_MODES``; else a ConfigError naming ``flag``."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"unknown {flag} '{mode}'; valid: {', '.join(COMPILE_MODES)}")
    return mode


def unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or None when it can.

    On a CPU inductor writes C++ and needs a compiler (``$CXX``, else g++/c++/clang++ on the PATH); on
    CUDA it writes Triton kernels (``triton`` must import)."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type == "cpu":
        names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
        if not any(shutil.which(n) for n in names):
            return f"no C++ compiler found ({', '.join(names)})"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    return f"torch.compile is not used on {device.type} devices here"


def _graphs_compiled() -> int:
    """How many graphs dynamo has compiled in this process (0 where the counter is missing)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without dynamo
        return 0
    return int(counters["stats"]["unique_graphs"])


class Compiled:
    """``fn`` compiled with ``torch.compile`` on first use, or ``fn`` itself.

    Calls go to the compiled function; a failure to compile (no compiler, an unsupported operation, a
    compiler error) logs one warning and switches to ``fn`` for good, so a result is always computed.
    The wall time of the calls that compiled a graph is added to ``compile_seconds`` (their own run
    included: a few milliseconds beside seconds of compiling), and ``compilations`` counts them (more than
    one: a new input shape recompiled).

    Args:
        fn: the eager function.
        name: for messages ("the evaluation's decoder and likelihood").
        enabled: False: always run ``fn`` (``used`` is then False).
        device: where ``fn`` runs, to check that compiling is possible there.
        dynamic: ``torch.compile``'s ``dynamic`` (None: static shapes first, a dynamic graph on the first
            change of shape).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        enabled: bool,
        device: torch.device,
        dynamic: bool | None = None,
    ) -> None:
        self.fn, self.name = fn, name
        self.compile_seconds, self.compilations = 0.0, 0
        self.fallback_reason: str | None = None
        self._compiled: Callable[..., Any] | None = None
        if enabled:
            reason = unavailable_reason(device)
            if reason is None:
                self._compiled = torch.compile(fn, dynamic=dynamic)
            else:
                self._fall_back(reason)

    @property
    def used(self) -> bool:
        """Whether calls run the compiled function."""
        return self._compiled is not None

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason, self._compiled = reason, None
        logger.warning("not compiling %s (%s): running it eagerly", self.name, reason)

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None:
            return self.fn(*args)
        before, start = _graphs_compiled(), time.perf_counter()
        try:
            out = self._compiled(*args)
        except (torch.OutOfMemoryError, ExemplarVAEError):
            raise  # the function's own failures, which running it eagerly would repeat
        except Exception as err:  # a compiler failure: the eager function gives the result
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self._fall_back(f"compiling failed: {type(err).__name__}: {first[:200]}")
            return self.fn(*args)
        if _graphs_compiled() > before:
            self.compile_seconds += time.perf_counter() - start
            self.compilations += 1
        return out

    def report(self) -> dict[str, Any]:
        """What was used: {"used", "compile_seconds", "compilations"} and "fallback" when it fell back."""
        out: dict[str, Any] = {
            "used": self.used,
            "compile_seconds": round(self.compile_seconds, 3),
            "compilations": self.compilations,
        }
        if self.fallback_reason is not None:
            out["fallback"] = self.fallback_reason
        return out
