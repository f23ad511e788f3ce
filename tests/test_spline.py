"""Rational-quadratic splines: the elementwise map against independent computations
(autograd, its own inverse, Pyro's implementation, knots computed here from the
paper's parameterisation), and the two spline layers."""
import math
import warnings

import pyro.distributions.transforms as T
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from pyro.distributions.transforms.spline import _monotonic_rational_spline as pyro_rq_spline

from flowvi.flows.spline import MIN_DERIVATIVE, MIN_HEIGHT, MIN_WIDTH, SplineAutoregressive, SplineCoupling, rq_spline

from flowcheck import check_logdet, check_roundtrip, randomize

B = 5.0
K = 8
F64 = torch.float64


def raw(n=1, bins=K, scale=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 3 * bins - 1, generator=g, dtype=dtype)


def knots(p, bound=B, bins=K):
    """Knot x- and y-positions from the paper's parameterisation, computed here: (n, K+1) each."""
    def positions(u, minimum):
        size = minimum + (1 - minimum * bins) * torch.softmax(u, -1)
        return -bound + 2 * bound * F.pad(size.cumsum(-1), (1, 0))

    return positions(p[:, :bins], MIN_WIDTH), positions(p[:, bins : 2 * bins], MIN_HEIGHT)


# -- Pyro's convention ---------------------------------------------------------------
@pytest.mark.parametrize("order", ["linear", "quadratic"])
def test_pyro_spline_is_identity_outside_its_default_bound_3(order):
    torch.manual_seed(0)
    t = T.Spline(1, count_bins=8, order=order)  # bound defaults to 3.0
    assert t.bound == 3.0
    with torch.no_grad():
        for p in t.parameters():
            p.normal_()
    x = torch.tensor([[-7.0], [-3.5], [-3.0001], [3.0001], [3.5], [10.0]])
    torch.testing.assert_close(t(x), x, atol=0, rtol=0)
    assert not torch.allclose(t(torch.tensor([[0.5]])), torch.tensor([[0.5]]))


def test_matches_pyro_inside_interior_bins_and_differs_by_design_at_the_ends():
    """With identical unnormalised widths/heights, and Pyro's derivative parameters
    shifted by our zero-means-slope-1 offset, the maps agree wherever the outer knots
    do not enter: bins 1..K-2. In the two end bins they differ because Pyro pads the
    end derivatives with ``1 - min_derivative`` (a kink at ±bound), flowvi with 1."""
    n = 400
    p = raw(n, scale=1.5, seed=3)
    kx, _ = knots(p)
    g = torch.Generator().manual_seed(1)
    # a point well inside an interior bin of each row (Pyro assigns points within
    # 1e-6 above a knot to the lower bin, so stay clear of the knots)
    k = torch.randint(1, K - 1, (n,), generator=g)
    frac = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64)
    left, right = kx.gather(-1, k[:, None])[:, 0], kx.gather(-1, k[:, None] + 1)[:, 0]
    x = left + frac * (right - left)
    ours_y, ours_ld = rq_spline(x, p, B)
    shift = math.log(math.expm1(1 - MIN_DERIVATIVE))  # inverse softplus
    w, h, d = p[:, :K], p[:, K : 2 * K], p[:, 2 * K :]
    args = (F.softmax(w, -1), F.softmax(h, -1), F.softplus(d + shift))
    pyro_y, pyro_ld = pyro_rq_spline(x, *args, bound=B)
    torch.testing.assert_close(ours_y, pyro_y, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours_ld, pyro_ld, atol=1e-10, rtol=0)
    pyro_x, _ = pyro_rq_spline(ours_y, *args, bound=B, inverse=True)
    torch.testing.assert_close(rq_spline(ours_y, p, B, inverse=True)[0], pyro_x, atol=1e-10, rtol=0)
    # the ends: Pyro's slope at the bound is 1 - min_derivative, ours is 1 (C1)
    edge = torch.full((n,), -B, dtype=F64)
    torch.testing.assert_close(pyro_rq_spline(edge, *args, bound=B)[1], torch.full((n,), math.log(1 - MIN_DERIVATIVE), dtype=F64))
    torch.testing.assert_close(rq_spline(edge, p, B)[1], torch.zeros(n, dtype=F64), atol=1e-12, rtol=0)


