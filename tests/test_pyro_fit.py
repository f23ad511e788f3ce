"""fit_pyro against exact posteriors (conjugate models, a quadrature for the
hierarchical one), its PSIS diagnostics and its errors.

Tolerances: means within 0.15 posterior sd (the last steps' SGD noise plus the
Monte-Carlo error of 4000 draws, ~0.016 sd), sds within 10-15%, unless stated;
PSIS-corrected means within 0.1 sd.
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from flowvi.pyro import fit_pyro

FAST = dict(layers=1, hidden=(8,), particles=32, lr=1e-2, fit_kwargs=dict(init_steps=50))


def blr(X, y, noise=0.5, prior=2.0):
    beta = pyro.sample("beta", dist.Normal(0.0, prior).expand([X.shape[1]]).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * beta).sum(-1), noise), obs=y)


def test_linear_regression_known_noise_matches_exact_posterior():
    torch.manual_seed(1)
    X = torch.randn(20, 3)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(20)
    # realnvp: a cheap inverse, so the path-derivative (STL) gradient is on and
    # the fit settles on the exact Gaussian instead of jittering around it
    res = fit_pyro(blr, X, y, family="realnvp", steps=300, seed=0, **FAST)
    prec = X.T @ X / 0.25 + torch.eye(3) / 4.0
    cov = torch.linalg.inv(prec)
    mean = cov @ X.T @ y / 0.25
    s = res.sample_sites(4000)["beta"]
    sd = cov.diagonal().sqrt()
    assert ((s.mean(0) - mean).abs() / sd).max() < 0.15
    assert ((s.std(0) / sd) - 1).abs().max() < 0.1
    # the correlations too: the flow ends with a full-rank linear layer
    emp = torch.cov(s.T)
    corr = lambda c: c / (c.diagonal().sqrt()[:, None] * c.diagonal().sqrt()[None])  # noqa: E731
    assert (corr(emp) - corr(cov)).abs().max() < 0.05
    assert res.k_hat < 0.5 and res.verdict.startswith("trustworthy")
    table = res.summary()
    assert list(table.index) == ["beta[0]", "beta[1]", "beta[2]"]
    assert (table["psis_mean"].values - mean.numpy()).__abs__().max() < 0.1 * float(sd.min())
    # the trained guide plugs into Predictive
    pred = Predictive(blr, guide=res.guide, num_samples=200)(X, y)
    beta = pred["beta"].reshape(200, 3)  # Predictive keeps a plate dim for this guide
    assert float((beta.mean(0) - mean).abs().max()) < 0.3 * float(sd.max())  # 200 draws: MC error 0.07 sd


def gamma_poisson(y):
    lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Poisson(lam), obs=y)


def test_gamma_poisson_positive_latent():
    y = torch.tensor([3.0, 5.0, 2.0, 4.0, 6.0, 1.0])
    res = fit_pyro(gamma_poisson, y, family="realnvp", steps=300, seed=0, **FAST)
    exact = dist.Gamma(2.0 + y.sum(), 0.5 + len(y))
    s = res.sample_sites(4000)["lam"]
    assert s.min() > 0
    sd = float(exact.variance.sqrt())
    assert abs(float(s.mean()) - float(exact.mean)) < 0.15 * sd
    assert abs(float(s.std()) / sd - 1) < 0.1
    # log Z: the joint density is normalised by the evidence, known in closed form
    a, b, n = 2.0, 0.5, len(y)
    log_z = (
        a * math.log(b) - math.lgamma(a) + math.lgamma(a + float(y.sum())) - (a + float(y.sum())) * math.log(b + n)
        - float(torch.lgamma(y + 1).sum())
    )
    assert res.log_z == pytest.approx(log_z, abs=0.05)
    idata = res.to_arviz(1000)
    assert idata.posterior["lam"].shape == (1, 1000)
    assert float(idata.posterior["lam"].min()) > 0


def test_dirichlet_simplex_latent_changes_event_size():
    counts = torch.tensor([5.0, 1.0, 9.0])

    def model():
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
        pyro.sample("c", dist.Multinomial(int(counts.sum()), p), obs=counts)

    res = fit_pyro(model, family="realnvp", steps=300, seed=0, **FAST)
    assert res.dim == 2  # the simplex has 2 free coordinates
    exact = dist.Dirichlet(1 + counts)
    s = res.sample_sites(4000)["p"]
    assert torch.allclose(s.sum(-1), torch.ones(4000), atol=1e-5)
    sd = exact.variance.sqrt()
    assert ((s.mean(0) - exact.mean).abs() / sd).max() < 0.15
    assert ((s.std(0) / sd) - 1).abs().max() < 0.15
    assert list(res.summary().index) == ["p[0]", "p[1]", "p[2]"]


def hierarchical(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(5.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def test_hierarchical_normal_with_positive_scale_matches_quadrature():
    y = torch.tensor([-4.0, -2.5, -1.0, 0.0, 1.5, 3.0, 4.5, 6.0])
    sigma = torch.ones(8)
    res = fit_pyro(hierarchical, y, sigma, family="realnvp", layers=2, hidden=(16,), particles=32, lr=1e-2,
                   steps=400, seed=0, fit_kwargs=dict(init_steps=50))
    # exact marginal of (mu, tau): theta integrates out, y_j ~ N(mu, tau^2 + sigma_j^2)
    mu = torch.linspace(-6, 8, 281, dtype=torch.float64)[:, None]
    tau = torch.linspace(1e-3, 14, 561, dtype=torch.float64)[None]
    s = (tau[..., None] ** 2 + sigma.double() ** 2).sqrt()
    lp = dist.Normal(0.0, 5.0).log_prob(mu) + dist.HalfNormal(5.0).log_prob(tau)
    lp = lp + dist.Normal(mu[..., None], s).log_prob(y.double()).sum(-1)
    w = (lp - lp.max()).exp()
    w = w / w.sum()
    m_mu, m_tau = float((w * mu).sum()), float((w * tau).sum())
    sd_mu = float((w * (mu - m_mu) ** 2).sum().sqrt())
    sd_tau = float((w * (tau - m_tau) ** 2).sum().sqrt())
    draws = res.sample_sites(4000)
    assert draws["theta"].shape == (4000, 8)
    assert abs(float(draws["mu"].mean()) - m_mu) < 0.15 * sd_mu
    assert abs(float(draws["tau"].mean()) - m_tau) < 0.15 * sd_tau  # skewed: 15%
    assert abs(float(draws["mu"].std()) / sd_mu - 1) < 0.1
    assert abs(float(draws["tau"].std()) / sd_tau - 1) < 0.15
    assert res.k_hat < 0.7


def test_discrete_latent_is_refused():
    def model():
        k = pyro.sample("k", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(k, 1.0), obs=torch.tensor(0.5))

    with pytest.raises(ValueError, match="continuous latents only.*'k'"):
        fit_pyro(model, steps=1)


def test_non_static_shapes_are_refused():
    def model():
        k = 2 + int(torch.randint(0, 3, ()).item())  # the latent's size changes run to run
        pyro.sample("w", dist.Normal(torch.zeros(k), 1.0).to_event(1))

    pyro.set_rng_seed(0)
    with pytest.raises(ValueError, match="static"):
        for seed in range(5):  # two runs could draw the same size by chance
            fit_pyro(model, steps=1, seed=seed)


def test_subsampled_local_latent_is_refused():
    data = torch.randn(50)

    def model():
        with pyro.plate("data", 50, subsample_size=10) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    with pytest.raises(ValueError, match="amortized"):
        fit_pyro(model, steps=1)
