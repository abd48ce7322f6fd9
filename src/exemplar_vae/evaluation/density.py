"""Test-set density estimation: importance-sampled log-likelihood and ELBO, in nats per example."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from exemplar_vae.functional import bits_per_dim
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.likelihood import importance_sampled_log_likelihood


@torch.no_grad()
def evaluate_density(
    model: VAE,
    x: Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean importance-sampled log-likelihood and S-sample ELBO of ``x`` under ``model``.

    The model is switched to eval mode and its prior refreshed (for the exemplar prior: the whole exemplar
    set, no leave-one-out).

    Args:
        model: the trained VAE.
        x: [n, D] binary test inputs.
        num_samples: S importance samples per example.
        batch_size: test points scored together.
        seed: seeds the importance samples.
        progress: show a tqdm bar.

    Returns:
        {"log_likelihood", "elbo" (nats, negative), "log_likelihood_std_error", "bits_per_dim",
         "samples", "examples", "seconds"}.
    """
    model.eval()
    model.prior.refresh(model.encoder)
    x = x.to(model.device)
    g = torch.Generator(device=model.device).manual_seed(seed)
    start = time.perf_counter()
    lls, elbos = [], []
    for xb in tqdm(x.split(batch_size), desc=f"log-likelihood (S={num_samples})", disable=not progress, leave=False):
        est = importance_sampled_log_likelihood(model, xb, num_samples, generator=g)
        lls.append(est.log_likelihood)
        elbos.append(est.elbo)
    ll, elbo = torch.cat(lls), torch.cat(elbos)
    n = ll.shape[0]
    mean_ll = float(ll.mean())
    return {
        "log_likelihood": mean_ll,
        "elbo": float(elbo.mean()),
        "log_likelihood_std_error": float(ll.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "bits_per_dim": bits_per_dim(-mean_ll, x.shape[1]),
        "samples": num_samples,
        "examples": n,
        "seconds": round(time.perf_counter() - start, 3),
    }
