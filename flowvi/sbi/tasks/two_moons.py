"""Two moons (sbibm ``two_moons``), 2 parameters, 2 data.

``theta ~ U(-1, 1)^2``; ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,
``p = (r cos a + 0.25, r sin a)``, ``x = p + (-|theta_0 + theta_1| / sqrt 2, (theta_1 - theta_0) / sqrt 2)``.

Reference posterior, exact: for fixed ``x`` the map ``theta -> p = x - g(theta)`` is
two-to-one with unit Jacobian on each branch, so posterior draws are draws of ``p``
from its generative law mapped back through a branch chosen with probability 1/2,
rejecting ``p_0 < x_0`` (impossible ``|.|``) and points outside the prior box.
(sbibm omits the first rejection; it only matters for rare observations.)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._rng import seeded
from ..priors import BoxUniform
from .base import Task, check_theta

_S = 1 / math.sqrt(2)


class TwoMoons(Task):
    name = "two_moons"

    def __init__(self):
        self.dim_theta = 2
        self.x_shape = (2,)
        self.prior = BoxUniform(-torch.ones(2), torch.ones(2))

    @staticmethod
    def _noise(n: int) -> Tensor:
        a = (torch.rand(n) - 0.5) * math.pi
        r = 0.1 + 0.01 * torch.randn(n)
        return torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], -1)

    def simulator(self, theta: Tensor) -> Tensor:
        theta = check_theta(theta, 2)
        p = self._noise(theta.shape[0])
        z0 = (theta[:, 0] + theta[:, 1]) * _S
        z1 = (theta[:, 1] - theta[:, 0]) * _S
        return p + torch.stack([-z0.abs(), z1], -1)

    def reference_posterior(self, x_o: Tensor, n: int = 10_000, seed: int = 0, max_rounds: int = 1000) -> Tensor:
        x_o = self._x(x_o)
        out, have = [], 0
        with seeded(seed, 13):
            for _ in range(max_rounds):
                m = max(4 * (n - have), 1000)
                p = self._noise(m)
                z0 = (p[:, 0] - x_o[0]) * torch.where(torch.rand(m) < 0.5, -1.0, 1.0)
                z1 = x_o[1] - p[:, 1]
                theta = torch.stack([(z0 - z1) * _S, (z0 + z1) * _S], -1)
                ok = (p[:, 0] >= x_o[0]) & (theta.abs() < 1).all(-1)
                out.append(theta[ok])
                have += int(ok.sum())
                if have >= n:
                    return torch.cat(out)[:n]
        raise RuntimeError(f"two_moons: x_o={x_o.tolist()} is (nearly) impossible under the prior")
