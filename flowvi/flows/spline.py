"""Monotone rational-quadratic splines (Durkan et al. 2019) and the layers on them.

The elementwise spline maps ``[-bound, bound]`` onto itself through ``K`` bins
and is the identity outside (linear tails with unit slope, and unit derivatives
at the outer knots, so the map is C1). Unnormalised parameters per coordinate:
``K`` widths, ``K`` heights and ``K - 1`` interior derivatives (``3K - 1``); all
zero gives exactly the identity.

* ``SplineCoupling``: spline of half the coordinates given the other half
  (cheap and exact both ways);
* ``SplineAutoregressive``: MADE-conditioned splines; ``cheap="sample"`` (IAF
  style, for VI) or ``cheap="density"`` (MAF style); the other direction is
  exact but sequential (``dim`` passes).

Note Pyro's ``Spline`` transforms are also the identity outside ``bound``
(default 3.0; pinned by tests/test_spline.py); flowvi's default bound is 5.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import FlowLayer, inverse_softplus
from .coupling import CouplingMask, conditioner_input
from .made import MADE
from .params import mlp

MIN_WIDTH = MIN_HEIGHT = MIN_DERIVATIVE = 1e-3
_DERIV_SHIFT = inverse_softplus(1 - MIN_DERIVATIVE)  # zero raw parameter -> derivative 1


def _knots(raw: Tensor, bound: float, minimum: float) -> tuple[Tensor, Tensor]:
    """Bin sizes and the K+1 knot positions on [-bound, bound] from raw (..., K)."""
    K = raw.shape[-1]
    size = minimum + (1 - minimum * K) * torch.softmax(raw, -1)
    knots = F.pad(torch.cumsum(size, -1), (1, 0))
    knots = 2 * bound * knots - bound
    knots = torch.cat([knots[..., :1].clamp(-bound, -bound), knots[..., 1:-1], knots[..., -1:].clamp(bound, bound)], -1)
    return knots[..., 1:] - knots[..., :-1], knots


def rq_spline(x: Tensor, params: Tensor, bound: float, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """Elementwise monotone RQ spline.

    Args:
        x: inputs ``(...)``.
        params: unnormalised ``(..., 3K - 1)``: widths, heights, interior derivatives.
        bound: the spline acts on ``[-bound, bound]``; identity outside.
        inverse: evaluate the inverse map.

    Returns: outputs ``(...)`` and the log-derivative of the *forward* map at the
    forward input (so the same sign in both directions).
    """
    K = (params.shape[-1] + 1) // 3
    w, cw = _knots(params[..., :K], bound, MIN_WIDTH)
    h, ch = _knots(params[..., K : 2 * K], bound, MIN_HEIGHT)
    d = MIN_DERIVATIVE + F.softplus(params[..., 2 * K :] + _DERIV_SHIFT)
    one = torch.ones_like(d[..., :1])
    d = torch.cat([one, d, one], -1)
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    knots = ch if inverse else cw
    idx = (torch.searchsorted(knots[..., 1:-1].contiguous(), xc.unsqueeze(-1).contiguous(), right=True))
    take = lambda t: t.gather(-1, idx).squeeze(-1)  # noqa: E731
    xk, wk, yk, hk, dk, dk1 = take(cw[..., :-1]), take(w), take(ch[..., :-1]), take(h), take(d[..., :-1]), take(d[..., 1:])
    sk = hk / wk
    c2 = dk1 + dk - 2 * sk
    if inverse:
        dy = xc - yk
        a = hk * (sk - dk) + dy * c2
        b = hk * dk - dy * c2
        c = -sk * dy
        # the root in [0, 1] in its cancellation-free form
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        xi = xi.clamp(0, 1)
        out = xk + xi * wk
    else:
        xi = ((xc - xk) / wk).clamp(0, 1)
        out = yk + hk * (sk * xi * xi + dk * xi * (1 - xi)) / (sk + c2 * xi * (1 - xi))
    q = xi * (1 - xi)
    deriv = sk * sk * (dk1 * xi * xi + 2 * sk * q + dk * (1 - xi) ** 2) / (sk + c2 * q) ** 2
    return torch.where(inside, out, x), torch.where(inside, deriv.log(), torch.zeros_like(x))


class SplineCoupling(FlowLayer):
    """Neural spline coupling step (half the coordinates through RQ splines whose
    parameters come from an MLP of the other half and the context).
    Shapes as for every ``FlowLayer``."""

    inverse_kind = "exact"
    cheap_direction = "both"

    def __init__(self, dim: int, bins: int = 8, bound: float = 5.0, hidden: Sequence[int] = (64, 64), context_dim: int = 0, parity: int = 0):
        super().__init__(dim, context_dim)
        self.bins, self.bound = int(bins), float(bound)
        self.mask = CouplingMask(dim, parity)
        self.net = mlp(self.mask.n_kept + context_dim, self.mask.n_moved * (3 * self.bins - 1), hidden, zero_last=True)

    def _run(self, v, context, inverse):
        self._check(v, context)
        kept, moved = self.mask.split(v)
        params = self.net(conditioner_input(kept, context if self.context_dim else None))
        params = params.unflatten(-1, (self.mask.n_moved, 3 * self.bins - 1))
        out, logd = rq_spline(moved.expand(*params.shape[:-1]), params, self.bound, inverse)
        return self.mask.merge(kept.expand(*out.shape[:-1], -1), out), logd.sum(-1)

    def forward_and_log_det(self, z, context=None):
        return self._run(z, context, False)

    def inverse_and_log_det(self, x, context=None):
        return self._run(x, context, True)


class SplineAutoregressive(FlowLayer):
    """Autoregressive RQ-spline step on a MADE. ``cheap="sample"``: ``x_i =
    spline(z_i; MADE(z)_i)`` in one pass, sequential inverse; ``cheap="density"``:
    the reverse. Shapes as for every ``FlowLayer``."""

    inverse_kind = "exact"

    def __init__(
        self,
        dim: int,
        bins: int = 8,
        bound: float = 5.0,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        order: Sequence[int] | None = None,
        cheap: str = "sample",
    ):
        super().__init__(dim, context_dim)
        if cheap not in ("sample", "density"):
            raise ValueError(f"cheap must be 'sample' or 'density', got {cheap!r}")
        self.cheap_direction = cheap
        self.bins, self.bound = int(bins), float(bound)
        self.made = MADE(dim, 3 * self.bins - 1, hidden, context_dim, order)

    def _pass(self, source, v, context, inverse):
        out, logd = rq_spline(v, self.made(source, context).transpose(-1, -2), self.bound, inverse)
        return out, logd.sum(-1)

    def _sequential(self, v, context, inverse):
        out = v
        for _ in range(self.dim):  # pass k fixes the k-th variable in the MADE order
            out, ladj = self._pass(out, v, context, inverse)
        return out, ladj

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        if self.cheap_direction == "sample":
            return self._pass(z, z, context, False)
        return self._sequential(z, context, False)

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        if self.cheap_direction == "density":
            return self._pass(x, x, context, True)
        return self._sequential(x, context, True)
