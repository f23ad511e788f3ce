"""Affine autoregressive layers on MADE: IAF (Kingma et al. 2016) and MAF
(Papamakarios et al. 2017) are the same map used in opposite directions.

* IAF (``cheap="sample"``): ``x = z * exp(s(z)) + m(z)``. Sampling and its
  log-density are one MADE pass; the inverse is exact but sequential (``dim``
  passes).
* MAF (``cheap="density"``): ``z = (x - m(x)) * exp(-s(x))``. Density is one pass;
  sampling is sequential.
"""
from __future__ import annotations

from typing import Sequence

from .base import FlowLayer, soft_clamp
from .made import MADE


class AffineAutoregressive(FlowLayer):
    """Affine autoregressive step; ``(m, s)`` come from a MADE of the input in the
    cheap direction (plus the context). Log-scales are soft-clamped to
    ``(-scale_bound, scale_bound)``; the MADE's zero last layer starts it at the identity.
    Shapes as for every ``FlowLayer``.
    """

    inverse_kind = "exact"

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        order: Sequence[int] | None = None,
        cheap: str = "sample",
        scale_bound: float = 5.0,
    ):
        super().__init__(dim, context_dim)
        if cheap not in ("sample", "density"):
            raise ValueError(f"cheap must be 'sample' (IAF) or 'density' (MAF), got {cheap!r}")
        self.cheap_direction = cheap
        self.scale_bound = float(scale_bound)
        self.made = MADE(dim, 2, hidden, context_dim, order)

    def _shift_logscale(self, v, context):
        out = self.made(v, context)
        return out[..., 0, :], soft_clamp(out[..., 1, :], self.scale_bound)

    def _one_pass_forward(self, z, context):
        m, s = self._shift_logscale(z, context)
        return z * s.exp() + m, s.sum(-1)

    def _one_pass_inverse(self, x, context):
        m, s = self._shift_logscale(x, context)
        return (x - m) * (-s).exp(), s.sum(-1)

    def _sequential(self, v, context, step):
        # after pass k the first k variables in the MADE order are exact; dim passes finish
        out = v
        for _ in range(self.dim):
            m, s = self._shift_logscale(out, context)
            out = step(v, m, s)
        return out, s.sum(-1)

    def forward_and_log_det(self, z, context=None):
        self._check(z, context)
        if self.cheap_direction == "sample":
            return self._one_pass_forward(z, context)
        return self._sequential(z, context, lambda z, m, s: z * s.exp() + m)

    def inverse_and_log_det(self, x, context=None):
        self._check(x, context)
        if self.cheap_direction == "density":
            return self._one_pass_inverse(x, context)
        return self._sequential(x, context, lambda x, m, s: (x - m) * (-s).exp())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, cheap={self.cheap_direction!r}"


def IAF(dim: int, **kwargs) -> AffineAutoregressive:
    """Inverse autoregressive flow step: cheap sampling (VI)."""
    return AffineAutoregressive(dim, cheap="sample", **kwargs)


def MAF(dim: int, **kwargs) -> AffineAutoregressive:
    """Masked autoregressive flow step: cheap density (maximum likelihood, SBI)."""
    return AffineAutoregressive(dim, cheap="density", **kwargs)
