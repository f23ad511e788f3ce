"""A stack of flow layers over a base distribution, and the distribution it defines.

``Flow`` is an ``nn.Module``; calling it with an optional context returns a
``FlowDistribution``, which is a Pyro ``TransformedDistribution`` (so
``pyro.sample("z", flow())`` works) with two fast paths:

* ``rsample_and_log_prob(shape)``: samples and their log-density from one
  sampling pass, log q(x) = log p_Z(z) - sum log|det J|, with no inverse;
* ``log_prob(x)``: one density pass through each layer's inverse (numerical for
  planar and Sylvester); a point that this distribution object sampled last is
  scored from the sampling pass, with no inverse at all.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import pyro.distributions as pdist
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import FlowLayer, broadcast_shapes, inverse_softplus

_ORDER = {"exact": 0, "numerical": 1, "none": 2}


class StandardNormal(nn.Module):
    """N(0, I) over R^dim; ``forward(batch_shape)`` returns the distribution."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("loc", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))

    def forward(self, batch_shape: Sequence[int] = ()) -> pdist.TorchDistribution:
        # parameter-free, so one distribution object per shape/dtype/device serves every call
        key = (tuple(batch_shape), self.loc.dtype, self.loc.device)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            shape = torch.Size(batch_shape) + (self.dim,)
            cache[key] = pdist.Normal(self.loc.expand(shape), self.scale.expand(shape)).to_event(1)
        return cache[key]

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, I)`` over the last axis: ``(..., dim) -> (...)``.

        The value ``forward(...).log_prob(x)`` gives, without the distribution's per-call
        argument validation and Python-number operands (a flow's training step pays them).
        """
        return torch.add(_log_normaliser(self.dim), x.square().sum(-1), alpha=-0.5)


@functools.lru_cache(maxsize=None)
def _log_normaliser(dim: int) -> Tensor:
    # a 0-dim CPU float64 tensor: it takes the other operand's dtype and device
    return torch.tensor(-0.5 * dim * math.log(2 * math.pi), dtype=torch.float64)


class StudentTBase(nn.Module):
    """Standard Student-t base (independent coordinates) for heavy-tailed targets.

    Args:
        dim: event size.
        df: initial degrees of freedom (> 0).
        learn_df: make ``df`` a learnable parameter (kept > 0 by a softplus).
    """

    def __init__(self, dim: int, df: float = 5.0, learn_df: bool = True):
        super().__init__()
        self.dim = int(dim)
        raw = torch.full((self.dim,), inverse_softplus(float(df)))
        if learn_df:
            self.raw_df = nn.Parameter(raw)
        else:
            self.register_buffer("raw_df", raw)
        self.register_buffer("loc", torch.zeros(self.dim))

    @property
    def df(self) -> Tensor:
        return F.softplus(self.raw_df)

    def forward(self, batch_shape: Sequence[int] = ()) -> pdist.TorchDistribution:
        shape = torch.Size(batch_shape) + (self.dim,)
        one = torch.ones_like(self.loc)
        return pdist.StudentT(self.df.expand(shape), self.loc.expand(shape), one.expand(shape)).to_event(1)


def _check_finite(v: Tensor, what: str) -> None:
    if not torch.isfinite(v).all():
        bad = (~torch.isfinite(v)).nonzero()[:3].tolist()
        raise ValueError(f"{what} contains NaN or inf (first bad indices {bad}); clean it before calling the flow")


class FlowDistribution(pdist.TransformedDistribution):
    """The distribution of ``x = f_K(...f_1(z))``, ``z ~ base``; built by ``Flow``.

    ``batch_shape`` is the context's batch shape (``()`` without context),
    ``event_shape`` is ``(dim,)``.  Samples of shape ``sample_shape`` have shape
    ``(*sample_shape, *batch_shape, dim)``.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, flow: "Flow", context: Tensor | None = None, batch_shape: Sequence[int] | None = None):
        self.flow = flow
        self.context = context
        if batch_shape is None:
            batch_shape = context.shape[:-1] if context is not None else torch.Size()
        batch_shape = torch.Size(batch_shape)
        # set up what TransformedDistribution.__init__ would, without its per-call shape
        # inference: the event is always (dim,) and the batch is the context's
        self.base_dist = flow.base(batch_shape)
        self.transforms = [layer.condition(context) if context is not None else layer for layer in flow.layers]
        torch.distributions.Distribution.__init__(self, batch_shape, torch.Size([flow.dim]), validate_args=False)
        self._last = None

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = torch.Size()) -> tuple[Tensor, Tensor]:
        """Draw ``x`` and ``log q(x)`` in one sampling pass (no inverse).

        Returns ``x`` of shape ``(*sample_shape, *batch_shape, dim)`` and the
        log-density of shape ``(*sample_shape, *batch_shape)``.
        """
        z = self.base_dist.rsample(torch.Size(sample_shape))
        lp = self._base_log_prob(z)
        for layer in self.flow.layers:
            z, ladj = layer.forward_and_log_det(z, self.context)
            lp = lp - ladj
        self._last = (z, lp)
        return z, lp

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at ``x`` of shape ``(..., dim)`` (broadcast against batch_shape)."""
        last = self._last
        if last is not None and x is last[0]:
            return last[1]
        self.flow._check_value(x, "x")
        ladj_sum = None
        for layer in reversed(self.flow.layers):
            x, ladj = layer.inverse_and_log_det(x, self.context)
            ladj_sum = ladj if ladj_sum is None else ladj_sum + ladj
        base = self._base_log_prob(x)
        return base if ladj_sum is None else base - ladj_sum

    def _base_log_prob(self, v: Tensor) -> Tensor:
        if not isinstance(self.flow.base, StandardNormal):
            return self.base_dist.log_prob(v)
        lp = self.flow.base.log_prob(v)
        shape = broadcast_shapes(lp.shape, self.batch_shape)
        return lp if lp.shape == shape else lp.expand(shape)

    def expand(self, batch_shape, _instance=None):
        """Independent copies over ``batch_shape`` (as Pyro's plates and vectorised
        particles ask): the layers broadcast over any leading batch dims."""
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        context = self.context
        if context is not None:
            context = context.expand(*batch_shape, context.shape[-1])
        return FlowDistribution(self.flow, context, batch_shape)


class Flow(nn.Module):
    """A normalizing flow: ``layers`` applied in order to draws of ``base``.

    Args:
        layers: flow layers, applied in the sampling direction z -> x in list order.
        dim: event size; inferred from the layers when omitted.
        context_dim: context size (0: unconditional); inferred from the layers.
        base: base distribution module (``StandardNormal(dim)`` by default).

    ``flow(context)`` returns a ``FlowDistribution``; for an unconditional flow
    ``flow.rsample_and_log_prob((n,))`` etc. work directly.
    """

    def __init__(
        self,
        layers: Sequence[FlowLayer],
        dim: int | None = None,
        context_dim: int | None = None,
        base: nn.Module | None = None,
    ):
        super().__init__()
        layers = list(layers)
        dims = {layer.dim for layer in layers}
        if dim is not None:
            dims.add(int(dim))
        if len(dims) != 1:
            raise ValueError(f"all layers must share one dim, got dims {sorted(dims)}")
        self.dim = dims.pop()
        ctx = {layer.context_dim for layer in layers if layer.context_dim}
        if context_dim:
            ctx.add(int(context_dim))
        if len(ctx) > 1:
            raise ValueError(f"conditional layers disagree on context_dim: {sorted(ctx)}")
        self.context_dim = ctx.pop() if ctx else 0
        self.layers = nn.ModuleList(layers)
        self.base = base if base is not None else StandardNormal(self.dim)

    @property
    def inverse_kind(self) -> str:
        """The weakest inverse among the layers: exact, numerical or none."""
        kinds = [layer.inverse_kind for layer in self.layers] or ["exact"]
        return max(kinds, key=_ORDER.__getitem__)

    def _reference(self) -> Tensor:
        for t in self.base.buffers():
            return t
        return next(self.parameters())

    def _check_value(self, v: Tensor, what: str) -> None:
        if not isinstance(v, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(v).__name__}")
        if v.shape[-1:] != (self.dim,):
            raise ValueError(f"{what} must have shape (..., {self.dim}), got {tuple(v.shape)}")
        ref = self._reference()
        if v.dtype != ref.dtype:
            raise TypeError(f"{what} has dtype {v.dtype} but the flow is {ref.dtype}; use flow.to({v.dtype}) or cast {what}")
        _check_finite(v, what)

    def forward(self, context: Tensor | None = None) -> FlowDistribution:
        if self.context_dim:
            if context is None:
                raise ValueError(f"this flow is conditional (context_dim={self.context_dim}): call flow(context)")
            if not isinstance(context, Tensor) or context.shape[-1:] != (self.context_dim,):
                shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
                raise ValueError(f"context must have shape (..., {self.context_dim}), got {shape}")
            _check_finite(context, "context")
        elif context is not None:
            raise ValueError("this flow is unconditional (context_dim=0) but a context was given")
        return FlowDistribution(self, context)

    # -- shortcuts: flow.method(..., context=c) == flow(c).method(...) ---------------
    def rsample_and_log_prob(self, sample_shape=torch.Size(), context: Tensor | None = None):
        """See ``FlowDistribution.rsample_and_log_prob``."""
        return self(context).rsample_and_log_prob(sample_shape)

    def rsample(self, sample_shape=torch.Size(), context: Tensor | None = None) -> Tensor:
        return self(context).rsample(sample_shape)

    def sample(self, sample_shape=torch.Size(), context: Tensor | None = None) -> Tensor:
        return self(context).sample(sample_shape)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self(context).log_prob(x)

