"""Runs training cases in one process, or in each process of a torchrun launch; rank 0 saves the results.

    python tests/dist_worker.py SPEC.json OUT.pt                                   # one process
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py SPEC.json OUT.pt

SPEC: {"cases": [{"name", "config" (a RunConfig dict), "run_dir" (optional), "resume" (optional)}],
"probes": true|false}. For every case OUT holds the final parameters, the per-epoch metrics and the step
count; with "probes", also the exemplar cache after a refresh and the union retrieved for a fixed batch.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from exemplar_vae import distributed
from exemplar_vae.config import RunConfig
from exemplar_vae.data import load_dataset
from exemplar_vae.pipeline import train
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.runs import build_model
from exemplar_vae.training import Callback
from exemplar_vae.validation import validate


class Failing(Callback):
    """A callback that fails after the first epoch (it runs on rank 0 only)."""

    def on_epoch_end(self, trainer, metrics) -> None:  # noqa: ANN001
        raise RuntimeError("a callback failed on purpose")


def probes(data) -> dict:  # noqa: ANN001
    """The exemplar cache of a fresh model, and the union one batch retrieves (every rank its rows)."""
    config = validate(RunConfig.from_dict({"data": {"dataset": "digits"}, "model": {"hidden": 16, "latent_dim": 4},
                                           "prior": {"name": "exemplar", "knn": 5}}), data.num_train)  # fmt: skip
    torch.manual_seed(3)
    model = build_model(config, data, "cpu")
    prior = model.prior
    assert isinstance(prior, ExemplarPrior)
    prior.refresh(model.encoder)
    g = torch.Generator().manual_seed(4)
    index = torch.randperm(data.num_train, generator=g)[:41]  # [41]: 21 rows on rank 0, 20 on rank 1
    subset = prior.draw_subset(g)
    z = prior.cache.get()[index] + 0.1 * torch.randn(41, 4, generator=g)
    rows = distributed.shard(torch.arange(41))
    union = prior.retrieve(z[rows], index[rows], subset)
    return {"cache": prior.cache.get().clone(), "union": union.clone()}


def main(spec_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    distributed.start("cpu")
    spec = json.loads(open(spec_path).read())
    data = load_dataset("digits")
    results: dict = {}
    for case in spec["cases"]:
        config = RunConfig.from_dict(case["config"])
        callbacks = [Failing()] if case.get("fail_in_callback") else []
        model, result = train(
            config, case.get("run_dir"), resume=case.get("resume", False), progress=False, data=data,
            callbacks=callbacks,
        )  # fmt: skip
        results[case["name"]] = {
            "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "history": result.history,
            "epochs_run": result.epochs_run,
        }
    if spec.get("probes"):
        results["probes"] = probes(data)
    if distributed.is_main():
        torch.save(results, out_path)
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # The work is done and saved. Leave without the interpreter's teardown: in it, torch's gloo threads
    # sometimes abort the process ("terminate called without an active exception", SIGABRT with no Python
    # frame; about 1 launch in 20-40 under pytest), which torchrun reports as a failed launch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
