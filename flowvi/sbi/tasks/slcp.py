"""SLCP, simple likelihood complex posterior (sbibm ``slcp``): 5 parameters, 8 data.

``theta ~ U(-3, 3)^5``; ``m = (theta_0, theta_1)``, ``s_1 = theta_2^2``, ``s_2 = theta_3^2``,
``rho = tanh(theta_4)``, ``S = [[s_1^2, rho s_1 s_2], [rho s_1 s_2, s_2^2]] + 1e-6 I``;
``x`` = 4 iid draws of ``N(m, S)``, flattened to 8 numbers ``(x_1a, x_1b, x_2a, ...)``.

Reference posterior (a documented long MCMC; sbibm uses SIR + rejection with a
flow proposal): the likelihood depends on ``theta_2`` and ``theta_3`` only through
their squares, so the posterior is symmetric under flipping either sign (four
mirror modes). We sample the orthant ``theta_2, theta_3 > 0`` with vectorised
random-walk Metropolis (reflecting proposals at 0; the proposal covariance keeps
those two coordinates uncorrelated with the rest so reflection stays symmetric),
chains started by SIR from 100k prior draws (a long warm-up: the scale of
``theta_0, theta_1`` shrinks with ``theta_2^2, theta_3^2``, a funnel that random walks cross slowly), then give each draw random signs on
``theta_2`` and ``theta_3``, which is exact given the symmetry.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._rng import seeded
from ..priors import BoxUniform
from .base import Task, check_theta
from .mcmc import rw_metropolis, sir_init

EPS = 1e-6


def _cov(theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    rho = torch.tanh(theta[..., 4])
    return s1**2 + EPS, s2**2 + EPS, rho * s1 * s2


class SLCP(Task):
    name = "slcp"

    def __init__(self):
        self.dim_theta = 5
        self.x_shape = (8,)
        self.prior = BoxUniform(-3 * torch.ones(5), 3 * torch.ones(5))

    def simulator(self, theta: Tensor) -> Tensor:
        theta = check_theta(theta, 5)
        v1, v2, c = _cov(theta)
        # Cholesky of the 2x2 covariance in closed form
        l11 = v1.sqrt()
        l21 = c / l11
        l22 = (v2 - l21**2).clamp_min(0).sqrt()
        e = torch.randn(theta.shape[0], 4, 2)
        a = theta[:, :1] + l11.unsqueeze(1) * e[..., 0]
        b = theta[:, 1:2] + l21.unsqueeze(1) * e[..., 0] + l22.unsqueeze(1) * e[..., 1]
        return torch.stack([a, b], -1).reshape(theta.shape[0], 8)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log p(x | theta)`` for ``theta (..., 5)`` and one ``x (8,)``."""
        pts = x.reshape(4, 2)
        v1, v2, c = (t.unsqueeze(-1) for t in _cov(theta))
        det = v1 * v2 - c**2
        d1 = pts[:, 0] - theta[..., :1]
        d2 = pts[:, 1] - theta[..., 1:2]
        quad = (v2 * d1**2 - 2 * c * d1 * d2 + v1 * d2**2) / det
        return (-0.5 * quad - 0.5 * det.log() - torch.log(torch.tensor(2 * torch.pi))).sum(-1)

    def log_posterior(self, theta: Tensor, x: Tensor) -> Tensor:
        """Unnormalised; ``-inf`` outside the prior box."""
        inside = (theta.abs() < 3).all(-1)
        lp = self.log_likelihood(theta.clamp(-3, 3), x)
        return torch.where(inside & torch.isfinite(lp), lp, torch.full_like(lp, -float("inf")))

    def reference_posterior(self, x_o: Tensor, n: int = 10_000, seed: int = 0, *, num_chains: int = 1000,
                            warmup: int = 4000, thin: int = 10) -> Tensor:
        x_o = self._x(x_o)
        per_chain = -(-n // num_chains)

        def fold(t: Tensor) -> Tensor:
            return torch.cat([t[:, :2], t[:, 2:4].abs(), t[:, 4:]], 1)

        def target(t: Tensor) -> Tensor:
            return self.log_posterior(t, x_o)

        mask = torch.ones(5, 5, dtype=torch.float64)
        mask[2:4, :] = 0
        mask[:, 2:4] = 0
        mask[2, 2] = mask[3, 3] = 1
        with seeded(seed, 37):
            init = fold(sir_init(target, self.prior, num_chains))
            draws, _ = rw_metropolis(target, init, per_chain, warmup=warmup, thin=thin, cov_mask=mask, fold=fold, seed=None)
            signs = torch.where(torch.rand(draws.shape[0], 2) < 0.5, -1.0, 1.0)
        draws = torch.cat([draws[:, :2], draws[:, 2:4] * signs, draws[:, 4:]], 1)
        # chain-major blocks: shuffle so a prefix of n draws mixes all chains
        return draws[torch.randperm(draws.shape[0], generator=torch.Generator().manual_seed(seed))][:n]
