"""IAF / MAF (AffineAutoregressive): exactness of the sequential direction, the
autoregressive structure, the log-scale clamp, conditioning, gradients, and
Pyro's convention. Independent references: autograd Jacobians and a naive
solver that runs the full MADE ``dim`` times."""
import pyro.distributions.transforms as T
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowvi.flows import IAF, MAF, AffineAutoregressive

from flowcheck import check_logdet, check_roundtrip, randomize

CHEAPS = ["sample", "density"]


def make(dim, cheap="sample", context_dim=0, hidden=(16, 16), order=None, seed=0, scale=0.5, dtype=torch.float64):
    torch.manual_seed(seed)
    layer = AffineAutoregressive(dim, hidden=hidden, context_dim=context_dim, order=order, cheap=cheap)
    randomize(layer, scale, seed)
    return layer.to(dtype)


def naive_solve(layer, v, context, forward):
    """The sequential direction by brute force: ``dim`` full MADE passes, each
    fixing one more variable (no pruning, no bookkeeping)."""
    u = torch.zeros_like(v)
    for _ in range(layer.dim):
        m, s = layer._shift_logscale(u, context)
        u = v * s.exp() + m if forward else (v - m) * (-s).exp()
    return u, s.sum(-1)


def jacobian(f, v):
    return torch.autograd.functional.jacobian(f, v)


def test_helpers_and_attributes():
    assert IAF(3).cheap_direction == "sample" and MAF(3).cheap_direction == "density"
    assert IAF(3).inverse_kind == MAF(3).inverse_kind == "exact"
    with pytest.raises(ValueError, match="cheap"):
        AffineAutoregressive(3, cheap="both")
    assert "cheap='density'" in MAF(2).extra_repr()


@pytest.mark.parametrize("cheap", CHEAPS)
def test_identity_at_init(cheap):
    layer = AffineAutoregressive(4, cheap=cheap, context_dim=2)
    z, c = torch.randn(5, 4), torch.randn(5, 2)
    for x, ladj in (layer.forward_and_log_det(z, c), layer.inverse_and_log_det(z, c)):
        assert torch.equal(x, z) and torch.equal(ladj, torch.zeros(5))


@pytest.mark.parametrize("cheap", CHEAPS)
@pytest.mark.parametrize("hidden", [(16, 16), (), (7,), (3, 9, 5)])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_sequential_direction_is_exact(cheap, hidden, context_dim):
    """Round trip to 1e-10 in float64 with a random order, any depth of MADE
    (including units too few for every degree), and a broadcast context."""
    if context_dim and not hidden:
        pytest.skip("MADE feeds the context to hidden units only")
    dim = 5
    layer = make(dim, cheap, context_dim, hidden, order=torch.randperm(dim).tolist())
    z = torch.randn(6, 4, dim, dtype=torch.float64) * 1.5
    c = torch.randn(4, context_dim, dtype=torch.float64) if context_dim else None
    x, ladj = layer.forward_and_log_det(z, c)
    z2, ladj2 = layer.inverse_and_log_det(x, c)
    assert ladj.shape == ladj2.shape == (6, 4)
    torch.testing.assert_close(z2, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj2, ladj, atol=1e-10, rtol=0)
    check_logdet(layer)


