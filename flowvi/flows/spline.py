"""Monotone rational-quadratic splines (Durkan et al. 2019) and the layers on them.

The elementwise spline maps ``[-bound, bound]`` onto itself through ``K`` bins
and is the identity outside (linear tails of slope 1; the derivatives at the two
outer knots are fixed to 1, so the map is C1 everywhere). Unnormalised
parameters per coordinate, ``3K - 1`` of them: ``K`` widths, ``K`` heights
(softmax, each bin at least ``MIN_WIDTH`` / ``MIN_HEIGHT`` of the interval) and
``K - 1`` interior derivatives (``MIN_DERIVATIVE + softplus``, shifted so that a
zero parameter gives derivative 1). All-zero parameters give the identity.

* ``SplineCoupling``: spline of half the coordinates given the other half
  (one pass and exact both ways);
* ``SplineAutoregressive``: MADE-conditioned splines; ``cheap="sample"`` (IAF
  style, for VI) or ``cheap="density"`` (MAF style); the other direction is
  exact but sequential (``dim`` partial MADE passes).

Pyro's ``Spline`` transforms are also the identity outside their bound (default
3.0; pinned by tests/test_spline.py); flowvi's default bound is 5. Pyro fixes the
outer-knot derivatives to ``1 - min_derivative`` rather than 1, so its splines
have a small kink at ``±bound``; flowvi's do not.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .autoregressive import SequentialPlan
from .base import FlowLayer, broadcast_shapes, inverse_softplus
from .coupling import CouplingMask, conditioner_input
from .made import MADE
from .params import mlp

MIN_WIDTH = MIN_HEIGHT = MIN_DERIVATIVE = 1e-3
# softplus(0 + _DERIV_SHIFT) + MIN_DERIVATIVE == 1: zero parameters give unit slopes.
_DERIV_SHIFT = inverse_softplus(1 - MIN_DERIVATIVE)
# The spline's constants as 0-dim float64 tensors: an op with a Python number wraps it in
# a fresh tensor every call, which costs as much as the op itself at these sizes, and a
# 0-dim operand takes the other operand's dtype (float32 stays float32) and device.
_DERIV_SHIFT_T = torch.tensor(_DERIV_SHIFT, dtype=torch.float64)
_MIN_DERIV_T = torch.tensor(MIN_DERIVATIVE, dtype=torch.float64)
# neighbours of a bin index (its left and right interior knots), laid out along param_dim
_PAIR = {-1: torch.tensor([-1, 0]), -2: torch.tensor([[-1], [0]])}


def n_params(bins: int) -> int:
    """Unnormalised parameters per coordinate for ``bins`` bins: ``3 * bins - 1``."""
    return 3 * int(bins) - 1


def _interior_knots(p: Tensor, bins: int, bound: float, ax: int) -> tuple[Tensor, Tensor]:
    """Interior knots and their derivatives from unnormalised parameters.

    ``p`` holds the ``3K - 1`` parameters along axis ``ax`` (-1 or -2). Returns
    ``knots`` ``(..., 2, K - 1[, n])`` (x-positions then y-positions of knots
    ``1..K-1``, along ``ax``) and ``deriv`` ``(..., K - 1[, n])``. The end knots,
    ``±bound`` with derivative 1, are implicit: no padded table is materialised.
    """
    K = bins
    # Widths and heights are adjacent, so one softmax and one cumsum serve both.
    # split rather than narrow: its backward is one cat, not a zero-fill per piece.
    raw_wh, raw_d = p.split([2 * K, K - 1], ax)
    wh = torch.softmax(raw_wh.unflatten(ax, (2, K)), ax)
    # Knot j (1 <= j < K) = -B + 2B * (MIN * j + (1 - MIN * K) * cumsum_j): the
    # affine part is folded into one add against a constant offset.
    offset = torch.tensor([-bound + 2 * bound * MIN_WIDTH * j for j in range(1, K)], dtype=p.dtype, device=p.device)
    if ax == -2:
        offset = offset[:, None]
    knots = torch.add(offset, wh.split([K - 1, 1], ax)[0].cumsum(ax), alpha=2 * bound * (1 - MIN_WIDTH * K))
    deriv = torch.add(F.softplus(torch.add(raw_d, _DERIV_SHIFT_T)), _MIN_DERIV_T)
    return knots, deriv


def rq_spline(x: Tensor, params: Tensor, bound: float, inverse: bool = False, param_dim: int = -1) -> tuple[Tensor, Tensor]:
    """Elementwise monotone rational-quadratic spline, identity outside ``[-bound, bound]``.

    Args:
        x: inputs. With ``param_dim=-1``, shape ``(...)`` and ``params``
            ``(..., 3K - 1)``; with ``param_dim=-2`` (parameter-major, as MADE
            gives), ``x`` ``(..., n)`` and ``params`` ``(..., 3K - 1, n)``. Batch
            dimensions broadcast.
        params: unnormalised widths (``K``), heights (``K``), interior
            derivatives (``K - 1``), in that order along ``param_dim``.
        bound: half-width of the spline's interval.
        inverse: evaluate the inverse map (solving the bin's quadratic).

    Returns:
        ``(y, log_deriv)``, both of the broadcast shape: the map's value and
        ``log f'`` of the *forward* map at the forward input (the same sign in
        both directions, as the layer protocol wants).
    """
    if param_dim not in (-1, -2):
        raise ValueError(f"param_dim must be -1 or -2, got {param_dim}")
    ax = param_dim
    K = (params.shape[ax] + 1) // 3
    if 3 * K - 1 != params.shape[ax] or K < 1:
        raise ValueError(f"spline parameters must number 3K-1 along dim {ax}, got {params.shape[ax]}")
    bound = float(bound)
    shape = broadcast_shapes(x.shape, params.select(ax, 0).shape)
    if K == 1:  # one bin with unit end slopes is the identity
        return x.expand(shape), x.new_zeros(shape)
    knots, deriv = _interior_knots(params, K, bound, ax)  # on the parameters' own batch only
    xb = x.unsqueeze(ax)  # (..., 1[, n]): lines x up with the knot axis
    xc = xb.clamp(-bound, bound)  # outside points take the (finite) end-bin values, then are replaced
    # Bin index = number of interior knots at or below the point (points on a knot
    # start the next bin). A broadcast comparison beats searchsorted at these K.
    idx = (xc >= knots.select(ax - 1, 1 if inverse else 0)).sum(ax, keepdim=True)
    # Gather the bin's interior ends (clamped), then put the implicit end knots in
    # with cheap elementwise selects on the small per-point tensors.
    wanted = idx + _PAIR[ax].to(idx.device)  # .to is free on the CPU
    pair = wanted.clamp(0, K - 2)
    lead, tail = (shape, ()) if ax == -1 else (shape[:-1], shape[-1:])  # tail: the n axis
    gk = knots.expand(*lead, 2, K - 1, *tail).gather(ax, pair.unsqueeze(ax - 1).expand(*lead, 2, 2, *tail))
    gd = deriv.expand(*lead, K - 1, *tail).gather(ax, pair.expand(*lead, 2, *tail))
    (x0, x1), (y0, y1) = (r.unbind(ax) for r in gk.unbind(ax - 1))
    d0, d1 = gd.unbind(ax)
    first, last = (pair != wanted).unbind(ax)  # clamped: the end knot is implicit (first / last bin)
    # masked_fill, not where(mask, scalar, t): where wraps the scalar in a tensor and
    # type-promotes it, forward and backward (the no-grad call took ~12 % longer)
    x0, y0, d0 = x0.masked_fill(first, -bound), y0.masked_fill(first, -bound), d0.masked_fill(first, 1.0)
    x1, y1, d1 = x1.masked_fill(last, bound), y1.masked_fill(last, bound), d1.masked_fill(last, 1.0)
    outside = (xc != xb).squeeze(ax)  # NaN counts as outside: it passes through unchanged
    xc = xc.squeeze(ax)
    w, h = x1 - x0, y1 - y0
    s = h / w
    s2 = s + s  # no Python-number operands below: each would cost a tensor allocation
    c2 = d0 + d1 - s2
    if inverse:
        # Solve for xi in Durkan et al. eq. (6)-(8). With t = (y - y_k) / h_k and
        # u = d_k (1 - t) - d_{k+1} t, the discriminant b^2 - 4ac is u^2 + X with
        # X = 4 s^2 t (1 - t) >= 0, and the root in [0, 1] is 2st / (2st + u + sqrt(u^2 + X)).
        # Computing u + sqrt(u^2 + X) as X / (|u| + sqrt(...)) when u < 0 leaves no
        # subtraction of nearly equal numbers anywhere (b^2 - 4ac itself cancels
        # badly in float32 when s >> d), and both branches stay finite for autograd.
        t, omt = (xc - y0) / h, (y1 - xc) / h
        u = d0 * omt - d1 * t
        st2 = s2 * t
        X = st2 * s2 * omt
        p = u.abs() + torch.addcmul(X, u, u).clamp_min(0).sqrt()
        rest = torch.where(torch.signbit(u), X / p, p)
        total = st2 + rest
        xi, one_m = st2 / total, rest / total
        out = torch.addcmul(x0, xi, w)
        q = xi * one_m
        den = torch.addcmul(s, c2, q)
    else:
        xi, one_m = (xc - x0) / w, (x1 - xc) / w
        q = xi * one_m
        den = torch.addcmul(s, c2, q)
        out = y0 + h * (s * xi * xi + d0 * q) / den
    r = s / den  # squared after dividing: den^2 alone can overflow float32
    deriv = r * r * (d1 * xi * xi + s2 * q + d0 * one_m * one_m)
    return torch.where(outside, x, out), deriv.log().masked_fill(outside, 0.0)


class SplineCoupling(FlowLayer):
    """Neural spline coupling step (Durkan et al. 2019).

    ``x_b = spline(z_b; params(z_a, c))``, ``x_a = z_a``: the coordinates moved
    (``b``) pass through elementwise RQ splines whose ``3 * bins - 1`` parameters
    each come from an MLP of the kept half ``a`` and the context.

    Args:
        dim: event size.
        bins: spline bins ``K``.
        bound: the splines act on ``[-bound, bound]``; identity (slope 1) outside.
        hidden: hidden sizes of the conditioner MLP.
        context_dim: context size (0: unconditional).
        parity: 0 moves the even indices given the odd ones, 1 the odd given the
            even (the builder alternates it).

    Shapes: ``z``/``x`` ``(*batch, dim)``, context ``(*cbatch, context_dim)``
    with ``cbatch`` broadcasting against ``batch``; log-det ``broadcast(batch,
    cbatch)``. Both directions are one conditioner pass and exact; the zero last
    layer starts the layer at the identity. With ``dim == 1`` the spline's
    parameters come from the context alone, or are free parameters.
    """

    inverse_kind = "exact"
    cheap_direction = "both"

    def __init__(
        self,
        dim: int,
        bins: int = 8,
        bound: float = 5.0,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        parity: int = 0,
    ):
        super().__init__(dim, context_dim)
        if int(bins) < 1 or float(bound) <= 0:
            raise ValueError(f"need bins >= 1 and bound > 0, got bins={bins!r}, bound={bound!r}")
        self.bins, self.bound = int(bins), float(bound)
        self.mask = CouplingMask(dim, parity)
        n_in, n_out = self.mask.n_kept + self.context_dim, n_params(self.bins) * self.mask.n_moved
        if n_in:
            self.net = mlp(n_in, n_out, hidden, zero_last=True)
        else:  # nothing to condition on: the parameters are constants, held directly
            self.net = None
            self.spline_params = nn.Parameter(torch.zeros(n_params(self.bins), self.mask.n_moved))

    def _params(self, kept: Tensor, context: Tensor | None) -> Tensor:
        """Parameter-major spline parameters ``(*B, 3K - 1, n_moved)``."""
        if self.net is None:
            return self.spline_params
        if self.mask.n_kept == 0:
            return self.net(context).unflatten(-1, (n_params(self.bins), 1))
        out = self.net(conditioner_input(kept, context if self.context_dim else None))
        return out.unflatten(-1, (n_params(self.bins), self.mask.n_moved))

    def _run(self, v: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(v, context)
        kept, moved = self.mask.split(v)
        out, logd = rq_spline(moved, self._params(kept, context), self.bound, inverse, param_dim=-2)
        return self.mask.merge(kept, out), logd.sum(-1)

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z -> x in one pass; returns ``(x, log|det J|)``."""
        return self._run(z, context, False)

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x -> z in one pass; returns ``(z, log|det J|)`` of the forward map."""
        return self._run(x, context, True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, bins={self.bins}, bound={self.bound}, parity={self.mask.parity}"


class SplineAutoregressive(FlowLayer):
    """Autoregressive RQ-spline step on a MADE (Durkan et al. 2019).

    ``x_i = spline(z_i; params_i)`` where ``params_i`` (``3 * bins - 1`` per
    coordinate) depend on the coordinates before ``i`` in the order.

    Args:
        dim: event size.
        bins: spline bins ``K``.
        bound: the splines act on ``[-bound, bound]``; identity (slope 1) outside.
        hidden: MADE hidden sizes (>= ``dim`` each for full expressiveness).
        context_dim: context size (0: unconditional); it feeds every MADE hidden unit.
        order: ``order[i]`` is the rank of variable ``i`` (default ``0..dim-1``).
        cheap: ``"sample"`` (IAF style, the default for VI: ``params = MADE(z, c)``,
            z -> x in one pass) or ``"density"`` (MAF style: ``params = MADE(x, c)``,
            x -> z in one pass). The other direction is exact and sequential
            (``dim`` partial MADE passes).

    Shapes: ``z``/``x`` ``(*batch, dim)``, context ``(*cbatch, context_dim)``;
    log-det ``broadcast(batch, cbatch)``. The MADE's zero last layer starts the
    layer at the identity.
    """

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
            raise ValueError(f"cheap must be 'sample' (IAF style) or 'density' (MAF style), got {cheap!r}")
        if int(bins) < 1 or float(bound) <= 0:
            raise ValueError(f"need bins >= 1 and bound > 0, got bins={bins!r}, bound={bound!r}")
        self.cheap_direction = cheap
        self.bins, self.bound = int(bins), float(bound)
        self.made = MADE(dim, n_params(self.bins), hidden, context_dim, order)
        self.plan = SequentialPlan(self.made)

    def _one_pass(self, v: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        out, logd = rq_spline(v, self.made(v, context), self.bound, inverse, param_dim=-2)
        return out, logd.sum(-1)

    # Sequential steps: v_i (N,) and params (N, 3K-1) as SequentialPlan hands them.
    def _step_forward(self, z_i: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rq_spline(z_i, params.t(), self.bound, False, param_dim=-2)

    def _step_inverse(self, x_i: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rq_spline(x_i, params.t(), self.bound, True, param_dim=-2)

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z -> x: one MADE pass (``cheap="sample"``) or sequential (``"density"``)."""
        self._check(z, context)
        if self.cheap_direction == "sample":
            return self._one_pass(z, context, False)
        return self.plan(self.made, z, context, self._step_forward)

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x -> z: one MADE pass (``"density"``) or sequential (``"sample"``); forward's log-det."""
        self._check(x, context)
        if self.cheap_direction == "density":
            return self._one_pass(x, context, True)
        return self.plan(self.made, x, context, self._step_inverse)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, bins={self.bins}, bound={self.bound}, cheap={self.cheap_direction!r}"
