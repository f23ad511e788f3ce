"""flowvi: flow-based variational inference and simulation-based inference on PyTorch and Pyro."""
from . import flows, vi
from .flows import build
from .vi import fit
from . import pyro, targets, vae

__version__ = "0.1.0"
__all__ = ["flows", "vi", "pyro", "targets", "vae", "build", "fit", "__version__"]
