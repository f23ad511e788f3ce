"""Benchmark tasks: definitions, observations and reference posteriors."""
import math

import pytest
import torch

from flowvi.sbi import tasks


@pytest.mark.parametrize("name,dim,x_shape", [
    ("gaussian_linear", 10, (10,)), ("two_moons", 2, (2,)), ("gaussian_mixture", 2, (2,)),
    ("slcp", 5, (8,)), ("bernoulli_glm", 10, (10,)),
])
def test_task_shapes_and_observations(name, dim, x_shape):
    task = tasks.get_task(name)
    assert task.dim_theta == dim and task.x_shape == x_shape
    theta = task.prior.sample((64,))
    x = task.simulator(theta)
    assert x.shape == (64, *x_shape) and torch.isfinite(x).all()
    t1, x1 = task.observation(1, seed=0)
    t1b, x1b = task.observation(1, seed=0)
    assert torch.equal(x1, x1b) and torch.equal(t1, t1b) and t1.shape == (dim,) and x1.shape == x_shape
    assert not torch.equal(task.observation(2, seed=0)[1], x1)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.get_task("lotka")


def test_gaussian_linear_reference_is_analytic():
    task = tasks.GaussianLinear()
    _, x_o = task.observation(1)
    ref = task.reference_posterior(x_o, 20_000, seed=0)
    assert torch.allclose(ref.mean(0), x_o / 2, atol=0.01)
    assert torch.allclose(ref.var(0), torch.full((10,), 0.05), rtol=0.05)


def test_two_moons_reference_is_consistent_with_the_simulator():
    task = tasks.TwoMoons()
    _, x_o = task.observation(1)
    ref = task.reference_posterior(x_o, 5000, seed=0)
    assert ref.shape == (5000, 2) and (ref.abs() < 1).all()
    # undo the parameter shift: the implied noise point p = x_o - g(theta) lies on the moon,
    # radius r ~ N(0.1, 0.01^2) around (0.25, 0) on its right half (|a| <= pi/2)
    z0 = (ref[:, 0] + ref[:, 1]) / math.sqrt(2)
    z1 = (ref[:, 1] - ref[:, 0]) / math.sqrt(2)
    p = torch.stack([x_o[0] + z0.abs(), x_o[1] - z1], 1)
    r = (p - torch.tensor([0.25, 0.0])).norm(dim=1)
    assert abs(float(r.mean()) - 0.1) < 0.002 and abs(float(r.std()) - 0.01) < 0.002
    assert (p[:, 0] >= 0.25 - 1e-6).all()
    # both branches (signs of theta_0 + theta_1) appear unless the box cuts one off
    assert ((z0 > 0).any() and (z0 < 0).any()) or (ref.abs() > 0.8).any()


def test_gaussian_mixture_reference():
    task = tasks.GaussianMixture()
    x_o = torch.tensor([1.0, -2.0])
    ref = task.reference_posterior(x_o, 20_000, seed=0)
    assert torch.allclose(ref.mean(0), x_o, atol=0.03)
    # equal mixture of variances 1 and 0.01: variance 0.505, heavier tails than a Gaussian
    assert torch.allclose(ref.var(0), torch.full((2,), 0.505), rtol=0.06)
    near = ((ref - x_o).abs() < 0.2).all(1).float().mean()
    assert 0.45 < near < 0.55


def test_slcp_reference_matches_importance_sampling():
    task = tasks.SLCP()
    _, x_o = task.observation(2)
    ref = task.reference_posterior(x_o, 2000, seed=0, num_chains=200, warmup=1500)
    assert ref.shape == (2000, 5) and (ref.abs() < 3).all()
    # signs of theta_2, theta_3 are unidentifiable: the draws hold both
    assert 0.4 < (ref[:, 2] > 0).float().mean() < 0.6
    # compare folded means with self-normalised importance sampling from the prior
    g = torch.Generator().manual_seed(0)
    prop = (torch.rand(400_000, 5, generator=g) * 6 - 3)
    w = torch.softmax(task.log_likelihood(prop, x_o).double(), 0)
    fold = lambda t: torch.cat([t[:, :2], t[:, 2:4].abs(), t[:, 4:]], 1)  # noqa: E731
    is_mean = (w[:, None] * fold(prop).double()).sum(0).float()
    ess = float(1 / (w**2).sum())
    assert ess > 50
    assert torch.allclose(fold(ref).mean(0), is_mean, atol=0.25), (fold(ref).mean(0), is_mean)


def test_bernoulli_glm_reference_matches_laplace_importance_sampling():
    task = tasks.BernoulliGLM()
    import numpy as np

    stimulus = torch.from_numpy(np.random.RandomState(42).randn(100).astype(np.float32))  # sbibm's recipe
    assert torch.equal(task.X[:, 1], stimulus) and torch.equal(task.X[3:, 4], stimulus[:-3])
    assert task.X.shape == (100, 10) and (task.X[:, 0] == 1).all() and task.X[0, 2] == 0
    _, x_o = task.observation(1)
    assert x_o[0] == x_o.round()[0]  # spike count is an integer
    ref = task.reference_posterior(x_o, 2000, seed=0, num_chains=200, warmup=300)
    mode, cov = task.laplace(x_o)
    q = torch.distributions.MultivariateNormal(mode, cov)
    s = q.sample((50_000,))
    w = torch.softmax(task.log_posterior(s.float(), x_o).double() - q.log_prob(s), 0)
    is_mean = (w[:, None] * s).sum(0).float()
    assert torch.allclose(ref.mean(0), is_mean, atol=0.05)
    assert torch.allclose(ref.std(0), cov.diagonal().sqrt().float(), rtol=0.15)
