"""RealNVP (AffineCoupling) and its parity mask: which coordinates move, that two
layers move all of them, dim == 1, the clamp, conditioning, gradients, and
Pyro's convention. References: autograd Jacobians and explicit index sets."""
import pyro.distributions.transforms as T
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowvi.flows import AffineCoupling
from flowvi.flows.coupling import CouplingMask

from flowcheck import check_logdet, check_roundtrip, randomize


def make(dim, parity=0, context_dim=0, hidden=(16, 16), seed=0, scale=0.5, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    layer = AffineCoupling(dim, hidden=hidden, context_dim=context_dim, parity=parity, **kw)
    randomize(layer, scale, seed)
    return layer.to(dtype)


def jacobian(layer, z, context=None):
    return torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v, context)[0], z)


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 6])
@pytest.mark.parametrize("parity", [0, 1])
def test_mask_split_merge(dim, parity):
    mask = CouplingMask(dim, parity)
    v = torch.arange(float(dim)).expand(4, dim)
    kept, moved = mask.split(v)
    moved_idx = [0] if dim == 1 else list(range(parity, dim, 2))
    assert moved[0].tolist() == moved_idx and mask.n_moved == len(moved_idx)
    assert kept[0].tolist() == [i for i in range(dim) if i not in moved_idx] and mask.n_kept == dim - len(moved_idx)
    assert torch.equal(mask.merge(kept, moved), v)
    assert torch.equal(mask.merge(kept[0], moved), v)  # kept broadcasts against moved
    assert torch.equal(mask.merge(kept, moved[0]), v)


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("parity", [0, 1])
def test_parity_picks_the_moved_half(dim, parity):
    """parity 0 moves the even indices given the odd ones; 1 the odd given the even."""
    layer = make(dim, parity)
    z = torch.randn(dim, dtype=torch.float64)
    J = jacobian(layer, z)
    moved = torch.zeros(dim, dtype=torch.bool)
    moved[parity::2] = True
    eye = torch.eye(dim, dtype=torch.float64)
    assert torch.equal(J[~moved], eye[~moved])  # kept rows: identity
    assert torch.equal(J[moved][:, moved], torch.diag_embed(J.diagonal()[moved]))  # moved: elementwise
    assert (J[moved][:, ~moved].abs().sum(-1) > 0).all()  # ... conditioned on the kept half
    x, ladj = layer.forward_and_log_det(z)
    torch.testing.assert_close(ladj, J.diagonal().log().sum())


@pytest.mark.parametrize("dim", [2, 3, 4, 7])
def test_two_layers_transform_every_coordinate(dim):
    a, b = make(dim, 0, seed=1), make(dim, 1, seed=2)
    z = torch.randn(dim, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: b.forward_and_log_det(a.forward_and_log_det(v)[0])[0], z)
    eye = torch.eye(dim, dtype=torch.float64)
    assert ((J - eye).abs().sum(-1) > 1e-8).all(), "some coordinate passes both layers unchanged"


@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("parity", [0, 1])
def test_dim_one(context_dim, parity):
    """Nothing to condition on: the coordinate still moves, given the context
    only, or through free parameters (an elementwise affine map) without one."""
    layer = make(1, parity, context_dim)
    assert (layer.net is None) == (context_dim == 0)
    z = torch.randn(5, 1, dtype=torch.float64)
    c = torch.randn(5, context_dim, dtype=torch.float64) if context_dim else None
    x, ladj = layer.forward_and_log_det(z, c)
    assert x.shape == (5, 1) and ladj.shape == (5,)
    assert (x - z).abs().min() > 0
    check_roundtrip(layer, atol=1e-10)
    check_logdet(layer)
    if context_dim:
        other, _ = layer.forward_and_log_det(z, c.roll(1, 0))
        assert (other - x).abs().max() > 1e-6
    else:  # free parameters: an affine map shared by every point
        t, s = layer._shift_logscale(None, None)
        torch.testing.assert_close(x, z * s.exp() + t)
        assert torch.equal(ladj, s.sum().expand(5))
    fresh = AffineCoupling(1, context_dim=context_dim)
    zz = torch.randn(3, 1)
    assert torch.equal(fresh.forward_and_log_det(zz, torch.randn(3, context_dim) if context_dim else None)[0], zz)


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("parity", [0, 1])
def test_roundtrip_and_logdet(dim, context_dim, parity):
    layer = make(dim, parity, context_dim)
    check_roundtrip(layer, atol=1e-10)
    check_logdet(layer)


def test_identity_at_init():
    layer = AffineCoupling(5, context_dim=2)
    z, c = torch.randn(4, 5), torch.randn(4, 2)
    for out, ladj in (layer.forward_and_log_det(z, c), layer.inverse_and_log_det(z, c)):
        assert torch.equal(out, z) and torch.equal(ladj, torch.zeros(4))


