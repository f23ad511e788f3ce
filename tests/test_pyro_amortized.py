"""AutoAmortizedFlow on probabilistic PCA, where q(z_i | x_i) has a closed form.

With W and sigma known, z_i | x_i ~ N(M^-1 W^T x_i, sigma^2 M^-1), M = W^T W + sigma^2 I.
A linear encoder makes the exact posterior reachable (mean linear in x_i, fixed
correlated covariance: the conditional IAF's shift gives the correlation).
Tolerances: posterior means within 0.1 (posterior sds here are 0.17-0.27), the
covariance entries within 0.01 (variances are 0.03-0.08).
"""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

from flowvi.pyro import AutoAmortizedFlow, AutoFlow

N, D, K, SIGMA = 200, 4, 2, 0.5


def data():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D, K, generator=g)
    X = torch.randn(N, K, generator=g) @ W.T + SIGMA * torch.randn(N, D, generator=g)
    return W, X


def ppca(x, W, batch=50):
    with pyro.plate("data", N, subsample_size=batch) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, SIGMA).to_event(1), obs=x[idx])


def test_ppca_local_posteriors_are_exact_with_subsampling():
    W, X = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoAmortizedFlow(ppca, data_arg=0, encoder=torch.nn.Linear(D, 4), family="iaf", layers=1, hidden=(8,))
    # a decaying step size (0.03 -> 0.002 over the run) removes the SGD jitter of subsampling
    svi = SVI(ppca, guide, pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.995}), Trace_ELBO(num_particles=4, vectorize_particles=True))
    losses = [svi.step(X, W) for _ in range(500)]
    assert losses[-1] < losses[0]
    M = W.T @ W + SIGMA**2 * torch.eye(K)
    cov = SIGMA**2 * torch.linalg.inv(M)
    mean = X @ W @ torch.linalg.inv(M).T
    with torch.no_grad():
        s = guide.posterior(X[:30]).sample((4000,))  # (4000, 30, K)
    m = s.mean(0)
    c = torch.einsum("nbi,nbj->bij", s - m, s - m) / 4000
    assert (m - mean[:30]).abs().max() < 0.1
    assert (c - cov).abs().max() < 0.01
    # Predictive draws the guide's subsample of the plate
    pred = Predictive(ppca, guide=guide, num_samples=3)(X, W)
    assert pred["z"].shape[-2:] == (50, K)


def test_positive_local_latent_goes_through_biject_to():
    x = torch.rand(30) + 0.5

    def model(x):
        with pyro.plate("data", 30):
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, s), obs=x)

    guide = AutoAmortizedFlow(model, family="affine", layers=1, hidden=(8,), context_dim=4, encoder_hidden=(8,))
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(20)]
    assert all(map(lambda v: v == v, losses))
    assert (guide(x)["s"] > 0).all()


def test_global_latent_is_refused_with_a_pointer():
    W, X = data()

    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(D, K), 1.0).to_event(2))
        ppca(x, w)

    with pytest.raises(ValueError, match="'w' is global.*AutoFlow"):
        AutoAmortizedFlow(model)(X)
    # the pointer works: AutoFlow for the global, the amortized guide for the local
    guide = pyro.infer.autoguide.AutoGuideList(model)
    guide.append(AutoFlow(pyro.poutine.block(model, hide=["z"]), family="affine", layers=1))
    guide.append(AutoAmortizedFlow(pyro.poutine.block(model, expose=["z"]), family="affine", layers=1, hidden=(8,)))
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert torch.isfinite(torch.tensor([svi.step(X) for _ in range(3)])).all()


def test_data_rows_must_match_the_plate():
    W, X = data()
    with pytest.raises(ValueError, match="gives 10 rows but plate 'data' has size 200"):
        AutoAmortizedFlow(lambda x, W: ppca(X, W), data_arg=0)(X[:10], W)
    with pytest.raises(ValueError, match="data_arg='obs'"):
        AutoAmortizedFlow(ppca, data_arg="obs")(X, W)
