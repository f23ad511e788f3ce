"""Reverse-KL objectives for a flow q and an unnormalised log density log p~.

Both use the sampling pass's log q (entropy sign flip) for the reported value.
For the gradient, ``stl=True`` scores the draws under q with its parameters
frozen (the path-derivative / sticking-the-landing estimator, Roeder et al.
2017), which needs each layer's inverse; every flowvi family has one (exact,
sequential or numerical: see ``FlowLayer.inverse_kind``).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from ..flows import Flow


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Parameters stop requiring grad inside the block: gradients then flow only
    through the inputs, which is what the path-derivative estimators need."""
    cache = module.__dict__.setdefault("_flowvi_param_cache", [])
    if not cache:  # walking the module tree every step costs more than the flow itself
        cache.extend(module.parameters())
    params = [p for p in cache if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def frozen_log_q(flow: Flow, x: Tensor) -> Tensor:
    """log q(x) with q's parameters held fixed; differentiable w.r.t. ``x`` only."""
    with frozen(flow):
        return flow.log_prob(x)


def elbo_step(flow: Flow, log_p, particles: int, stl: bool = True, iw: int = 1):
    """One Monte-Carlo estimate of the objective and the surrogate to minimise.

    Args:
        flow: an unconditional ``Flow`` over R^dim.
        log_p: callable ``(n, dim) -> (n,)`` unnormalised log density.
        particles: number of independent draws (ELBO) or groups (IW-ELBO).
        stl: path-derivative gradient (STL; with ``iw > 1``, DReG).
        iw: importance samples per group; ``iw > 1`` gives the IW-ELBO (Burda et
            al. 2016) with the doubly-reparameterised gradient (Tucker et al. 2019).

    Returns:
        ``(loss, value, x, log_p(x), log_q(x))``: ``loss`` a scalar whose gradient is the
        estimator; ``value`` the detached (IW-)ELBO estimate; the rest with shape
        ``(particles, iw, ...)`` flattened to ``(particles * iw, ...)``.
    """
    x, lq = flow.rsample_and_log_prob((particles * iw,))
    lp = log_p(x)
    if lp.shape != lq.shape:
        raise ValueError(f"log_prob must map (n, dim) -> (n,), got output shape {tuple(lp.shape)} for n={x.shape[0]}")
    lq_grad = frozen_log_q(flow, x) if stl else lq
    if iw == 1:
        value = (lp - lq).mean()
        loss = -(lp - lq_grad).mean()
    else:
        lw = (lp - lq).reshape(particles, iw)
        value = (torch.logsumexp(lw, -1) - math.log(iw)).mean()
        if stl:
            wt = torch.softmax(lw.detach(), -1)
            loss = -((wt**2) * (lp - lq_grad).reshape(particles, iw)).sum(-1).mean()
        else:
            loss = -value
    return loss, value.detach(), x, lp, lq
