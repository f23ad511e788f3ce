"""Independent checks shared by the flow tests: every claim a layer makes about
its maths is checked against a computation that does not use the layer's own
formula (autograd Jacobians, round trips, importance-sampling normalisation)."""
from __future__ import annotations


import torch

from flowvi.flows import Flow, FlowLayer, NotInvertibleError


def randomize(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> None:
    """Move every parameter away from its (often identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def autograd_logdet(layer: FlowLayer, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """log|det J_f(z)| from autograd's Jacobian, one point at a time. z: (n, dim)."""
    out = []
    for i in range(z.shape[0]):
        c = None if context is None else context[i]
        jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v, c)[0], z[i])
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def check_logdet(layer: FlowLayer, n: int = 6, seed: int = 0, atol: float = 1e-8) -> None:
    """The layer's log-det equals autograd's, in float64, with random parameters and context."""
    layer = layer.double()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, layer.dim, generator=g, dtype=torch.float64) * 1.5
    c = torch.randn(n, layer.context_dim, generator=g, dtype=torch.float64) if layer.context_dim else None
    _, ladj = layer.forward_and_log_det(z, c)
    assert ladj.shape == (n,), f"ladj shape {tuple(ladj.shape)} != ({n},)"
    torch.testing.assert_close(ladj, autograd_logdet(layer, z, c), atol=atol, rtol=1e-7)


def check_roundtrip(layer: FlowLayer, n: int = 64, seed: int = 0, atol: float = 1e-8) -> None:
    """inverse(forward(z)) == z and both directions report the same log-det (float64)."""
    layer = layer.double()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, layer.dim, generator=g, dtype=torch.float64) * 1.5
    c = torch.randn(n, layer.context_dim, generator=g, dtype=torch.float64) if layer.context_dim else None
    x, ladj = layer.forward_and_log_det(z, c)
    z2, ladj2 = layer.inverse_and_log_det(x, c)
    torch.testing.assert_close(z2, z, atol=atol, rtol=1e-7)
    torch.testing.assert_close(ladj2, ladj, atol=atol, rtol=1e-7)


def check_normalised(flow: Flow, seed: int = 0, context: torch.Tensor | None = None, grid: int = 600, tol: float = 3e-3) -> None:
    """A 2-D flow's density integrates to one: trapezoid quadrature of exp(log_prob)
    on a grid over a box that holds the draws with a wide margin (float64)."""
    assert flow.dim == 2, "grid quadrature check is for 2-D flows"
    flow = flow.double()
    torch.manual_seed(seed)
    contexts = [None] if context is None else list(context.double())
    with torch.no_grad():
        for c in contexts:
            d = flow(c)
            x = d.sample((4000,))
            lo, hi = x.min(0).values - 4.0, x.max(0).values + 4.0
            g0 = torch.linspace(float(lo[0]), float(hi[0]), grid, dtype=torch.float64)
            g1 = torch.linspace(float(lo[1]), float(hi[1]), grid, dtype=torch.float64)
            pts = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
            dens = flow(c).log_prob(pts).exp().reshape(grid, grid)
            mass = torch.trapezoid(torch.trapezoid(dens, g1, dim=1), g0)
            assert abs(float(mass) - 1) < tol, f"density integrates to {float(mass):.5f}, not 1"


def check_log_prob_matches(flow: Flow, n: int = 32, seed: int = 0, context: torch.Tensor | None = None, atol: float = 1e-8) -> None:
    """log_prob(x) through the inverse equals the log-density from the sampling pass."""
    flow = flow.double()
    torch.manual_seed(seed)
    d = flow(context)
    x, lq = d.rsample_and_log_prob((n,))
    x_copy = x.detach().clone()  # a new tensor, so the sampled-point cache is not used
    torch.testing.assert_close(flow(context).log_prob(x_copy), lq.detach(), atol=atol, rtol=1e-7)


def has_inverse(layer: FlowLayer) -> bool:
    return layer.inverse_kind != "none"


def expect_no_inverse(layer: FlowLayer) -> None:
    x = torch.randn(3, layer.dim, dtype=next(layer.parameters()).dtype)
    c = torch.randn(3, layer.context_dim, dtype=x.dtype) if layer.context_dim else None
    try:
        layer.inverse_and_log_det(x, c)
    except NotInvertibleError as e:
        assert "inverse" in str(e)
    else:
        raise AssertionError(f"{type(layer).__name__} claims no inverse but inverted silently")
