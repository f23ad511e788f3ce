"""Twisted Gaussians ("bananas").

``Banana(dim, scale=s, twist=b, offset=c)`` is the law of

    x1 = s z1,   x2 = z2 + b (x1^2 - c),   x_i = z_i (i >= 3),   z ~ N(0, I_dim).

The map ``z -> x`` is a scaling of ``z1`` followed by a shear of ``x2`` along a
function of ``x1`` (unit Jacobian), so the density is exact and normalised:

    log p(x) = log N(x1; 0, s^2) + log N(x2 - b (x1^2 - c); 0, 1) + sum_{i>=3} log N(x_i; 0, 1).

Moments (exact): ``E x1 = 0``, ``E x2 = b (s^2 - c)``, ``Var x1 = s^2``,
``Var x2 = 1 + 2 b^2 s^4`` (as ``Var x1^2 = 2 s^4``), ``Cov(x1, x2) = b E[x1^3] = 0``,
the other coordinates standard normal and uncorrelated.

Two named forms:

* Haario, Saksman & Tamminen (1999): ``f_b = f o phi_b`` with ``f = N(0, diag(100, 1, ..., 1))``
  and ``phi_b(x) = (x1, x2 + b x1^2 - 100 b, x3, ...)``; i.e. ``s = 10, c = 100`` and
  twist ``-b`` here (the banana opens downwards). ``b = 0.03`` is their moderately and
  ``b = 0.1`` their strongly twisted case. Build it with ``haario(b, dim)``.
* The benchmark's banana: ``x1 = 2 z1, x2 = z2 + 0.5 (x1^2 - 4)``, i.e. ``s = 2, b = 0.5, c = 4``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Target, normal_logpdf, randn


class Banana(Target):
    """Twisted Gaussian on ``R^dim`` (``dim >= 2``); see the module docstring.

    Args:
        dim: dimension, at least 2.
        scale: ``s``, the standard deviation of ``x1``.
        twist: ``b``, the curvature of the shear ``x2 = z2 + b (x1^2 - c)``; any sign.
        offset: ``c``; defaults to ``s^2``, which centres ``x2`` (``E x2 = 0``).
        name: registry name; a descriptive default otherwise.

    ``log_prob``: ``(..., dim) -> (...)``, exact and normalised. ``sample(n)``: ``(n, dim)``, exact.
    """

    def __init__(self, dim: int = 2, scale: float = 2.0, twist: float = 0.5, offset: float | None = None,
                 name: str | None = None):
        if dim < 2:
            raise ValueError(f"a banana needs dim >= 2, got {dim}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        super().__init__(dim)
        self.scale, self.twist = float(scale), float(twist)
        self.offset = self.scale**2 if offset is None else float(offset)
        self.name = name or f"banana(d={dim}, s={self.scale:g}, b={self.twist:g}, c={self.offset:g})"
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.mean[1] = self.twist * (self.scale**2 - self.offset)
        var = torch.ones(dim, dtype=torch.float64)
        var[0] = self.scale**2
        var[1] = 1 + 2 * self.twist**2 * self.scale**4
        self.cov = torch.diag(var)

    def unwarp(self, x: Tensor) -> Tensor:
        """The standard normal ``z`` behind ``x``: ``(..., dim) -> (..., dim)``."""
        z1 = x[..., :1] / self.scale
        z2 = x[..., 1:2] - self.twist * (x[..., :1] ** 2 - self.offset)
        return torch.cat([z1, z2, x[..., 2:]], -1)

    def _log_prob(self, x: Tensor) -> Tensor:
        x1, x2 = x[..., 0], x[..., 1]
        lp = normal_logpdf(x1, self.scale) + normal_logpdf(x2 - self.twist * (x1 * x1 - self.offset))
        if self.dim > 2:
            lp = lp + normal_logpdf(x[..., 2:]).sum(-1)
        return lp

    def _sample(self, n, gen):
        z = randn(n, self.dim, gen)
        x1 = self.scale * z[:, :1]
        x2 = z[:, 1:2] + self.twist * (x1 * x1 - self.offset)
        return torch.cat([x1, x2, z[:, 2:]], -1)


def haario(b: float = 0.03, dim: int = 2, name: str | None = None) -> Banana:
    """Haario et al. (1999)'s twisted Gaussian ``f_b`` in ``dim`` dimensions: ``N(0, diag(100, 1, ...))``
    composed with ``phi_b(x) = (x1, x2 + b x1^2 - 100 b, ...)``. ``b = 0.03`` (moderate) or ``0.1`` (strong)."""
    return Banana(dim=dim, scale=10.0, twist=-float(b), offset=100.0, name=name or f"haario(b={b:g}, d={dim})")
