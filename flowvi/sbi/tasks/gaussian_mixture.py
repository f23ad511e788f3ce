"""Gaussian mixture (sbibm ``gaussian_mixture``), 2 parameters, 2 data.

``theta ~ U(-10, 10)^2``; ``x | theta ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)``.
The component is drawn per simulation (the paper's definition; sbibm's code draws
one component per simulator call).

Reference posterior, exact: the likelihood is symmetric in ``x`` and ``theta``,
so the posterior is the same mixture centred at ``x_o`` restricted to the box,
sampled by drawing from the mixture and rejecting points outside the box.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._rng import seeded
from ..priors import BoxUniform
from .base import Task, check_theta


class GaussianMixture(Task):
    """Args: ``dim`` (2), ``bound`` (10)."""

    name = "gaussian_mixture"

    def __init__(self, dim: int = 2, bound: float = 10.0):
        self.dim_theta = int(dim)
        self.x_shape = (self.dim_theta,)
        self.bound = float(bound)
        self.prior = BoxUniform(-self.bound * torch.ones(dim), self.bound * torch.ones(dim))
        self.scales = torch.tensor([1.0, 0.1])

    def _mixture(self, center: Tensor) -> Tensor:
        scale = self.scales[(torch.rand(center.shape[0]) < 0.5).long()].unsqueeze(-1)
        return center + scale * torch.randn_like(center)

    def simulator(self, theta: Tensor) -> Tensor:
        return self._mixture(check_theta(theta, self.dim_theta))

    def reference_posterior(self, x_o: Tensor, n: int = 10_000, seed: int = 0, max_rounds: int = 1000) -> Tensor:
        x_o = self._x(x_o)
        out, have = [], 0
        with seeded(seed, 19):
            for _ in range(max_rounds):
                m = max(2 * (n - have), 1000)
                theta = self._mixture(x_o.expand(m, -1))
                ok = (theta.abs() < self.bound).all(-1)
                out.append(theta[ok])
                have += int(ok.sum())
                if have >= n:
                    return torch.cat(out)[:n]
        raise RuntimeError(f"gaussian_mixture: x_o={x_o.tolist()} is too far outside the prior box")
