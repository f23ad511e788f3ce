"""Layer parameters that are either free tensors or a function of a context.

``ParamNet`` is how every family gets its conditional form for free: without a
context it holds plain ``nn.Parameter`` tensors; with ``context_dim > 0`` a small
MLP (a hypernetwork) maps the context to the same tensors, one set per context
row.  The hypernetwork's last layer starts at zero weight and a bias equal to the
unconditional initial values, so a conditional layer starts exactly where the
unconditional one does (near the identity).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn


def mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (64, 64),
    activation: Callable[[], nn.Module] = nn.ReLU,
    zero_last: bool = False,
) -> nn.Sequential:
    """A plain MLP ``in_features -> hidden... -> out_features``.

    ``zero_last`` zeroes the last layer's weight and bias, so the net outputs 0
    at initialisation (used to start flow layers at the identity).
    """
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), activation()]
    last = nn.Linear(sizes[-1], out_features)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class ParamNet(nn.Module):
    """Named parameter tensors of fixed shapes, optionally produced from a context.

    Args:
        init: ordered mapping ``name -> initial tensor`` (its shape is the
            parameter's shape).
        context_dim: 0 for free parameters; otherwise the context size.
        hidden: hidden sizes of the hypernetwork.

    ``forward(context)`` returns a tuple of tensors in ``init``'s order: shapes
    ``shape`` without context, ``(*cbatch, *shape)`` with a ``(*cbatch, context_dim)``
    context.
    """

    def __init__(self, init: dict[str, Tensor], context_dim: int = 0, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.names = list(init)
        self.shapes = [tuple(v.shape) for v in init.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.context_dim = int(context_dim)
        if self.context_dim == 0:
            self.free = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in init.values()])
        else:
            flat = torch.cat([v.detach().reshape(-1) for v in init.values()])
            self.net = mlp(self.context_dim, flat.numel(), hidden, zero_last=True)
            with torch.no_grad():
                self.net[-1].bias.copy_(flat)

    def forward(self, context: Tensor | None = None) -> tuple[Tensor, ...]:
        if self.context_dim == 0:
            return tuple(self.free)
        out = self.net(context)
        batch = out.shape[:-1]
        parts = torch.split(out, self.sizes, dim=-1)
        return tuple(p.reshape(tuple(batch) + s) for p, s in zip(parts, self.shapes))