@pytest.mark.parametrize("cheap", CHEAPS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_sequential_matches_naive_full_passes(cheap, context_dim):
    """The pruned sequential pass computes what dim full MADE passes compute."""
    dim = 6
    layer = make(dim, cheap, context_dim, (20, 20), order=[3, 0, 5, 1, 4, 2])
    v = torch.randn(8, dim, dtype=torch.float64)
    c = torch.randn(8, context_dim, dtype=torch.float64) if context_dim else None
    if cheap == "sample":  # IAF: the inverse is the sequential one
        got, ref = layer.inverse_and_log_det(v, c), naive_solve(layer, v, c, forward=False)
    else:  # MAF: sampling is
        got, ref = layer.forward_and_log_det(v, c), naive_solve(layer, v, c, forward=True)
    torch.testing.assert_close(got[0], ref[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got[1], ref[1], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("cheap", CHEAPS)
def test_jacobian_is_triangular_in_made_order(cheap):
    """x_i depends on z_j only for rank(j) <= rank(i), in both directions; the
    diagonal is exp(s_i) (IAF: s from z; MAF: s from x)."""
    dim, order = 5, [2, 4, 0, 1, 3]
    layer = make(dim, cheap, order=order, scale=0.8)
    rank = torch.tensor(order)
    later = rank[None, :] > rank[:, None]  # [i, j]: j comes after i
    z = torch.randn(dim, dtype=torch.float64)
    J = jacobian(lambda v: layer.forward_and_log_det(v)[0], z)
    Jinv = jacobian(lambda v: layer.inverse_and_log_det(v)[0], layer.forward_and_log_det(z)[0])
    assert J[later].abs().max() == 0 and Jinv[later].abs().max() == 0
    assert J[~later & ~torch.eye(dim, dtype=torch.bool)].abs().max() > 0  # genuinely autoregressive
    x, ladj = layer.forward_and_log_det(z)
    _, s = layer._shift_logscale(z if cheap == "sample" else x, None)
    torch.testing.assert_close(J.diagonal(), s.exp())
    torch.testing.assert_close(J @ Jinv, torch.eye(dim, dtype=torch.float64))


def test_maf_is_iaf_conditioner_on_the_other_side():
    """Same weights: IAF computes (m, s) from its input z, MAF from its output x,
    of the same map x = z * exp(s) + m; MAF's sequential sampling solves that fixed point."""
    iaf = make(4, "sample", context_dim=2, order=[1, 3, 0, 2])
    maf = make(4, "density", context_dim=2, order=[1, 3, 0, 2])
    maf.load_state_dict(iaf.state_dict())
    z, c = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    x_iaf, ladj_iaf = iaf.forward_and_log_det(z, c)
    m, s = iaf._shift_logscale(z, c)
    torch.testing.assert_close(x_iaf, z * s.exp() + m)
    torch.testing.assert_close(ladj_iaf, s.sum(-1))
    x_maf, ladj_maf = maf.forward_and_log_det(z, c)
    m, s = iaf._shift_logscale(x_maf, c)  # the shared MADE, evaluated at the output
    torch.testing.assert_close(x_maf, z * s.exp() + m, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_maf, s.sum(-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("cheap", CHEAPS)
def test_clamp_keeps_huge_parameters_finite(cheap):
    dim, bound = 4, 3.0
    layer = AffineAutoregressive(dim, hidden=(8,), cheap=cheap, scale_bound=bound)
    randomize(layer, 1e4, seed=1)
    z = torch.randn(16, dim, requires_grad=True)
    x, ladj = layer.forward_and_log_det(z)
    z2, ladj2 = layer.inverse_and_log_det(torch.randn(16, dim))
    for t in (x, ladj, z2, ladj2):
        assert torch.isfinite(t).all()
    assert ladj.abs().max() <= dim * bound and ladj2.abs().max() <= dim * bound
    (x.sum() + ladj.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("cheap", CHEAPS)
def test_conditional_depends_on_context_and_broadcasts(cheap):
    layer = make(3, cheap, context_dim=2)
    z = torch.randn(5, 4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    for f in (layer.forward_and_log_det, layer.inverse_and_log_det):
        out, ladj = f(z, c)
        assert out.shape == (5, 4, 3) and ladj.shape == (5, 4)
        for b in range(4):  # each context row acts on its column of the batch
            ob, lb = f(z[:, b], c[b])
            torch.testing.assert_close(out[:, b], ob)
            torch.testing.assert_close(ladj[:, b], lb)
        other, _ = f(z, c.roll(1, 0))
        assert (other - out).abs().amax(-1).min() > 1e-6
    # one point, many contexts: the batch comes from the context
    x, ladj = layer.forward_and_log_det(z[0, 0], c)
    assert x.shape == (4, 3) and ladj.shape == (4,)


@pytest.mark.parametrize("cheap", CHEAPS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_reach_all_parameters(cheap, direction):
    layer = make(4, cheap, context_dim=2, dtype=torch.float32)
    v, c = torch.randn(32, 4), torch.randn(32, 2)
    f = layer.forward_and_log_det if direction == "forward" else layer.inverse_and_log_det
    out, ladj = f(v, c)
    (out.square().sum() + ladj.sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cheap", CHEAPS)
def test_float32(cheap):
    layer = make(6, cheap, context_dim=2, scale=0.3, dtype=torch.float32)  # well conditioned
    z, c = torch.randn(64, 6), torch.randn(64, 2)
    x, ladj = layer.forward_and_log_det(z, c)
    z2, ladj2 = layer.inverse_and_log_det(x, c)
    assert x.dtype == ladj.dtype == z2.dtype == ladj2.dtype == torch.float32
    torch.testing.assert_close(z2, z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ladj2, ladj, atol=1e-4, rtol=1e-4)


class _MadeAsPyroArn(torch.nn.Module):
    """Hands Pyro our MADE's (m, s) through its AutoRegressiveNN interface;
    ``flip`` gives the (m', s') = (-m exp(-s), -s) that writes z = (x - m) exp(-s)
    in Pyro's form z = x exp(s') + m'."""

    def __init__(self, layer, flip=False):
        super().__init__()
        self.layer, self.flip = layer, flip
        self.permutation = torch.argsort(layer.made.rank)  # Pyro: variables in solving order

    def forward(self, v):
        m, s = self.layer._shift_logscale(v, None)
        return (-m * (-s).exp(), -s) if self.flip else (m, s)


ORDER = [4, 1, 3, 0, 2]


def test_pyro_convention_pin_iaf():
    """Identical conditioner outputs: IAF is Pyro's AffineAutoregressive(stable=False), both ways."""
    iaf = make(5, "sample", order=ORDER, scale=0.2, dtype=torch.float32)
    pyro_t = T.AffineAutoregressive(_MadeAsPyroArn(iaf), stable=False)
    z = torch.randn(9, 5)
    x, ladj = iaf.forward_and_log_det(z)
    s = iaf._shift_logscale(z, None)[1]
    assert s.min() > -5 and s.max() < 3  # Pyro's hard clip does not bite
    x_pyro = pyro_t(z)
    torch.testing.assert_close(x_pyro, x)
    torch.testing.assert_close(pyro_t.log_abs_det_jacobian(z, x_pyro), ladj)
    x_fresh = x.detach().clone()  # not in Pyro's cache
    torch.testing.assert_close(pyro_t.inv(x_fresh), iaf.inverse_and_log_det(x_fresh)[0], atol=1e-5, rtol=1e-5)


def test_pyro_convention_pin_maf():
    """MAF is Pyro's ``AffineAutoregressive(...).inv`` with the conditioner
    reparameterised to Pyro's form: same samples, same log-det sign."""
    maf = make(5, "density", order=ORDER, scale=0.2, dtype=torch.float32)
    pyro_maf = T.AffineAutoregressive(_MadeAsPyroArn(maf, flip=True), stable=False).inv
    x = torch.randn(9, 5)
    z, ladj = maf.inverse_and_log_det(x)
    z_pyro = pyro_maf.inv(x)
    torch.testing.assert_close(z_pyro, z)
    torch.testing.assert_close(pyro_maf.log_abs_det_jacobian(z_pyro, x), ladj)
    z_fresh = torch.randn(9, 5)
    torch.testing.assert_close(pyro_maf(z_fresh), maf.forward_and_log_det(z_fresh)[0], atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(1, 6),
    cheap=st.sampled_from(CHEAPS),
    context_dim=st.sampled_from([0, 2]),
    batch=st.sampled_from([(), (3,), (2, 3)]),
    seed=st.integers(0, 10_000),
)
def test_property_roundtrip(dim, cheap, context_dim, batch, seed):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(dim, generator=g).tolist()
    layer = make(dim, cheap, context_dim, (10, 10), order=order, seed=seed)
    z = torch.randn(*batch, dim, generator=g, dtype=torch.float64)
    c = torch.randn(*batch[-1:], context_dim, generator=g, dtype=torch.float64) if context_dim else None
    x, ladj = layer.forward_and_log_det(z, c)
    assert ladj.shape == x.shape[:-1] == torch.broadcast_shapes(batch, () if c is None else c.shape[:-1])
    z2, ladj2 = layer.inverse_and_log_det(x, c)
    torch.testing.assert_close(z2, z.expand_as(z2), atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj2, ladj, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cheap", CHEAPS)
def test_flowcheck_roundtrip_and_logdet(cheap):
    layer = make(4, cheap, context_dim=3, hidden=(12, 12))
    check_roundtrip(layer, atol=1e-10)
    check_logdet(layer)
