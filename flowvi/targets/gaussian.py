"""Correlated Gaussians with a chosen spread of scales, and Neal's funnel."""
from __future__ import annotations

import math

import torch

from .base import Target, normal_logpdf


class CorrelatedGaussian(Target):
    """N(0, Sigma) with standard deviations log-spaced in ``[min_scale, max_scale]``
    along the axes of a random (seeded) rotation; ``rotate=False`` keeps them on
    the coordinate axes. Condition number of Sigma: ``(max_scale / min_scale)^2``."""

    def __init__(self, dim: int = 20, min_scale: float = 0.1, max_scale: float = 10.0, rotate: bool = True, seed: int = 0, name=None):
        super().__init__(dim)
        sd = torch.logspace(math.log10(min_scale), math.log10(max_scale), dim, dtype=torch.float64)
        g = torch.Generator().manual_seed(seed)
        rot = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0] if rotate else torch.eye(dim, dtype=torch.float64)
        self.chol_factor = rot * sd  # Sigma = A A^T with A = R diag(sd)
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.cov = self.chol_factor @ self.chol_factor.T
        self._dist = torch.distributions.MultivariateNormal(self.mean, self.cov)
        self.name = name or f"gaussian(d={dim}, scales {min_scale:g}-{max_scale:g}{', rotated' if rotate else ''})"

    def log_prob(self, x):
        return self._dist.log_prob(x.double()).to(x.dtype)

    def sample(self, n, seed=None):
        z = torch.randn(n, self.dim, generator=self._generator(seed), dtype=torch.float64)
        return z @ self.chol_factor.T


class Funnel(Target):
    """Neal's funnel: ``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)``, i = 2..dim.
    Moments: mean 0, ``Var v = 9``, ``Var x_i = E[e^v] = e^{4.5}``, no covariance."""

    def __init__(self, dim: int = 2, name=None):
        super().__init__(dim)
        self.name = name or f"funnel(d={dim})"
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.cov = torch.diag(torch.tensor([9.0] + [math.exp(4.5)] * (dim - 1), dtype=torch.float64))

    def log_prob(self, x):
        v, rest = x[..., 0], x[..., 1:]
        # written in v directly (not through exp(v/2) as a scale) so v -> -inf stays finite
        inner = (-0.5 * rest * rest * torch.exp(-v).unsqueeze(-1) - 0.5 * v.unsqueeze(-1) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return normal_logpdf(v, 3.0) + inner

    def sample(self, n, seed=None):
        z = torch.randn(n, self.dim, generator=self._generator(seed), dtype=torch.float64)
        v = 3 * z[:, :1]
        return torch.cat([v, z[:, 1:] * torch.exp(v / 2)], -1)


class GaussianMixture(Target):
    """Equal-weight mixture of ``k`` unit-variance Gaussians whose means lie at
    distance ``separation`` from the origin in random (seeded) directions."""

    def __init__(self, dim: int = 2, k: int = 4, separation: float = 6.0, seed: int = 0, name=None):
        super().__init__(dim)
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(k, dim, generator=g, dtype=torch.float64)
        self.means = separation * u / u.norm(dim=-1, keepdim=True)
        self.k = k
        self.name = name or f"mixture(d={dim}, k={k}, sep={separation:g})"
        self.mean = self.means.mean(0)
        c = self.means - self.mean
        self.cov = torch.eye(dim, dtype=torch.float64) + c.T @ c / k

    def log_prob(self, x):
        means = self.means.to(x.dtype)
        comp = normal_logpdf(x.unsqueeze(-2) - means).sum(-1)
        return torch.logsumexp(comp, -1) - math.log(self.k)

    def sample(self, n, seed=None):
        g = self._generator(seed)
        idx = torch.randint(self.k, (n,), generator=g)
        return self.means[idx] + torch.randn(n, self.dim, generator=g, dtype=torch.float64)
