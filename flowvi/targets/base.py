"""What every target offers: a (log-)density, draws from it, and known moments.

Conventions shared by all targets:

* ``log_prob(x)``: ``x`` is a tensor of shape ``(..., dim)`` and any float dtype;
  the result has shape ``(...)`` and the same dtype, and is differentiable in ``x``.
  It is computed in log space so that it is finite (never NaN) wherever the true
  value is representable in ``x``'s dtype; the few places where a target has to
  saturate instead (Neal's funnel deep in its neck) are documented there.
* ``sample(n, seed=None)``: an ``(n, dim)`` float64 tensor of draws. ``seed=None``
  uses torch's global generator (so ``torch.manual_seed`` governs it); an integer
  seed gives the same draws every time, independently of the global state.
* ``mean`` ``(dim,)`` and ``cov`` ``(dim, dim)``: float64 tensors, exact where the
  target's docstring says so, otherwise by quadrature (stated there).
* ``normalised``: whether ``exp(log_prob)`` integrates to one; ``log_z`` is the log
  of that integral (``0.0`` when normalised), so ``log_prob(x) - log_z`` is the
  normalised log density in every case.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def normal_logpdf(x: Tensor, scale: float = 1.0) -> Tensor:
    """Elementwise ``log N(x; 0, scale^2)``: ``(...) -> (...)``, same dtype as ``x``."""
    return -0.5 * (x / scale) ** 2 - (math.log(scale) + 0.5 * LOG_2PI)


def check_points(x: Tensor, dim: int) -> Tensor:
    """``x`` as a float tensor whose last axis is ``dim``: ``(..., dim) -> (..., dim)``.

    Integer input is promoted to the default float dtype; anything whose last axis
    is not ``dim`` raises ``ValueError`` naming the expected shape.
    """
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"expected points of shape (..., {dim}), got {tuple(x.shape)}")
    return x


class Target:
    """A density on ``R^dim`` with known answers (see the module docstring).

    Subclasses set ``dim``, ``name``, ``mean``, ``cov`` (and ``normalised`` /
    ``log_z`` when not normalised) and implement ``_log_prob`` (``(..., dim) ->
    (...)``) and ``_sample`` (``(n, generator) -> (n, dim)`` float64).
    """

    name: str = "target"
    normalised: bool = True
    log_z: float = 0.0

    def __init__(self, dim: int):
        self.dim = int(dim)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density at ``x``: ``(..., dim) -> (...)``, in ``x``'s float dtype.

        Normalised when ``self.normalised``; otherwise ``log_prob - log_z`` is.
        """
        return self._log_prob(check_points(x, self.dim))

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` draws, an ``(n, dim)`` float64 tensor. ``seed=None`` uses torch's
        global generator; an integer seed makes the draws reproducible."""
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        return self._sample(int(n), gen)

    def __call__(self, x: Tensor) -> Tensor:
        """Same as ``log_prob``: ``(..., dim) -> (...)``."""
        return self.log_prob(x)

    def _log_prob(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def randn(n: int, dim: int, gen: torch.Generator | None) -> Tensor:
    """Standard normal draws, ``(n, dim)`` float64, from ``gen`` (or the global generator)."""
    return torch.randn(n, dim, generator=gen, dtype=torch.float64)


def random_rotation(dim: int, seed: int) -> Tensor:
    """A Haar-random orthogonal ``(dim, dim)`` float64 matrix, fixed by ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # sign fix makes the QR draw Haar-distributed
