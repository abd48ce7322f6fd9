"""The CUDA path: device placement, mixed-precision steps, retrieval and evaluation on the GPU.

Marked ``cuda``; they skip without a CUDA device and run in ``make gpu-check`` (benchmarks/gpu_check.py).
Each compares the GPU with the CPU on the same model where the two should agree.
"""

from __future__ import annotations

import copy

import pytest
import torch

from exemplar_vae.config import EvalConfig, RunConfig
from exemplar_vae.data import load_dataset
from exemplar_vae.evaluation import evaluate_density
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.runs import build_model
from exemplar_vae.training import Trainer
from exemplar_vae.validation import validate

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def digits_config(prior: str, amp: str = "off", **prior_args: object) -> tuple[RunConfig, object]:
    data = load_dataset("digits")
    config = RunConfig.from_dict({
        "data": {"dataset": "digits"}, "model": {"hidden": 32, "latent_dim": 8},
        "prior": {"name": prior, **prior_args},
        "train": {"epochs": 2, "warmup": 1, "batch_size": 100, "device": "cuda", "amp": amp},
    })  # fmt: skip
    return validate(config, data.num_train), data


@pytest.mark.parametrize("prior", ["gaussian", "vampprior", "mog", "exemplar"])
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_steps_run_on_the_gpu(prior: str, amp: str) -> None:
    config, data = digits_config(prior, amp, knn=5) if prior == "exemplar" else digits_config(prior, amp)
    model = build_model(config, data, "cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())
    result = Trainer(model, data, config, progress=False).fit()
    assert result.epochs_run == 2 and all(torch.isfinite(torch.tensor(m["val_loss"])) for m in result.history)


@pytest.mark.parametrize("search", ["exact", "ivf"])
def test_retrieval_on_the_gpu_finds_the_cpu_union(search: str) -> None:
    config, data = digits_config(
        "exemplar", knn=5, search=search, **({"nprobe": 64} if search == "ivf" else {})
    )
    torch.manual_seed(0)
    cpu = build_model(config, data, "cpu")
    gpu = copy.deepcopy(cpu).to("cuda")
    unions = []
    for model in (cpu, gpu):
        prior = model.prior
        assert isinstance(prior, ExemplarPrior)
        model.train()
        prior.refresh(model.encoder)
        g = torch.Generator().manual_seed(1)
        subset = prior.draw_subset(g)
        index = torch.randperm(data.num_train, generator=g)[:50].to(model.device)
        z = prior.cache.get()[index]
        unions.append(prior.retrieve(z, index, subset).cpu())
    # the codes differ in their last bits between devices: nearly the same neighbours
    a, b = set(unions[0].tolist()), set(unions[1].tolist())
    assert len(a & b) / len(a | b) >= (0.99 if search == "exact" else 0.95)


def test_evaluation_on_the_gpu_agrees_with_the_cpu() -> None:
    config, data = digits_config("exemplar", knn=5)
    torch.manual_seed(0)
    cpu = build_model(config, data, "cpu")
    gpu = copy.deepcopy(cpu).to("cuda")
    settings = EvalConfig(samples=200, batch_size=50, candidates=None, check_exact=0)
    x = data.test_x[:100]
    a = evaluate_density(cpu, x, settings, progress=False)
    b = evaluate_density(gpu, x, settings, progress=False)
    # different generators on the two devices: the estimates agree to their Monte Carlo error
    assert abs(a["log_likelihood"] - b["log_likelihood"]) < 5 * (a["log_likelihood_std_error"] + 0.05)
    truncated = evaluate_density(
        gpu, x, EvalConfig(samples=200, batch_size=50, candidates=50, check_exact=20), progress=False
    )
    assert truncated["truncation_check"]["min_error"] >= -1e-3  # a lower bound on the GPU too
