"""What keeps a long fit alive: convergence detection, non-finite steps, checkpoints."""
from __future__ import annotations

import copy

import torch
from torch import Tensor


class FitError(RuntimeError):
    """A fit that cannot continue. ``.result`` holds what was learned up to the last good step."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class Plateau:
    """Convergence by a smoothed objective: when the exponential moving average of
    the ELBO has not improved by ``tol`` for ``patience`` checks, lower the learning
    rate by ``factor``; after ``max_drops`` such drops the fit has converged."""

    def __init__(self, tol: float = 0.01, patience: int = 2, every: int = 100, factor: float = 0.3, max_drops: int = 2, smoothing: float = 0.02):
        self.tol, self.patience, self.every, self.factor, self.max_drops = tol, patience, every, factor, max_drops
        self.smoothing = smoothing
        self.ema = None
        self.best = -float("inf")
        self.stalls = 0
        self.drops = 0

    def update(self, step: int, value: float, optimizer: torch.optim.Optimizer) -> bool:
        """Feed one ELBO estimate; returns True when converged."""
        self.ema = value if self.ema is None else self.ema + self.smoothing * (value - self.ema)
        if (step + 1) % self.every:
            return False
        if self.ema > self.best + self.tol:
            self.best, self.stalls = self.ema, 0
            return False
        self.stalls += 1
        if self.stalls < self.patience:
            return False
        self.stalls = 0
        self.drops += 1
        if self.drops > self.max_drops:
            return True
        for group in optimizer.param_groups:
            group["lr"] *= self.factor
        return False

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("ema", "best", "stalls", "drops")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def explain_nonfinite(x: Tensor, lp: Tensor, lq: Tensor) -> str:
    """Name the cause of a non-finite loss in words a user can act on."""
    x = x.detach().reshape(-1, x.shape[-1])
    lp, lq = lp.detach().reshape(-1), lq.detach().reshape(-1)
    n = lp.numel()
    for what, mask in (("NaN", torch.isnan(lp)), ("+inf", lp == float("inf")), ("-inf", lp == -float("inf"))):
        if mask.any():
            pts = x[mask][:3].tolist()
            hint = (
                " The target must be finite on all of R^dim: map constrained parameters to an "
                "unconstrained space first (e.g. log of a positive parameter)."
                if what == "-inf"
                else " Check the target for invalid operations (log of a negative number, 0/0) at these points."
            )
            return f"the target log density returned {what} at {int(mask.sum())} of {n} draws, e.g. x = {pts}.{hint}"
    if not torch.isfinite(lq).all():
        return "the flow's own log-density became non-finite: its parameters diverged; lower the learning rate."
    return "the gradient became non-finite (the target's gradient overflows near the draws, or the learning rate is too high)."


class Snapshot:
    """The last good parameters and optimiser state, restored after a bad step."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.module, self.optimizer = module, optimizer
        self.take()

    def take(self) -> None:
        self.state = copy.deepcopy(self.module.state_dict())
        self.opt_state = copy.deepcopy(self.optimizer.state_dict())

    def restore(self) -> None:
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.module.load_state_dict(self.state)
        self.optimizer.load_state_dict(self.opt_state)
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr


