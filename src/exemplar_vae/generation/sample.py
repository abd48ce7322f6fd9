"""Pictures from a trained model: prior samples, exemplar-based variations, cyclic chains, interpolation.

Every function takes the model and returns pixel values in [0, 1] (Bernoulli means) laid out as a
[rows, cols, D] grid, ready for ``viz.save_image_grid``. Randomness comes in through ``generator``.

Generation from a chosen exemplar subset (``sample_from_exemplars``) draws from the Parzen window over the
codes of the given exemplars only, with the model's own kernel: class-conditional samples from the training
images of one class (``exemplars_of_class``), or samples around a folder of new images, without retraining.

Cyclic generation (Norouzi et al. 2020, Sec. 5; docs/paper.md §10) starts from uniform noise and feeds each
generation back as the next exemplar: x_{t+1} = decoder mean of z ~ r(z | x_t).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from exemplar_vae.data.datasets import DataSplits
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import ConfigError, DataError
from exemplar_vae.functional import reparameterize
from exemplar_vae.models.vae import VAE


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float, or ConfigError unless it is a finite number >= 0."""
    t = float(temperature)
    if not math.isfinite(t) or t < 0:
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature}")
    return t


@torch.no_grad()
def prior_sample_grid(
    model: VAE, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
) -> Tensor:
    """n samples from the model as a near-square [rows, cols, D] grid of Bernoulli means.

    ``temperature`` multiplies the prior's sampling standard deviation (see ``Prior.sample``).
    """
    model.eval()
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    x = model.generate(rows * cols, generator, check_temperature(temperature))  # [rows*cols, D]
    return x.reshape(rows, cols, -1)


@torch.no_grad()
def exemplar_grid(
    model: VAE,
    exemplars: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Each row: an exemplar, then n variations of it drawn from r(z|x) and decoded.

    Args:
        model: the trained VAE.
        exemplars: [B, D] inputs (grey or binary).
        n: variations per exemplar.
        generator: RNG for the variations.
        temperature: multiplies the standard deviation of r(z|x).

    Returns:
        [B, 1 + n, D] pixel values in [0, 1].
    """
    model.eval()
    exemplars = exemplars.to(model.device)
    variations = model.exemplar_variations(
        exemplars, n, generator, check_temperature(temperature)
    )  # [B, n, D]
    return torch.cat([exemplars.unsqueeze(1), variations], dim=1)


@torch.no_grad()
def cyclic_chain(
    model: VAE,
    steps: int,
    n_chains: int = 1,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Cyclic generation: x_0 ~ U[0, 1]^D, then x_{t+1} = decoder mean of z ~ r(z | x_t).

    Each generation becomes the next exemplar (the paper's figure runs 29 steps per chain). r(z|x) is the
    exemplar prior's kernel N(mu(x), sigma^2 I); for other priors it is q(z|x).

    Args:
        model: the trained VAE.
        steps: number of transitions T (>= 1).
        n_chains: independent chains (>= 1).
        generator: RNG for x_0 and the kernel noise.
        temperature: multiplies the kernel's standard deviation; 0 gives the deterministic map
            x_{t+1} = decoder mean of mu(x_t).

    Returns:
        [n_chains, steps + 1, D]: column 0 is the noise x_0, column t is x_t.
    """
    if steps < 1:
        raise ConfigError(f"a cyclic chain needs at least 1 step, got {steps}")
    if n_chains < 1:
        raise ConfigError(f"at least 1 chain is needed, got {n_chains}")
    temperature = check_temperature(temperature)
    model.eval()
    data_dim = math.prod(model.image_shape)  # D
    x = torch.rand(n_chains, data_dim, device=model.device, generator=generator)  # [C, D] x_0
    chain = [x]
    for _ in range(steps):
        x = model.exemplar_variations(x, 1, generator, temperature)[:, 0]  # [C, D] x_{t+1}
        chain.append(x)
    return torch.stack(chain, dim=1)  # [C, T + 1, D]


@torch.no_grad()
def interpolate(
    model: VAE, x_a: Tensor, x_b: Tensor, steps: int, generator: torch.Generator | None = None
) -> Tensor:
    """Decoded points on the straight line between the encoder means of two inputs.

    z_j = (1 - t_j) mu(x_a) + t_j mu(x_b) with t_j = j / (steps - 1), so the first and last points are
    the decoded codes of x_a and x_b themselves.

    Args:
        model: the trained VAE.
        x_a: [D] or [B, D] start inputs.
        x_b: same shape as ``x_a``: end inputs.
        steps: points per line (>= 2), endpoints included.
        generator: randomness of the lower latents of two-layer models (z1 ~ p(z1|z2)).

    Returns:
        [steps, D] for 1-D inputs, [B, steps, D] for batches; Bernoulli means.
    """
    if steps < 2:
        raise ConfigError(f"interpolation needs at least 2 steps (the two endpoints), got {steps}")
    if x_a.shape != x_b.shape or x_a.ndim not in (1, 2):
        raise ConfigError(
            f"interpolation endpoints must both be [D] or [B, D], got {tuple(x_a.shape)} and {tuple(x_b.shape)}"
        )
    model.eval()
    single = x_a.ndim == 1
    xa, xb = (x.reshape(-1, x.shape[-1]).to(model.device) for x in (x_a, x_b))  # [B, D] each
    mu_a, mu_b = model.encoder.mean(xa), model.encoder.mean(xb)  # [B, d] each
    t = torch.linspace(0, 1, steps, device=mu_a.device, dtype=mu_a.dtype).view(1, steps, 1)  # [1, S, 1]
    z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)  # [B, S, d]
    # two-layer models draw z1 ~ p(z1|z2) per frame: seeded by ``generator``
    x = model.decode_mean(z.reshape(-1, z.shape[-1]), generator).reshape(xa.shape[0], steps, -1)  # [B, S, D]
    return x[0] if single else x


