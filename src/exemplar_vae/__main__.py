"""``python -m exemplar_vae``: the command line (also ``torchrun --nproc_per_node=W -m exemplar_vae ...``)."""

from exemplar_vae.cli.main import entry

entry()
