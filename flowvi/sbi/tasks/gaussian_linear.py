"""Gaussian linear (sbibm ``gaussian_linear``): ``theta ~ N(0, 0.1 I_d)``, ``x | theta ~ N(theta, 0.1 I_d)``, d = 10.

The posterior is Gaussian and known in closed form:
``N(v0 / (v0 + v) * x, v0 v / (v0 + v) I)`` (prior variance ``v0``, noise variance ``v``).
"""
from __future__ import annotations

import pyro.distributions as pdist
import torch
from torch import Tensor

from .._rng import seeded
from .base import Task, check_theta


class GaussianLinear(Task):
    """Args: ``dim`` (10 in sbibm), ``prior_var`` and ``noise_var`` (both 0.1 in sbibm)."""

    name = "gaussian_linear"

    def __init__(self, dim: int = 10, prior_var: float = 0.1, noise_var: float = 0.1):
        self.dim_theta = int(dim)
        self.x_shape = (self.dim_theta,)
        self.prior_var, self.noise_var = float(prior_var), float(noise_var)
        self.prior = pdist.Normal(torch.zeros(self.dim_theta), self.prior_var**0.5).to_event(1)

    def simulator(self, theta: Tensor) -> Tensor:
        theta = check_theta(theta, self.dim_theta)
        return theta + self.noise_var**0.5 * torch.randn_like(theta)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log p(x | theta)``, broadcasting ``(..., d)`` against ``(..., d)``."""
        return pdist.Normal(theta, self.noise_var**0.5).log_prob(x).sum(-1)

    def posterior_dist(self, x: Tensor) -> pdist.TorchDistribution:
        """The exact posterior for ``x (..., d)``: a ``Normal(...).to_event(1)`` with batch ``(...)``."""
        w = self.prior_var / (self.prior_var + self.noise_var)
        var = self.prior_var * self.noise_var / (self.prior_var + self.noise_var)
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        return pdist.Normal(w * x, torch.full_like(x, var**0.5)).to_event(1)

    def posterior_sampler(self, x: Tensor, n: int) -> Tensor:
        """Batched exact sampler for diagnostics: ``x (B, d)`` -> ``(n, B, d)``."""
        return self.posterior_dist(x).sample((n,))

    def reference_posterior(self, x_o: Tensor, n: int = 10_000, seed: int = 0) -> Tensor:
        with seeded(seed, 11):
            return self.posterior_dist(self._x(x_o)).sample((n,))
