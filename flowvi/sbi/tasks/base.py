"""The ``Task`` interface: a prior, a batched simulator, observations and reference posteriors.

Definitions follow the SBI benchmark (sbibm; Lueckmann et al. 2021). sbibm ships
ten fixed observations per task as files; here ``observation(i, seed)`` draws
``theta_o ~ prior`` and ``x_o ~ simulator(theta_o)`` under a seed derived from
``(seed, i)``, so observations are reproducible but not sbibm's files.
"""
from __future__ import annotations

import zlib

import torch
from torch import Tensor

from .._rng import seeded


class Task:
    """Base class. Subclasses set ``name``, ``dim_theta``, ``x_shape``, ``prior`` and implement
    ``simulator(theta (b, d)) -> x (b, *x_shape)`` and ``reference_posterior``."""

    name: str = "task"
    dim_theta: int
    x_shape: tuple[int, ...]
    prior: torch.distributions.Distribution

    @property
    def param_names(self) -> list[str]:
        return [f"theta_{i}" for i in range(self.dim_theta)]

    def simulator(self, theta: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, theta: Tensor) -> Tensor:
        return self.simulator(theta)

    def observation(self, i: int = 1, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Observation number ``i``: ``(theta_o (d,), x_o x_shape)``, reproducible from ``(seed, i)``."""
        # the task name enters the key so different tasks do not share prior draws
        with seeded(seed, zlib.crc32(self.name.encode()), 1_000_000 + int(i)), torch.no_grad():
            theta = self.prior.sample((1,))
            x = self.simulator(theta)
        return theta[0], x[0]

    def reference_posterior(self, x_o: Tensor, n: int = 10_000, seed: int = 0) -> Tensor:  # pragma: no cover
        """``n`` draws ``(n, d)`` from the true posterior at ``x_o``."""
        raise NotImplementedError

    def _x(self, x_o: Tensor) -> Tensor:
        x_o = torch.as_tensor(x_o, dtype=torch.get_default_dtype())
        if tuple(x_o.shape) == (1, *self.x_shape):
            x_o = x_o[0]
        if tuple(x_o.shape) != tuple(self.x_shape):
            raise ValueError(f"{self.name}: x_o must have shape {self.x_shape}, got {tuple(x_o.shape)}")
        return x_o

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim_theta={self.dim_theta}, x_shape={self.x_shape})"


def check_theta(theta: Tensor, dim: int) -> Tensor:
    theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
    if theta.dim() != 2 or theta.shape[1] != dim:
        raise ValueError(f"theta must have shape (b, {dim}), got {tuple(theta.shape)}")
    return theta
