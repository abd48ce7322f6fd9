"""The GPU check: CUDA tests, then the Fashion-MNIST MLP VAE trained and evaluated on one GPU.

1. ``pytest -m cuda`` (device placement, AMP bf16/fp16 steps, retrieval and evaluation on the GPU);
2. the MLP VAE with the Gaussian and with the exemplar prior (k = 10), each trained for a fixed number of
   minutes (the paper's protocol otherwise: batch 100, lr 5e-4, AdamNormGrad, KL warm-up 10 epochs);
3. each evaluated on all 10,000 test images with S = 5000 importance samples (the exemplar prior truncated
   to 1000 candidates, its error measured on 10 points);
4. the trained exemplar model's evaluation (500 test images) and training step, eager against
   ``--compile on``, with the compile times (``--no-compile`` skips it);
5. a markdown table (ms per step, s per epoch, evaluation time, test log-likelihood, log sigma^2, GPU
   name, torch version) in OUT/gpu_check.md and OUT/gpu_check.json.

Any error ends it with a non-zero exit after writing what was measured. ``make gpu-check`` runs it; on the
lent GPU machine see benchmarks/README.md for the command (it needs faiss as a carried wheel and
Fashion-MNIST's four files in ``$EXEMPLAR_VAE_DATA/fashion-mnist``).

    python benchmarks/gpu_check.py --out results --minutes 1.5
    python benchmarks/gpu_check.py --out /tmp/x --device cpu --minutes 0.1 --test-limit 200 --samples 100 \
        --compile-points 20 --compile-steps 3  # dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from exemplar_vae.config import DataConfig, EvalConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.data import load_dataset
from exemplar_vae.evaluation import evaluate_density
from exemplar_vae.io import atomic_write_json, atomic_write_text
from exemplar_vae.pipeline import train
from exemplar_vae.report import std_error_text
from exemplar_vae.training import Callback, Trainer

ROOT = Path(__file__).resolve().parents[1]


class TimeBudget(Callback):
    """Stops the run after the first epoch that ends past ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if time.perf_counter() - self.start >= self.seconds:
            trainer.request_stop()


def cuda_tests() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(ROOT / "tests")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {
        "returncode": proc.returncode,
        "summary": tail,
        "output": proc.stdout[-6000:] + proc.stderr[-3000:],
    }


def one_prior(
    name: str, args: argparse.Namespace, data: Any, work: Path
) -> tuple[dict[str, Any], Any, RunConfig]:
    prior = PriorConfig(name=name, knn=10) if name == "exemplar" else PriorConfig(name=name)
    config = RunConfig(
        data=DataConfig("fashion-mnist"), prior=prior,
        train=TrainConfig(epochs=10_000, warmup=10, early_stopping=0, seed=1, device=args.device, amp=args.amp),
    )  # fmt: skip
    start = time.perf_counter()
    model, result = train(
        config, work / name, progress=False, data=data, callbacks=[TimeBudget(60 * args.minutes)]
    )
    train_s = time.perf_counter() - start
    history = result.history
    seconds = [m["seconds"] for m in history]
    steps_per_epoch = -(-data.num_train // config.train.batch_size)
    x = data.test_x if args.test_limit is None else data.test_x[: args.test_limit]
    start = time.perf_counter()
    ev = evaluate_density(model, x, EvalConfig(samples=args.samples), progress=False)
    eval_s = time.perf_counter() - start
    return {
        "prior": name, "epochs": len(history), "train_seconds": round(train_s, 1),
        "s_per_epoch": sum(seconds) / max(1, len(seconds)),
        "ms_per_step": 1000 * sum(seconds) / max(1, len(seconds)) / steps_per_epoch,
        "best_val_loss": result.best_val_loss, "prior_log_var": history[-1].get("prior_log_var") if history else None,
        "eval_seconds": round(eval_s, 1), "test_points": ev["examples"], "samples": ev["samples"],
        "log_likelihood": ev["log_likelihood"], "std_error": ev["log_likelihood_std_error"],
        "truncation_check": ev.get("truncation_check"),
    }, model, config  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compiled_rows(model: Any, config: RunConfig, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The trained exemplar model's evaluation (``--compile-points`` test images at S) and training step
    (``--compile-steps`` steps after 3 warm-up steps, which compile) eager and compiled, on the device."""
    out: dict[str, Any] = {"eval": {}, "train": {}}
    x = data.test_x[: args.compile_points]
    for mode in ("off", "on"):
        sync(args.device)
        start = time.perf_counter()
        ev = evaluate_density(model, x, EvalConfig(samples=args.samples, compile=mode), progress=False)
        sync(args.device)
        compile_s = ev["compile"]["compile_seconds"]
        out["eval"][mode] = {
            "s_per_point": (time.perf_counter() - start - compile_s) / ev["examples"],
            "compile_seconds": compile_s, "used": ev["compile"]["used"], "log_likelihood": ev["log_likelihood"],
        }  # fmt: skip
    for mode in ("off", "on"):
        cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, compile=mode))
        trainer = Trainer(model, data, cfg, None, progress=False)
        model.train()
        model.prior.refresh(model.encoder)
        batches = trainer.sampler.batches(1)
        for i in range(3):
            trainer.step(batches[i], 1.0, 1, i).tolist()
        times = []
        for i in range(3, 3 + args.compile_steps):
            sync(args.device)
            start = time.perf_counter()
            trainer.step(batches[i], 1.0, 1, i).tolist()
            times.append(time.perf_counter() - start)
        report = trainer.compile_report() or {"used": False, "compile_seconds": 0.0}
        out["train"][mode] = {
            "ms_per_step": 1000 * statistics.median(times), "compile_seconds": report["compile_seconds"],
            "used": report["used"],
        }  # fmt: skip
    return out


def table(doc: dict[str, Any]) -> str:
    lines = [
        "# GPU check",
        "",
        f"Command: `python benchmarks/gpu_check.py {' '.join(doc['argv'])}` (`make gpu-check`)",
        "",
        f"Device: {doc['device_name']}; torch {doc['torch']}; Python {doc['python']}; amp {doc['amp']}. "
        f"CUDA tests: {doc['cuda_tests']['summary'] or 'not run'} (exit {doc['cuda_tests']['returncode']}).",
        "",
        "MLP VAE on Fashion-MNIST, trained for a fixed time each (KL warm-up 10 epochs, batch 100, lr 5e-4), "
        "evaluated on the test images with S importance samples (exemplar prior truncated to 1000 candidates).",
        "",
        "| prior | training (s) | epochs | ms / step | s / epoch | evaluation (s) | test points x S "
        "| test log-likelihood (nats) | log sigma^2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        lv = f"{r['prior_log_var']:.3f}" if r.get("prior_log_var") is not None else "-"
        lines.append(
            f"| {r['prior']} | {r['train_seconds']} | {r['epochs']} | {r['ms_per_step']:.2f} | {r['s_per_epoch']:.2f} "
            f"| {r['eval_seconds']} | {r['test_points']:,} x {r['samples']} "
            f"| {r['log_likelihood']:.2f} ± {std_error_text(r['std_error'])} | {lv} |"
        )
    c = doc.get("compiled")
    if c:
        e, t = c["eval"], c["train"]
        lines += [
            "",
            f"Eager against `--compile on` (the trained exemplar model; evaluation of {c['points']} test images "
            f"at S = {doc['runs'][-1]['samples']}, training step = median of {c['steps']} steps after 3 warm-up "
            "steps; compile time apart):",
            "",
            "| | eager | compiled | speed-up | compile (s) |",
            "|---|---|---|---|---|",
            f"| evaluation, s / test point | {e['off']['s_per_point']:.4f} | {e['on']['s_per_point']:.4f} "
            f"| {e['off']['s_per_point'] / e['on']['s_per_point']:.2f}x | {e['on']['compile_seconds']:.1f} |",
            f"| training step (k = 10), ms | {t['off']['ms_per_step']:.2f} | {t['on']['ms_per_step']:.2f} "
            f"| {t['off']['ms_per_step'] / t['on']['ms_per_step']:.2f}x | {t['on']['compile_seconds']:.1f} |",
        ]
    if doc["errors"]:
        lines += ["", "Errors:", "", "```", *doc["errors"], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md and gpu_check.json")
    p.add_argument("--minutes", type=float, default=1.5, help="training time per prior")
    p.add_argument("--device", default="cuda", help="cuda (the check), or cpu for a dry run")
    p.add_argument("--amp", default="off", help="mixed precision for the training steps: off, bf16, fp16")
    p.add_argument("--samples", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--test-limit", type=int, default=None, help="first n test images (default all)")
    p.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests")
    p.add_argument("--compile-points", type=int, default=500, help="test images of the compiled comparison")
    p.add_argument("--compile-steps", type=int, default=30, help="timed steps of the compiled comparison")
    p.add_argument("--no-compile", action="store_true", help="skip the eager-vs-compiled comparison")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device here; the GPU check runs on a GPU machine", file=sys.stderr)
        return 1
    doc: dict[str, Any] = {
        "argv": sys.argv[1:], "torch": torch.__version__, "python": platform.python_version(), "amp": args.amp,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "cuda_tests": {"returncode": None, "summary": ""}, "runs": [], "errors": [],
    }  # fmt: skip
    if not args.skip_tests:
        doc["cuda_tests"] = cuda_tests()
        if doc["cuda_tests"]["returncode"] not in (0, 5):  # 5: no test collected (a dry run on CPU)
            doc["errors"].append("CUDA tests failed:\n" + doc["cuda_tests"]["output"])
    work = args.out / "gpu_check_runs"
    try:
        data = load_dataset("fashion-mnist")
        for name in ("gaussian", "exemplar"):
            row, model, config = one_prior(name, args, data, work)
            doc["runs"].append(row)
        if not args.no_compile:
            doc["compiled"] = {
                **compiled_rows(model, config, data, args),
                "points": min(args.compile_points, data.test_x.shape[0]), "steps": args.compile_steps,
            }  # fmt: skip
    except Exception:  # noqa: BLE001 - the check reports every failure, then exits non-zero
        doc["errors"].append(traceback.format_exc())
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "gpu_check.json", doc)
    atomic_write_text(args.out / "gpu_check.md", table(doc))
    print(table(doc))
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
