"""Planar flow (Rezende & Mohamed 2015): ``x = z + u_hat tanh(w.z + b)``.

Cheap direction: sampling (z -> x, one pass). Inverse: *numerical* — it reduces
to one increasing scalar equation per point in ``alpha = w.z``, solved by
safeguarded Newton to ``rootfind.tolerance(dtype)``, so planar flows can score
points they did not sample (and get the sticking-the-landing gradient).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.nn import functional as F

from .base import FlowLayer
from .params import ParamNet
from .rootfind import solve_increasing

_SHIFT = math.log(math.e - 1)  # softplus(_SHIFT) = 1


class Planar(FlowLayer):
    """One planar step on R^dim; with ``context_dim > 0`` a hypernetwork emits
    ``(u, w, b)`` per context row (the planar-VAE amortisation).

    ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` with ``m(a) = -1 + softplus(a + log(e - 1))``
    keeps ``w.u_hat > -1``, which makes the map invertible (Appendix A of the paper;
    the shift makes ``m(0) = 0``, so small ``u`` and ``w`` start near the identity).
    Shapes: ``z`` (*batch, dim), context (*cbatch, context_dim) -> ``x`` (*batch, dim),
    ``ladj`` broadcast(batch, cbatch).
    """

    inverse_kind = "numerical"
    cheap_direction = "sample"

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), init_scale: float = 0.01):
        super().__init__(dim, context_dim)
        g = torch.Generator().manual_seed(dim + 17 * context_dim)
        self.params = ParamNet(
            {"u": init_scale * torch.randn(dim, generator=g), "w": init_scale * torch.randn(dim, generator=g) + init_scale, "b": torch.zeros(())},
            context_dim,
            hidden,
        )

    def _uwb(self, context):
        u, w, b = self.params(context)
        wu = (w * u).sum(-1, keepdim=True)
        # clamp |w|^2 from below: at w = 0 the map is the identity whatever u is
        u_hat = u + (F.softplus(wu + _SHIFT) - 1 - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)
        return u_hat, w, b, (w * u_hat).sum(-1)

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        u_hat, w, b, wu = self._uwb(context)
        t = torch.tanh((w * z).sum(-1) + b)
        x = z + u_hat * t.unsqueeze(-1)
        return x, torch.log1p(wu * (1 - t * t))

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        u_hat, w, b, wu = self._uwb(context)
        wx = (w * x).sum(-1)
        wu, b = wu.expand_as(wx), b.expand_as(wx)

        def g(alpha):
            t = torch.tanh(alpha + b)
            return alpha + wu * t - wx, 1 + wu * (1 - t * t)

        # |tanh| <= 1 brackets alpha = w.z within |w.u_hat| of w.x
        alpha = solve_increasing(g, wx - wu.abs(), wx + wu.abs())
        t = torch.tanh(alpha + b)
        return x - u_hat * t.unsqueeze(-1), torch.log1p(wu * (1 - t * t))
