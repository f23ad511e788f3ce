"""Coupling layers (Dinh et al. 2017): half the coordinates pass unchanged and
parameterise an elementwise map of the other half. Cheap and exact both ways.

``CouplingMask`` holds the split; ``AffineCoupling`` is RealNVP; the spline
coupling layer reuses the mask with a different elementwise map.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import FlowLayer, broadcast_shapes, soft_clamp
from .params import mlp


class CouplingMask(nn.Module):
    """Index-parity split: ``parity`` 0 transforms (moves) the even indices given
    the odd ones, ``parity`` 1 the odd indices given the even ones.

    Both halves are strided views (no gather, no index tensors). For ``dim == 1``
    the single coordinate is moved whatever the parity, and nothing is kept.
    ``split(v)`` -> ``(kept, moved)``; ``merge(kept, moved)`` -> ``v`` (the
    halves may differ in batch shape as long as they broadcast).
    """

    def __init__(self, dim: int, parity: int):
        super().__init__()
        self.dim = int(dim)
        self.parity = int(parity) % 2 if dim > 1 else 0
        self.n_moved = (self.dim + 1 - self.parity) // 2 if dim > 1 else 1
        self.n_kept = self.dim - self.n_moved

    def split(self, v: Tensor) -> tuple[Tensor, Tensor]:
        return v[..., 1 - self.parity :: 2], v[..., self.parity :: 2]

    def merge(self, kept: Tensor, moved: Tensor) -> Tensor:
        batch = broadcast_shapes(kept.shape[:-1], moved.shape[:-1])
        kept, moved = kept.expand(*batch, self.n_kept), moved.expand(*batch, self.n_moved)
        if self.n_kept == 0:
            return moved
        if self.n_kept == self.n_moved:  # even dim: one interleaving copy
            pair = (moved, kept) if self.parity == 0 else (kept, moved)
            return torch.stack(pair, -1).flatten(-2)
        out = moved.new_empty(*batch, self.dim)
        out[..., self.parity :: 2] = moved
        out[..., 1 - self.parity :: 2] = kept
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, parity={self.parity}"


def conditioner_input(kept: Tensor, context: Tensor | None) -> Tensor:
    """The untouched half with the context appended, broadcast to one batch shape."""
    if context is None:
        return kept
    batch = broadcast_shapes(kept.shape[:-1], context.shape[:-1])
    return torch.cat([kept.expand(*batch, kept.shape[-1]), context.expand(*batch, context.shape[-1])], -1)


class AffineCoupling(FlowLayer):
    """RealNVP step: ``x_b = z_b * exp(s(z_a, c)) + t(z_a, c)``, ``x_a = z_a``.

    Args:
        dim: event size.
        hidden: hidden sizes of the conditioner MLP ``(z_a, c) -> (t, s)``.
        context_dim: context size (0: unconditional).
        parity: 0 moves the even indices, 1 the odd ones (the builder alternates
            it, so two stacked layers transform every coordinate).
        scale_bound: log-scales ``s`` are soft-clamped to ``(-scale_bound, scale_bound)``.

    Shapes: ``z``/``x`` ``(*batch, dim)``, context ``(*cbatch, context_dim)``;
    log-det ``broadcast(batch, cbatch)``. Both directions are one conditioner
    pass and exact. The conditioner's zero last layer starts it at the identity.
    With ``dim == 1`` there is no half to condition on: the coordinate's ``(t, s)``
    come from the context alone, or without a context are free parameters (a
    learnable elementwise affine map).
    """

    inverse_kind = "exact"
    cheap_direction = "both"

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        parity: int = 0,
        scale_bound: float = 5.0,
    ):
        super().__init__(dim, context_dim)
        self.mask = CouplingMask(dim, parity)
        self.scale_bound = float(scale_bound)
        n_in = self.mask.n_kept + self.context_dim
        if n_in:
            self.net = mlp(n_in, 2 * self.mask.n_moved, hidden, zero_last=True)
        else:  # an MLP of an empty input is a constant: hold the constant directly
            self.net = None
            self.shift_logscale = nn.Parameter(torch.zeros(2 * self.mask.n_moved))

    def _shift_logscale(self, kept: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.net is None:
            out = self.shift_logscale
        else:
            out = self.net(conditioner_input(kept, context if self.context_dim else None))
        t, s = out.unflatten(-1, (2, self.mask.n_moved)).unbind(-2)
        return t, soft_clamp(s, self.scale_bound)

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z -> x in one pass; returns ``(x, log|det J|)``."""
        self._check(z, context)
        za, zb = self.mask.split(z)
        t, s = self._shift_logscale(za, context)
        xb = torch.addcmul(t, zb, s.exp())
        return self.mask.merge(za, xb), s.sum(-1).expand(xb.shape[:-1])

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x -> z in one pass; returns ``(z, log|det J|)`` of the forward map."""
        self._check(x, context)
        xa, xb = self.mask.split(x)
        t, s = self._shift_logscale(xa, context)
        zb = (xb - t) * torch.exp(-s)
        return self.mask.merge(xa, zb), s.sum(-1).expand(zb.shape[:-1])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, parity={self.mask.parity}"
