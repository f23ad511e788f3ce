"""flowvi: flow-based variational inference and simulation-based inference on PyTorch and Pyro."""
from . import flows
from .flows import build

__version__ = "0.1.0"
__all__ = ["flows", "build", "__version__"]
