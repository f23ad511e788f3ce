"""Affine autoregressive layers on MADE: IAF (Kingma et al. 2016) and MAF
(Papamakarios et al. 2017) are one map, ``x_i = z_i * exp(s_i) + m_i``, whose
``(m, s)`` are computed from whichever side is cheap.

* IAF (``cheap="sample"``): ``(m, s) = MADE(z)``. Sampling and its log-density
  are one MADE pass; the inverse is exact but sequential.
* MAF (``cheap="density"``): ``(m, s) = MADE(x)``, so ``z = (x - m) * exp(-s)``
  is one pass; sampling is sequential.

The sequential direction solves one variable per step, in the MADE order. A
step only runs the part of the MADE that the next variable depends on (see
``SequentialPlan``), so ``dim`` steps cost far less than ``dim`` full passes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .base import FlowLayer, broadcast_shapes, soft_clamp
from .made import MADE, MaskedLinear

# step(v_i, params_i) -> (u_i, log-scale_i), over the flattened batch:
# v_i, u_i, log-scale_i: (N,); params_i: (N, params_per_dim), MADE's outputs for variable i
Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _hidden_degrees(made: MADE) -> list[Tensor]:
    """Per hidden layer, the highest input rank each unit can see through the masks
    (-1: context and biases only). Read off the masks, not MADE's construction."""
    degrees, prev = [], made.rank
    for lin in [m for m in made.net if isinstance(m, MaskedLinear)][:-1]:
        sees = lin.mask[:, : len(prev)] > 0  # first layer: context columns dropped
        prev = torch.where(sees, prev[None, :], -1).amax(-1)
        degrees.append(prev)
    return degrees


class SequentialPlan(nn.Module):
    """Solve ``u_i = step(v_i, MADE(u)_i)`` for ``u``, one variable per step in the
    MADE order, running only what each step needs.

    Step ``k`` (the variable of rank ``k``) needs only hidden units that see ranks
    ``< k``. Hidden units are sorted by that degree, so those are a prefix of every
    layer; the first layer's pre-activation is updated by one column per solved
    variable (the context part is computed once), and only the solved variable's
    output rows are evaluated. Exact up to float rounding; differentiable.

    Holds no parameters: the MADE is passed at call time, so its weights are read
    fresh (they change during training). Assumes MADE's layout: ``net`` is masked
    linears with elementwise activations between them, the first one taking
    ``cat([x, context])``, the last one parameter-major (row ``p * dim + i``).
    """

    def __init__(self, made: MADE):
        super().__init__()
        self.dim, self.ppd = made.dim, made.params_per_dim
        self.var_by_rank = torch.argsort(made.rank).tolist()
        self.n_hidden = 0
        self.prefix: list[list[int]] = []  # prefix[l][k]: units of layer l that step k needs
        for l, deg in enumerate(_hidden_degrees(made)):
            self.register_buffer(f"perm{l}", torch.argsort(deg, stable=True), persistent=False)
            self.prefix.append([int((deg < k).sum()) for k in range(self.dim)])
            self.n_hidden += 1

    def _weights(self, made: MADE):
        lins = [m for m in made.net if isinstance(m, MaskedLinear)]
        acts = [m for m in made.net if not isinstance(m, MaskedLinear)]
        W = [lin.weight * lin.mask for lin in lins]
        b = [lin.bias for lin in lins]
        for l in range(self.n_hidden):
            perm = getattr(self, f"perm{l}")
            W[l], b[l] = W[l][perm], b[l][perm]
            W[l + 1] = W[l + 1][:, perm]
        return W, b, acts

    def forward(self, made: MADE, v: Tensor, context: Tensor | None, step: Step) -> tuple[Tensor, Tensor]:
        """``v``: ``(*batch, dim)``; returns ``u`` ``(*B, dim)`` and the summed
        log-scales ``(*B)``, ``B`` = broadcast of ``batch`` with the context's."""
        dim, ppd, L = self.dim, self.ppd, self.n_hidden
        W, b, acts = self._weights(made)
        batch = broadcast_shapes(v.shape[:-1], context.shape[:-1]) if made.context_dim else v.shape[:-1]
        # Work unit-major, (units, N): a step's prefix of units is then a contiguous block.
        vt = v.expand(*batch, dim).reshape(-1, dim).t().contiguous()
        n_points = vt.shape[1]
        if made.context_dim:  # the context's share of layer 1, computed once
            c = context.expand(*batch, made.context_dim).reshape(-1, made.context_dim)
            h = torch.addmm(b[0][:, None], W[0][:, dim:], c.t())
        else:
            h = b[0][:, None].expand(-1, n_points)
        w_in = W[0][:, :dim].t().contiguous()  # row j: what solving variable j adds to layer 1
        if L:  # output rows of variable j as one (ppd, units) block
            w_out = W[-1].unflatten(0, (ppd, dim)).transpose(0, 1).contiguous()
            b_out = b[-1].unflatten(0, (ppd, dim)).t().contiguous()[..., None]
        solved, logs = [None] * dim, []
        for k, j in enumerate(self.var_by_rank):
            if L:
                a = acts[0](h[: self.prefix[0][k]])
                for l in range(1, L):
                    n, n_prev = self.prefix[l][k], self.prefix[l - 1][k]
                    a = acts[l](torch.addmm(b[l][:n, None], W[l][:n, :n_prev], a))
                params = torch.addmm(b_out[j], w_out[j][:, : self.prefix[-1][k]], a)
            else:  # no hidden layer: h already is the output pre-activation
                params = h[j::dim]
            solved[j], s_j = step(vt[j], params.t())
            logs.append(s_j)
            if k < dim - 1:
                h = torch.addr(h, w_in[j], solved[j])
        return torch.stack(solved, -1).reshape(*batch, dim), torch.stack(logs).sum(0).reshape(batch)


