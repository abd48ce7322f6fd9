"""Compile time of the compiled evaluation and training step, with a cold and a warm compiler cache.

torch.compile keeps compiled kernels in an on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default under
the system's temp folder), so the first process that compiles a graph pays more than later ones. This
script times, in one child process per cache state, the first compiled calls of:

- the evaluation's decoder terms (``evaluate_density`` with ``compile="on"`` on a few test points);
- the training step (``Trainer.step`` with ``TrainConfig(compile="on")``; the exemplar prior, k = 10).

    .venv/bin/python benchmarks/compile_time.py --run ~/longruns/runs/exemplar

"cold" runs in a new empty cache folder, "warm" again in the same folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time


def child(run: str, threads: int) -> dict:
    import torch

    from exemplar_vae import EvalConfig, load_dataset
    from exemplar_vae.evaluation import evaluate_density
    from exemplar_vae.runs import load_run
    from exemplar_vae.training import Trainer

    torch.set_num_threads(threads)
    data = load_dataset("fashion-mnist")
    model, _, config = load_run(run, device="cpu", data=data)
    start = time.perf_counter()
    result = evaluate_density(
        model, data.test_x[:4], EvalConfig(samples=500, batch_size=4, compile="on"), progress=False
    )
    evaluation = {**result["compile"], "wall_s": round(time.perf_counter() - start, 2)}
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, compile="on"))
    trainer = Trainer(model, data, config, None, progress=False)
    model.train()
    model.prior.refresh(model.encoder)
    start = time.perf_counter()
    for i, idx in enumerate(trainer.sampler.batches(1)[:3]):
        trainer.step(idx, 1.0, 1, i).tolist()
    report = trainer.compile_report()
    assert report is not None
    training = {**report, "wall_s_3_steps": round(time.perf_counter() - start, 2)}
    return {"evaluation": evaluation, "training_step": training}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained Fashion-MNIST exemplar run (k > 0)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.run, args.threads)))
        return
    cache = tempfile.mkdtemp(prefix="inductor-cache-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    out = {}
    for state in ("cold", "warm"):
        cmd = [sys.executable, __file__, "--run", args.run, "--threads", str(args.threads), "--child"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[state] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"compile time (s), {args.threads} thread(s), torch cache {cache}:")
    print("| what | cold cache | warm cache |")
    print("|---|---|---|")
    for key, name in (("evaluation", "evaluation decoder terms"), ("training_step", "training step, k = 10")):
        print(
            f"| {name} | {out['cold'][key]['compile_seconds']:.1f} | {out['warm'][key]['compile_seconds']:.1f} |"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
