"""Standardisation (z-scoring) of parameters and data, learnt once from training data.

The rule, chosen to be robust and easy to state:

* location = mean, scale = standard deviation over the training rows (``robust=False``),
  or location = median, scale = IQR / 1.349 (``robust=True``: outliers barely move
  it; the IQR of a normal is 1.349 sd); a robust scale of 0 (e.g. a feature that is
  mostly one value) falls back to the standard deviation;
* a feature whose scale is <= ``1e-8 * max(1, |location|)`` is *constant*: scale 1
  (it is only centred, never divided by ~0);
* every other scale is clamped from below at ``min_scale`` (default 1e-6), so a
  near-constant feature cannot blow up to huge standardised values.

Modes say which axes share statistics, for an event of shape ``event_shape``:
``"independent"`` (each element of the event), ``"last"`` (per last-axis feature,
pooled over the other event axes: sets and sequences of feature vectors),
``"structured"`` (one location and scale for the whole event, sbi's choice for
time series and images) and ``"none"``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

MODES = ("independent", "last", "structured", "none")


class ZScore(nn.Module):
    """``forward(v) = (v - loc) / scale`` with buffers fitted by ``fit``.

    Args:
        event_shape: shape of one row (e.g. ``(d,)`` or ``(n_set, k)``).
        mode: one of ``MODES`` (see module doc).
        robust: median / IQR statistics instead of mean / std.
        min_scale: lower clamp of non-constant scales.
    """

    def __init__(self, event_shape: Sequence[int], mode: str = "independent", robust: bool = False, min_scale: float = 1e-6):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"z-score mode must be one of {MODES}, got {mode!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.mode = mode
        self.robust = bool(robust)
        self.min_scale = float(min_scale)
        stat_shape = self._stat_shape()
        self.register_buffer("loc", torch.zeros(stat_shape))
        self.register_buffer("scale", torch.ones(stat_shape))

    def _stat_shape(self) -> tuple[int, ...]:
        if self.mode == "independent":
            return self.event_shape
        if self.mode == "last":
            return (1,) * (len(self.event_shape) - 1) + self.event_shape[-1:]
        return (1,) * len(self.event_shape)

    @torch.no_grad()
    def fit(self, data: Tensor) -> "ZScore":
        """Fit from ``data`` of shape ``(n, *event_shape)``; returns self."""
        if self.mode == "none":
            return self
        if tuple(data.shape[1:]) != self.event_shape:
            raise ValueError(f"ZScore.fit expects (n, *{self.event_shape}), got {tuple(data.shape)}")
        if self.mode == "independent":
            flat = data.reshape(data.shape[0], -1)
        elif self.mode == "last":
            flat = data.reshape(-1, self.event_shape[-1])
        else:
            flat = data.reshape(-1, 1)
        flat = flat.double()
        std = flat.std(0) if flat.shape[0] > 1 else torch.zeros(flat.shape[1], dtype=flat.dtype)
        if self.robust:
            q = torch.quantile(flat, torch.tensor([0.25, 0.5, 0.75], dtype=flat.dtype), dim=0)
            loc, scale = q[1], (q[2] - q[0]) / 1.349
            scale = torch.where(scale > 0, scale, std)
        else:
            loc, scale = flat.mean(0), std
        constant = scale <= 1e-8 * loc.abs().clamp_min(1.0)
        scale = torch.where(constant, torch.ones_like(scale), scale.clamp_min(self.min_scale))
        self.loc.copy_(loc.reshape(self._stat_shape()).to(self.loc.dtype))
        self.scale.copy_(scale.reshape(self._stat_shape()).to(self.scale.dtype))
        return self

    def forward(self, v: Tensor) -> Tensor:
        if self.mode == "none":
            return v
        return (v - self.loc) / self.scale

    def inverse(self, v: Tensor) -> Tensor:
        if self.mode == "none":
            return v
        return v * self.scale + self.loc

    def log_scale_sum(self) -> Tensor:
        """``sum(log scale)`` over one event: the log-Jacobian of ``inverse`` (for densities)."""
        if self.mode == "none":
            return torch.zeros((), dtype=self.scale.dtype, device=self.scale.device)
        return self.scale.log().expand(self.event_shape).sum()

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, mode={self.mode!r}, robust={self.robust}"
