"""The protocol every flow layer follows.

A layer is a bijection f: R^dim -> R^dim, written in the *sampling* direction
x = f(z) (noise z to sample x).  Each family implements

* ``forward_and_log_det(z, context)`` -> ``(x, log|det J_f(z)|)``
* ``inverse_and_log_det(x, context)`` -> ``(z, log|det J_f(z)|)``   (same sign!)

Both return the log-determinant of the *forward* map, so a density is
``log q(x) = log p(z) - ladj`` whichever way it was reached.

Every layer is at once a Pyro ``TransformModule`` (so ``TransformedDistribution``
and Pyro guides take it unchanged) and a ``ConditionalTransform``: with
``context_dim > 0`` the map depends on a context vector and ``layer.condition(c)``
gives the plain ``Transform`` for that context, as Pyro's conditional transforms do.

Shapes: ``z``/``x`` are ``(*batch, dim)``; ``context`` is ``(*cbatch, context_dim)``
where ``cbatch`` broadcasts against ``batch`` (a suffix of it, e.g. samples
``(n, B, dim)`` with context ``(B, context_dim)``); ``ladj`` is ``batch``.
"""
from __future__ import annotations

import math

import torch
from pyro.distributions.conditional import ConditionalTransform
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor
from torch.distributions import Transform, constraints


class NotInvertibleError(NotImplementedError):
    """Raised when the density direction is asked of a layer that has no inverse."""


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Smoothly squash ``x`` into ``(-bound, bound)``; identity near 0 (slope 1).

    Used on log-scales so that one bad step cannot make exp(s) overflow.
    """
    return bound * torch.tanh(x / bound)


def broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` for the hot paths.

    torch's version goes through ``torch._refs`` and costs ~30 us a call on this
    class of CPU, several times per layer per step; this one is pure Python
    (under 1 us when the shapes already agree, as they nearly always do).
    """
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return torch.Size(first)
    n = max(len(s) for s in shapes)
    out = [1] * n
    for s in shapes:
        for i, d in enumerate(s, n - len(s)):
            if d != 1:
                if out[i] == 1:
                    out[i] = d
                elif out[i] != d:
                    raise RuntimeError(f"shapes {[tuple(t) for t in shapes]} do not broadcast (dimension {i - n})")
    return torch.Size(out)


def inverse_softplus(y: float) -> float:
    """``softplus^{-1}(y)`` for a positive float, to initialise through softplus."""
    return y + math.log(-math.expm1(-y))


class FlowLayer(TransformModule, ConditionalTransform):
    """Base class of all flowvi layers (see the module docstring for the protocol).

    Class attributes describing cost, read by the docs and by the trainer:

    * ``inverse_kind``: ``"exact"`` (closed form), ``"numerical"`` (a converged
      root-find, accurate to ``tol``) or ``"none"`` (raises ``NotInvertibleError``).
    * ``cheap_direction``: ``"sample"`` (z -> x is one pass), ``"density"``
      (x -> z is one pass, z -> x is sequential) or ``"both"``.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    inverse_kind = "exact"
    cheap_direction = "both"

    def __init__(self, dim: int, context_dim: int = 0):
        super().__init__(cache_size=1)
        if int(dim) < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if int(context_dim) < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim!r}")
        self.dim = int(dim)
        self.context_dim = int(context_dim)
        self._ladj_cache = None

    # -- what families implement ------------------------------------------------
    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sampling direction: ``x = f(z)`` with ``log|det J_f(z)|``. Shapes in module doc."""
        raise NotImplementedError

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Density direction: ``z = f^{-1}(x)`` with ``log|det J_f(z)|`` (forward's sign)."""
        raise NotInvertibleError(
            f"{type(self).__name__} has no closed-form inverse, so it cannot score a point "
            "it did not sample. Use rsample_and_log_prob (the sampling direction), or a "
            "family with an inverse (iaf, maf, realnvp, nsf)."
        )

    # -- shared checks ------------------------------------------------------------
    def _check(self, v: Tensor, context: Tensor | None) -> None:
        if v.shape[-1:] != (self.dim,):
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (..., {self.dim}), got {tuple(v.shape)}"
            )
        if self.context_dim:
            if context is None:
                raise ValueError(
                    f"{type(self).__name__} was built with context_dim={self.context_dim}: pass a "
                    "context, e.g. layer.condition(context) or flow(context)"
                )
            if context.shape[-1:] != (self.context_dim,):
                raise ValueError(
                    f"{type(self).__name__} expects context of shape (..., {self.context_dim}), "
                    f"got {tuple(context.shape)}"
                )

    # -- torch / Pyro Transform interface (unconditional use) ---------------------
    def _call(self, z: Tensor) -> Tensor:
        x, ladj = self.forward_and_log_det(z)
        self._ladj_cache = (z, x, ladj)
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        z, ladj = self.inverse_and_log_det(x)
        self._ladj_cache = (z, x, ladj)
        return z

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        cache = self._ladj_cache
        if cache is not None and cache[0] is z and cache[1] is x:
            return cache[2]
        return self.forward_and_log_det(z)[1]

    def condition(self, context: Tensor) -> Transform:
        """The plain ``Transform`` for a given context (Pyro's ConditionalTransform API)."""
        if not self.context_dim:
            return self
        return ConditionedLayer(self, context)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"


class ConditionedLayer(Transform):
    """A conditional layer with its context fixed: a plain torch ``Transform``."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, layer: FlowLayer, context: Tensor):
        super().__init__(cache_size=1)
        self.layer = layer
        self.context = context
        self._ladj_cache = None

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None):
        return self.layer.forward_and_log_det(z, self.context)

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None):
        return self.layer.inverse_and_log_det(x, self.context)

    _call = FlowLayer._call
    _inverse = FlowLayer._inverse
    log_abs_det_jacobian = FlowLayer.log_abs_det_jacobian
