"""MADE: a masked MLP whose i-th output depends only on inputs earlier in an order.

Germain et al. 2015.  Used by the autoregressive families (IAF, MAF, spline
autoregressive).  A context, when given, feeds every hidden unit unmasked, and
with a context some hidden units see the context alone, so the first variable in
the order is conditioned on it too.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import broadcast_shapes


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask."""

    def __init__(self, mask: Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive conditioner ``R^dim (+ context) -> R^{dim x params_per_dim}``.

    Args:
        dim: number of variables.
        params_per_dim: outputs per variable (2 for affine, 3K-1 for splines...).
        hidden: hidden layer sizes (each should be >= dim for full expressiveness).
        context_dim: size of an optional context fed to every hidden unit.
        order: ``order[i]`` is the rank of variable ``i``; output ``i`` depends on
            inputs ``j`` with ``order[j] < order[i]``. Default: ``0..dim-1``.
        activation: hidden nonlinearity.

    ``forward(x, context)``: ``x`` ``(*batch, dim)``, context ``(*cbatch,
    context_dim)`` broadcastable to ``batch``; returns ``(*batch, params_per_dim,
    dim)`` (parameter-major, so each parameter is a contiguous slice). The output
    layer starts at zero (identity flows at init).
    """

    def __init__(
        self,
        dim: int,
        params_per_dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        order: Sequence[int] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.dim, self.params_per_dim, self.context_dim = int(dim), int(params_per_dim), int(context_dim)
        rank = torch.arange(dim) if order is None else torch.as_tensor(list(order), dtype=torch.long)
        if sorted(rank.tolist()) != list(range(dim)):
            raise ValueError(f"order must be a permutation of range({dim}), got {rank.tolist()}")
        self.register_buffer("rank", rank)
        # Hidden degrees cycle through [lo, dim-2]; degree -1 units see only the context.
        lo = -1 if context_dim else 0
        levels = max(dim - 1 - lo, 1)
        degrees = [lo + torch.arange(h) % levels for h in hidden]
        layers: list[nn.Module] = []
        prev = rank
        for i, deg in enumerate(degrees):
            mask = (prev[None, :] <= deg[:, None]).float()
            if i == 0 and context_dim:
                mask = torch.cat([mask, torch.ones(len(deg), context_dim)], dim=1)
            layers += [MaskedLinear(mask), activation()]
            prev = deg
        out_mask = (prev[None, :] < rank[:, None]).float().repeat(params_per_dim, 1)
        out = MaskedLinear(out_mask)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_dim:
            batch = broadcast_shapes(x.shape[:-1], context.shape[:-1])
            x = torch.cat([x.expand(*batch, self.dim), context.expand(*batch, self.context_dim)], dim=-1)
        out = self.net(x)
        return out.unflatten(-1, (self.params_per_dim, self.dim))
