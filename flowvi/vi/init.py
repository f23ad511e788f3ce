"""A cheap Gaussian fit that starts the flow where the target is.

The flow ends with an LU-linear and a learnable ``ElementwiseAffine`` layer; the
layers before them start at the identity, so at initialisation q is a Gaussian.
``"advi"`` fits that Gaussian (full rank when the LU layer is there) by reverse KL
with only those layers trainable (robust, also for funnels where a mode is a bad
summary);
``"laplace"`` sets it from the MAP and the diagonal of the Hessian.
"""
from __future__ import annotations

import torch

from ..flows import ElementwiseAffine, Flow, LULinear
from .objectives import elbo_step


def final_affine(flow: Flow) -> ElementwiseAffine | None:
    """The trailing unconditional ``ElementwiseAffine`` of ``flow``, if any."""
    last = flow.layers[-1] if len(flow.layers) else None
    return last if isinstance(last, ElementwiseAffine) and last.context_dim == 0 else None


def gaussian_layers(flow: Flow) -> list[torch.nn.Module]:
    """The trailing affine layer and an LU layer just before it, if there is one:
    with the earlier layers at the identity, these alone make q a Gaussian."""
    affine = final_affine(flow)
    if affine is None:
        return []
    before = flow.layers[-2] if len(flow.layers) > 1 else None
    return [before, affine] if isinstance(before, LULinear) and before.context_dim == 0 else [affine]


def advi_init(flow: Flow, log_p, steps: int = 300, particles: int = 64, lr: float = 0.05) -> None:
    """Fit only the Gaussian part (final affine, and LU when present: full rank) by the ELBO."""
    layers = gaussian_layers(flow)
    if not layers or steps <= 0:
        return
    params = [p for layer in layers for p in layer.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = elbo_step(flow, log_p, particles)[0]
        opt.zero_grad()
        if not torch.isfinite(loss):
            continue
        loss.backward()
        if all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            opt.step()


def laplace_init(flow: Flow, log_p, max_iter: int = 200) -> None:
    """MAP by L-BFGS from the origin, scale from the diagonal Hessian; skipped if not finite."""
    affine = final_affine(flow)
    if affine is None:
        return
    ref = affine.params.free[0]  # dtype of the flow
    x = torch.zeros(flow.dim, dtype=ref.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([x], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -log_p(x[None])[0]
        loss.backward()
        return loss

    opt.step(closure)
    x = x.detach().requires_grad_(True)
    grad = torch.autograd.grad(log_p(x[None])[0], x, create_graph=True)[0]
    diag = torch.stack([-torch.autograd.grad(grad[i], x, retain_graph=True)[0][i] for i in range(flow.dim)])
    if not (torch.isfinite(x).all() and torch.isfinite(diag).all()):
        return
    scale = diag.clamp_min(1e-4).rsqrt().clamp(1e-3, 1e3)
    affine.set_loc_scale(x.detach(), scale)
