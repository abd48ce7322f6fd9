"""The evidence lower bound with a single-sample KL term (the mixture priors have no closed-form KL).

    ELBO(x) = E_q[log p(x|z)] - E_q[log q(z|x) - log p(z)]

estimated with one reparameterised z ~ q(z|x). The loss is mean_b(rec_b + beta * kl_b), with beta the
KL warm-up weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from exemplar_vae.compiling import Compiled
from exemplar_vae.functional import full_precision, log_normal_diag, reparameterize
from exemplar_vae.models.vae import VAE, StepNoise


class ElboTerms(NamedTuple):
    """Per-example terms (nats) and the scalar training loss."""

    loss: Tensor  # [] mean over the batch of rec + beta * kl
    rec: Tensor  # [B] -log p(x|z)
    kl: Tensor  # [B] log q(z|x) - log p(z), single sample
    elbo: Tensor  # [B] -(rec + kl)


def elbo_terms(
    model: VAE,
    x: Tensor,
    index: Tensor | None = None,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    noise: StepNoise | None = None,
) -> ElboTerms:
    """Single-sample ELBO of a batch.

    Args:
        model: the VAE (its prior in train mode uses leave-one-out and subsampling; in eval mode, the
            full prior).
        x: [B, D] inputs (binary, or 8-bit values k/255 for a discretised logistic).
        index: [B] dataset indices (needed by the exemplar prior's leave-one-out in training).
        beta: weight of the KL term in the loss (1 for evaluation).
        generator: randomness for z (unless ``noise`` is given) and for the prior (the exemplar prior's
            subset in training).
        noise: the standard normal noise of z and of the latents below it, drawn ahead
            (``model.draw_noise``); None draws it from ``generator``.

    Returns:
        ElboTerms.
    """
    return _single_sample_elbo(
        model, x, beta, generator, noise, lambda z: model.prior.log_prob(z, model.encoder, index, generator)
    )


def _single_sample_elbo(
    model: VAE,
    x: Tensor,
    beta: float | Tensor,
    generator: torch.Generator | None,
    noise: StepNoise | None,
    log_prior: Callable[[Tensor], Tensor],
) -> ElboTerms:
    """The ELBO's terms for one z ~ q(z|x) (noise from ``noise``, else drawn from ``generator``), with
    log p(z) [B] from ``log_prior`` (z [B, d]); shared by ``elbo_terms`` and ``planned_elbo_terms``."""
    # under mixed precision the networks run in half precision; the densities are computed in float32
    mean, log_var = (full_precision(t) for t in model.encode(x))  # [B, d]
    if noise is None:
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    else:
        eps = noise.z.to(mean.dtype)
    z = reparameterize(mean, log_var, eps)  # [B, d]
    lower_noise = noise.lower if noise is not None else None
    lower = model.lower_terms(x, z, generator, lower_noise)  # log p(x|...) [B], KL of the layers below z [B]
    with torch.autocast(z.device.type, enabled=False):  # mixture sums and retrieval stay float32
        log_pz = log_prior(z)  # [B]
    rec = -lower.log_px  # [B]
    kl = log_normal_diag(z, mean, log_var) - log_pz + lower.kl_lower
    return ElboTerms(loss=(rec + beta * kl).mean(), rec=rec, kl=kl, elbo=-(rec + kl))


def planned_elbo_terms(
    model: VAE, x: Tensor, index: Tensor | None, beta: Tensor, noise: StepNoise, plan: Any
) -> ElboTerms:
    """``elbo_terms`` with the prior's choices made ahead (``Prior.plan``): a pure tensor function of the
    inputs, the noise, the plan and the networks, which ``torch.compile`` can trace whole, forward and
    backward. ``beta`` is a tensor so that the KL warm-up does not recompile it every epoch."""
    return _single_sample_elbo(
        model, x, beta, None, noise, lambda z: model.prior.planned_log_prob(z, model.encoder, index, plan)
    )


class CompiledElbo:
    """The training step's ``elbo_terms`` with its tensor work compiled (``compiling.Compiled``).

    A call first makes the prior's choices without gradient (``Prior.plan``: the subset, the retrieved
    neighbours, in the order ``elbo_terms`` draws them, so the values are the same), then runs
    ``planned_elbo_terms`` compiled, with dynamic shapes (the retrieved union changes size every step).
    Where the choices depend on the codes (``Prior.plan_reads_codes``: retrieval, the mass-carrying
    exemplars) the batch is first encoded without gradient: B extra encoder rows, small beside the union's
    re-encoding it lets the compiler fuse; other priors skip that pass. Without a compiler, or if compiling
    fails, the same functions run eagerly.

    Args:
        model: the VAE it is built for (the compiled graph is specialised to it).
        enabled: False: run eagerly (the plan-then-score form, for comparison).
    """

    def __init__(self, model: VAE, enabled: bool = True) -> None:
        self.model = model
        self.compiled = Compiled(
            planned_elbo_terms, "the training step's loss", enabled, model.device, dynamic=True
        )

    def __call__(
        self,
        model: VAE,
        x: Tensor,
        index: Tensor | None = None,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
        noise: StepNoise | None = None,
    ) -> ElboTerms:
        if model is not self.model:
            raise ValueError("a CompiledElbo is built for one model; build another for this one")
        if noise is None:
            noise = model.draw_noise(x.shape[0], generator)
        plan = None
        if model.prior.training:
            with torch.no_grad():
                z = None
                if model.prior.plan_reads_codes:  # retrieval: the codes the step will see, without gradient
                    mean, log_var = (full_precision(t) for t in model.encode(x))  # [B, d]
                    z = reparameterize(mean, log_var, noise.z.to(mean.dtype))  # [B, d]
                with torch.autocast(x.device.type, enabled=False):  # as ``elbo_terms`` runs the prior
                    plan = model.prior.plan(z, model.encoder, index, generator)
        beta_t = torch.tensor(float(beta), device=x.device)
        terms: ElboTerms = self.compiled(model, x, index, beta_t, noise, plan)
        return terms

    def report(self) -> dict[str, Any]:
        """``Compiled.report()`` of the step: used, compile_seconds, compilations (and a fallback)."""
        return self.compiled.report()