# -- the elementwise map ---------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_monotone_identity_outside_and_c1_at_every_knot(seed):
    x = torch.linspace(-8, 8, 20001, dtype=F64)
    p = raw(scale=2.0, seed=seed)
    y, logd = rq_spline(x, p, B)
    outside = x.abs() > B
    torch.testing.assert_close(y[outside], x[outside], atol=0, rtol=0)
    assert (logd[outside] == 0).all()
    assert torch.all(y[1:] > y[:-1])
    # knots map onto knots, and left/right slopes agree there (the outer ones are 1)
    kx, ky = knots(p)
    pk = p.expand(K + 1, -1)
    torch.testing.assert_close(rq_spline(kx[0], pk, B)[0], ky[0], atol=1e-12, rtol=0)
    eps = 1e-10  # bins can be narrow and steep: stay very close to the knot
    _, left = rq_spline(kx[0] - eps, pk, B)
    _, right = rq_spline(kx[0] + eps, pk, B)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(left[[0, -1]], torch.zeros(2, dtype=F64), atol=1e-5, rtol=0)


def test_round_trip_on_knots_bounds_and_far_outside_float64():
    p = raw(scale=2.0, seed=5)
    kx, ky = knots(p)
    x = torch.cat([kx[0], torch.tensor([-1e6, -B - 1e-12, -B + 1e-12, 0.0, B - 1e-12, B + 1e-12, 1e6, 1e300], dtype=F64)])
    x = torch.cat([x, torch.linspace(-6, 6, 201, dtype=F64)])
    pe = p.expand(len(x), -1)
    y, ld = rq_spline(x, pe, B)
    x2, ld2 = rq_spline(y, pe, B, inverse=True)
    torch.testing.assert_close(x2, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld2, ld, atol=1e-10, rtol=0)
    # and from the other side: outputs exactly on the y-knots
    z, ldz = rq_spline(ky[0], p.expand(K + 1, -1), B, inverse=True)
    torch.testing.assert_close(z, kx[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(rq_spline(z, p.expand(K + 1, -1), B)[1], ldz, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scale", [1.0, 3.0, 1e6])
def test_float32_is_finite_everywhere_and_round_trips(scale):
    p = raw(64, scale=scale, seed=2, dtype=torch.float32).requires_grad_()
    kx, ky = knots(p.detach().double())
    x = torch.cat([kx, torch.tensor([[-1e30, -B, B, 1e30, 0.0, 3.0, -4.9999]], dtype=F64).expand(64, -1)], -1).float()
    x = x.t()  # (K+8, 64): each row against the 64 parameter sets
    y, ld = rq_spline(x, p, B)
    x2, ld2 = rq_spline(y, p, B, inverse=True)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all() and torch.isfinite(x2).all() and torch.isfinite(ld2).all()
    (ld.sum() + y.sum() + x2.sum() + ld2.sum()).backward()
    assert torch.isfinite(p.grad).all()
    # Slopes range from ~1e-6 to ~1e3 with these parameters: no float32 inverse can
    # beat the conditioning bound |dx| ~ eps * |y| / f'(x), so that is what is asked
    # (the textbook b^2 - 4ac discriminant, which cancels when s >> d, misses it by
    # 3x at scale 3 and 200x at scale 1e6).
    inside = x.abs() <= B
    allowed = 64 * torch.finfo(torch.float32).eps * B / ld.exp() + 1e-6
    assert ((x2 - x).abs() <= allowed)[inside].all()


@pytest.mark.parametrize("inverse", [False, True])
def test_log_derivative_matches_autograd(inverse):
    v = torch.linspace(-5.5, 5.5, 111, dtype=F64).requires_grad_()
    p = raw(scale=1.5, seed=4).expand(len(v), -1)
    out, ld = rq_spline(v, p, B, inverse=inverse)
    (dv,) = torch.autograd.grad(out.sum(), v)
    # inverse: the reported value is log f'(z) = -log (f^-1)'(x)
    torch.testing.assert_close(ld, -dv.log() if inverse else dv.log(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("inverse", [False, True])
def test_parameter_gradients_match_finite_differences(inverse):
    x = torch.tensor([-6.0, -B, -3.3, -0.7, 0.0, 1.9, 4.2, B, 8.0], dtype=F64)
    p = raw(len(x), bins=4, scale=1.0, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: rq_spline(x, q, B, inverse=inverse), (p,))


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_in_point_and_parameters_match_finite_differences(inverse, seed):
    """Gradients of the value and the log-derivative with respect to the point and the
    parameters together (both directions), with points in every bin, first and last
    included, and broadcast parameters; points outside the bound are covered above."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(3, 12, generator=g, dtype=F64) * 2 - 1) * (B - 0.05)
    x[0, :2] = torch.tensor([-B, B], dtype=F64) * (1 - 1e-3)  # inside the end bins whatever the widths
    p = raw(12, bins=5, scale=1.5, seed=seed + 10).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, q: rq_spline(v, q, B, inverse=inverse), (x.requires_grad_(), p))


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(0.0, 6.0),
    seed=st.integers(0, 2**16),
    bins=st.integers(1, 12),
    bound=st.floats(0.5, 10.0),
)
def test_round_trip_property_float64(scale, seed, bins, bound):
    p = raw(64, bins=bins, scale=scale, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = bound * (2.4 * torch.rand(64, generator=g, dtype=F64) - 1.2)
    y, ld = rq_spline(x, p, bound)
    x2, ld2 = rq_spline(y, p, bound, inverse=True)
    assert torch.all(torch.isfinite(y)) and torch.all(torch.isfinite(ld))
    # forward error within the conditioning bound eps * |y| / f'(x)
    allowed = 256 * torch.finfo(F64).eps * bound / ld.exp() + 1e-13
    assert torch.all((x2 - x).abs() <= allowed)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_zero_parameters_are_the_identity(dtype):
    x = torch.linspace(-6, 6, 241, dtype=dtype)
    for inverse in (False, True):
        y, ld = rq_spline(x, torch.zeros(len(x), 3 * K - 1, dtype=dtype), B, inverse=inverse)
        tol = 1e-12 if dtype == F64 else 2e-6
        torch.testing.assert_close(y, x, atol=tol, rtol=0)
        torch.testing.assert_close(ld, torch.zeros_like(x), atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_module_constants_follow_the_inputs_device_and_dtype(dtype):
    # the spline keeps a few constants as CPU tensors (cheaper than Python numbers per op):
    # a non-CPU input (here the shape-only "meta" device) must not meet a CPU tensor, and a
    # float32 input must stay float32
    for inverse in (False, True):
        for ax, (xs, ps) in {-1: ((4, 3), (4, 3, 3 * K - 1)), -2: ((4, 3), (4, 3 * K - 1, 3))}.items():
            y, ld = rq_spline(torch.zeros(xs, device="meta", dtype=dtype), torch.zeros(ps, device="meta", dtype=dtype),
                              B, inverse, param_dim=ax)
            assert y.device.type == ld.device.type == "meta" and y.dtype == ld.dtype == dtype
            assert y.shape == ld.shape == xs
        y, ld = rq_spline(torch.randn(50, dtype=dtype), torch.randn(50, 3 * K - 1, dtype=dtype), B, inverse)
        assert y.dtype == ld.dtype == dtype


def test_parameter_major_layout_and_broadcasting_agree():
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(5, 7, 3, generator=g, dtype=F64)
    p = torch.randn(7, 3, 3 * K - 1, generator=g, dtype=F64)  # broadcasts over the leading 5
    for inverse in (False, True):
        y1, l1 = rq_spline(x, p, B, inverse)
        y2, l2 = rq_spline(x, p.transpose(-1, -2), B, inverse, param_dim=-2)
        y3, l3 = rq_spline(x, p.expand(5, 7, 3, -1).contiguous(), B, inverse)
        assert y1.shape == l1.shape == (5, 7, 3)
        for a, b in [(y1, y2), (l1, l2), (y1, y3), (l1, l3)]:
            torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
    # a scalar x against a batch of parameter sets
    y, ld = rq_spline(torch.tensor(0.3, dtype=F64), p[0], B)
    assert y.shape == ld.shape == (3,)


def test_one_bin_is_the_identity_and_bad_counts_raise():
    x = torch.linspace(-6, 6, 13, dtype=F64)
    y, ld = rq_spline(x, torch.randn(13, 2, dtype=F64), B)
    torch.testing.assert_close(y, x)
    with pytest.raises(ValueError, match="3K-1"):
        rq_spline(x, torch.zeros(13, 4, dtype=F64), B)


# -- the layers ----------------------------------------------------------------------------
def layer(kind, dim, context_dim=0, seed=0, **kw):
    torch.manual_seed(seed)
    if kind == "coupling":
        lay = SplineCoupling(dim, bins=5, bound=3.0, hidden=(16, 16), context_dim=context_dim, **kw)
    else:
        lay = SplineAutoregressive(dim, bins=5, bound=3.0, hidden=(16, 16), context_dim=context_dim, cheap=kind, **kw)
    randomize(lay, 0.3, seed)
    return lay.double()


KINDS = ["coupling", "sample", "density"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim,context_dim", [(1, 0), (1, 2), (3, 0), (4, 2)])
def test_layers_logdet_and_round_trip(kind, dim, context_dim):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no zero-element nn.Linear for dim 1
        lay = layer(kind, dim, context_dim)
    check_logdet(lay, n=4)
    check_roundtrip(lay, n=32, atol=1e-10)


def test_coupling_parity_and_autoregressive_order_are_respected():
    z = torch.randn(6, 5, dtype=F64)
    for parity in (0, 1):
        x, _ = layer("coupling", 5, parity=parity).forward_and_log_det(z)
        kept = slice(1 - parity, None, 2)
        torch.testing.assert_close(x[:, kept], z[:, kept], atol=0, rtol=0)
    order = [2, 0, 1]  # variable 1 is first: its spline has constant parameters
    lay = layer("sample", 3, order=order)
    z = torch.randn(50, 3, dtype=F64)
    x, _ = lay.forward_and_log_det(z)
    z2 = z.clone()
    z2[:, [0, 2]] = torch.randn(50, 2, dtype=F64)
    torch.testing.assert_close(lay.forward_and_log_det(z2)[0][:, 1], x[:, 1])
    check_roundtrip(lay, atol=1e-10)


def test_cost_attributes():
    assert SplineCoupling(3).cheap_direction == "both"
    assert SplineAutoregressive(3).cheap_direction == "sample"
    assert SplineAutoregressive(3, cheap="density").cheap_direction == "density"
    for lay in (SplineCoupling(3), SplineAutoregressive(3), SplineAutoregressive(3, cheap="density")):
        assert lay.inverse_kind == "exact"
    with pytest.raises(ValueError, match="cheap"):
        SplineAutoregressive(3, cheap="both")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [1, 4])
def test_zero_init_is_identity(kind, dim):
    torch.manual_seed(0)
    lay = SplineCoupling(dim, context_dim=2) if kind == "coupling" else SplineAutoregressive(dim, context_dim=2, cheap=kind)
    z, c = 3 * torch.randn(20, dim), torch.randn(20, 2)
    for direction in (lay.forward_and_log_det, lay.inverse_and_log_det):
        x, ladj = direction(z, c)
        torch.testing.assert_close(x, z, atol=1e-5, rtol=0)
        torch.testing.assert_close(ladj, torch.zeros(20), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [1, 4])
def test_conditional_layers_differ_across_contexts_and_broadcast(kind, dim):
    lay = layer(kind, dim, context_dim=2)
    z = torch.randn(7, 3, dim, dtype=F64)
    c = torch.randn(3, 2, dtype=F64)
    x, ladj = lay.forward_and_log_det(z, c)
    assert x.shape == (7, 3, dim) and ladj.shape == (7, 3)
    x_other, _ = lay.forward_and_log_det(z, c.roll(1, 0))
    assert (x - x_other).abs().amax(-1).min() > 1e-6
    # a context with a larger batch than z: z broadcasts
    x1, l1 = lay.forward_and_log_det(z[0, 0], c)
    assert x1.shape == (3, dim) and l1.shape == (3,)
    torch.testing.assert_close(lay.inverse_and_log_det(x1, c)[0], z[0, 0].expand(3, dim))
    # condition(c) gives the plain Transform
    t = lay.condition(c)
    torch.testing.assert_close(t(z), x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim,context_dim", [(1, 0), (1, 2), (4, 0), (4, 2)])
def test_gradients_reach_every_parameter(kind, dim, context_dim):
    lay = layer(kind, dim, context_dim, seed=1)
    z = 2 * torch.randn(64, dim, dtype=F64)
    c = torch.randn(64, context_dim, dtype=F64) if context_dim else None
    for direction in (lay.forward_and_log_det, lay.inverse_and_log_det):
        lay.zero_grad()
        x, ladj = direction(z, c)
        ((x**2).sum() + ladj.sum()).backward()
        for name, prm in lay.named_parameters():
            if kind != "coupling" and dim == 1 and not context_dim and name != f"made.net.{len(lay.made.net) - 1}.bias":
                continue  # MADE with one variable and no context: its output is the output bias alone
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
            assert prm.grad.abs().sum() > 0, name


def test_float32_layers_on_extreme_inputs():
    for kind in KINDS:
        lay = layer(kind, 3, context_dim=2).float()
        z = torch.tensor([[0.0, 3.0, -3.0], [1e6, -1e6, 2.9999], [-3.0001, 1e-30, 0.5]])
        c = torch.randn(3, 2)
        x, ladj = lay.forward_and_log_det(z, c)
        z2, ladj2 = lay.inverse_and_log_det(x, c)
        assert torch.isfinite(x).all() and torch.isfinite(ladj).all() and torch.isfinite(z2).all()
        # row 1's splines are conditioned on +-1e6: wild, so only finiteness is asked there
        torch.testing.assert_close(z2[[0, 2]], z[[0, 2]], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ladj2[[0, 2]], ladj[[0, 2]], atol=1e-4, rtol=0)
