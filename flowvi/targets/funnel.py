"""Neal's funnel (Neal 2003, "Slice sampling").

``v ~ N(0, sigma^2)`` (``sigma = 3``), ``x_i | v ~ N(0, e^v)`` for ``i = 2..dim``;
coordinate 0 is ``v``. Exact density and sampler; exact moments:
``E = 0``, ``Var v = sigma^2``, ``Var x_i = E[e^v] = exp(sigma^2 / 2)`` (``e^4.5`` for
``sigma = 3``), all covariances zero. The ``x_i`` are very heavy tailed (their
kurtosis is ``3 exp(sigma^2)``), so their sample variances converge slowly.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LOG_2PI, Target, normal_logpdf, randn


class Funnel(Target):
    """Neal's funnel on ``R^dim`` (``dim >= 2``, coordinate 0 is ``v``); see the module docstring.

    Args:
        dim: dimension, at least 2.
        v_scale: ``sigma``, the standard deviation of ``v`` (3 in Neal's form).
        name: registry name; a descriptive default otherwise.

    ``log_prob``: ``(..., dim) -> (...)``, computed as
    ``log N(v; 0, sigma^2) - (dim - 1) (v + log 2 pi) / 2 - sum_i (x_i e^{-v/2})^2 / 2``.
    It is exact for ``v >= -log(finfo.max) / 2`` (about -44 in float32 and -354 in
    float64); below that ``e^{-v/2}`` is held at its value there, so the result stays
    finite and NaN-free (an underestimate of the true, unrepresentably large, penalty
    on ``x_i != 0``). ``sample(n)``: ``(n, dim)``, exact.
    """

    def __init__(self, dim: int = 2, v_scale: float = 3.0, name: str | None = None):
        if dim < 2:
            raise ValueError(f"a funnel needs dim >= 2, got {dim}")
        super().__init__(dim)
        self.v_scale = float(v_scale)
        self.name = name or f"funnel(d={dim}, sigma={self.v_scale:g})"
        self.mean = torch.zeros(self.dim, dtype=torch.float64)
        var = [self.v_scale**2] + [math.exp(self.v_scale**2 / 2)] * (self.dim - 1)
        self.cov = torch.diag(torch.tensor(var, dtype=torch.float64))

    def unwarp(self, x: Tensor) -> Tensor:
        """The standard normal ``z`` behind ``x`` (``z_0 = v / sigma``, ``z_i = x_i e^{-v/2}``): ``(..., dim) -> (..., dim)``."""
        v = x[..., :1]
        return torch.cat([v / self.v_scale, x[..., 1:] * torch.exp(-v / 2)], -1)

    def _log_prob(self, x: Tensor) -> Tensor:
        v, rest = x[..., 0], x[..., 1:]
        half_max = 0.25 * math.log(torch.finfo(x.dtype).max)  # e^{-v/2} <= sqrt(sqrt(max)): squares stay finite
        inv_sd = torch.exp(torch.clamp(-0.5 * v, max=half_max)).unsqueeze(-1)
        quad = ((rest * inv_sd) ** 2).sum(-1)
        return normal_logpdf(v, self.v_scale) - 0.5 * (self.dim - 1) * (v + LOG_2PI) - 0.5 * quad

    def _sample(self, n, gen):
        z = randn(n, self.dim, gen)
        v = self.v_scale * z[:, :1]
        return torch.cat([v, z[:, 1:] * torch.exp(v / 2)], -1)