@torch.no_grad()
def interpolation_grid(
    model: VAE, x_a: Tensor, x_b: Tensor, steps: int, generator: torch.Generator | None = None
) -> Tensor:
    """Rows: the exemplar x_a, ``steps`` decoded points from mu(x_a) to mu(x_b), then x_b.

    Args:
        x_a, x_b: [B, D] inputs.

    Returns:
        [B, steps + 2, D] pixel values in [0, 1].
    """
    line = interpolate(model, x_a, x_b, steps, generator)  # [B, S, D]
    xa, xb = x_a.to(line.device).unsqueeze(1), x_b.to(line.device).unsqueeze(1)  # [B, 1, D] each
    return torch.cat([xa, line, xb], dim=1)


class ExemplarDraw(NamedTuple):
    """Codes drawn from the Parzen window over a chosen exemplar subset."""

    z: Tensor  # [n, d] the codes
    picks: Tensor  # [n] int64 rows of the subset each code was drawn around


def _check_exemplars(exemplars: Tensor | ExemplarStore, data_dim: int) -> None:
    """A non-empty [M, D] set of inputs in [0, 1] (DataError otherwise)."""
    if exemplars.ndim != 2 or exemplars.shape[0] < 1 or exemplars.shape[1] != data_dim:
        raise DataError(
            f"exemplars must be a non-empty [M, {data_dim}] set of images, got shape {tuple(exemplars.shape)}"
        )
    if isinstance(exemplars, Tensor):
        if exemplars.is_complex() or exemplars.dtype == torch.bool:
            raise DataError(f"exemplars must hold real values in [0, 1], got dtype {exemplars.dtype}")
        lo, hi = exemplars.aminmax()
        if not bool(torch.isfinite(exemplars).all()) or float(lo) < 0 or float(hi) > 1:
            raise DataError("exemplars must hold finite values in [0, 1] (grey images, pixel / 255)")


