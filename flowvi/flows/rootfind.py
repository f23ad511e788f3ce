"""Vectorised root-finding for the numerical inverses (planar, Sylvester).

Their inverses reduce to scalar equations g(v) = 0 with g increasing and the root
bracketed (because tanh is bounded), one equation per data point: safeguarded
Newton (a Newton step when it stays inside the bracket, bisection otherwise)
converges quadratically and never leaves the bracket.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance that the numerical inverses reach in ``dtype``."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def solve_increasing(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    lo: Tensor,
    hi: Tensor,
    tol: float | None = None,
    max_iter: int = 100,
) -> Tensor:
    """Root of an increasing elementwise function, bracketed by ``lo <= root <= hi``.

    Args:
        fn: ``v -> (g(v), g'(v))``, elementwise on tensors of the brackets' shape.
        lo, hi: brackets (same shape), with ``g(lo) <= 0 <= g(hi)``.
        tol: stop when no element moves by more than this (default by dtype).
        max_iter: hard cap; bisection alone halves the bracket each step.

    Returns: the roots, shape of ``lo``.
    """
    tol = tolerance(lo.dtype) if tol is None else tol
    lo, hi = lo.clone(), hi.clone()
    v = 0.5 * (lo + hi)
    for _ in range(max_iter):
        g, dg = fn(v)
        positive = g > 0
        hi = torch.where(positive, v, hi)
        lo = torch.where(positive, lo, v)
        newton = v - g / dg
        inside = (newton > lo) & (newton < hi) & torch.isfinite(newton)
        nxt = torch.where(inside, newton, 0.5 * (lo + hi))
        done = bool(((nxt - v).abs() <= tol).all())
        v = nxt
        if done:
            break
    return v


def sylvester_inverse(x: Tensor, Q: Tensor, R: Tensor, R_tilde: Tensor, b: Tensor) -> Tensor:
    """Solve ``x = z + Q R tanh(R~ Q^T z + b)`` for ``z``.

    Shapes: ``x`` (*batch, D); ``Q`` (*, D, M) with orthonormal columns; ``R``,
    ``R_tilde`` (*, M, M) upper triangular with ``R_ii R~_ii > -1``; ``b`` (*, M).
    With ``u = Q^T z`` and ``y = Q^T x`` the equation is ``u = y - R tanh(R~ u + b)``.
    Both matrices are upper triangular, so it is solved by back-substitution from
    ``u_M`` to ``u_1``, each a scalar increasing equation bracketed within
    ``|R_ii|`` (tanh is bounded); then ``z = x - Q (y - u)``.
    """
    y = (x.unsqueeze(-2) @ Q).squeeze(-2)
    M = y.shape[-1]
    batch = torch.broadcast_shapes(y.shape[:-1], R.shape[:-2], b.shape[:-1])
    y = y.expand(*batch, M)
    R, Rt, b = R.expand(*batch, M, M), R_tilde.expand(*batch, M, M), b.expand(*batch, M)
    u_cols: list[Tensor] = [None] * M  # type: ignore[list-item]
    h_cols: list[Tensor] = [None] * M  # type: ignore[list-item]
    for i in range(M - 1, -1, -1):
        later = range(i + 1, M)
        c = b[..., i] + sum((Rt[..., i, k] * u_cols[k] for k in later), torch.zeros_like(b[..., i]))
        s = sum((R[..., i, j] * h_cols[j] for j in later), torch.zeros_like(b[..., i]))
        rii, rtii, target = R[..., i, i], Rt[..., i, i], y[..., i] - s

        def g(v, rii=rii, rtii=rtii, c=c, target=target):
            t = torch.tanh(rtii * v + c)
            return v + rii * t - target, 1 + rii * rtii * (1 - t * t)

        u = solve_increasing(g, target - rii.abs(), target + rii.abs())
        u_cols[i] = u
        h_cols[i] = torch.tanh(rtii * u + c)
    u = torch.stack(u_cols, -1)
    return x - ((y - u).unsqueeze(-2) @ Q.transpose(-1, -2)).squeeze(-2)
