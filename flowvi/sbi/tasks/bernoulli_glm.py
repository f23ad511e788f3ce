"""Bernoulli GLM (sbibm ``bernoulli_glm``): 10 parameters, 10 data.

A neuron's spikes ``y_t ~ Bernoulli(sigmoid(X_t . theta))`` over ``T = 100`` time
bins. ``X`` has a column of ones (offset) and 9 lagged copies of a fixed white-noise
stimulus ``I`` (``X[t, 1 + j] = I[t - j]``, zero before the start), with
``I = numpy RandomState(42).randn(100)`` as float32 (sbibm's recipe for its stored
stimulus). The data are the sufficient statistics ``x = X^T y`` (spike count and
spike-triggered sums), so the posterior given ``x`` equals the posterior given ``y``.

Prior: ``theta ~ N(0, B^{-1})`` with ``B[0, 0] = 0.5`` (offset variance 2) and the
filter block ``F^T F`` penalising second differences, ``F = D^2 + diag(sqrt(i / 9))``.

Reference posterior (documented long MCMC; sbibm uses Polya-Gamma Gibbs): the
log-posterior ``x . theta - sum_t softplus(X_t . theta) + log prior`` is concave;
chains start from its Laplace approximation (Newton's method) and run vectorised
adaptive random-walk Metropolis.
"""
from __future__ import annotations

import numpy as np
import pyro.distributions as pdist
import torch
from torch import Tensor
from torch.nn import functional as F

from .._rng import seeded
from .base import Task, check_theta
from .mcmc import rw_metropolis

T_BINS = 100
N_FILTER = 9


def design_matrix() -> Tensor:
    """The fixed ``(100, 10)`` design matrix (offset column + 9 stimulus lags)."""
    stim = torch.from_numpy(np.random.RandomState(42).randn(T_BINS).astype(np.float32))
    X = torch.zeros(T_BINS, N_FILTER)
    for j in range(N_FILTER):
        X[j:, j] = stim[: T_BINS - j]
    return torch.cat([torch.ones(T_BINS, 1), X], 1)


def prior_precision() -> Tensor:
    M = N_FILTER
    D = torch.eye(M) - torch.diag(torch.ones(M - 1), -1)
    Fm = D @ D + torch.diag(torch.arange(M, dtype=torch.float32) / M) ** 0.5
    B = torch.zeros(M + 1, M + 1)
    B[0, 0] = 0.5
    B[1:, 1:] = Fm.T @ Fm
    return B


class BernoulliGLM(Task):
    name = "bernoulli_glm"

    def __init__(self):
        self.dim_theta = 10
        self.x_shape = (10,)
        self.X = design_matrix()
        self.precision = prior_precision()
        self.prior = pdist.MultivariateNormal(torch.zeros(10), precision_matrix=self.precision)

    def simulator(self, theta: Tensor) -> Tensor:
        theta = check_theta(theta, 10)
        rate = torch.sigmoid(theta @ self.X.T)  # (b, T)
        y = (torch.rand_like(rate) < rate).to(theta.dtype)
        return y @ self.X

    def log_posterior(self, theta: Tensor, x: Tensor) -> Tensor:
        """Unnormalised ``log p(theta | x)`` for ``theta (..., 10)``, ``x (10,)``."""
        theta64, x64 = theta.double(), x.double()
        ll = theta64 @ x64 - F.softplus(theta64 @ self.X.double().T).sum(-1)
        lprior = -0.5 * ((theta64 @ self.precision.double()) * theta64).sum(-1)
        return (ll + lprior).to(theta.dtype)

    def laplace(self, x_o: Tensor, iters: int = 50) -> tuple[Tensor, Tensor]:
        """Posterior mode and covariance (inverse Hessian) by Newton's method, float64."""
        X, B, x = self.X.double(), self.precision.double(), self._x(x_o).double()
        theta = torch.zeros(10, dtype=torch.float64)
        for _ in range(iters):
            p = torch.sigmoid(X @ theta)
            grad = x - X.T @ p - B @ theta
            H = X.T @ (X * (p * (1 - p)).unsqueeze(1)) + B
            step = torch.linalg.solve(H, grad)
            theta = theta + step
            if float(step.abs().max()) < 1e-10:
                break
        p = torch.sigmoid(X @ theta)
        H = X.T @ (X * (p * (1 - p)).unsqueeze(1)) + B
        return theta, torch.linalg.inv(H)

    def reference_posterior(self, x_o: Tensor, n: int = 10_000, seed: int = 0, *, num_chains: int = 500,
                            warmup: int = 500, thin: int = 10) -> Tensor:
        x_o = self._x(x_o)
        mode, cov = self.laplace(x_o)
        per_chain = -(-n // num_chains)
        with seeded(seed, 41):
            init = pdist.MultivariateNormal(mode, cov).sample((num_chains,)).float()
            draws, _ = rw_metropolis(lambda t: self.log_posterior(t, x_o), init, per_chain, warmup=warmup, thin=thin, seed=None)
        return draws[torch.randperm(draws.shape[0], generator=torch.Generator().manual_seed(seed))][:n]
