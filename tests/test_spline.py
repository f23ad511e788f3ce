"""The elementwise rational-quadratic spline, and Pyro's convention pinned."""
import pyro.distributions.transforms as T
import torch

from flowvi.flows.spline import rq_spline


def params(K=8, scale=1.0, seed=0, n=1):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 3 * K - 1, generator=g, dtype=torch.float64)


def test_pyro_spline_is_identity_outside_its_default_bound_3():
    t = T.Spline(1, count_bins=8)  # bound defaults to 3.0
    with torch.no_grad():
        for p in t.parameters():
            p.normal_()
    x = torch.tensor([[-7.0], [-3.5], [3.5], [10.0]])
    torch.testing.assert_close(t(x), x)
    assert not torch.allclose(t(torch.tensor([[0.5]])), torch.tensor([[0.5]]))


def test_identity_outside_bound_monotone_and_c1_inside():
    x = torch.linspace(-8, 8, 40001, dtype=torch.float64)
    p = params(n=1).expand(len(x), -1)
    y, logd = rq_spline(x, p, bound=5.0)
    outside = x.abs() > 5
    torch.testing.assert_close(y[outside], x[outside])
    assert torch.all(y[1:] > y[:-1])
    # C1: left and right derivatives agree at every knot, including the outer ones (slope 1)
    from flowvi.flows.spline import MIN_WIDTH, _knots

    knots = _knots(p[0, :8], 5.0, MIN_WIDTH)[1]
    eps = 1e-9
    _, left = rq_spline(knots - eps, p[: len(knots)], bound=5.0)
    _, right = rq_spline(knots + eps, p[: len(knots)], bound=5.0)
    torch.testing.assert_close(left.exp(), right.exp(), atol=1e-6, rtol=0)


def test_inverse_round_trip_on_knots_bounds_and_far_out():
    p = params(n=1, scale=2.0)
    x = torch.tensor([-100.0, -5.0, -4.999999, -1.25, 0.0, 2.5, 5.0, 100.0], dtype=torch.float64)
    pe = p.expand(len(x), -1)
    y, ld = rq_spline(x, pe, bound=5.0)
    x2, ld2 = rq_spline(y, pe, bound=5.0, inverse=True)
    torch.testing.assert_close(x2, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld2, ld, atol=1e-10, rtol=0)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()


def test_log_derivative_matches_autograd():
    x = torch.linspace(-4.9, 4.9, 97, dtype=torch.float64, requires_grad=True)
    y, ld = rq_spline(x, params(n=1, scale=1.5).expand(len(x), -1), bound=5.0)
    (dy,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ld, dy.log(), atol=1e-10, rtol=0)


def test_zero_parameters_are_the_identity():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    y, ld = rq_spline(x, torch.zeros(len(x), 23, dtype=torch.float64), bound=5.0)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ld, torch.zeros_like(x), atol=1e-12, rtol=0)
