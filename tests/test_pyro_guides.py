"""AutoFlow against exact posteriors, and the things Pyro's own flow guides get wrong."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoIAFNormal, init_to_value

from flowvi.flows import FlowDistribution
from flowvi.pyro import AutoFlow


def train(model, guide, steps, lr=0.01, particles=8, seed=0, loss=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = loss or Trace_ELBO(num_particles=particles, vectorize_particles=True)
    # decaying step size (lr -> lr/10 over the run): short runs end without SGD jitter
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(model, guide, optim, loss)
    return [svi.step() for _ in range(steps)]


def draws(guide, n=4000):
    with torch.no_grad():
        return Predictive(guide.model, guide=guide, num_samples=n, return_sites=None, parallel=True)()


def test_normal_normal_posterior():
    y = torch.tensor([1.2, 0.8, 1.9, 1.4])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 4):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoFlow(model, family="iaf", layers=1, hidden=(8,))
    train(model, guide, 250, lr=0.03)
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
    train(model, guide, 250, lr=0.03)
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
    # Pyro's own flow guide, same model, same init_loc_fn: starts at the origin
    pyro_first = train(model, AutoIAFNormal(model, init_loc_fn=init_to_value(values={"z": torch.full((3,), 1000.0)})), 1)[0]
    assert pyro_first > 1e6


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


def _normal_normal():
    y = torch.tensor([1.2, 0.8, 1.9, 1.4])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 4):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    var = 1 / (1 / 4 + 4)
    return model, var * float(y.sum()), var**0.5


@pytest.mark.parametrize("loss", ["meanfield", "renyi"])
def test_other_pyro_objectives(loss):
    """TraceMeanField_ELBO (analytic KL where Pyro has one) and RenyiELBO (alpha=0.5)
    train the same guide; tolerance 0.1 on mean and sd (posterior sd 0.49)."""
    model, mean, sd = _normal_normal()
    elbo = TraceMeanField_ELBO(num_particles=8, vectorize_particles=True) if loss == "meanfield" else RenyiELBO(alpha=0.5, num_particles=8, vectorize_particles=True)
    guide = AutoFlow(model, family="affine", layers=1, hidden=(8,))
    losses = train(model, guide, 200, lr=0.05, loss=elbo)
    assert all(torch.isfinite(torch.tensor(losses)))
    s = draws(guide, 3000)["mu"]
    assert float(s.mean()) == pytest.approx(mean, abs=0.1)
    assert float(s.std()) == pytest.approx(sd, abs=0.1)


def test_get_posterior_is_the_flow_and_predictive_sees_constrained_sites():
    def model():
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        pyro.sample("p", dist.Dirichlet(torch.ones(3)))

    guide = AutoFlow(model, family="maf", layers=1, hidden=(8,))
    guide()  # sets up the prototype
    q = guide.get_posterior()
    assert isinstance(q, FlowDistribution) and q.event_shape == (3,)  # 1 + 2 free simplex coordinates
    out = Predictive(model, guide=guide, num_samples=50)()
    assert out["p"].shape[-1] == 3 and torch.allclose(out["p"].sum(-1), torch.ones(()), atol=1e-5)
    assert (out["scale"] > 0).all()
    q = guide.quantiles([0.25, 0.75], num_samples=500)
    assert q["p"].shape == (2, 3) and q["scale"].shape == (2,)
