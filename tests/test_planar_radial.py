"""Planar and radial layers: invertibility constraints for any raw parameters,
inverse accuracy (numerical for planar, closed form for radial), conditional
forms, gradients, and Pyro's conventions pinned."""
import pyro.distributions.transforms as T
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowvi.flows import Planar, Radial
from flowvi.flows.planar import solve_increasing

from flowcheck import randomize

F64 = torch.float64


def set_raw(layer, scale, seed):
    """Overwrite every parameter with scale * N(0, 1): arbitrary, possibly extreme, raw values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def jacobians(layer, z, context=None):
    """Per-point autograd Jacobians dx/dz, (n, dim, dim), independent of the layer's log-det."""
    J = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v, context)[0].sum(0), z)
    return J.permute(1, 0, 2)


# -- planar ---------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), scale=st.floats(0.1, 30.0), dim=st.sampled_from([1, 2, 5]))
def test_planar_constraint_holds_for_any_raw_parameters(seed, scale, dim):
    """Extreme raw values: w.u_hat >= -1 (up to rounding of w.u), finite log-dets everywhere."""
    layer = set_raw(Planar(dim), scale, seed).double()
    u, w, _ = layer.params.free
    u_hat, w, b = layer.vectors()
    assert (w * u_hat).sum() >= -1 - 1e-14 * (1 + (w * u).sum().abs())
    z = torch.randn(500, dim, dtype=F64, generator=torch.Generator().manual_seed(seed)) * 3
    z[0] = -b * w / (w @ w)  # where tanh' = 1: the point closest to singular
    x, ladj = layer.forward_and_log_det(z)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_planar_jacobian_determinant_is_positive(dim):
    """w.u from -15 to 15 (det J down to ~3e-7, well above autograd's rounding): autograd's
    det J is positive and equals exp(ladj), also where tanh' = 1."""
    g = torch.Generator().manual_seed(dim)
    for seed, a in enumerate(torch.linspace(-15, 15, 25).tolist()):
        layer = set_raw(Planar(dim), 2.0, seed).double()
        with torch.no_grad():
            u, w, b = layer.params.free
            u.add_((a - u @ w) * w / (w @ w))  # now w.u = a
        u_hat, w, b = layer.vectors()
        z = torch.randn(40, dim, dtype=F64, generator=g) * 3
        z[0] = -b * w / (w @ w)
        pre = (w * z).sum(-1) + b
        assert (1 + (w * u_hat).sum() * (1 - torch.tanh(pre) ** 2) > 0).all()
        det = torch.linalg.det(jacobians(layer, z))
        assert (det > 0).all()
        torch.testing.assert_close(det.log(), layer.forward_and_log_det(z)[1], atol=1e-8, rtol=1e-6)


def test_planar_matches_pyro_with_identical_parameters():
    """Pinned convention: m(a) = -1 + softplus(a) (the paper's, and Pyro's Planar)."""
    torch.manual_seed(0)
    ours, pyro_t = Planar(4).double(), T.Planar(4).double()
    set_raw(pyro_t, 1.5, 1)
    with torch.no_grad():
        for name, p in zip(("u", "w", "b"), ours.params.free):
            p.copy_(getattr(pyro_t, "bias" if name == "b" else name).reshape(p.shape))
    z = torch.randn(50, 4, dtype=F64)
    x_ref = pyro_t(z)
    x, ladj = ours.forward_and_log_det(z)
    torch.testing.assert_close(x, x_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, pyro_t.log_abs_det_jacobian(z, x_ref), atol=1e-12, rtol=0)


def planar_with(dim, a, seed):
    """A random planar layer with w.u = a (so w.u_hat = softplus(a) - 1)."""
    layer = set_raw(Planar(dim), 1.0, seed).double()
    with torch.no_grad():
        u, w, _ = layer.params.free
        u.add_((a - u @ w) * w / (w @ w))
    return layer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("a", [-5.0, -1.0, 0.0, 3.0])
def test_planar_numerical_inverse_accuracy(dtype, a):
    """Round trip to the accuracy the dtype and the map's conditioning allow, at points
    out to |z| ~ 1e4: |dz| <~ eps (1 + |z|) / slope, |d ladj| <~ eps (1 + |w| |x|) / slope^2,
    slope = det J (small where w.u_hat is near -1). About 1e-12 / 1e-6 for unit-size points."""
    eps = torch.finfo(dtype).eps
    for seed, spread in enumerate([1.0, 1e2, 1e4]):
        layer = planar_with(5, a, seed)
        z = spread * torch.randn(400, 5, dtype=F64, generator=torch.Generator().manual_seed(seed))
        ladj_true = layer.forward_and_log_det(z)[1].detach()
        slope, wnorm = ladj_true.exp(), layer.vectors()[1].norm().item()
        layer, z = layer.to(dtype), z.to(dtype)
        x = layer.forward_and_log_det(z)[0]
        z2, ladj2 = layer.inverse_and_log_det(x)
        dz = (z2 - z).double().abs().amax(-1)
        assert (dz <= 10 * eps * (1 + z.double().abs().amax(-1)) / slope).all()
        dl = (ladj2.double() - ladj_true).abs()
        assert (dl <= 10 * eps * (1 + wnorm * x.double().norm(dim=-1)) / slope**2).all()
        if spread == 1.0 and a >= -1:  # well conditioned: the advertised tolerances
            assert dz.max() < (1e-12 if dtype == F64 else 1e-5)


