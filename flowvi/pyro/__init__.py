"""Pyro guides built on flowvi's flow families.

* ``AutoFlow``: autoguide over all global latents (drop-in for AutoNormal / AutoIAFNormal).
* ``AutoAmortizedFlow``: encoder + conditional flow for per-datapoint latents in a plate.
* ``fit_pyro``: one call from a Pyro model to a fitted flow with PSIS diagnostics.
"""
from .amortized import AutoAmortizedFlow
from .autoflow import AutoFlow
from .fit_pyro import PyroVIResult, fit_pyro
from .joint import JointDensity

__all__ = ["AutoAmortizedFlow", "AutoFlow", "JointDensity", "PyroVIResult", "fit_pyro"]
