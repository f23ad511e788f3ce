"""Radial flow (Rezende & Mohamed 2015): ``x = z + beta (z - z0) / (alpha + |z - z0|)``.

Cheap in both directions: the inverse has a closed form (the radius of ``x``
determines the radius of ``z`` through a quadratic).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from .base import FlowLayer, inverse_softplus
from .params import ParamNet


class Radial(FlowLayer):
    """One radial step; ``alpha = softplus(.) > 0`` and ``beta = -alpha + softplus(.)``
    keep it invertible. A context makes ``(z0, alpha, beta)`` per context row.
    Shapes as for every ``FlowLayer``.
    """

    inverse_kind = "exact"
    cheap_direction = "both"

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), init_scale: float = 0.01):
        super().__init__(dim, context_dim)
        g = torch.Generator().manual_seed(dim + 31 * context_dim)
        a = inverse_softplus(1.0)
        self.params = ParamNet(
            {
                "z0": init_scale * torch.randn(dim, generator=g),
                "alpha": torch.tensor(a),
                # softplus(a + eps) - 1: beta starts a hair above 0 (near identity, live gradients)
                "beta": torch.tensor(a + init_scale),
            },
            context_dim,
            hidden,
        )

    def _params(self, context):
        z0, a, bt = self.params(context)
        alpha = F.softplus(a)
        return z0, alpha, -alpha + F.softplus(bt)

    def _ladj(self, r, alpha, beta):
        h = 1 / (alpha + r)
        return (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h * h)

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        z0, alpha, beta = self._params(context)
        d = z - z0
        r = torch.sqrt((d * d).sum(-1).clamp_min(1e-30))
        return z + (beta / (alpha + r)).unsqueeze(-1) * d, self._ladj(r, alpha, beta)

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        z0, alpha, beta = self._params(context)
        dx = x - z0
        rx = torch.sqrt((dx * dx).sum(-1).clamp_min(1e-30))
        # r^2 + r (alpha + beta - rx) - rx alpha = 0; the root form chosen by sign avoids cancellation
        B = alpha + beta - rx
        disc = torch.sqrt(B * B + 4 * rx * alpha)
        r = torch.where(B > 0, 2 * rx * alpha / (B + disc), (disc - B) / 2)
        z = z0 + dx / (1 + beta / (alpha + r)).unsqueeze(-1)
        return z, self._ladj(r, alpha, beta)
