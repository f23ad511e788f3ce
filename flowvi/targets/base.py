"""What every target offers: an exact (log-)density, exact draws, known moments."""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def normal_logpdf(x: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """Elementwise log N(x; 0, scale^2)."""
    scale = torch.as_tensor(scale, dtype=x.dtype)
    return -0.5 * (x / scale) ** 2 - torch.log(scale) - 0.5 * LOG_2PI


class Target:
    """A density on R^dim with known answers.

    Attributes: ``dim``, ``name``, ``normalised`` (``log_prob`` integrates to 1),
    ``log_z`` (log of the integral of ``exp(log_prob)``; 0 when normalised),
    ``mean`` (dim,) and ``cov`` (dim, dim) as float64 tensors.
    ``log_prob(x)``: ``(..., dim) -> (...)``, differentiable, finite on R^dim.
    ``sample(n, seed)``: ``(n, dim)`` draws.
    """

    name = "target"
    normalised = True
    log_z = 0.0

    def __init__(self, dim: int):
        self.dim = int(dim)

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    def _generator(self, seed):
        return torch.Generator().manual_seed(0 if seed is None else int(seed))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
