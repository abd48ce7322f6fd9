"""Sample quality without a download: a Fréchet distance in the features of the project's own classifier.

The FID (Heusel et al. 2017) fits a Gaussian to the features of real images and one to the features of
generated images and reports the Fréchet (2-Wasserstein) distance between the two Gaussians,

    d^2 = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2}).

Its features come from an Inception network, which this project does not ship. Here they are the last
hidden layer of the paper's permutation-invariant MLP classifier (``downstream.classifier``), trained on
the same dataset, so the numbers compare models and temperatures with each other, never with published
FIDs. The matrix square roots are taken in float64 with symmetric eigen-decompositions: C_1^{1/2} from
the eigenpairs of C_1, then the trace of (C_1^{1/2} C_2 C_1^{1/2})^{1/2} as the sum of the square roots
of that symmetric matrix's eigenvalues (negative round-off clipped to 0). This equals tr((C_1 C_2)^{1/2})
without the square root of a non-symmetric product, which is what makes ``scipy.linalg.sqrtm``-based
versions return complex values or NaN for near-singular covariances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from exemplar_vae.generation.sample import check_temperature
from exemplar_vae.models.vae import VAE

__all__ = ["classifier_features", "feature_statistics", "frechet_distance", "sample_frechet"]


def _float64(x: Any, name: str) -> Tensor:
    """A float64 CPU tensor copy of a tensor or array, refused unless finite."""
    t = (x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))).to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values")
    return t


def _sqrt_psd(cov: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite [f, f] matrix (float64); negative
    eigenvalues (round-off) are clipped to 0."""
    w, v = torch.linalg.eigh(0.5 * (cov + cov.T))  # [f], [f, f]
    return (v * w.clamp(min=0.0).sqrt()) @ v.T


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """The Fréchet distance d^2 between N(mu1, cov1) and N(mu2, cov2) (the squared 2-Wasserstein distance).

    Args:
        mu1, mu2: [f] means (tensors or arrays).
        cov1, cov2: [f, f] symmetric positive semi-definite covariances.

    Returns:
        d^2 >= 0 in squared feature units, computed in float64.

    Raises:
        ValueError: shapes that do not match, or non-finite values.
    """
    m1, m2 = _float64(mu1, "mu1"), _float64(mu2, "mu2")
    c1, c2 = _float64(cov1, "cov1"), _float64(cov2, "cov2")
    f = m1.shape[0]
    if m1.shape != (f,) or m2.shape != (f,) or c1.shape != (f, f) or c2.shape != (f, f):
        raise ValueError(
            f"frechet_distance needs means [f] and covariances [f, f] of one f, got {tuple(m1.shape)}, "
            f"{tuple(c1.shape)}, {tuple(m2.shape)}, {tuple(c2.shape)}"
        )
    s1 = _sqrt_psd(c1)  # C1^{1/2}
    middle = s1 @ c2 @ s1  # C1^{1/2} C2 C1^{1/2}: symmetric PSD
    eig = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp(min=0.0)  # [f]
    trace_sqrt = eig.sqrt().sum()  # tr (C1^{1/2} C2 C1^{1/2})^{1/2}
    d2 = (m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2.0 * trace_sqrt
    return max(0.0, float(d2))


def feature_statistics(features: Any) -> tuple[Tensor, Tensor]:
    """Mean and covariance (divided by n - 1) of n feature vectors: [n, f] -> ([f], [f, f]), float64.

    Raises:
        ValueError: fewer than 2 rows, not a matrix, or non-finite values.
    """
    x = _float64(features, "features")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_statistics needs [n, f] features with n >= 2, got shape {tuple(x.shape)}")
    mean = x.mean(0)  # [f]
    centred = x - mean  # [n, f]
    cov = centred.T @ centred / (x.shape[0] - 1)  # [f, f]
    return mean, cov


@torch.no_grad()
def classifier_features(net: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The activations of the MLP classifier's last hidden layer (after its ReLU): [n, D] -> [n, H].

    ``net`` is ``downstream.classifier.build_classifier``'s ``nn.Sequential`` (Linear, ReLU, Linear, ReLU,
    Linear): everything but the final linear layer is applied. Inputs go to the network's device in
    batches; the features come back on that device in float32.

    Raises:
        ValueError: ``net`` is not a sequential network ending in a linear layer.
    """
    if not isinstance(net, nn.Sequential) or len(net) < 2 or not isinstance(net[-1], nn.Linear):
        raise ValueError(
            "classifier_features needs an nn.Sequential MLP ending in nn.Linear (build_classifier)"
        )
    body = net[:-1]
    device = next(net.parameters()).device
    out = [body(xb.to(device, torch.float32)) for xb in x.split(batch_size)]  # [b, H] each
    return torch.cat(out)


@torch.no_grad()
def sample_frechet(
    model: VAE,
    classifier: nn.Module,
    real_x: Tensor,
    n: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
) -> float:
    """Fréchet distance between n model samples and the first n of ``real_x`` in classifier features.

    Samples are those of ``model.generate(n, generator, temperature)``: n codes drawn at once from the
    prior at ``temperature`` (the prior's own temperature semantics, see ``Prior.sample``: the noise
    standard deviation times T, the component choice unchanged), decoded to the decoder's means in
    batches of ``batch_size`` (for a single-layer model the samples do not depend on it). For the
    exemplar prior the cache must be fresh (``load_run`` refreshes it).

    Args:
        model: a trained VAE (in eval mode).
        classifier: the MLP classifier (``classifier_features``), trained on the same dataset.
        real_x: [N, D] real images (grey test images), N >= n.
        n: samples and real images compared, n >= 2 (the covariances are [H, H]: n well above H keeps
            their estimates, hence the distance, from being biased upwards by noise).
        temperature: T >= 0.
        generator: randomness of the samples (on the model's device).
        batch_size: samples generated and featurised together.

    Returns:
        d^2 in squared feature units (float64 arithmetic).
    """
    temperature = check_temperature(temperature)
    if n < 2 or n > real_x.shape[0]:
        raise ValueError(f"sample_frechet needs 2 <= n <= {real_x.shape[0]} real images, got n={n}")
    z = model.prior.sample(n, model.encoder, generator, temperature)  # [n, d]: one draw, as model.generate
    fake = [
        classifier_features(classifier, model.decode_mean(zb, generator), batch_size)
        for zb in z.split(batch_size)
    ]
    real = classifier_features(classifier, real_x[:n], batch_size)  # [n, H]
    mu_f, cov_f = feature_statistics(torch.cat(fake))
    mu_r, cov_r = feature_statistics(real)
    return frechet_distance(mu_r, cov_r, mu_f, cov_f)
