"""Replacements of torch helpers on hot paths agree with the torch originals."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowvi._optim import adam
from flowvi.flows.base import broadcast_shapes

shapes = st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple)


@settings(max_examples=300, deadline=None)
@given(st.lists(shapes, min_size=1, max_size=3))
def test_broadcast_shapes_matches_torch(shape_list):
    try:
        expected = torch.broadcast_shapes(*shape_list)
    except RuntimeError:
        with pytest.raises(RuntimeError, match="do not broadcast"):
            broadcast_shapes(*shape_list)
        return
    got = broadcast_shapes(*(torch.Size(s) for s in shape_list))
    assert got == expected and isinstance(got, torch.Size)


def _fit(opt_factory, steps=30):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = opt_factory(net.parameters())
    x = torch.randn(64, 3)
    for _ in range(steps):
        loss = (net(x).squeeze(-1) - x.sum(-1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt, torch.cat([p.detach().flatten() for p in net.parameters()])


def test_adam_is_fused_where_torch_has_the_cpu_kernel_and_matches_foreach():
    opt, fused = _fit(lambda p: adam(p, 1e-2))
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):
        assert opt.defaults["fused"] is True
    _, foreach = _fit(lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True))
    torch.testing.assert_close(fused, foreach, atol=1e-5, rtol=1e-5)


def test_adam_falls_back_to_foreach_without_a_fused_kernel(monkeypatch):
    real = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}, {"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 0.1}]
    opt = adam(iter(groups), 1e-3)  # a one-shot iterable survives the retry
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_standard_normal_log_prob_is_pyros(dtype):
    from flowvi.flows import StandardNormal

    base = StandardNormal(3).to(dtype)
    x = 3 * torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ours = base.log_prob(x)
    assert ours.dtype == dtype and ours.shape == (4, 5)
    torch.testing.assert_close(ours, base((5,)).log_prob(x), rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)


def test_flow_log_prob_broadcasts_like_the_base_distribution():
    # the fast base density must keep TransformedDistribution's shapes: a context batch with one x,
    # and a flow with no layers at all
    from flowvi import flows

    flow = flows.build("nsf", 2, layers=2, context_dim=3)
    ctx = torch.randn(6, 3)
    lp = flow(ctx).log_prob(torch.zeros(2))
    assert lp.shape == (6,)
    empty = flows.Flow([], dim=2)
    d = empty()
    x = torch.randn(7, 2)
    torch.testing.assert_close(d.log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1))
    assert flows.Flow([], dim=2)(None).expand((4,)).log_prob(torch.zeros(2)).shape == (4,)
