"""Every family built through ``flowvi.flows.build``, unconditional and conditional,
checked against independent computations (see flowcheck.py)."""
import pyro.distributions as pdist
import pytest
import torch

from flowvi.flows import FlowDistribution, NotInvertibleError, build
from flowvi.flows.build import FAMILIES

from flowcheck import check_log_prob_matches, check_logdet, check_normalised, check_roundtrip, randomize

FAMS = sorted(FAMILIES)
DIMS = [1, 2, 5]


def make(family, dim, context_dim=0, seed=0, layers=2):
    torch.manual_seed(seed)
    flow = build(family, dim, layers=layers, hidden=(16, 16), context_dim=context_dim)
    randomize(flow, 0.3, seed)
    return flow


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("context_dim", [0, 3])
def test_logdet_matches_autograd(family, dim, context_dim):
    flow = make(family, dim, context_dim)
    for layer in flow.layers:
        check_logdet(layer)


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_roundtrip_or_clear_error(family, dim, context_dim):
    flow = make(family, dim, context_dim)
    for layer in flow.layers:
        if layer.inverse_kind == "none":
            with pytest.raises(NotInvertibleError, match="inverse"):
                check_roundtrip(layer)
        else:
            check_roundtrip(layer, atol=1e-6 if layer.inverse_kind == "numerical" else 1e-8)


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("context_dim", [0, 3])
def test_sampling_pass_agrees_with_log_prob(family, context_dim):
    flow = make(family, 3, context_dim).double()
    ctx = torch.randn(4, context_dim, dtype=torch.float64) if context_dim else None
    if flow.inverse_kind == "none":
        with pytest.raises(NotInvertibleError):
            check_log_prob_matches(flow, context=ctx)
    else:
        check_log_prob_matches(flow, context=ctx, atol=1e-6)


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_density_integrates_to_one(family, context_dim):
    torch.manual_seed(0)
    flow = build(family, 2, layers=3, hidden=(16, 16), context_dim=context_dim)
    randomize(flow, 0.15, 0)  # far from the identity, but smooth enough for a 2-D grid
    ctx = torch.randn(2, context_dim) if context_dim else None
    check_normalised(flow.double(), context=None if ctx is None else ctx.double())


@pytest.mark.parametrize("family", FAMS)
def test_shapes_and_dtypes(family):
    flow = make(family, 4, context_dim=2)
    ctx = torch.randn(5, 2)
    d = flow(ctx)
    assert isinstance(d, FlowDistribution) and isinstance(d, pdist.TransformedDistribution)
    assert d.batch_shape == (5,) and d.event_shape == (4,)
    x, lp = d.rsample_and_log_prob((7,))
    assert x.shape == (7, 5, 4) and lp.shape == (7, 5) and x.dtype == torch.float32
    assert d.log_prob(x) is lp  # own draws are scored from the sampling pass
    x1 = flow(ctx[0]).rsample((3,))
    assert x1.shape == (3, 4)
    xd, lpd = flow.double()(ctx.double()).rsample_and_log_prob((2,))
    assert xd.dtype == lpd.dtype == torch.float64
    uncond = make(family, 4)
    x, lp = uncond.rsample_and_log_prob((2, 3))
    assert x.shape == (2, 3, 4) and lp.shape == (2, 3)


@pytest.mark.parametrize("family", FAMS)
def test_identity_at_initialisation(family):
    torch.manual_seed(0)
    flow = build(family, 3, layers=2, hidden=(8,))
    z = torch.randn(10, 3)
    x = z
    total = torch.zeros(10)
    for layer in flow.layers:
        x, ladj = layer.forward_and_log_det(x)
        total = total + ladj
    perm = x.detach()
    # a permutation between layers is allowed; nothing else moves at init
    assert torch.allclose(perm.sort(-1).values, z.sort(-1).values, atol=0.1), family
    assert total.abs().max() < 0.5, family


@pytest.mark.parametrize("family", FAMS)
def test_bad_input_is_reported(family):
    flow = make(family, 3, context_dim=2)
    with pytest.raises(ValueError, match=r"context"):
        flow()
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        flow(torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        flow(torch.tensor([[float("nan"), 0.0]]))
    uncond = make(family, 3)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        uncond.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        uncond.log_prob(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="dtype"):
        uncond.log_prob(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(torch.randn(2))


@pytest.mark.parametrize("family", ["nsf", "maf"])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_lu_mixing_between_layers(family, context_dim):
    from flowvi.flows.linear import LULinear, Permutation

    torch.manual_seed(0)
    flow = build(family, 2, layers=3, hidden=(16, 16), context_dim=context_dim, permute="lu")
    kinds = [type(layer).__name__ for layer in flow.layers]
    # one unconditional LU map between consecutive family layers; autoregressive ones are reversed first
    assert kinds.count("LULinear") == 2 and all(l.context_dim == 0 for l in flow.layers if isinstance(l, LULinear))
    assert kinds.count("Permutation") == (2 if family == "maf" else 0)
    assert not any(isinstance(l, Permutation) for l in flow.layers if family == "nsf")
    randomize(flow, 0.15, 0)
    for layer in flow.layers:
        check_logdet(layer)
    ctx = torch.randn(2, context_dim) if context_dim else None
    check_normalised(flow.double(), context=None if ctx is None else ctx.double())
    with pytest.raises(ValueError, match="permute must be"):
        build(family, 2, permute="shuffle")


def test_unknown_family_lists_choices():
    with pytest.raises(ValueError, match="planar"):
        build("glow-ish", 2)


def test_pyro_transformed_distribution_accepts_layers():
    """Pyro's own TransformedDistribution takes a flowvi layer unchanged."""
    flow = make("realnvp", 3)
    base = pdist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    d = pdist.TransformedDistribution(base, list(flow.layers))
    x = d.sample((5,)).detach().clone()
    torch.testing.assert_close(d.log_prob(x), flow.log_prob(x), atol=1e-5, rtol=1e-5)


def test_pyro_conditional_transformed_distribution_accepts_layers():
    from pyro.distributions.conditional import ConditionalTransformedDistribution

    flow = make("iaf", 3, context_dim=2)
    base = pdist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    cd = ConditionalTransformedDistribution(base, list(flow.layers))
    ctx = torch.randn(2)
    x = cd.condition(ctx).sample((4,)).detach().clone()
    torch.testing.assert_close(cd.condition(ctx).log_prob(x), flow(ctx).log_prob(x), atol=1e-5, rtol=1e-5)