class AffineAutoregressive(FlowLayer):
    """Affine autoregressive step ``x_i = z_i * exp(s_i) + m_i``: IAF or MAF.

    Args:
        dim: event size.
        hidden: MADE hidden sizes (>= ``dim`` each for full expressiveness).
        context_dim: context size (0: unconditional); the context feeds every
            MADE hidden unit.
        order: ``order[i]`` is the rank of variable ``i`` in the autoregressive
            order (default ``0..dim-1``); the builder puts permutations between layers.
        cheap: ``"sample"`` (IAF: ``(m, s) = MADE(z, c)``, z -> x in one pass) or
            ``"density"`` (MAF: ``(m, s) = MADE(x, c)``, x -> z in one pass). The
            other direction is exact and sequential (``dim`` partial MADE passes).
        scale_bound: log-scales are soft-clamped to ``(-scale_bound, scale_bound)``.

    Shapes: ``z``/``x`` ``(*batch, dim)``, context ``(*cbatch, context_dim)``;
    log-det ``broadcast(batch, cbatch)``. The MADE's zero last layer makes the
    layer the identity at initialisation.
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
        self.plan = SequentialPlan(self.made)

    def _shift_logscale(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        out = self.made(v, context)  # (*B, 2, dim): one pass gives both
        return out[..., 0, :], soft_clamp(out[..., 1, :], self.scale_bound)

    def _step_forward(self, z_i: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s = soft_clamp(params[..., 1], self.scale_bound)
        return torch.addcmul(params[..., 0], z_i, s.exp()), s

    def _step_inverse(self, x_i: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s = soft_clamp(params[..., 1], self.scale_bound)
        return (x_i - params[..., 0]) * torch.exp(-s), s

    def forward_and_log_det(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z -> x: one MADE pass for IAF, sequential for MAF."""
        self._check(z, context)
        if self.cheap_direction == "density":
            return self.plan(self.made, z, context, self._step_forward)
        m, s = self._shift_logscale(z, context)
        return torch.addcmul(m, z, s.exp()), s.sum(-1)

    def inverse_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x -> z: one MADE pass for MAF, sequential for IAF. Log-det of the forward map."""
        self._check(x, context)
        if self.cheap_direction == "sample":
            return self.plan(self.made, x, context, self._step_inverse)
        m, s = self._shift_logscale(x, context)
        return (x - m) * torch.exp(-s), s.sum(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, cheap={self.cheap_direction!r}"


def IAF(dim: int, **kwargs) -> AffineAutoregressive:
    """Inverse autoregressive flow step (cheap sampling: VI). Keywords as ``AffineAutoregressive``."""
    return AffineAutoregressive(dim, cheap="sample", **kwargs)


def MAF(dim: int, **kwargs) -> AffineAutoregressive:
    """Masked autoregressive flow step (cheap density: maximum likelihood). Keywords as ``AffineAutoregressive``."""
    return AffineAutoregressive(dim, cheap="density", **kwargs)
