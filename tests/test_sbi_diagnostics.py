"""C2ST, simulation-based calibration and expected coverage."""
import sys

import pytest
import torch

import flowvi.sbi as sbi
from flowvi.sbi.tasks import GaussianLinear

TASK = GaussianLinear(dim=2)


def overconfident(x, n):
    """The exact posterior's mean with half its spread: a miscalibrated sampler."""
    d = TASK.posterior_dist(x)
    return d.mean + 0.5 * d.stddev * torch.randn(n, *d.mean.shape)


def test_c2st_same_and_disjoint():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    same = sbi.c2st(a, b, seed=0, max_epochs=20)
    assert abs(same - 0.5) < 0.07
    assert sbi.c2st(a, b + 6.0, seed=0, max_epochs=20) > 0.98
    assert 0.6 < sbi.c2st(a, b + torch.tensor([1.0, 0.0]), seed=0, max_epochs=20) < 0.8  # ~0.69 in theory
    folds = sbi.c2st(a, b, seed=0, max_epochs=5, return_folds=True)
    assert folds.shape == (5,)
    assert sbi.c2st(a, b, seed=1, max_epochs=5) == sbi.c2st(a, b, seed=1, max_epochs=5)  # deterministic
    with pytest.raises(ValueError, match="NaN"):
        sbi.c2st(a, torch.full_like(b, float("nan")))


def test_sbc_ranks_uniform_for_exact_posterior_and_not_for_overconfident():
    exact = sbi.sbc(TASK.posterior_sampler, TASK.prior, TASK.simulator, num_sbc=500, num_posterior_samples=100, seed=0)
    assert exact.ranks.shape == (500, 2) and exact.ranks.min() >= 0 and exact.ranks.max() <= 100
    assert (exact.pvalues > 0.01).all(), exact.pvalues
    bad = sbi.sbc(overconfident, theta=exact.theta, x=exact.x, num_posterior_samples=100, seed=0)
    assert (bad.pvalues < 1e-4).all(), bad.pvalues
    assert sbi.sbc_ranks(torch.arange(5.0).view(5, 1, 1), torch.tensor([[2.5]])).item() == 3


def test_expected_coverage():
    theta = TASK.prior.sample((400,))
    x = TASK.simulator(theta)
    log_prob = lambda t, xx: TASK.posterior_dist(xx).log_prob(t)  # noqa: E731
    hpd = sbi.expected_coverage(TASK.posterior_sampler, theta, x, log_prob=log_prob, num_posterior_samples=200)
    quant = sbi.expected_coverage(TASK.posterior_sampler, theta, x, method="quantile", num_posterior_samples=200)
    assert hpd.coverage.shape == (19,) and quant.coverage.shape == (19, 2)
    assert hpd.max_error() < 0.09 and quant.max_error() < 0.09
    bad = sbi.expected_coverage(overconfident, theta, x, method="quantile", num_posterior_samples=200)
    assert (bad.coverage[9] < 0.35).all()  # the 50% interval covers far less than half
    with pytest.raises(ValueError, match="log-densities"):
        sbi.expected_coverage(TASK.posterior_sampler, theta, x)


def test_diagnostics_take_an_npe():
    theta, x, _ = sbi.simulate(TASK.simulator, TASK.prior, 200, seed=0)
    npe = sbi.NPE(TASK.prior, "maf", hidden=(8,), layers=1).append_simulations(theta, x)
    npe.train(max_epochs=2, show_progress=False)
    res = sbi.sbc(npe, TASK.prior, TASK.simulator, num_sbc=50, num_posterior_samples=20)
    assert res.ranks.shape == (50, 2) and res.pvalues.shape == (2,)
    cov = sbi.expected_coverage(npe, res.theta, res.x, num_posterior_samples=20)
    assert cov.coverage.shape == (19,)


def test_plot_sbc(monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ranks = torch.randint(0, 21, (100, 3))
    fig = sbi.plot_sbc(ranks, 20, names=["a", "b", "c"])
    assert len(fig.axes) == 3
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if matplotlib were absent
    with pytest.raises(ImportError, match="plot_sbc needs matplotlib"):
        sbi.plot_sbc(ranks, 20)
