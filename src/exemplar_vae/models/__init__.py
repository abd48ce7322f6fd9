"""Networks (encoders, decoders) and the VAE that joins them to a prior."""

from exemplar_vae.models.decoders import MLPDecoder
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.models.vae import VAE, build_vae

__all__ = ["MLPDecoder", "MLPEncoder", "VAE", "build_vae"]
