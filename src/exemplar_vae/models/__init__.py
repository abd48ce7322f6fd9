"""Networks (encoders, decoders), the VAE that joins them to a prior, and the builders by name."""

from exemplar_vae.models.build import ARCHITECTURES, build_vae
from exemplar_vae.models.decoders import MLPDecoder
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.hierarchical import HierarchicalVAE
from exemplar_vae.models.observation import Bernoulli, DiscretizedLogistic, Observation
from exemplar_vae.models.vae import VAE, LowerTerms

__all__ = [
    "ARCHITECTURES",
    "Bernoulli",
    "DiscretizedLogistic",
    "HierarchicalVAE",
    "LowerTerms",
    "MLPDecoder",
    "MLPEncoder",
    "Observation",
    "VAE",
    "build_vae",
]
