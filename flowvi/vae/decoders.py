"""Decoders p(x|z): Bernoulli for binary data, Gaussian for continuous data.

Each wraps any ``net`` module mapping ``z (*, z_dim)`` to ``(*, x_dim)`` (logits or
means); by default an MLP. ``log_prob(x, z)`` sums over the x dimensions.
"""
from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as pdist
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import hidden_layers


def mlp_net(z_dim: int, x_dim: int, hidden: Sequence[int], gated: bool = False) -> nn.Sequential:
    """The default decoder trunk ``z -> hidden... -> x_dim`` (softplus activations, or
    ``GatedLinear`` units with ``gated=True``), with a linear output layer."""
    sizes = (int(z_dim), *(int(h) for h in hidden))
    return nn.Sequential(*hidden_layers(sizes, gated=gated), nn.Linear(sizes[-1], int(x_dim)))


class BernoulliDecoder(nn.Module):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(net(z)_i)), for 0/1 data."""

    binary = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``x`` (B, x_dim), ``z`` (*S, B, z_dim) -> (*S, B)."""
        logits = self.net(z)
        # -BCE with logits is the Bernoulli log-mass, stable for large |logits|
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def distribution(self, z: Tensor) -> pdist.TorchDistribution:
        """p(.|z) as a Pyro distribution with event shape (x_dim,)."""
        return pdist.Bernoulli(logits=self.net(z)).to_event(1)

    def mean(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z))


class GaussianDecoder(nn.Module):
    """p(x|z) = N(x; net(z), diag(sigma^2)).

    Args:
        net: z -> mean.
        x_dim: data size.
        scale: a float fixes sigma (same for every dimension); ``None`` learns one
            sigma per dimension (initialised at ``init_scale``).
        min_scale: floor on a learned sigma, so the likelihood cannot collapse onto
            a data point and diverge.
    """

    binary = False

    def __init__(self, net: nn.Module, x_dim: int, scale: float | None = None, init_scale: float = 1.0, min_scale: float = 1e-3):
        super().__init__()
        self.net = net
        self.min_scale = float(min_scale)
        if scale is None:
            self.learn_scale = True
            self.log_scale = nn.Parameter(torch.full((int(x_dim),), math.log(init_scale)))
        else:
            if not scale > 0:
                raise ValueError(f"scale must be > 0, got {scale!r}")
            self.learn_scale = False
            self.register_buffer("log_scale", torch.full((int(x_dim),), math.log(scale)))

    def scale(self) -> Tensor:
        s = self.log_scale.exp()
        return s.clamp_min(self.min_scale) if self.learn_scale else s

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``x`` (B, x_dim), ``z`` (*S, B, z_dim) -> (*S, B)."""
        mean, s = self.net(z), self.scale()
        return (-0.5 * ((x - mean) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def distribution(self, z: Tensor) -> pdist.TorchDistribution:
        mean = self.net(z)
        return pdist.Normal(mean, self.scale().expand_as(mean)).to_event(1)

    def mean(self, z: Tensor) -> Tensor:
        return self.net(z)
