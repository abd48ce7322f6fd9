"""Peak memory (peak RSS, VmHWM) of an evaluation and of training steps, each run alone in a child process
(the benchmark script re-run with ``--memory-job``), so that neither sees the other's or the parent's
allocations."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from common import exemplar_count
from eval_rows import eval_config, evaluation_model
from train_rows import prepare_training

from exemplar_vae import PriorConfig, load_dataset
from exemplar_vae.evaluation import evaluate_density

ENTRY = Path(__file__).resolve().parent / "bench_train_eval.py"  # the script a child process runs


def memory_job(job: str, args: argparse.Namespace) -> dict:
    """Run one measured job in this process and return its peak RSS (the child side of ``bench_memory``):
    "eval", the default evaluation path on ``args.eval_points`` test points; "train", an exemplar prior's
    cache refreshes and ``args.warmup + args.steps + 2`` training steps."""
    data = load_dataset(args.dataset, args.data_dir)
    if job == "eval":
        model, _ = evaluation_model(args, data)
        x = data.test_x[: args.eval_points].to(args.device)
        evaluate_density(model, x, eval_config(args, args.samples, args.eval_batch), progress=False)
    else:
        prior = PriorConfig("exemplar", exemplars=exemplar_count(args, data), knn=args.knn)
        prepare_training(prior, args, data, False).run(args.steps)
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
    cmd = [sys.executable, str(ENTRY), *argv, "--memory-job", job]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["max_rss_mib"])
