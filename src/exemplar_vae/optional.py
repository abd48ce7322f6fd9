"""Optional dependencies, imported where they are needed with a one-line message when missing.

The core install (torch, numpy, faiss-cpu, tqdm, pillow, safetensors) trains, evaluates and draws image
grids. Heavier parts are extras of the ``exemplar-vae`` distribution:

=============  ====================  ==============================================================
extra          packages              used for
=============  ====================  ==============================================================
plots          matplotlib            training curves (curves.png) and embedding scatter plots
tsne           scikit-learn,         t-SNE maps of latent codes (``probe --tsne``)
               matplotlib
digits         scikit-learn          the ``digits`` dataset (scikit-learn's bundled 8x8 digits)
omniglot       scipy                 reading Omniglot's MATLAB ``chardata.mat``
tensorboard    tensorboard           the TensorBoard logger
gpu            faiss-gpu-cu12        GPU IVF indexes
all            all but gpu
=============  ====================  ==============================================================

Every import of matplotlib, scikit-learn, scipy or tensorboard in the package goes through
:func:`require`, inside the function that needs it, so ``import exemplar_vae`` works without them
(``tests/test_packaging.py`` checks both).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from exemplar_vae.errors import ConfigError

__all__ = ["require"]

DISTRIBUTION = "exemplar-vae"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import and return ``module``, or raise a one-line :class:`ConfigError` naming the extra to install.

    Args:
        module: the module to import, e.g. ``"sklearn.manifold"``.
        extra: the extra of ``exemplar-vae`` that installs it, e.g. ``"tsne"``.
        what: the feature that needs it, for the message, e.g. ``"the t-SNE map"``.

    Raises:
        ConfigError: ``"{what} needs {module}: pip install 'exemplar-vae[{extra}]'"`` (the CLI prints it
            as ``error: ...`` and exits with code 2). The ImportError is chained as the cause.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{what} needs {module}: pip install '{DISTRIBUTION}[{extra}]'") from err
