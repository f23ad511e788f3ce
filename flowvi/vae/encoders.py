"""Encoders: x -> h, the context that amortises q(z|x).

The Gaussian head (mu, log sigma) and every flow layer read the same ``h``; this
module only supplies the shared trunk.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .layers import hidden_layers


class MLPEncoder(nn.Module):
    """``x (*, x_dim) -> h (*, hidden[-1])`` through ``len(hidden)`` activated linear layers.

    ``out_features`` is ``h``'s size (what the flow's ``context_dim`` is set to).
    ``gated=True`` uses ``GatedLinear`` units instead of ``activation``.
    """

    def __init__(self, x_dim: int, hidden: Sequence[int] = (300, 300), activation: Callable[[], nn.Module] = nn.Softplus,
                 gated: bool = False):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden:
            raise ValueError("MLPEncoder needs at least one hidden layer (h is its last one)")
        self.net = nn.Sequential(*hidden_layers((int(x_dim), *hidden), activation, gated))
        self.out_features = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def output_size(encoder: nn.Module, x_dim: int) -> int:
    """``h``'s size for any encoder: its ``out_features`` or one dummy forward pass."""
    size = getattr(encoder, "out_features", None)
    if isinstance(size, int):
        return size
    ref = next(encoder.parameters(), None)
    dtype = ref.dtype if ref is not None else torch.float32
    with torch.no_grad():
        h = encoder(torch.zeros(2, x_dim, dtype=dtype))
    if not isinstance(h, Tensor) or h.shape[0] != 2 or h.dim() != 2:
        raise ValueError(f"an encoder must map (B, x_dim) to (B, h_dim); got {getattr(h, 'shape', type(h))} for B=2")
    return int(h.shape[1])