def test_planar_inverse_near_the_invertibility_edge():
    """With w.u_hat -> -1 the inverse is ill-conditioned; the solve still lands on the
    right x (forward residual) and never leaves its bracket (finite everywhere)."""
    layer = Planar(3).double()
    with torch.no_grad():
        w = torch.tensor([1.0, 0.5, -0.3], dtype=F64)
        layer.params.free[0].copy_(-40.0 * w / (w @ w))  # w.u = -40: w.u_hat = -1 + 4e-18
        layer.params.free[1].copy_(w)
        layer.params.free[2].fill_(0.2)
    x = torch.randn(300, 3, dtype=F64) * 2
    z, _ = layer.inverse_and_log_det(x)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(layer.forward_and_log_det(z)[0], x, atol=1e-9, rtol=0)


def test_solve_increasing_converges_in_its_bracket():
    target = torch.linspace(-1e6, 1e6, 1001, dtype=F64)
    v = solve_increasing(lambda v: (v**3 + v - target, 3 * v**2 + 1), target.abs().neg() - 1, target.abs() + 1)
    assert ((v**3 + v - target).abs() <= 1e-9 * (1 + target.abs())).all()


def test_planar_inverse_gradient_is_the_implicit_one():
    """d z / d x through the numerical inverse equals the inverse of the forward Jacobian."""
    layer = randomize_dtype(Planar(3), 0.8)
    x = torch.randn(6, 3, dtype=F64)
    Jinv = torch.autograd.functional.jacobian(lambda v: layer.inverse_and_log_det(v)[0].sum(0), x).permute(1, 0, 2)
    z = layer.inverse_and_log_det(x)[0].detach()
    torch.testing.assert_close(Jinv, torch.linalg.inv(jacobians(layer, z)), atol=1e-9, rtol=1e-9)


def randomize_dtype(layer, scale, seed=0):
    randomize(layer, scale, seed)
    return layer.double()


# -- radial ---------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), scale=st.floats(0.1, 30.0), dim=st.sampled_from([1, 2, 5]))
def test_radial_constraint_and_exact_inverse_for_any_raw_parameters(seed, scale, dim):
    """Any raw values: beta > -alpha, det J > 0, finite log-dets, and the closed-form inverse
    exact up to the map's own conditioning (near the centre a strongly contracting map
    leaves x - z0 with few significant digits; no inverse can recover more)."""
    layer = set_raw(Radial(dim), scale, seed).double()
    z0, alpha, beta = (t.detach() for t in layer.coefficients())
    # beta = s - alpha rounds to -alpha when s << alpha; the layer computes with s itself
    assert alpha > 0 and beta >= -alpha and layer._raw()[2] > 0
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([z0 + torch.randn(100, dim, dtype=F64, generator=g) * 3, z0.unsqueeze(0)])  # incl. the centre
    x, ladj = (t.detach() for t in layer.forward_and_log_det(z))
    assert torch.isfinite(ladj).all()
    assert (torch.linalg.det(jacobians(layer, z[:20])) > 0).all()
    z2, ladj2 = layer.inverse_and_log_det(x)
    # first-order error bound: the rounding of x (eps |x|) through the inverse's derivatives
    x_req = x.clone().requires_grad_(True)
    J_inv = torch.autograd.functional.jacobian(lambda v: layer.inverse_and_log_det(v)[0].sum(0), x).permute(1, 0, 2)
    dl_dx = torch.autograd.grad(layer.inverse_and_log_det(x_req)[1].sum(), x_req)[0]
    eps, size = torch.finfo(F64).eps, 1 + x.abs().amax(-1)
    bound_z = 64 * eps * (size * J_inv.abs().sum(-1).amax(-1) + 1 + z.abs().amax(-1))
    bound_l = 64 * eps * (size * dl_dx.abs().sum(-1) + 1 + ladj.abs())
    assert ((z2 - z).abs().amax(-1) <= bound_z).all()
    assert ((ladj2 - ladj).abs() <= bound_l).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("spread", [1e-3, 1.0, 1e4])
