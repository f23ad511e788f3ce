"""Vectorised MCMC for reference posteriors: many random-walk Metropolis chains in torch.

``sir_init`` starts chains by sampling-importance-resampling from the prior
(chains land in the modes in proportion to their mass); ``rw_metropolis`` runs
all chains in lock step with a Gaussian proposal whose covariance and scale are
adapted from the pooled chains during warm-up only (then frozen, so the kept
draws come from a fixed, valid Metropolis kernel).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._rng import seeded

LogProb = Callable[[Tensor], Tensor]


def sir_init(log_prob: LogProb, prior, num_chains: int, num_candidates: int = 100_000, chunk: int = 20_000) -> Tensor:
    """``num_chains`` distinct starting points ``(C, d)``: prior draws resampled by ``exp(log_prob - log prior)``
    (Gumbel top-k, i.e. without replacement)."""
    cands, keys = [], []
    for i in range(0, num_candidates, chunk):
        theta = prior.sample((min(chunk, num_candidates - i),))
        w = log_prob(theta) - prior.log_prob(theta)
        w = torch.where(torch.isfinite(w), w, torch.full_like(w, -float("inf")))
        cands.append(theta)
        keys.append(w - torch.log(-torch.log(torch.rand_like(w).clamp_min(1e-30))))
    theta, keys = torch.cat(cands), torch.cat(keys)
    if not bool(torch.isfinite(keys).any()):
        raise RuntimeError("sir_init: no prior draw has a finite likelihood; is x_o possible under the prior?")
    return theta[keys.topk(num_chains).indices]


def _chol(cov: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        cov = cov * mask
    d = cov.shape[0]
    jitter = 1e-9 * cov.diagonal().mean().clamp_min(1e-12)
    for _ in range(8):
        try:
            return torch.linalg.cholesky(cov + jitter * torch.eye(d, dtype=cov.dtype))
        except RuntimeError:
            jitter = jitter * 100
    return torch.diag(cov.diagonal().clamp_min(1e-12).sqrt())


def rw_metropolis(
    log_prob: LogProb,
    init: Tensor,
    num_samples: int,
    *,
    warmup: int = 1000,
    thin: int = 10,
    adapt_every: int = 50,
    cov_mask: Tensor | None = None,
    fold: Callable[[Tensor], Tensor] | None = None,
    seed: int | None = 0,
) -> tuple[Tensor, dict]:
    """Adaptive random-walk Metropolis on ``C = init.shape[0]`` chains at once.

    Args:
        log_prob: ``(C, d) -> (C,)`` (``-inf`` outside the support).
        init: starting points ``(C, d)``, each with finite ``log_prob``.
        num_samples: draws kept per chain (after ``warmup``, every ``thin``-th state).
        cov_mask: ``(d, d)`` 0/1 mask applied to the adapted covariance (e.g. to keep
            the proposal invariant under a symmetry, as ``fold`` requires).
        fold: map applied to every proposal (e.g. ``abs`` of coordinates the target
            is symmetric in: sampling one orthant of a symmetric target by reflection;
            valid when the proposal is invariant under the reflections).
        seed: RNG seed (None: the caller's stream).

    Returns draws ``(num_samples * C, d)`` (chain-major within each kept step) and
    ``{"acceptance": mean acceptance after warm-up, "scale": final step scale}``.
    """
    with seeded(seed, 43):
        x = init.clone().double()
        C, d = x.shape
        lp = log_prob(x.to(init.dtype)).double()
        if not bool(torch.isfinite(lp).all()):
            raise ValueError("rw_metropolis: every initial point needs a finite log_prob")
        cov = torch.cov(x.T) if C > d else torch.eye(d, dtype=x.dtype) * 0.01
        L = _chol(cov.reshape(d, d), cov_mask)
        scale = 2.38 / d**0.5
        window, kept, accepted = [], [], []
        for step in range(warmup + num_samples * thin):
            y = x + scale * torch.randn(C, d, dtype=x.dtype) @ L.T
            if fold is not None:
                y = fold(y)
            lpy = log_prob(y.to(init.dtype)).double()
            acc = torch.log(torch.rand(C, dtype=x.dtype)) < lpy - lp
            x = torch.where(acc.unsqueeze(1), y, x)
            lp = torch.where(acc, lpy, lp)
            if step < warmup:
                window.append(x)
                accepted.append(acc.double().mean())
                if (step + 1) % adapt_every == 0:
                    states = torch.cat(window)
                    L = _chol(torch.cov(states.T).reshape(d, d), cov_mask)
                    rate = float(torch.stack(accepted).mean())
                    scale *= float(torch.exp(torch.tensor(rate - 0.234)))  # nudge towards the optimal RWM rate
                    window, accepted = [], []
            else:
                accepted.append(acc.double().mean())
                if (step - warmup + 1) % thin == 0:
                    kept.append(x.clone())
        draws = torch.cat(kept).to(init.dtype)
        return draws, {"acceptance": float(torch.stack(accepted).mean()), "scale": scale}