@torch.no_grad()
def draw_exemplar_codes(
    model: VAE,
    exemplars: Tensor | ExemplarStore,
    n: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    batch_size: int = 2000,
) -> ExemplarDraw:
    """n codes from the Parzen window over the codes of the given exemplars only.

    Each draw picks an exemplar x_j uniformly, then z = m(x_j) + T s(x_j) eps, eps ~ N(0, I), where
    (m, log s^2) is the prior's ``variation_kernel`` of q(z|x_j): for the exemplar prior its own kernel
    N(mu(x_j), sigma^2 I) (the same as ``ExemplarPrior.sample`` restricted to the subset), for priors
    without a kernel q(z|x_j) itself. Only the picked exemplars are encoded (in batches).

    The random stream is: the picks (``torch.randint`` on the model's device), then the noise, both from
    ``generator``; the pick does not depend on ``temperature`` (0 returns the picked exemplars' codes).

    Args:
        model: the trained VAE.
        exemplars: [M, D] inputs in [0, 1] (a tensor on any device, or an ``ExemplarStore``).
        n: number of codes (>= 1).
        generator: RNG on the model's device.
        temperature: multiplies the kernel's standard deviation (>= 0).
        batch_size: exemplars encoded at once.

    Returns:
        ``ExemplarDraw(z [n, d], picks [n])``.
    """
    if n < 1:
        raise ConfigError(f"the number of samples must be at least 1, got {n}")
    temperature = check_temperature(temperature)
    _check_exemplars(exemplars, math.prod(model.image_shape))
    model.eval()
    device = model.device
    pick = torch.randint(exemplars.shape[0], (n,), device=device, generator=generator)  # [n]
    rows, inverse = torch.unique(pick, return_inverse=True)  # [U] distinct picks, [n] positions in rows
    means, log_vars = [], []
    for ids in rows.split(batch_size):
        if isinstance(exemplars, ExemplarStore):
            x = exemplars.gather(ids.cpu())
        else:
            x = exemplars.index_select(0, ids.to(exemplars.device))
        mean, log_var = model.prior.variation_kernel(*model.encode(x.to(device=device, dtype=torch.float32)))
        means.append(mean)
        log_vars.append(log_var)
    mean, log_var = torch.cat(means)[inverse], torch.cat(log_vars)[inverse]  # [n, d] each
    eps = torch.randn(mean.shape, device=device, dtype=mean.dtype, generator=generator)  # [n, d]
    return ExemplarDraw(reparameterize(mean, log_var, temperature * eps), pick)


@torch.no_grad()
def sample_from_exemplars(
    model: VAE,
    exemplars: Tensor | ExemplarStore,
    n: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """n samples from the model with its prior restricted to the given exemplars, no retraining.

    z is drawn from the Parzen window over the codes of ``exemplars`` only (``draw_exemplar_codes``) and
    decoded: pass the training images of one class (``exemplars_of_class``) for class-conditional samples,
    or a user's own images for samples around them.

    Args:
        model: the trained VAE.
        exemplars: [M, D] inputs in [0, 1].
        n: number of samples (>= 1).
        generator: RNG on the model's device (picks, kernel noise, then the lower latents of two-layer models).
        temperature: multiplies the kernel's standard deviation; 0 decodes the picked exemplars' codes.

    Returns:
        [n, D] decoder means, values in [0, 1].
    """
    draw = draw_exemplar_codes(model, exemplars, n, generator, temperature)
    return model.decode_mean(draw.z, generator)


def exemplars_of_class(data: DataSplits, label: int) -> Tensor:
    """The grey training images with label ``label``: [M, D] float32 in [0, 1] (the training set's order).

    Raises:
        ConfigError: no training image has that label (the message lists the labels there are).
    """
    ids = (data.train_y == int(label)).nonzero().reshape(-1)  # [M]
    if ids.numel() == 0:
        labels = sorted(int(v) for v in torch.unique(data.train_y).tolist() if v >= 0)
        known = ", ".join(map(str, labels)) if labels else "none: the training set is unlabelled"
        raise ConfigError(f"no training image of {data.name} has label {label}; labels: {known}")
    return data.train_store.gather(ids)
