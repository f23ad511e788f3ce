"""Twisted Gaussians ("bananas", Haario et al. 1999).

``y1 ~ N(0, s^2)``, ``y2 = z2 + b (y1^2 - s^2)``, ``y_i = z_i`` otherwise, with
``z ~ N(0, I)``. The twist has unit Jacobian, so the density is exact and
normalised. Haario's form is ``s = 10`` with ``b = 0.03`` or ``0.1``; the
benchmark's banana (x1 = 2 z1, x2 = z2 + 0.5 (x1^2 - 4)) is ``s = 2, b = 0.5``.
Moments: ``E[y] = 0``, ``Var y1 = s^2``, ``Var y2 = 1 + 2 b^2 s^4``, zero covariances.
"""
from __future__ import annotations

import torch

from .base import Target, normal_logpdf


class Banana(Target):
    def __init__(self, dim: int = 2, scale: float = 10.0, twist: float = 0.03, name: str | None = None):
        if dim < 2:
            raise ValueError(f"a banana needs dim >= 2, got {dim}")
        super().__init__(dim)
        self.scale, self.twist = float(scale), float(twist)
        self.name = name or f"banana(s={scale:g}, b={twist:g}, d={dim})"
        var = torch.ones(dim, dtype=torch.float64)
        var[0] = self.scale**2
        var[1] = 1 + 2 * self.twist**2 * self.scale**4
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.cov = torch.diag(var)

    def log_prob(self, x):
        y1, y2 = x[..., 0], x[..., 1]
        z2 = y2 - self.twist * (y1 * y1 - self.scale**2)
        lp = normal_logpdf(y1, self.scale) + normal_logpdf(z2)
        if self.dim > 2:
            lp = lp + normal_logpdf(x[..., 2:]).sum(-1)
        return lp

    def sample(self, n, seed=None):
        z = torch.randn(n, self.dim, generator=self._generator(seed), dtype=torch.float64)
        y = z.clone()
        y[:, 0] = self.scale * z[:, 0]
        y[:, 1] = z[:, 1] + self.twist * (y[:, 0] ** 2 - self.scale**2)
        return y
