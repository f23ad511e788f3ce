"""Reverse-KL variational inference with flows: ``fit`` and its result."""
from .fit import fit
from .guards import FitError, Plateau
from .importance import ImportanceDiagnostics, diagnose, psis, verdict
from .objectives import elbo_step, frozen_log_q
from .result import VIResult

__all__ = ["FitError", "ImportanceDiagnostics", "Plateau", "VIResult", "diagnose", "elbo_step", "fit", "frozen_log_q", "psis", "verdict"]
