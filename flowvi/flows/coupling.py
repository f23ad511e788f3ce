"""Coupling layers (Dinh et al. 2017): half the coordinates pass unchanged and
parameterise an elementwise map of the other half. Cheap and exact both ways.

``CouplingMask`` holds the split; ``AffineCoupling`` is RealNVP; the spline
coupling layer reuses the mask with a different elementwise map.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import FlowLayer, soft_clamp
from .params import mlp


class CouplingMask(nn.Module):
    """Split into contiguous halves (views, no copies): ``parity`` 0 transforms the
    second half given the first, ``parity`` 1 the first half given the second.
    For ``dim == 1`` the single coordinate is transformed given the context only."""

    def __init__(self, dim: int, parity: int):
        super().__init__()
        half = dim // 2 if parity % 2 == 0 else dim - dim // 2
        self.parity = parity % 2
        self.n_first = half
        n_kept = half if self.parity == 0 else dim - half
        self.n_kept, self.n_moved = n_kept, dim - n_kept
        if dim == 1:
            self.n_first, self.parity, self.n_kept, self.n_moved = 0, 0, 0, 1

    def split(self, v: Tensor) -> tuple[Tensor, Tensor]:
        a, b = v[..., : self.n_first], v[..., self.n_first :]
        return (a, b) if self.parity == 0 else (b, a)

    def merge(self, kept: Tensor, moved: Tensor) -> Tensor:
        return torch.cat([kept, moved] if self.parity == 0 else [moved, kept], -1)


def conditioner_input(kept: Tensor, context: Tensor | None) -> Tensor:
    """The untouched half with the context appended, broadcast to one batch shape."""
    if context is None:
        return kept
    batch = torch.broadcast_shapes(kept.shape[:-1], context.shape[:-1])
    return torch.cat([kept.expand(*batch, kept.shape[-1]), context.expand(*batch, context.shape[-1])], -1)


class AffineCoupling(FlowLayer):
    """RealNVP step: ``x_b = z_b * exp(s(z_a, c)) + t(z_a, c)``, ``x_a = z_a``.

    ``parity`` picks the transformed half (the builder alternates it). Log-scales
    are soft-clamped; the conditioner's zero last layer starts it at the identity.
    Shapes as for every ``FlowLayer``.
    """

    inverse_kind = "exact"
    cheap_direction = "both"

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), context_dim: int = 0, parity: int = 0, scale_bound: float = 5.0):
        super().__init__(dim, context_dim)
        self.mask = CouplingMask(dim, parity)
        self.scale_bound = float(scale_bound)
        self.net = mlp(self.mask.n_kept + context_dim, 2 * self.mask.n_moved, hidden, zero_last=True)

    def _shift_logscale(self, kept, context):
        out = self.net(conditioner_input(kept, context if self.context_dim else None))
        t, s = out.unflatten(-1, (2, -1)).unbind(-2)
        return t, soft_clamp(s, self.scale_bound)

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        za, zb = self.mask.split(z)
        t, s = self._shift_logscale(za, context)
        xb = zb * s.exp() + t
        return self.mask.merge(za.expand(*xb.shape[:-1], -1), xb), s.sum(-1)

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        xa, xb = self.mask.split(x)
        t, s = self._shift_logscale(xa, context)
        zb = (xb - t) * (-s).exp()
        return self.mask.merge(xa.expand(*zb.shape[:-1], -1), zb), s.sum(-1)
