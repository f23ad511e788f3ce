"""Linear layers placed between flow steps: elementwise affine, permutations,
LU-parameterised linear maps and ActNorm. All are cheap in both directions."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import FlowLayer, broadcast_shapes, soft_clamp
from .params import ParamNet


class ElementwiseAffine(FlowLayer):
    """Diagonal affine map ``x = loc + exp(log_scale) * z``.

    With a context, ``loc`` and ``log_scale`` come from a hypernetwork: this is
    the amortised diagonal Gaussian of a VAE encoder when placed first.
    ``log_scale`` is soft-clamped to ``(-scale_bound, scale_bound)``.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), scale_bound: float = 8.0):
        super().__init__(dim, context_dim)
        self.scale_bound = float(scale_bound)
        self.params = ParamNet({"loc": torch.zeros(dim), "log_scale": torch.zeros(dim)}, context_dim, hidden)

    @torch.no_grad()
    def set_loc_scale(self, loc: Tensor, scale: Tensor) -> None:
        """Set an unconditional layer to ``x = loc + scale * z`` (e.g. from a Gaussian fit)."""
        if self.context_dim:
            raise ValueError("set_loc_scale is for unconditional layers; a conditional one learns them from context")
        s = torch.as_tensor(scale).log().clamp(-0.99 * self.scale_bound, 0.99 * self.scale_bound)
        self.params.free[0].copy_(torch.as_tensor(loc))
        self.params.free[1].copy_(self.scale_bound * torch.atanh(s / self.scale_bound))

    def _loc_logscale(self, context):
        loc, s = self.params(context)
        return loc, soft_clamp(s, self.scale_bound)

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        loc, s = self._loc_logscale(context)
        return loc + z * s.exp(), s.sum(-1).expand(broadcast_shapes(z.shape, s.shape)[:-1])

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        loc, s = self._loc_logscale(context)
        return (x - loc) * (-s).exp(), s.sum(-1).expand(broadcast_shapes(x.shape, s.shape)[:-1])


class Permutation(FlowLayer):
    """Fixed permutation of coordinates (``"reverse"``, ``"random"`` with a seed, or explicit).

    Accepts and ignores a context, so it can sit in a conditional stack.
    """

    def __init__(self, dim: int, order: str | Sequence[int] = "reverse", seed: int = 0):
        super().__init__(dim, 0)
        if isinstance(order, str):
            if order == "reverse":
                perm = torch.arange(dim - 1, -1, -1)
            elif order == "random":
                perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
            else:
                raise ValueError(f"order must be 'reverse', 'random' or a permutation, got {order!r}")
        else:
            perm = torch.as_tensor(list(order), dtype=torch.long)
            if sorted(perm.tolist()) != list(range(dim)):
                raise ValueError(f"order must be a permutation of range({dim}), got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward_and_log_det(self, z, context=None):
        self._check(z, None)
        return z[..., self.perm], z.new_zeros(z.shape[:-1])

    def inverse_and_log_det(self, x, context=None):
        self._check(x, None)
        return x[..., self.inv_perm], x.new_zeros(x.shape[:-1])


class LULinear(FlowLayer):
    """Invertible linear map ``x = W z + b`` with ``W = L U``, Glow's 1x1 convolution.

    ``L`` is unit lower-triangular, ``U`` upper-triangular with diagonal
    ``exp(log_diag)``, so ``log|det W| = sum(log_diag)`` and the inverse is two
    triangular solves. Starts at the identity. A context (through a hypernetwork)
    makes ``L``, ``U`` and ``b`` per-context.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), scale_bound: float = 8.0):
        super().__init__(dim, context_dim)
        self.scale_bound = float(scale_bound)
        self.params = ParamNet(
            {"lower": torch.zeros(dim, dim), "upper": torch.zeros(dim, dim), "log_diag": torch.zeros(dim), "bias": torch.zeros(dim)},
            context_dim,
            hidden,
        )
        self.register_buffer("strict_lower", torch.tril(torch.ones(dim, dim), -1))
        self.register_buffer("eye", torch.eye(dim))

    def _factors(self, context):
        lower, upper, log_diag, bias = self.params(context)
        log_diag = soft_clamp(log_diag, self.scale_bound)
        L = lower * self.strict_lower + self.eye
        U = upper * self.strict_lower.transpose(-1, -2) + torch.diag_embed(log_diag.exp())
        return L, U, log_diag, bias

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        L, U, log_diag, bias = self._factors(context)
        W = L @ U
        x = (W @ z.unsqueeze(-1)).squeeze(-1) + bias
        return x, log_diag.sum(-1).expand(x.shape[:-1])

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        L, U, log_diag, bias = self._factors(context)
        r = (x - bias).unsqueeze(-1)
        shape = broadcast_shapes(r.shape[:-2], L.shape[:-2])
        r = r.expand(*shape, self.dim, 1)
        L, U = L.expand(*shape, self.dim, self.dim), U.expand(*shape, self.dim, self.dim)
        y = torch.linalg.solve_triangular(L, r, upper=False, unitriangular=True)
        z = torch.linalg.solve_triangular(U, y, upper=True).squeeze(-1)
        return z, log_diag.sum(-1).expand(z.shape[:-1])


class ActNorm(FlowLayer):
    """Per-coordinate affine ``x = loc + exp(log_scale) * z`` with data-dependent init (Glow).

    The first call in the density direction (``inverse_and_log_det``, i.e. the
    first ``log_prob`` batch in maximum likelihood training) sets ``loc`` and
    ``log_scale`` so that the batch maps to zero mean and unit variance.  In the
    sampling direction (VI) there is no data, so it starts at the identity.
    Unconditional only: a context-dependent version is ``ElementwiseAffine``.
    """

    def __init__(self, dim: int, scale_bound: float = 8.0):
        super().__init__(dim, 0)
        self.scale_bound = float(scale_bound)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def forward_and_log_det(self, z, context=None):
        self._check(z, None)
        s = soft_clamp(self.log_scale, self.scale_bound)
        return self.loc + z * s.exp(), s.sum().expand(z.shape[:-1])

    def inverse_and_log_det(self, x, context=None):
        self._check(x, None)
        if not bool(self.initialized) and self.training:
            with torch.no_grad():
                flat = x.reshape(-1, self.dim)
                if flat.shape[0] > 1:
                    std = flat.std(0).clamp_min(1e-6)
                    self.loc.copy_(flat.mean(0))
                    self.log_scale.copy_(std.log().clamp(-0.9 * self.scale_bound, 0.9 * self.scale_bound))
                    # log_scale is stored pre-clamp: invert the soft clamp so the effective scale is std.
                    self.log_scale.copy_(self.scale_bound * torch.atanh(self.log_scale / self.scale_bound))
                    self.initialized.fill_(True)
        s = soft_clamp(self.log_scale, self.scale_bound)
        return (x - self.loc) * (-s).exp(), s.sum().expand(x.shape[:-1])
