"""The conditional density estimator ``q(theta | x)`` behind NPE.

Pipeline, data side: ``x -> z-score -> embedding net -> context c``.
Parameter side: ``theta -> u = T^{-1}(theta) -> z = (u - loc) / scale``, where
``T = biject_to(prior.support)``; the flow models ``q(z | c)``. Densities are
reported in theta space:

    log q(theta | x) = log q_flow(z | c) - sum(log scale) - log|det J_T(u)|

so a bounded prior's posterior has no mass outside the support, ``log_prob`` is
``-inf`` there, and sampling is one flow pass plus ``T`` (no rejection).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..flows import Flow
from .priors import in_support, safe_log_prob, support_transform
from .zscore import ZScore


def _ladj(transform, u: Tensor, theta: Tensor) -> Tensor:
    out = transform.log_abs_det_jacobian(u, theta)
    return out.sum(-1) if out.dim() == u.dim() else out


class PosteriorEstimator(nn.Module):
    """``q(theta | x)``: z-scoring, embedding net and conditional flow in one module.

    Args:
        prior: the prior (fixes the support map ``T``).
        flow: conditional ``Flow`` over ``R^d`` with ``context_dim`` = embedding output size.
        embedding: ``(B, *x_shape) -> (B, context_dim)``.
        theta_zscore: ``ZScore`` over ``u`` (event ``(d,)``).
        x_zscore: ``ZScore`` over ``x`` (event ``x_shape``).
        x_shape: shape of one observation.

    Shapes: ``theta (*S, *B, d)`` with ``x (*B, *x_shape)``; log-densities ``(*S, *B)``.
    """

    def __init__(self, prior: Distribution, flow: Flow, embedding: nn.Module, theta_zscore: ZScore,
                 x_zscore: ZScore, x_shape: Sequence[int]):
        super().__init__()
        self.prior = prior
        self.transform = support_transform(prior)
        self.flow = flow
        self.embedding = embedding
        self.theta_zscore = theta_zscore
        self.x_zscore = x_zscore
        self.x_shape = tuple(int(s) for s in x_shape)
        self.theta_dim = flow.dim

    @staticmethod
    def unbounded(prior: Distribution, theta: Tensor) -> Tensor:
        """``u = T^{-1}(theta)`` for ``theta (..., d)`` in the support of ``prior``."""
        return support_transform(prior).inv(theta)

    # -- data side ---------------------------------------------------------------------
    def context(self, x: Tensor) -> Tensor:
        """Embedded, standardised data: ``(*B, *x_shape) -> (*B, context_dim)``."""
        nb = x.dim() - len(self.x_shape)
        if nb < 0 or tuple(x.shape[nb:]) != self.x_shape:
            raise ValueError(f"x must have shape (..., {', '.join(map(str, self.x_shape))}), got {tuple(x.shape)}")
        batch = x.shape[:nb]
        flat = self.x_zscore(x.reshape(-1, *self.x_shape))
        return self.embedding(flat).reshape(*batch, -1)

    # -- parameter side --------------------------------------------------------------------
    def to_z(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``theta (..., d)`` in the support -> standardised unbounded ``z`` and ``log|det dz/dtheta|`` ``(...)``."""
        u = self.transform.inv(theta)
        ladj = -_ladj(self.transform, u, theta) - self.theta_zscore.log_scale_sum()
        return self.theta_zscore(u), ladj

    def from_z(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse of ``to_z``: ``theta`` and ``log|det dtheta/dz|`` ``(...)``."""
        u = self.theta_zscore.inverse(z)
        theta = self.transform(u)
        return theta, _ladj(self.transform, u, theta) + self.theta_zscore.log_scale_sum()

    def prior_log_prob_z(self, z: Tensor) -> Tensor:
        """Log prior density of ``z`` up to the constant ``sum(log scale)``: ``log p(T(u)) + log|J_T(u)|``.

        Used as the atomic-loss correction; the constant cancels in its softmax.
        """
        u = self.theta_zscore.inverse(z)
        theta = self.transform(u)
        return safe_log_prob(self.prior, theta) + _ladj(self.transform, u, theta)

    # -- densities ---------------------------------------------------------------------
    def log_prob_z(self, z: Tensor, context: Tensor) -> Tensor:
        """Flow density of standardised ``z (*S, *B, d)`` given ``context (*B, c)``."""
        return self.flow(context).log_prob(z)

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q(theta | x)`` in theta space; ``-inf`` outside the prior's support."""
        ok = in_support(self.prior, theta)
        if not bool(ok.all()):
            theta = torch.where(ok.unsqueeze(-1), theta, self.transform(torch.zeros_like(theta)))
        z, ladj = self.to_z(theta)
        finite = torch.isfinite(z).all(-1) & torch.isfinite(ladj)
        ok = ok & finite  # the boundary of a bounded support maps to infinity: density 0 there
        z = torch.where(finite.unsqueeze(-1), z, torch.zeros_like(z))
        ladj = torch.where(finite, ladj, torch.zeros_like(ladj))
        lp = self.log_prob_z(z, self.context(x)) + ladj
        return lp.masked_fill(~ok.expand(lp.shape), -float("inf"))

    def sample_and_log_prob(self, sample_shape: Sequence[int], x: Tensor) -> tuple[Tensor, Tensor]:
        """Draw ``theta (*sample_shape, *B, d)`` given ``x (*B, *x_shape)`` with ``log q(theta|x)``."""
        z, lz = self.flow(self.context(x)).rsample_and_log_prob(torch.Size(sample_shape))
        theta, ladj = self.from_z(z)
        return theta, lz - ladj

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int], x: Tensor) -> Tensor:
        """``theta (*sample_shape, *B, d)`` given ``x (*B, *x_shape)``; inside the support by construction."""
        return self.sample_and_log_prob(sample_shape, x)[0]
