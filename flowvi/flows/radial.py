"""Radial flow (Rezende & Mohamed 2015): ``x = z + beta (z - z0) / (alpha + |z - z0|)``.

Cheap in both directions: the inverse is exact and closed form, because the
radius of ``x - z0`` fixes the radius of ``z - z0`` through a quadratic.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import FlowLayer, inverse_softplus
from .params import ParamNet


def _radius(d: Tensor) -> Tensor:
    # vector_norm's gradient at d = 0 is 0 (not NaN), which is right there: the map is
    # z0 + phi(|d|) d, whose Jacobian at the centre is phi(0) I
    return torch.linalg.vector_norm(d, dim=-1)


class Radial(FlowLayer):
    """One radial step ``x = z + beta h(r) (z - z0)``, ``h = 1/(alpha + r)``, ``r = |z - z0|``.

    ``alpha = softplus(.) > 0`` and ``beta = -alpha + softplus(.) > -alpha`` keep
    it invertible (Pyro's convention too). It starts with ``alpha = 1`` and
    ``beta`` about 0.006, so ``|x - z| < 0.01``; centres ``z0`` start at random
    draws of the base. With ``context_dim > 0`` a hypernetwork emits
    ``(z0, alpha, beta)`` per context row.

    Shapes: ``z`` ``(*batch, dim)``, context ``(*cbatch, context_dim)`` with
    ``cbatch`` broadcasting to ``batch``; ``x`` is ``(*batch, dim)`` and ``ladj``
    ``broadcast(batch, cbatch)``.
    """

    inverse_kind = "exact"
    cheap_direction = "both"

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), init_scale: float = 0.01):
        super().__init__(dim, context_dim)
        raw_alpha = inverse_softplus(1.0)
        self.params = ParamNet(
            {
                "z0": torch.randn(dim),
                "alpha": torch.tensor(raw_alpha),
                # beta = softplus(raw_alpha + eps) - 1, a hair above 0: near the identity with live gradients
                "beta": torch.tensor(raw_alpha + init_scale),
            },
            context_dim,
            hidden,
        )

    def _raw(self, context=None):
        # s = alpha + beta = softplus(.) > 0 is the quantity the formulas below need: using it
        # directly (never alpha + beta) keeps them cancellation-free even as beta -> -alpha
        z0, raw_alpha, raw_s = self.params(context)
        return z0, F.softplus(raw_alpha), F.softplus(raw_s)

    def coefficients(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(z0, alpha, beta)``: shapes ``(*cbatch, dim)``, ``cbatch``, ``cbatch``."""
        z0, alpha, s = self._raw(context)
        return z0, alpha, s - alpha

    def _ladj(self, r: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
        # det J = (1 + beta h)^(d-1) (1 + beta h + beta h'(r) r) with 1 + beta h = (r + s) h and
        # 1 + beta h + beta h' r = 1 + alpha beta h^2 = (r^2 + 2 alpha r + alpha s) h^2: all terms positive
        log_h = -torch.log(alpha + r)
        return (self.dim - 1) * (torch.log(r + s) + log_h) + torch.log(r * (r + 2 * alpha) + alpha * s) + 2 * log_h

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, context)
        z0, alpha, s = self._raw(context)
        d = z - z0
        r = _radius(d)
        # z + beta h d = z0 + (1 + beta h) d
        return z0 + ((r + s) / (alpha + r)).unsqueeze(-1) * d, self._ladj(r, alpha, s)

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact inverse: ``|x - z0| = r (r + s)/(alpha + r)``, ``s = alpha + beta``, is a quadratic in ``r``."""
        self._check(x, context)
        z0, alpha, s = self._raw(context)
        dx = x - z0
        rx = _radius(dx)
        # r^2 + B r - alpha rx = 0 with B = s - rx has one root r >= 0; of the two algebraically
        # equal forms, take the one that does not subtract nearly equal numbers
        B = s - rx
        disc = torch.sqrt(B * B + 4 * alpha * rx)
        pos = B > 0
        # the guard keeps the branch torch.where discards finite: B + disc rounds to 0 when B << 0
        r = torch.where(pos, 2 * alpha * rx / torch.where(pos, B + disc, 1.0), (disc - B) / 2)
        z = z0 + dx * ((alpha + r) / (r + s)).unsqueeze(-1)
        return z, self._ladj(r, alpha, s)
