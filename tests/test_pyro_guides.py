"""AutoFlow against exact posteriors, and the things Pyro's own flow guides get wrong."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import init_to_value

from flowvi.pyro import AutoFlow


def train(model, guide, steps, lr=0.01, particles=8, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO(num_particles=particles, vectorize_particles=True))
    return [svi.step() for _ in range(steps)]


def draws(guide, n=4000):
    with torch.no_grad():
        return Predictive(guide.model, guide=guide, num_samples=n, return_sites=None)()


def test_normal_normal_posterior():
    y = torch.tensor([1.2, 0.8, 1.9, 1.4])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 4):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoFlow(model, family="iaf", layers=1, hidden=(8,))
    train(model, guide, 700, lr=0.02)
    var = 1 / (1 / 4 + 4)
    s = draws(guide)["mu"]
    assert float(s.mean()) == pytest.approx(var * float(y.sum()), abs=0.06)
    assert float(s.std()) == pytest.approx(var**0.5, abs=0.06)


def test_beta_binomial_constrained_latent():
    k, n = 7.0, 20.0

    def model():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        pyro.sample("k", dist.Binomial(n, p), obs=torch.tensor(k))

    guide = AutoFlow(model, family="realnvp", layers=1, hidden=(8,))
    train(model, guide, 700, lr=0.02)
    exact = dist.Beta(2 + k, 2 + n - k)
    s = draws(guide)["p"]
    assert s.min() > 0 and s.max() < 1
    assert float(s.mean()) == pytest.approx(float(exact.mean), abs=0.02)
    assert float(s.std()) == pytest.approx(float(exact.variance.sqrt()), abs=0.02)
    med = guide.median()["p"]
    from scipy.stats import beta

    assert float(med) == pytest.approx(beta(2 + k, 2 + n - k).median(), abs=0.03)
    q = guide.quantiles([0.1, 0.9])["p"]
    assert q.shape == (2,) and q[0] < med < q[1]


def test_starts_at_init_loc_so_first_loss_is_sane():
    """Pyro's AutoIAFNormal ignores init_loc_fn: with a prior at 1000 its first loss is ~9e7."""

    def model():
        z = pyro.sample("z", dist.Normal(1000.0, 1.0).expand([3]).to_event(1))
        pyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=torch.full((3,), 1000.5))

    guide = AutoFlow(model, family="iaf", layers=2, hidden=(16,), init_loc_fn=init_to_value(values={"z": torch.full((3,), 1000.0)}))
    first = train(model, guide, 1)[0]
    assert first < 50


def test_subsampled_local_latents_are_refused_with_a_pointer():
    data = torch.randn(100)

    def model():
        with pyro.plate("data", 100, subsample_size=10) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    with pytest.raises(ValueError, match="subsampled plate 'data'.*amortized"):
        train(model, AutoFlow(model, family="iaf", layers=1), 1)


def test_planar_guide_scores_its_draws_without_inverse_in_svi():
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    guide = AutoFlow(model, family="sylvester", layers=2)
    losses = train(model, guide, 100)
    assert all(torch.isfinite(torch.tensor(losses)))
