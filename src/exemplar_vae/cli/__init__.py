"""The ``exemplar-vae`` command line."""
