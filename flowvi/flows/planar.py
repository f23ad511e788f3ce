"""Planar flow (Rezende & Mohamed 2015): ``x = z + u_hat tanh(w.z + b)``.

Cheap direction: sampling (z -> x, one pass). The inverse is *numerical*: it
reduces to one increasing scalar equation per point in ``alpha = w.z``, solved
by a vectorised safeguarded Newton iteration (``solve_increasing``, also used by
the Sylvester inverse) to about 1e-12 in float64 and 1e-6 in float32.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import FlowLayer
from .params import ParamNet

_SOFTPLUS_INV_1 = math.log(math.e - 1)  # softplus(_SOFTPLUS_INV_1) = 1, so m(_SOFTPLUS_INV_1) = 0


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance the numerical inverses converge to in ``dtype``."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def solve_increasing(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    lo: Tensor,
    hi: Tensor,
    max_iter: int = 60,
) -> Tensor:
    """Root of an increasing elementwise function bracketed by ``lo <= root <= hi``.

    ``fn(v)`` returns ``(g(v), g'(v))`` elementwise, shape of ``lo``. Each step
    takes Newton's step when it lands inside the current bracket and bisects
    otherwise, so it never leaves the bracket and converges quadratically once
    Newton takes over. Stops when every element moved by less than
    ``tolerance(dtype) * (1 + |v|)`` (relative, so far-out points converge too)
    or after ``max_iter`` steps. Runs without autograd: follow it with one
    differentiable Newton step to get the implicit-function gradient.
    """
    tol = tolerance(lo.dtype)
    with torch.no_grad():
        lo, hi = lo.detach(), hi.detach()
        v = 0.5 * (lo + hi)
        for _ in range(max_iter):
            g, dg = fn(v)
            above = g > 0
            hi = torch.where(above, v, hi)
            lo = torch.where(above, lo, v)
            newton = v - g / dg
            inside = (newton >= lo) & (newton <= hi)  # False for NaN
            nxt = torch.where(inside, newton, 0.5 * (lo + hi))
            done = bool(((nxt - v).abs() <= tol * (1 + v.abs())).all())
            v = nxt
            if done:
                break
    return v


class Planar(FlowLayer):
    """One planar step ``x = z + u_hat tanh(w.z + b)`` on ``R^dim``.

    ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` with ``m(a) = -1 + softplus(a)``
    (the paper's Appendix A, and Pyro's convention) makes ``w.u_hat = m(w.u) > -1``,
    so ``1 + w.u_hat tanh'(.) > 0``: the map is invertible for any raw ``u, w``.
    It starts near the identity with ``|w| = 1`` and ``w.u = softplus^{-1}(1)``,
    where ``m = 0`` and ``u_hat`` is a small vector nearly orthogonal to ``w``.

    With ``context_dim > 0`` a hypernetwork emits ``(u, w, b)`` per context row
    (the amortised planar VAE). Shapes: ``z`` ``(*batch, dim)``, context
    ``(*cbatch, context_dim)`` with ``cbatch`` broadcasting to ``batch``; ``x`` is
    ``(*batch, dim)`` and ``ladj`` ``broadcast(batch, cbatch)``.

    The inverse is numerical (a converged scalar root-find per point, see
    ``solve_increasing``); its gradient is the implicit-function one.
    """

    inverse_kind = "numerical"
    cheap_direction = "sample"

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), init_scale: float = 0.01):
        super().__init__(dim, context_dim)
        w = torch.randn(dim)
        w = w / w.norm().clamp_min(1e-6)
        u = _SOFTPLUS_INV_1 * w + init_scale * torch.randn(dim) / math.sqrt(dim)
        self.params = ParamNet({"u": u, "w": w, "b": torch.zeros(())}, context_dim, hidden)

    def _vectors(self, context):
        u, w, b = self.params(context)
        wu = (w * u).sum(-1, keepdim=True)
        sp = F.softplus(wu)
        # at w = 0 the map is a translation whatever u is; the clamp only avoids 0/0 there
        u_hat = u + (sp - 1 - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)
        return u_hat, w, b, sp.squeeze(-1)

    def vectors(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(u_hat, w, b)``: shapes ``(*cbatch, dim)``, ``(*cbatch, dim)``, ``cbatch``."""
        return self._vectors(context)[:3]

    @staticmethod
    def _slope(t: Tensor, sp: Tensor) -> Tensor:
        # 1 + (w.u_hat) tanh' with w.u_hat = softplus(w.u) - 1, written as a sum of non-negative
        # terms: it stays positive even where w.u_hat rounds to -1; the floor on softplus only
        # matters for w.u < -700, where the map is singular in floating point anyway
        t2 = t * t
        return t2 + sp.clamp_min(torch.finfo(sp.dtype).tiny) * (1 - t2)

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, context)
        u_hat, w, b, sp = self._vectors(context)
        t = torch.tanh((w * z).sum(-1) + b)
        x = z + u_hat * t.unsqueeze(-1)
        return x, torch.log(self._slope(t, sp))

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Numerical inverse: solve ``w.x = alpha + (w.u_hat) tanh(alpha + b)`` for ``alpha = w.z``."""
        self._check(x, context)
        u_hat, w, b, sp = self._vectors(context)
        wx = (w * x).sum(-1)
        sp, b = sp.expand_as(wx), b.expand_as(wx)
        wu = sp - 1

        def g(alpha):
            t = torch.tanh(alpha + b)
            return alpha + wu * t - wx, self._slope(t, sp)

        # |tanh| <= 1 puts the root within |w.u_hat| of w.x
        alpha = solve_increasing(g, wx - wu.abs(), wx + wu.abs())
        value, slope = g(alpha)
        alpha = alpha - value / slope  # differentiable polish: the implicit-function gradient
        t = torch.tanh(alpha + b)
        return x - u_hat * t.unsqueeze(-1), torch.log(self._slope(t, sp))
