"""Sylvester flows (van den Berg et al. 2018): ``x = z + Q R tanh(R~ Q^T z + b)``.

``Q`` (dim x M) has orthonormal columns; ``R``, ``R~`` are M x M upper
triangular with diagonals ``tanh(.)`` so ``r_ii r~_ii > -1`` (invertible), and
``log|det J| = sum_i log(1 + r_ii r~_ii tanh'(.)_i)``.  Three ways to make Q:

* ``"orthogonal"``: free ``dim x M`` matrix made orthonormal by the iterative
  procedure ``Q <- Q (I + (I - Q^T Q) / 2)`` (run to convergence);
* ``"householder"``: product of ``num_householder`` reflections (M = dim);
* ``"triangular"``: identity, or the reversal permutation with ``flip=True``.

Cheap direction: sampling. Inverse: *numerical*, by back-substitution through
the triangular system, one bracketed scalar root per coordinate
(``rootfind.sylvester_inverse``): M sequential scalar solves.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import FlowLayer
from .params import ParamNet
from .rootfind import sylvester_inverse, tolerance

KINDS = ("orthogonal", "householder", "triangular")


def orthogonalize(Q: Tensor, max_iter: int = 100) -> Tensor:
    """Iterate ``Q <- Q (I + (I - Q^T Q)/2)`` until ``Q^T Q = I`` to the dtype's tolerance.

    ``Q`` (*, D, M) is first scaled to unit RMS singular value, inside the
    iteration's region of convergence for the near-orthogonal matrices it sees.
    """
    M = Q.shape[-1]
    eye = torch.eye(M, dtype=Q.dtype, device=Q.device)
    Q = Q * (M**0.5 / Q.square().sum((-2, -1), keepdim=True).sqrt().clamp_min(1e-12))
    tol = 10 * tolerance(Q.dtype)
    for _ in range(max_iter):
        gap = eye - Q.transpose(-1, -2) @ Q
        if bool(gap.abs().max() < tol):
            break
        Q = Q + 0.5 * (Q @ gap)
    return Q


class Sylvester(FlowLayer):
    """One Sylvester step; a context makes every parameter per-row (the Sylvester-VAE
    amortisation). Shapes as for every ``FlowLayer``; ``m`` is M for ``"orthogonal"``
    (default ``dim``)."""

    inverse_kind = "numerical"
    cheap_direction = "sample"

    def __init__(
        self,
        dim: int,
        kind: str = "orthogonal",
        m: int | None = None,
        num_householder: int | None = None,
        flip: bool = False,
        context_dim: int = 0,
        hidden: Sequence[int] = (64, 64),
        init_scale: float = 0.01,
    ):
        super().__init__(dim, context_dim)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.flip = kind, bool(flip)
        M = self.m = int(m or dim) if kind == "orthogonal" else dim
        if not 1 <= M <= dim:
            raise ValueError(f"m must be in [1, dim={dim}], got {M}")
        g = torch.Generator().manual_seed(dim + 7 * M + 13 * context_dim)
        init = {
            "R": init_scale * torch.randn(M, M, generator=g),
            "R_tilde": init_scale * torch.randn(M, M, generator=g),
            "diag": torch.full((M,), 0.1) + init_scale * torch.randn(M, generator=g),
            "diag_tilde": init_scale * torch.randn(M, generator=g),
            "b": torch.zeros(M),
        }
        if kind == "orthogonal":
            init["Q"] = torch.linalg.qr(torch.randn(dim, M, generator=g))[0]
        elif kind == "householder":
            self.num_householder = int(num_householder or min(dim, 8))
            init["v"] = torch.randn(self.num_householder, dim, generator=g)
        self.params = ParamNet(init, context_dim, hidden)
        self.register_buffer("triu", torch.triu(torch.ones(M, M), 1))
        perm = torch.eye(dim).flip(-1) if self.flip else torch.eye(dim)
        self.register_buffer("perm", perm)

    def _Q(self, p: dict) -> Tensor:
        if self.kind == "orthogonal":
            return orthogonalize(p["Q"])
        if self.kind == "triangular":
            return self.perm
        Q = self.perm.expand(*p["v"].shape[:-2], self.dim, self.dim)
        for k in range(self.num_householder):
            v = p["v"][..., k, :]
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            Q = Q - 2 * (Q @ v.unsqueeze(-1)) @ v.unsqueeze(-2)
        return Q

    def _factors(self, context):
        p = dict(zip(self.params.names, self.params(context)))
        R = p["R"] * self.triu + torch.diag_embed(torch.tanh(p["diag"]))
        Rt = p["R_tilde"] * self.triu + torch.diag_embed(torch.tanh(p["diag_tilde"]))
        return self._Q(p), R, Rt, p["b"]

    @staticmethod
    def _vecmat(v: Tensor, A: Tensor) -> Tensor:
        """Row vectors times matrices, broadcasting batch dims of both (``v @ A``)."""
        return v @ A if A.dim() == 2 else (v.unsqueeze(-2) @ A).squeeze(-2)

    def _map(self, z, Q, R, Rt, b):
        tr = lambda A: A.transpose(-1, -2)  # noqa: E731
        a = self._vecmat(self._vecmat(z, Q), tr(Rt)) + b
        h = torch.tanh(a)
        x = z + self._vecmat(self._vecmat(h, tr(R)), tr(Q))
        diag = torch.diagonal(R, dim1=-2, dim2=-1) * torch.diagonal(Rt, dim1=-2, dim2=-1)
        return x, torch.log1p(diag * (1 - h * h)).sum(-1)

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        return self._map(z, *self._factors(context))

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        Q, R, Rt, b = self._factors(context)
        z = sylvester_inverse(x, Q, R, Rt, b)
        return z, self._map(z, Q, R, Rt, b)[1]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kind={self.kind}, m={self.m}, context_dim={self.context_dim}"
