"""Sylvester flows (van den Berg et al. 2018): ``x = z + Q R tanh(R~ Q^T z + b)``.

``Q`` (dim x M) has orthonormal columns; ``R`` and ``R~`` are M x M upper
triangular with diagonals ``tanh(.)``, so ``r_ii r~_ii > -1 = -1/sup tanh'`` and
the map is invertible, with ``log|det J| = sum_i log(1 + r_ii r~_ii tanh'(.)_i)``.
Three ways to make Q:

* ``"orthogonal"``: a free ``dim x M`` matrix made orthonormal by the iteration
  ``Q <- Q (I + (I - Q^T Q) / 2)`` (``orthogonalize``, the paper's choice), or by a
  QR decomposition (``ortho="qr"``: one LAPACK call, 4-5x cheaper forward +
  backward when every data point has its own Q);
* ``"householder"``: a product of ``num_householder`` reflections (M = dim);
* ``"triangular"``: the identity, or the reversal permutation with ``flip=True``.

Cheap direction: sampling. The inverse is *numerical*: with ``u = Q^T z`` the
equation ``Q^T x = u + R tanh(R~ u + b)`` is triangular, so it is solved by
back-substitution, one bracketed scalar root-find per coordinate (M in sequence).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import FlowLayer, broadcast_shapes
from .params import ParamNet
from .planar import solve_increasing, tolerance

KINDS = ("orthogonal", "householder", "triangular")
ORTHO = ("bjorck", "qr")


def orthogonalize(Q: Tensor, max_iter: int = 50) -> Tensor:
    """Orthonormalise the columns of ``Q`` (*, D, M), M <= D, full column rank.

    Iterates ``Q <- Q (I + (I - Q^T Q)/2)`` (Bjorck & Bowie; van den Berg et al.),
    which maps each singular value ``s -> s (3 - s^2)/2`` and converges to 1 from
    any ``s`` in ``(0, 1]``. Dividing by ``sqrt(max row sum |Q^T Q|) >= s_max``
    first puts every singular value there, and is nearly 1 for the nearly
    orthonormal matrices seen in training, which then need only a few steps.
    Stops when ``|Q^T Q - I| <= tolerance(dtype)/10`` or stalls at rounding level.
    """
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device)
    gram = Q.transpose(-1, -2) @ Q
    bound = gram.abs().sum(-1).amax(-1)[..., None, None].clamp_min(torch.finfo(Q.dtype).tiny)
    Q, gram = Q * bound.rsqrt(), gram / bound
    tol, err = 0.1 * tolerance(Q.dtype), float("inf")
    for _ in range(max_iter):
        gap = eye - gram
        prev, err = err, float(gap.detach().abs().max())
        # near convergence the error squares each step; when it stops falling, rounding rules
        if err <= tol or (err < 1e-3 and err > 0.5 * prev):
            break
        Q = Q + 0.5 * (Q @ gap)
        gram = Q.transpose(-1, -2) @ Q
    if err > 1e-3:
        warnings.warn(
            f"orthogonalize did not converge (|Q^T Q - I| = {err:.2g}): Q is (nearly) rank deficient", RuntimeWarning
        )
    return Q


def _log_cosh(v: Tensor) -> Tensor:
    a = v.abs()
    return a + F.softplus(-2 * a) - math.log(2)


def _vecmat(v: Tensor, A: Tensor) -> Tensor:
    """Row vectors times matrices, broadcasting the batch dims of both (``v @ A``)."""
    return v @ A if A.dim() == 2 else (v.unsqueeze(-2) @ A).squeeze(-2)


class _Reflections:
    """``Q = H_1 H_2 ... H_K`` with ``H_k = I - 2 v_k v_k^T / |v_k|^2`` (``v`` (*, K, D)), applied
    to row vectors without forming Q."""

    def __init__(self, v: Tensor):
        self.v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _reflect(self, x: Tensor, k: int) -> Tensor:
        vk = self.v[..., k, :]
        return x - 2 * (x * vk).sum(-1, keepdim=True) * vk

    def transpose_apply(self, x: Tensor) -> Tensor:
        """``Q^T x = H_K ... H_1 x``."""
        for k in range(self.v.shape[-2]):
            x = self._reflect(x, k)
        return x

    def apply(self, y: Tensor) -> Tensor:
        """``Q y = H_1 ... H_K y``."""
        for k in range(self.v.shape[-2] - 1, -1, -1):
            y = self._reflect(y, k)
        return y


def _gather_index(M: int) -> Tensor:
    """R's M*M entries as positions in ``[strict upper (M(M-1)/2), diagonal (M), 0]``: building R
    is then one gather (index_select), 2-3x faster forward + backward than scattering into zeros."""
    n_upper = M * (M - 1) // 2
    where = torch.full((M, M), n_upper + M, dtype=torch.long)
    upper = torch.triu_indices(M, M, 1)
    where[upper[0], upper[1]] = torch.arange(n_upper)
    where[torch.arange(M), torch.arange(M)] = n_upper + torch.arange(M)
    return where.reshape(-1)


class Sylvester(FlowLayer):
    """One Sylvester step ``x = z + Q R tanh(R~ Q^T z + b)`` on ``R^dim``.

    Args:
        dim: event size D.
        kind: ``"orthogonal"``, ``"householder"`` or ``"triangular"`` (module doc).
        m: M, the number of columns of Q, for ``"orthogonal"`` (default ``dim``);
            the other kinds have M = dim.
        num_householder: reflections for ``"householder"`` (default ``min(dim, 8)``).
        flip: for ``"triangular"``, use the reversal permutation as Q.
        context_dim, hidden: with ``context_dim > 0`` a hypernetwork emits every
            parameter per context row (the amortised Sylvester VAE).
        ortho: for ``"orthogonal"``, how the free matrix becomes orthonormal:
            ``"bjorck"`` (the iteration of van den Berg et al.: Q is the polar factor,
            the nearest orthonormal matrix) or ``"qr"`` (Q of its QR decomposition,
            Gram-Schmidt order). The same family of maps; QR is much cheaper per point.

    Shapes: ``z`` ``(*batch, dim)``, context ``(*cbatch, context_dim)`` with
    ``cbatch`` broadcasting to ``batch``; ``x`` is ``(*batch, dim)`` and ``ladj``
    ``broadcast(batch, cbatch)``. Starts near the identity: ``R`` about
    ``init_scale``, ``R~`` and ``b`` at unit scale (see ``__init__`` for why).
    The inverse is numerical (module doc).
    """

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
        ortho: str = "bjorck",
    ):
        super().__init__(dim, context_dim)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if ortho not in ORTHO:
            raise ValueError(f"ortho must be one of {ORTHO}, got {ortho!r}")
        self.ortho = ortho
        if m is not None and kind != "orthogonal" and int(m) != dim:
            raise ValueError(f"m sets the columns of Q only for kind='orthogonal'; {kind!r} has m = dim = {dim}")
        M = dim if m is None else int(m)
        if not 1 <= M <= dim:
            raise ValueError(f"m must be in [1, dim={dim}], got {m!r}")
        self.kind, self.m, self.flip = kind, M, bool(flip) and kind == "triangular"
        n_upper = M * (M - 1) // 2  # only the strict upper triangles are parameters
        # Near the identity through a small *output* factor R, with the hidden units
        # h = tanh(R~ Q^T z + b) at unit scale and random offsets. The reverse (R~ ~ 0,
        # b = 0, as in the paper's code) is a saddle for VI: every unit sits in tanh's
        # linear range, so first-order gradients only see a linear map, which the affine
        # layers already fit, and the bend a banana needs never starts (KL stayed at the
        # Gaussian's 0.57 on the banana, see docs/benchmarks).
        init = {
            "r": init_scale * torch.randn(n_upper) / math.sqrt(M),
            "r_tilde": torch.randn(n_upper) / math.sqrt(M),
            "diag": init_scale * torch.randn(M),
            "diag_tilde": torch.randn(M),
            "b": torch.randn(M),
        }
        if kind == "orthogonal":
            init["Q"] = torch.linalg.qr(torch.randn(dim, M))[0]
        elif kind == "householder":
            self.num_householder = int(num_householder or min(dim, 8))
            if self.num_householder < 1:
                raise ValueError(f"num_householder must be >= 1, got {num_householder!r}")
            init["v"] = torch.randn(self.num_householder, dim)
        self.params = ParamNet(init, context_dim, hidden)
        self.register_buffer("gather_idx", _gather_index(M), persistent=False)

    def __setstate__(self, state):
        # layers pickled by flowvi <= 0.x sessions before the gather (flowvi.io stores the pickled
        # architecture) have no gather_idx: rebuild it from M
        super().__setstate__(state)
        self.__dict__.setdefault("ortho", "bjorck")  # the only method before ortho= existed
        if "gather_idx" not in self._buffers:
            self._buffers.pop("upper_idx", None)
            self._non_persistent_buffers_set.discard("upper_idx")
            self.register_buffer("gather_idx", _gather_index(self.m), persistent=False)

    def _upper(self, strict: Tensor, diag: Tensor) -> Tensor:
        zero = strict.new_zeros(*strict.shape[:-1], 1)
        flat = torch.cat([strict, torch.tanh(diag), zero], -1).index_select(-1, self.gather_idx)
        return flat.reshape(*strict.shape[:-1], self.m, self.m)

    def _householder(self, v: Tensor) -> Tensor:
        # row i of I Q^T is (Q e_i)^T: apply the reflections to the identity's rows
        eye = torch.eye(self.dim, dtype=v.dtype, device=v.device)
        return _Reflections(v.unsqueeze(-3)).apply(eye).transpose(-1, -2)

    def _parts(self, context, matrix: bool = True):
        """``(Q, R, R~, b, 1 + r_ii r~_ii)``. With ``matrix=False`` a Householder ``Q`` stays a
        ``_Reflections`` (applied to vectors in O(K D) per point, never built as a matrix)."""
        p = dict(zip(self.params.names, self.params(context)))
        Q = None  # triangular: the identity or the reversal, applied by indexing
        if self.kind == "orthogonal":
            Q = orthogonalize(p["Q"]) if self.ortho == "bjorck" else torch.linalg.qr(p["Q"])[0]
        elif self.kind == "householder":
            Q = self._householder(p["v"]) if matrix else _Reflections(p["v"])
        d, dt = p["diag"], p["diag_tilde"]
        # 1 + tanh(d) tanh(dt) = cosh(d + dt) / (cosh d cosh dt), in a form that stays positive
        # where both tanh round to +-1 (|raw| > 9 in float32) and 1 + r_ii r~_ii would cancel to 0
        one_plus_rr = torch.exp(_log_cosh(d + dt) - _log_cosh(d) - _log_cosh(dt))
        return Q, self._upper(p["r"], d), self._upper(p["r_tilde"], dt), p["b"], one_plus_rr

    def factors(self, context: Tensor | None = None) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """``(Q, R, R~, b)``: ``(*cbatch, dim, M)``, ``(*cbatch, M, M)`` twice, ``(*cbatch, M)``.

        ``Q`` is ``None`` for ``"triangular"`` (the identity, or the reversal if ``flip``).
        """
        return self._parts(context)[:4]

    def _to_q(self, v: Tensor, Q: Tensor | None) -> Tensor:
        """``Q^T v`` for row vectors ``v`` (*, D) -> (*, M)."""
        if Q is None:
            return v.flip(-1) if self.flip else v
        if isinstance(Q, _Reflections):
            return Q.transpose_apply(v)
        return _vecmat(v, Q)

    def _from_q(self, y: Tensor, Q: Tensor | None) -> Tensor:
        """``Q y`` for row vectors ``y`` (*, M) -> (*, D)."""
        if Q is None:
            return y.flip(-1) if self.flip else y
        if isinstance(Q, _Reflections):
            return Q.apply(y)
        return _vecmat(y, Q.transpose(-1, -2))

    @staticmethod
    def _slope(h: Tensor, one_plus_rr: Tensor) -> Tensor:
        # 1 + r_ii r~_ii tanh' as a sum of non-negative terms (positive to the last bit)
        h2 = h * h
        return h2 + one_plus_rr * (1 - h2)

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, context)
        if context is not None:
            # one parameter set per point (amortised): apply Q, R~, R to the vectors, O(D M) per
            # point; folding Q into the factors would cost a D x M x M product per point
            Q, R, Rt, b, one_plus_rr = self._parts(context, matrix=False)
            h = torch.tanh(_vecmat(self._to_q(z, Q), Rt.transpose(-1, -2)) + b)
            x = z + self._from_q(_vecmat(h, R.transpose(-1, -2)), Q)
            return x, torch.log(self._slope(h, one_plus_rr)).sum(-1)
        Q, R, Rt, b, one_plus_rr = self._parts(context)
        # shared parameters: fold Q into the triangular factors once rather than once per point
        w_in, w_out = Rt.transpose(-1, -2), R.transpose(-1, -2)  # row-vector form: a = z Q R~^T + b, x = z + h R^T Q^T
        if Q is not None:
            w_in, w_out = Q @ w_in, w_out @ Q.transpose(-1, -2)
        elif self.flip:
            w_in, w_out = w_in.flip(-2), w_out.flip(-1)
        h = torch.tanh(_vecmat(z, w_in) + b)
        return z + _vecmat(h, w_out), torch.log(self._slope(h, one_plus_rr)).sum(-1)

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Numerical inverse by back-substitution (module doc), differentiable implicitly."""
        self._check(x, context)
        Q, R, Rt, b, one_plus_rr = self._parts(context, matrix=False)
        y = self._to_q(x, Q)
        batch, M = broadcast_shapes(y.shape[:-1], R.shape[:-2]), self.m
        y, R, Rt, b = y.expand(*batch, M), R.expand(*batch, M, M), Rt.expand(*batch, M, M), b.expand(*batch, M)
        one_plus_rr = one_plus_rr.expand(*batch, M)
        # running sums over the solved coordinates k > i: pre[i] = b_i + sum R~_ik u_k, post[i] = sum R_ik h_k
        pre, post = b, torch.zeros_like(y)
        u_cols, h_cols = [], []
        for i in range(M - 1, -1, -1):
            rii, rtii, c, target = R[..., i, i], Rt[..., i, i], pre[..., i], y[..., i] - post[..., i]

            def g(v, rii=rii, rtii=rtii, c=c, target=target, opr=one_plus_rr[..., i]):
                t = torch.tanh(rtii * v + c)
                return v + rii * t - target, self._slope(t, opr)

            # |tanh| <= 1 brackets u_i within |r_ii| of its target
            u = solve_increasing(g, target - rii.abs(), target + rii.abs())
            value, slope = g(u)
            u = u - value / slope  # differentiable polish: the implicit-function gradient
            h = torch.tanh(rtii * u + c)
            pre = pre + Rt[..., :, i] * u.unsqueeze(-1)
            post = post + R[..., :, i] * h.unsqueeze(-1)
            u_cols.append(u)
            h_cols.append(h)
        u, h = torch.stack(u_cols[::-1], -1), torch.stack(h_cols[::-1], -1)
        return x - self._from_q(y - u, Q), torch.log(self._slope(h, one_plus_rr)).sum(-1)

    def extra_repr(self) -> str:
        ortho = f", ortho={self.ortho}" if self.kind == "orthogonal" else ""
        return f"dim={self.dim}, kind={self.kind}, m={self.m}, flip={self.flip}, context_dim={self.context_dim}{ortho}"
