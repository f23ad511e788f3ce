"""Priors and the map between a prior's support and unbounded space.

Bounded priors are handled by training the flow on ``u = T^{-1}(theta)`` where
``T = torch.distributions.biject_to(prior.support)`` (a sigmoid-affine map for a
box), so the posterior ``q(theta|x) = q_u(T^{-1}(theta)|x) / |det J_T|`` has no
mass outside the support and sampling needs no rejection.
"""
from __future__ import annotations

import pyro.distributions as pdist
import torch
from torch import Tensor
from torch.distributions import Distribution, Transform, biject_to, constraints


class BoxUniform(pdist.Independent):
    """Uniform on the box ``[low, high]`` (a Pyro ``Independent(Uniform, 1)``).

    Args:
        low, high: bounds, tensors (or floats broadcast against each other) of shape ``(d,)``.

    Samples are ``(*sample_shape, d)``; ``log_prob`` is ``-sum(log(high - low))``
    inside and ``-inf`` outside (no validation error, so it can score any point).
    """

    def __init__(self, low, high, validate_args=None):
        low, high = torch.broadcast_tensors(torch.as_tensor(low, dtype=torch.get_default_dtype()),
                                            torch.as_tensor(high, dtype=torch.get_default_dtype()))
        if low.dim() != 1:
            raise ValueError(f"BoxUniform expects 1-D bounds (d,), got shape {tuple(low.shape)}")
        if not bool((high > low).all()):
            raise ValueError("BoxUniform needs high > low in every coordinate")
        super().__init__(pdist.Uniform(low, high, validate_args=False), 1, validate_args=validate_args)

    @property
    def low(self) -> Tensor:
        return self.base_dist.low

    @property
    def high(self) -> Tensor:
        return self.base_dist.high

    def log_prob(self, value: Tensor) -> Tensor:
        inside = self.support.check(value)
        lp = -(self.high - self.low).log().sum()
        return torch.where(inside, lp, torch.tensor(-float("inf"), dtype=lp.dtype)).expand(inside.shape)

    def expand(self, batch_shape, _instance=None):
        # Independent.expand would call BoxUniform(base, 1); a plain Independent is the same law
        return pdist.Independent(self.base_dist.expand(torch.Size(batch_shape) + self.event_shape), 1)

    def __repr__(self) -> str:
        return f"BoxUniform(low={self.low.tolist()}, high={self.high.tolist()})"


def check_prior(prior: Distribution) -> int:
    """Validate that ``prior`` is a distribution over vectors; return its dimension ``d``."""
    if not isinstance(prior, Distribution):
        raise TypeError(f"prior must be a torch/Pyro Distribution, got {type(prior).__name__}")
    if len(prior.event_shape) != 1 or len(prior.batch_shape) != 0:
        raise ValueError(
            f"prior must have event_shape (d,) and batch_shape (); got event_shape {tuple(prior.event_shape)}, "
            f"batch_shape {tuple(prior.batch_shape)}. For independent coordinates use e.g. "
            "pyro.distributions.Normal(loc, scale).to_event(1) or flowvi.sbi.BoxUniform(low, high)."
        )
    return int(prior.event_shape[0])


def support_transform(prior: Distribution) -> Transform:
    """``T: R^d -> support`` with event_dim 1 (its log-det is summed over coordinates)."""
    t = biject_to(prior.support)
    if t.codomain.event_dim == 0:
        t = torch.distributions.transforms.IndependentTransform(t, 1)
    return t


def is_unbounded(prior: Distribution) -> bool:
    """True when the support is all of R^d (then ``T`` is the identity)."""
    s = prior.support
    while isinstance(s, constraints.independent):
        s = s.base_constraint
    return s is constraints.real


def in_support(prior: Distribution, theta: Tensor) -> Tensor:
    """Boolean ``(...)``: whether each ``theta (..., d)`` lies in the prior's support."""
    ok = prior.support.check(theta)
    if ok.dim() == theta.dim():  # an elementwise constraint: all coordinates must pass
        ok = ok.all(-1)
    return ok & torch.isfinite(theta).all(-1)


def safe_log_prob(prior: Distribution, theta: Tensor) -> Tensor:
    """``log p(theta)`` of shape ``(...)``, ``-inf`` outside the support (never a validation error)."""
    ok = in_support(prior, theta)
    if bool(ok.all()):
        return prior.log_prob(theta)
    inside = support_transform(prior)(torch.zeros_like(theta))  # any point of the support will do
    lp = prior.log_prob(torch.where(ok.unsqueeze(-1), theta, inside))
    return lp.masked_fill(~ok, -float("inf"))