def test_clamp_keeps_huge_parameters_finite():
    dim, bound = 4, 3.0
    layer = AffineCoupling(dim, hidden=(8,), scale_bound=bound)
    randomize(layer, 1e4, seed=1)
    z = torch.randn(16, dim)
    x, ladj = layer.forward_and_log_det(z)
    z2, ladj2 = layer.inverse_and_log_det(torch.randn(16, dim))
    for t in (x, ladj, z2, ladj2):
        assert torch.isfinite(t).all()
    assert ladj.abs().max() <= 2 * bound and ladj2.abs().max() <= 2 * bound
    (x.sum() + ladj.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_conditional_depends_on_context_and_broadcasts():
    layer = make(4, 1, context_dim=2)
    z = torch.randn(5, 3, 4, dtype=torch.float64)
    c = torch.randn(3, 2, dtype=torch.float64)
    for f in (layer.forward_and_log_det, layer.inverse_and_log_det):
        out, ladj = f(z, c)
        assert out.shape == (5, 3, 4) and ladj.shape == (5, 3)
        for b in range(3):
            ob, lb = f(z[:, b], c[b])
            torch.testing.assert_close(out[:, b], ob)
            torch.testing.assert_close(ladj[:, b], lb)
        other, _ = f(z, c.roll(1, 0))
        assert (other - out).abs().amax(-1).min() > 1e-6
    x, ladj = layer.forward_and_log_det(z[0, 0], c)  # one point, many contexts
    assert x.shape == (3, 4) and ladj.shape == (3,)


@pytest.mark.parametrize("dim,context_dim", [(5, 2), (1, 0), (1, 2)])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_reach_all_parameters(dim, context_dim, direction):
    layer = make(dim, 0, context_dim, dtype=torch.float32)
    v = torch.randn(32, dim)
    c = torch.randn(32, context_dim) if context_dim else None
    f = layer.forward_and_log_det if direction == "forward" else layer.inverse_and_log_det
    out, ladj = f(v, c)
    (out.square().sum() + ladj.sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_float32():
    layer = make(7, 1, context_dim=2, dtype=torch.float32)
    z, c = torch.randn(64, 7), torch.randn(64, 2)
    x, ladj = layer.forward_and_log_det(z, c)
    z2, ladj2 = layer.inverse_and_log_det(x, c)
    assert x.dtype == ladj.dtype == z2.dtype == torch.float32
    torch.testing.assert_close(z2, z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ladj2, ladj)


@pytest.mark.parametrize("dim,parity", [(5, 0), (6, 1)])
def test_pyro_convention_pin(dim, parity):
    """With the same conditioner, our layer is Pyro's AffineCoupling applied to the
    coordinates reordered as (kept, moved)."""
    layer = make(dim, parity, scale=0.2, dtype=torch.float32)
    pyro_t = T.AffineCoupling(layer.mask.n_kept, lambda a: layer._shift_logscale(a, None))
    z = torch.randn(8, dim)
    x, ladj = layer.forward_and_log_det(z)
    s = layer._shift_logscale(layer.mask.split(z)[0], None)[1]
    assert s.min() > -5 and s.max() < 3  # Pyro's hard clip does not bite
    moved = list(range(parity, dim, 2))
    perm = [i for i in range(dim) if i not in moved] + moved
    w = z[:, perm]
    y = pyro_t(w)
    torch.testing.assert_close(y, x[:, perm])
    torch.testing.assert_close(pyro_t.log_abs_det_jacobian(w, y), ladj)
    x_fresh = x.detach().clone()
    torch.testing.assert_close(pyro_t.inv(x_fresh[:, perm]), layer.inverse_and_log_det(x_fresh)[0][:, perm])


@settings(max_examples=30, deadline=None)
@given(
    dim=st.integers(1, 7),
    parity=st.integers(0, 1),
    context_dim=st.sampled_from([0, 2]),
    batch=st.sampled_from([(), (3,), (2, 3)]),
    seed=st.integers(0, 10_000),
)
def test_property_roundtrip(dim, parity, context_dim, batch, seed):
    g = torch.Generator().manual_seed(seed)
    layer = make(dim, parity, context_dim, (8, 8), seed=seed)
    z = torch.randn(*batch, dim, generator=g, dtype=torch.float64)
    c = torch.randn(*batch[-1:], context_dim, generator=g, dtype=torch.float64) if context_dim else None
    x, ladj = layer.forward_and_log_det(z, c)
    assert ladj.shape == x.shape[:-1] == torch.broadcast_shapes(batch, () if c is None else c.shape[:-1])
    kept = layer.mask.split(x)[0]
    assert torch.equal(kept, layer.mask.split(z)[0].expand_as(kept))  # the kept half passes untouched
    z2, ladj2 = layer.inverse_and_log_det(x, c)
    torch.testing.assert_close(z2, z.expand_as(z2), atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj2, ladj, atol=1e-10, rtol=0)
