"""Correlated Gaussians with a chosen spread of scales (ill-conditioned on purpose).

``CorrelatedGaussian(dim, min_scale, max_scale, rotate, seed)`` is ``N(0, Sigma)`` with

    Sigma = R diag(sd)^2 R^T,   sd log-spaced from min_scale to max_scale,

``R`` a Haar-random rotation fixed by ``seed`` (or the identity with
``rotate=False``). The condition number of ``Sigma`` is ``(max_scale / min_scale)^2``:
scales 1..10 give 100, scales 0.1..10 give 10,000. Everything is exact.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LOG_2PI, Target, randn, random_rotation


class CorrelatedGaussian(Target):
    """``N(0, R diag(sd)^2 R^T)`` on ``R^dim``; see the module docstring.

    Args:
        dim: dimension (``>= 1``).
        min_scale, max_scale: the smallest and largest standard deviation (along the
            principal axes); ``sd`` is log-spaced between them.
        rotate: rotate the principal axes by a seeded random rotation (default) or keep
            them on the coordinate axes.
        seed: the rotation's seed.
        name: registry name; a descriptive default otherwise.

    Attributes: ``scales`` ``(dim,)``, ``rotation`` ``(dim, dim)`` (columns are the
    principal axes), ``condition_number``; ``log_prob``: ``(..., dim) -> (...)``,
    exact; ``sample(n)``: ``(n, dim)``, exact.
    """

    def __init__(self, dim: int = 20, min_scale: float = 0.1, max_scale: float = 10.0, rotate: bool = True,
                 seed: int = 0, name: str | None = None):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        super().__init__(dim)
        self.scales = torch.logspace(math.log10(min_scale), math.log10(max_scale), self.dim, dtype=torch.float64)
        self.rotation = random_rotation(self.dim, seed) if rotate else torch.eye(self.dim, dtype=torch.float64)
        self.condition_number = float((self.scales.max() / self.scales.min()) ** 2)
        self.name = name or (f"gaussian(d={dim}, scales {min_scale:g}-{max_scale:g}, "
                             f"{'rotated' if rotate else 'axis-aligned'})")
        self.mean = torch.zeros(self.dim, dtype=torch.float64)
        self.cov = (self.rotation * self.scales**2) @ self.rotation.T
        self._const = float(self.scales.log().sum()) + 0.5 * self.dim * LOG_2PI

    def _log_prob(self, x: Tensor) -> Tensor:
        # whitened coordinates w = diag(1/sd) R^T x: exact and well conditioned (R is orthogonal)
        w = (x @ self.rotation.to(x.dtype)) / self.scales.to(x.dtype)
        return -0.5 * (w * w).sum(-1) - self._const

    def _sample(self, n, gen):
        return (randn(n, self.dim, gen) * self.scales) @ self.rotation.T
