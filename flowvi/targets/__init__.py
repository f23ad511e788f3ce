"""Targets with known answers for VI tests and benchmarks.

``get(name, **kw)`` builds a registered target (keyword arguments override its
defaults); ``names()`` lists them. Every target has ``dim``, ``name``,
``log_prob(x)`` (``(..., dim) -> (...)``, differentiable; also its ``__call__``),
``sample(n, seed=None)`` (``(n, dim)`` float64), ``mean`` ``(dim,)``, ``cov``
``(dim, dim)``, ``normalised`` and ``log_z`` (see ``flowvi.targets.base``).

Registered names (``describe()`` returns these lines):

* ``banana`` (alias ``banana-pyro``): the benchmark's banana, x1 = 2 z1, x2 = z2 + 0.5 (x1^2 - 4); 2-D, exact.
* ``haario-0.03``, ``haario-0.1``: Haario et al. (1999)'s twisted Gaussian, b = 0.03 / 0.1; 2-D (``dim=`` for more), exact.
* ``haario-10d``: the same with b = 0.03 in 10-D.
* ``gaussian-scales-20``: 20-D N(0, Sigma), sd log-spaced 0.1..10 (cond. 1e4), randomly rotated.
* ``gaussian-scales-20-axis``: the same, axis-aligned.
* ``gaussian-cond100-2``, ``gaussian-cond100-10``, ``gaussian-cond10000-100``: rotated Gaussians of
  condition number 100 (sd 1..10) in 2-D and 10-D, and 1e4 (sd 0.1..10) in 100-D.
* ``funnel-2`` (alias ``funnel``), ``funnel-10``: Neal's funnel, v ~ N(0, 9), x_i | v ~ N(0, e^v).
* ``mixture-2d``: 4 unit Gaussians on a circle, 8 sd apart; ``mixture-10d``: 8 in 10-D, 8 sd apart.
* ``u1``, ``u2``, ``u3``, ``u4``: Rezende & Mohamed (2015)'s energies, unnormalised, quadrature answers.
* ``two-moons``: the two-moons energy, unnormalised, quadrature answers.
"""
from __future__ import annotations

import inspect
from typing import Callable

from .banana import Banana, haario
from .base import Target
from .energies import ENERGIES, Energy2D
from .funnel import Funnel
from .gaussian import CorrelatedGaussian
from .mixture import GaussianMixture


def _banana(dim: int = 2, scale: float = 2.0, twist: float = 0.5, offset: float | None = None):
    return Banana(dim=dim, scale=scale, twist=twist, offset=offset)


def _haario(b: float):
    def make(dim: int = 2, b: float = b):
        return haario(b=b, dim=dim)
    return make


def _gaussian(dim: int, min_scale: float, max_scale: float, rotate: bool = True):
    def make(dim: int = dim, min_scale: float = min_scale, max_scale: float = max_scale, rotate: bool = rotate,
             seed: int = 0):
        return CorrelatedGaussian(dim=dim, min_scale=min_scale, max_scale=max_scale, rotate=rotate, seed=seed)
    return make


def _funnel(dim: int):
    def make(dim: int = dim, v_scale: float = 3.0):
        return Funnel(dim=dim, v_scale=v_scale)
    return make


def _mixture(dim: int, k: int, separation: float):
    def make(dim: int = dim, k: int = k, separation: float = separation, scale: float = 1.0, weights=None,
             seed: int = 0):
        return GaussianMixture(dim=dim, k=k, separation=separation, scale=scale, weights=weights, seed=seed)
    return make


def _energy(which: str):
    def make():
        return Energy2D(which)
    return make


_REGISTRY: dict[str, tuple[Callable[..., Target], str]] = {
    "banana": (_banana, "benchmark banana x1 = 2 z1, x2 = z2 + 0.5 (x1^2 - 4); 2-D, exact"),
    "haario-0.03": (_haario(0.03), "Haario et al. 1999 twisted Gaussian, b = 0.03; 2-D, exact"),
    "haario-0.1": (_haario(0.1), "Haario et al. 1999 twisted Gaussian, b = 0.1; 2-D, exact"),
    "haario-10d": (lambda dim=10, b=0.03: haario(b=b, dim=dim), "Haario twisted Gaussian, b = 0.03, in 10-D; exact"),
    "gaussian-scales-20": (_gaussian(20, 0.1, 10.0), "20-D Gaussian, sd log-spaced 0.1..10 (cond 1e4), rotated"),
    "gaussian-scales-20-axis": (_gaussian(20, 0.1, 10.0, rotate=False), "20-D Gaussian, sd log-spaced 0.1..10, axis-aligned"),
    "gaussian-cond100-2": (_gaussian(2, 1.0, 10.0), "2-D Gaussian, condition number 100, rotated"),
    "gaussian-cond100-10": (_gaussian(10, 1.0, 10.0), "10-D Gaussian, condition number 100, rotated"),
    "gaussian-cond10000-100": (_gaussian(100, 0.1, 10.0), "100-D Gaussian, condition number 1e4, rotated"),
    "funnel-2": (_funnel(2), "Neal's funnel in 2-D, v ~ N(0, 9), x | v ~ N(0, e^v); exact"),
    "funnel-10": (_funnel(10), "Neal's funnel in 10-D; exact"),
    "mixture-2d": (_mixture(2, 4, 8.0), "4 unit Gaussians on a circle in 2-D, means >= 8 sd apart; exact"),
    "mixture-10d": (_mixture(10, 8, 8.0), "8 unit Gaussians in 10-D, means >= 8 sd apart; exact"),
    **{w: (_energy(w), f"Rezende & Mohamed 2015 energy {w.upper()}; 2-D, unnormalised, quadrature answers")
       for w in ("u1", "u2", "u3", "u4")},
    "two-moons": (_energy("two-moons"), "two-moons energy; 2-D, unnormalised, quadrature answers"),
}
_ALIASES = {"banana-pyro": "banana", "funnel": "funnel-2"}


def names() -> list[str]:
    """Every registered target name (aliases excluded), sorted: ``list[str]``."""
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    """``{name: one-line description}`` for every registered target."""
    return {n: _REGISTRY[n][1] for n in names()}


def get(name: str, **kwargs) -> Target:
    """The target registered as ``name`` (see ``names()``; aliases ``banana-pyro``, ``funnel``).

    Keyword arguments override its defaults (e.g. ``get("haario-0.1", dim=8)``,
    ``get("gaussian-scales-20", rotate=False)``). An unknown name raises ``ValueError``
    listing the choices; an unknown keyword raises ``TypeError`` listing the accepted ones.
    """
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(names())} "
                         f"(aliases: {', '.join(sorted(_ALIASES))})")
    make = _REGISTRY[key][0]
    accepted = list(inspect.signature(make).parameters)
    bad = sorted(set(kwargs) - set(accepted))
    if bad:
        raise TypeError(f"target {name!r} takes keyword arguments {accepted or '(none)'}; got unexpected {bad}")
    target = make(**kwargs)
    target.name = key if not kwargs else f"{key}({', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))})"
    return target


__all__ = ["Banana", "CorrelatedGaussian", "ENERGIES", "Energy2D", "Funnel", "GaussianMixture", "Target",
           "describe", "get", "haario", "names"]
