"""``Posterior``: the trained estimator at one observation, ``q(theta | x_o)``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._rng import seeded
from .estimator import PosteriorEstimator


def check_observation(x_o, x_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """``x_o`` as a tensor of shape ``x_shape`` (a leading batch of 1 is accepted); clear errors otherwise."""
    x_o = torch.as_tensor(x_o, dtype=dtype)
    x_shape = tuple(x_shape)
    if tuple(x_o.shape) == (1, *x_shape):
        x_o = x_o[0]
    if tuple(x_o.shape) != x_shape:
        raise ValueError(
            f"x_o must have the shape of one simulation, {x_shape} (or (1, *{x_shape})), got {tuple(x_o.shape)}; "
            "for several observations call posterior() once per observation or use NPE.sample_batched"
        )
    if not bool(torch.isfinite(x_o).all()):
        raise ValueError("x_o contains NaN or inf")
    return x_o


class Posterior:
    """``q(theta | x_o)`` from a trained ``PosteriorEstimator``.

    The posterior holds a reference to the estimator (no copy): training it
    further changes this posterior too, which is what sequential rounds want.

    Args:
        estimator: a trained ``PosteriorEstimator``.
        x_o: the observation, shape ``x_shape``.
        param_names: names for ``to_arviz`` (default ``theta_0 ...``).
    """

    def __init__(self, estimator: PosteriorEstimator, x_o: Tensor, param_names: Sequence[str] | None = None):
        self.estimator = estimator
        self.x_o = check_observation(x_o, estimator.x_shape)
        self.prior = estimator.prior
        self.dim = estimator.theta_dim
        self.param_names = list(param_names) if param_names is not None else [f"theta_{i}" for i in range(self.dim)]
        if len(self.param_names) != self.dim:
            raise ValueError(f"param_names must have {self.dim} names, got {len(self.param_names)}")

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.dim])

    def sample(self, sample_shape: Sequence[int] | int = (), seed: int | None = None, batch_size: int = 100_000) -> Tensor:
        """Draw ``theta (*sample_shape, d)``; inside the prior's support by construction (no rejection)."""
        shape = torch.Size([sample_shape]) if isinstance(sample_shape, int) else torch.Size(sample_shape)
        n = shape.numel()
        with seeded(seed), torch.no_grad():
            was = self.estimator.training
            self.estimator.eval()
            try:
                parts = [self.estimator.sample((m,), self.x_o) for m in _chunks(n, batch_size)]
            finally:
                self.estimator.train(was)
        out = torch.cat(parts) if parts else torch.empty(0, self.dim)
        return out.reshape(*shape, self.dim)

    def log_prob(self, theta: Tensor) -> Tensor:
        """``log q(theta | x_o)`` for ``theta (..., d)`` -> ``(...)``; ``-inf`` outside the prior's support."""
        theta = torch.as_tensor(theta, dtype=self.x_o.dtype)
        if theta.shape[-1:] != (self.dim,):
            raise ValueError(f"theta must have shape (..., {self.dim}), got {tuple(theta.shape)}")
        if theta.requires_grad:  # differentiable when asked (e.g. gradient-based MAP or HMC)
            return self.estimator.log_prob(theta, self.x_o)
        with torch.no_grad():
            return self.estimator.log_prob(theta, self.x_o)

    def sample_and_log_prob(self, n: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws ``(n, d)`` and their log-densities ``(n,)`` from one pass."""
        with seeded(seed), torch.no_grad():
            return self.estimator.sample_and_log_prob((n,), self.x_o)

    def map(self, num_init: int = 1000, num_keep: int = 10, steps: int = 300, lr: float = 0.05, seed: int | None = 0) -> Tensor:
        """Posterior mode ``(d,)`` in theta space.

        Draws ``num_init`` samples, keeps the ``num_keep`` most probable, and climbs
        ``log q(theta|x_o)`` from each with Adam in the unbounded space (so iterates
        never leave the support); returns the best end point.
        """
        est = self.estimator
        theta0, lp0 = self.sample_and_log_prob(num_init, seed=seed)
        start = theta0[lp0.topk(min(num_keep, num_init)).indices]
        z = est.to_z(start)[0].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        context = est.context(self.x_o).detach()
        was = est.training
        est.eval()
        try:
            for _ in range(steps):
                opt.zero_grad()
                # log q(theta) = log q_flow(z) - log|dtheta/dz|
                theta, ladj = est.from_z(z)
                obj = -(est.log_prob_z(z, context) - ladj).sum()
                obj.backward()
                opt.step()
            with torch.no_grad():
                theta, _ = est.from_z(z)
                lp = self.log_prob(theta)
        finally:
            est.train(was)
        return theta[lp.argmax()].detach()

    def to_arviz(self, n: int = 1000, seed: int | None = None, chains: int = 1):
        """An arviz ``InferenceData`` with ``n`` draws per chain in its posterior group
        (independent draws, so chains are just a split for arviz's diagnostics)."""
        try:
            import arviz as az
        except ImportError as err:  # pragma: no cover - arviz is a declared dependency
            raise ImportError("to_arviz needs arviz: pip install arviz") from err
        draws = self.sample((chains, n), seed=seed).numpy()
        return az.from_dict(posterior={name: draws[..., i] for i, name in enumerate(self.param_names)})

    def __repr__(self) -> str:
        return f"Posterior(dim={self.dim}, x_o shape={tuple(self.x_o.shape)}, prior={self.prior!r})"


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]
