"""What a VI fit returns: the flow, its trace and an honest verdict."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .importance import ImportanceDiagnostics, diagnose


class VIResult:
    """A fitted flow ``q`` for the target ``log_prob``.

    Attributes: ``flow``, ``trace`` (ELBO estimate per step), ``steps``,
    ``converged``, ``seconds``, ``seed``.  Diagnostics are computed once, on
    ``n_diagnostic`` draws, when first asked for.
    """

    n_diagnostic = 4000

    def __init__(self, flow, log_prob, trace, steps, converged, seconds, seed, names=None):
        self.flow, self.target = flow, log_prob
        self.trace, self.steps, self.converged, self.seconds, self.seed = list(trace), steps, converged, seconds, seed
        self.names = names or [f"x{i}" for i in range(flow.dim)]

    @property
    def dim(self) -> int:
        return self.flow.dim

    def sample(self, n: int) -> Tensor:
        """``(n, dim)`` draws from q."""
        return self.flow.sample((n,))

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) for ``x`` of shape ``(..., dim)``."""
        with torch.no_grad():
            return self.flow.log_prob(x)

    def draws_and_log_weights(self, n: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """``(n, dim)`` draws of q and their log weights log p~(x) - log q(x), shape ``(n,)``."""
        gen_state = torch.get_rng_state()
        torch.manual_seed(self.seed + 1 if seed is None else seed)
        try:
            with torch.no_grad():
                x, lq = self.flow(None).rsample_and_log_prob((n,))
                lw = self.target(x) - lq
        finally:
            torch.set_rng_state(gen_state)
        return x, lw

    @functools.cached_property
    def diagnostics(self) -> ImportanceDiagnostics:
        x, lw = self.draws_and_log_weights(self.n_diagnostic)
        return diagnose(x.double().numpy(), lw.double().numpy())

    k_hat = property(lambda self: self.diagnostics.k_hat, doc="PSIS Pareto k-hat of the weights p~/q.")
    ess = property(lambda self: self.diagnostics.ess, doc="Importance-sampling effective sample size.")
    log_z = property(lambda self: self.diagnostics.log_z, doc="IS estimate of log of the target's normaliser.")
    log_z_se = property(lambda self: self.diagnostics.log_z_se, doc="Standard error of ``log_z``.")
    verdict = property(lambda self: self.diagnostics.verdict, doc="Whether to trust the fit, in words.")

    def elbo(self, n: int = 4000) -> float:
        """Monte-Carlo ELBO E_q[log p~ - log q] on ``n`` fresh draws."""
        return float(self.draws_and_log_weights(n)[1].double().mean())

    def summary(self) -> pd.DataFrame:
        """Per-coordinate mean/sd under q and PSIS-corrected, with k-hat and ESS."""
        d = self.diagnostics
        table = pd.DataFrame(
            {"mean": d.mean, "sd": d.sd, "psis_mean": d.psis_mean, "psis_sd": d.psis_sd},
            index=pd.Index(self.names, name="parameter"),
        )
        table.attrs.update(k_hat=d.k_hat, ess=d.ess, log_z=d.log_z, log_z_se=d.log_z_se, verdict=d.verdict)
        return table

    def to_arviz(self, n: int | None = None):
        """An arviz ``InferenceData``: ``posterior`` draws of q (one chain) and
        ``sample_stats.log_weight`` = log p~ - log q for each draw."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import arviz as az
        x, lw = self.draws_and_log_weights(n or self.n_diagnostic)
        x = x.double().numpy()
        posterior = {name: x[None, :, i] for i, name in enumerate(self.names)}
        return az.from_dict(posterior=posterior, sample_stats={"log_weight": lw.double().numpy()[None]})

    def save(self, path, metadata: dict | None = None):
        """Save flow, trace, run facts and diagnostics (not the log density): see ``flowvi.io.save_result``."""
        from ..io import save_result

        return save_result(self, path, metadata=metadata)

    @classmethod
    def load(cls, path, log_prob=None) -> "VIResult":
        """Load a saved result; pass ``log_prob`` back to use the target (see ``flowvi.io.load_result``)."""
        from ..io import load_result

        return load_result(path, log_prob=log_prob)

    def __repr__(self) -> str:
        last = np.mean(self.trace[-100:]) if self.trace else float("nan")
        return (
            f"VIResult(dim={self.dim}, steps={self.steps}, converged={self.converged}, "
            f"elbo~{last:.3f}, seconds={self.seconds:.1f})"
        )
