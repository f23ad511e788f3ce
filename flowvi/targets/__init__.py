"""Targets with known answers for VI tests and benchmarks.

``get(name, **kw)`` builds one; ``names()`` lists them. Every target has
``dim``, ``log_prob`` (also its ``__call__``), ``sample(n, seed)``, ``mean``,
``cov``, ``normalised`` and ``log_z``.
"""
from __future__ import annotations

from typing import Callable

from .banana import Banana
from .base import Target
from .energies import Energy2D
from .gaussian import CorrelatedGaussian, Funnel, GaussianMixture

_REGISTRY: dict[str, Callable[..., Target]] = {
    "banana": lambda **kw: Banana(**{"dim": 2, "scale": 2.0, "twist": 0.5, "name": "banana", **kw}),
    "haario-0.03": lambda **kw: Banana(**{"dim": 2, "scale": 10.0, "twist": 0.03, "name": "haario-0.03", **kw}),
    "haario-0.1": lambda **kw: Banana(**{"dim": 2, "scale": 10.0, "twist": 0.1, "name": "haario-0.1", **kw}),
    "haario-10d": lambda **kw: Banana(**{"dim": 10, "scale": 10.0, "twist": 0.03, "name": "haario-10d", **kw}),
    "gaussian-scales-20": lambda **kw: CorrelatedGaussian(**{"dim": 20, "min_scale": 0.1, "max_scale": 10.0, "name": "gaussian-scales-20", **kw}),
    "gaussian-cond100-10": lambda **kw: CorrelatedGaussian(**{"dim": 10, "min_scale": 1.0, "max_scale": 10.0, "name": "gaussian-cond100-10", **kw}),
    "gaussian-cond10000-100": lambda **kw: CorrelatedGaussian(**{"dim": 100, "min_scale": 0.1, "max_scale": 10.0, "name": "gaussian-cond10000-100", **kw}),
    "funnel-2": lambda **kw: Funnel(**{"dim": 2, "name": "funnel-2", **kw}),
    "funnel-10": lambda **kw: Funnel(**{"dim": 10, "name": "funnel-10", **kw}),
    "mixture-2d": lambda **kw: GaussianMixture(**{"dim": 2, "k": 4, "separation": 6.0, "name": "mixture-2d", **kw}),
    "mixture-10d": lambda **kw: GaussianMixture(**{"dim": 10, "k": 8, "separation": 8.0, "name": "mixture-10d", **kw}),
    "u1": lambda: Energy2D("u1"),
    "u2": lambda: Energy2D("u2"),
    "u3": lambda: Energy2D("u3"),
    "u4": lambda: Energy2D("u4"),
    "two-moons": lambda: Energy2D("two-moons"),
}
_ALIASES = {"banana-pyro": "banana", "funnel": "funnel-2"}


def names() -> list[str]:
    """Every registered target name."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> Target:
    """The target called ``name`` (see ``names()``); keyword arguments override its defaults."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(names())}")
    return _REGISTRY[key](**kwargs)


__all__ = ["Banana", "CorrelatedGaussian", "Energy2D", "Funnel", "GaussianMixture", "Target", "get", "names"]