def test_radial_closed_form_roundtrip(dtype, tol, spread):
    for seed in range(3):
        layer = set_raw(Radial(4), 1.0, seed).to(dtype)
        z0 = layer.coefficients()[0].detach()
        z = z0 + spread * torch.randn(300, 4, dtype=dtype, generator=torch.Generator().manual_seed(seed))
        x, ladj = layer.forward_and_log_det(z)
        z2, ladj2 = layer.inverse_and_log_det(x)
        assert ((z2 - z).abs() <= tol * (1 + z.abs())).all()
        assert ((ladj2 - ladj).abs() <= tol * 10).all()


def test_radial_matches_pyro_with_identical_parameters():
    torch.manual_seed(0)
    ours, pyro_t = Radial(4).double(), T.Radial(4).double()
    set_raw(pyro_t, 1.2, 3)
    with torch.no_grad():
        for p, q in zip(ours.params.free, (pyro_t.x0, pyro_t.alpha_prime, pyro_t.beta_prime)):
            p.copy_(q.reshape(p.shape))
    z = torch.randn(50, 4, dtype=F64)
    x_ref = pyro_t(z)
    x, ladj = ours.forward_and_log_det(z)
    torch.testing.assert_close(x, x_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, pyro_t.log_abs_det_jacobian(z, x_ref), atol=1e-12, rtol=0)


# -- both: initialisation, conditional form, gradients -----------------------------------

CLASSES = [Planar, Radial]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dim,context_dim", [(1, 0), (3, 0), (50, 0), (3, 2)])
def test_near_identity_but_not_degenerate_at_init(cls, dim, context_dim):
    torch.manual_seed(0)
    layer = cls(dim, context_dim=context_dim, hidden=(8,))
    z = torch.randn(64, dim)
    c = torch.randn(64, context_dim) if context_dim else None
    x, ladj = layer.forward_and_log_det(z, c)
    assert (x - z).norm(dim=-1).max() < 0.1 and ladj.abs().max() < 0.05
    assert (x - z).abs().max() > 0  # not exactly the identity
    grads = torch.autograd.grad((x**2).sum() + ladj.sum(), list(layer.parameters()), allow_unused=True)
    # with a context, the hypernet's zero last layer shields the layers below it at init
    last = [g for g in grads if g is not None][-2:] if context_dim else grads
    assert all(g is not None and g.abs().max() > 0 for g in last)


@pytest.mark.parametrize("cls", CLASSES)
def test_conditional_maps_follow_the_context(cls):
    torch.manual_seed(0)
    layer = randomize_dtype(cls(3, context_dim=2, hidden=(8,)), 0.5)
    ctx = torch.randn(4, 2, dtype=F64)
    ctx[3] = ctx[1]
    z = torch.randn(5, 1, 3, dtype=F64).expand(5, 4, 3)  # the same points under every context row
    x, ladj = layer.forward_and_log_det(z, ctx)
    assert x.shape == (5, 4, 3) and ladj.shape == (5, 4)
    assert not torch.allclose(x[:, 0], x[:, 1])  # different contexts, different maps
    assert torch.equal(x[:, 1], x[:, 3]) and torch.equal(ladj[:, 1], ladj[:, 3])  # same row, same map
    for j in range(4):  # broadcasting equals conditioning on each row alone
        xj, lj = layer.forward_and_log_det(z[:, j], ctx[j])
        torch.testing.assert_close(xj, x[:, j], atol=1e-12, rtol=0)
        torch.testing.assert_close(lj, ladj[:, j], atol=1e-12, rtol=0)
    z2, ladj2 = layer.inverse_and_log_det(x, ctx)
    torch.testing.assert_close(z2, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(ladj2, ladj, atol=1e-9, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradient_reaches_every_parameter(cls, context_dim, direction):
    torch.manual_seed(0)
    layer = randomize_dtype(cls(3, context_dim=context_dim, hidden=(8, 8)), 0.5)
    v = torch.randn(16, 3, dtype=F64)
    c = torch.randn(16, context_dim, dtype=F64) if context_dim else None
    fn = layer.forward_and_log_det if direction == "forward" else layer.inverse_and_log_det
    out, ladj = fn(v, c)
    grads = torch.autograd.grad((out**2).sum() + ladj.sum(), list(layer.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)


@pytest.mark.parametrize("cls", CLASSES)
def test_float32_and_float64(cls):
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        layer = cls(3, context_dim=2, hidden=(8,)).to(dtype)
        x, ladj = layer.forward_and_log_det(torch.randn(7, 3, dtype=dtype), torch.randn(7, 2, dtype=dtype))
        z, ladj2 = layer.inverse_and_log_det(x, torch.randn(7, 2, dtype=dtype))
        assert x.dtype == ladj.dtype == z.dtype == ladj2.dtype == dtype


def test_declared_costs():
    assert (Planar.inverse_kind, Planar.cheap_direction) == ("numerical", "sample")
    assert (Radial.inverse_kind, Radial.cheap_direction) == ("exact", "both")
    assert "numerical" in Planar.__doc__ and "numerical" in Planar.inverse_and_log_det.__doc__.lower()
