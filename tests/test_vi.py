"""The reverse-KL trainer: estimator properties, robustness, checkpoints, results."""
import math

import numpy as np
import pytest
import torch

import flowvi
from flowvi.flows import build
from flowvi.vi import FitError, elbo_step

from flowcheck import randomize


def gaussian_target(dim=2, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g)
    cov = a @ a.T / dim + 0.5 * torch.eye(dim)
    mvn = torch.distributions.MultivariateNormal(torch.randn(dim, generator=g), cov)
    return lambda x: mvn.log_prob(x) + shift, mvn


@pytest.mark.parametrize("family", ["realnvp", "iaf", "planar", "sylvester"])
def test_stl_gradient_is_zero_when_q_equals_p(family):
    """The defining property of the path-derivative estimator: at q = p every
    single draw contributes a zero gradient (the plain reparameterised one does not)."""
    torch.manual_seed(0)
    flow = build(family, 3, layers=2, hidden=(8,), final_affine=True).double()
    randomize(flow, 0.3)
    target = build(family, 3, layers=2, hidden=(8,), final_affine=True).double()
    target.load_state_dict(flow.state_dict())
    log_p = lambda x: target.log_prob(x)  # noqa: E731  (p equal to q, separate parameters)
    for i in range(3):
        torch.manual_seed(i)
        loss = elbo_step(flow, log_p, particles=1, stl=True)[0]
        grads = torch.autograd.grad(loss, list(flow.parameters()), allow_unused=True)
        assert max(g.abs().max().item() for g in grads if g is not None) < 1e-8
    torch.manual_seed(0)
    loss = elbo_step(flow, log_p, particles=1, stl=False)[0]
    grads = torch.autograd.grad(loss, list(flow.parameters()), allow_unused=True)
    assert max(g.abs().max().item() for g in grads if g is not None) > 1e-4


def test_dreg_gradient_is_zero_when_q_equals_p():
    flow = build("realnvp", 2, layers=2, hidden=(8,)).double()
    randomize(flow, 0.3)
    target = build("realnvp", 2, layers=2, hidden=(8,)).double()
    target.load_state_dict(flow.state_dict())
    loss = elbo_step(flow, lambda x: target.log_prob(x), particles=4, iw=8, stl=True)[0]
    grads = torch.autograd.grad(loss, list(flow.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-8


def test_fit_gaussian_reaches_small_kl_and_reports_trust():
    log_p, _ = gaussian_target(3)
    r = flowvi.fit(log_p, 3, family="realnvp", layers=2, hidden=(16,), max_steps=1500, progress=False)
    kl = -r.elbo(4000)  # normalised target: KL(q||p) = -ELBO
    assert kl < 0.01
    assert r.k_hat < 0.5 and r.verdict.startswith("trustworthy")
    table = r.summary()
    assert list(table.columns) == ["mean", "sd", "psis_mean", "psis_sd"] and table.shape == (3, 4)


def test_log_z_estimate_covers_truth():
    log_p, _ = gaussian_target(2, shift=7.5)
    r = flowvi.fit(log_p, 2, family="realnvp", layers=2, hidden=(16,), max_steps=400, progress=False)
    assert abs(r.log_z - 7.5) < 4 * r.log_z_se + 1e-3


def test_iw_elbo_option_fits():
    log_p, _ = gaussian_target(2)
    r = flowvi.fit(log_p, 2, family="realnvp", layers=2, hidden=(16,), particles=16, iw=8, max_steps=600, progress=False)
    assert -r.elbo(4000) < 0.05


def test_nan_region_stops_with_named_cause_and_keeps_what_was_learned():
    def log_p(x):
        lp = -0.5 * (x**2).sum(-1)
        return torch.where(x[:, 0] > 0.5, torch.full_like(lp, float("nan")), lp)

    with pytest.raises(FitError, match=r"returned NaN at \d+ of \d+ draws") as err:
        flowvi.fit(log_p, 2, family="realnvp", layers=2, hidden=(8,), max_steps=300, init=None, progress=False)
    result = err.value.result
    assert result is not None
    assert all(torch.isfinite(p).all() for p in result.flow.parameters())
    assert torch.isfinite(result.sample(10)).all()


def test_minus_inf_target_names_the_constraint():
    log_p = lambda x: torch.where(x[:, 0] > 0, -0.5 * (x**2).sum(-1), torch.full_like(x[:, 0], -math.inf))  # noqa: E731
    with pytest.raises(FitError, match="unconstrained"):
        flowvi.fit(log_p, 2, family="realnvp", layers=1, hidden=(8,), max_steps=50, init=None, progress=False)


def test_occasional_nonfinite_step_is_skipped():
    calls = {"n": 0}
    log_p0, _ = gaussian_target(2)

    def flaky(x):
        calls["n"] += 1
        lp = log_p0(x)
        return lp * float("nan") if calls["n"] in (5, 17, 18) else lp

    r = flowvi.fit(flaky, 2, family="realnvp", layers=1, hidden=(8,), max_steps=100, init=None, progress=False)
    assert r.steps == 100 and len(r.trace) == 100 and np.isfinite(r.trace).all()


def test_checkpoint_resume_reproduces_uninterrupted_fit(tmp_path):
    torch.set_num_threads(1)
    log_p, _ = gaussian_target(2)
    kw = dict(family="realnvp", layers=2, hidden=(8,), particles=32, progress=False, seed=3)
    straight = flowvi.fit(log_p, 2, max_steps=300, **kw)
    ck = str(tmp_path / "fit.pt")
    flowvi.fit(log_p, 2, max_steps=150, checkpoint=ck, **kw)  # "interrupted" at step 150
    resumed = flowvi.fit(log_p, 2, max_steps=300, checkpoint=ck, **kw)
    assert resumed.steps == 300 and len(resumed.trace) == 300
    for a, b in zip(straight.flow.parameters(), resumed.flow.parameters()):
        torch.testing.assert_close(a, b)


def test_checkpoint_from_other_architecture_is_refused(tmp_path):
    log_p, _ = gaussian_target(2)
    ck = str(tmp_path / "fit.pt")
    flowvi.fit(log_p, 2, family="realnvp", layers=1, hidden=(8,), max_steps=20, checkpoint=ck, progress=False)
    with pytest.raises(FitError, match="different flow architecture"):
        flowvi.fit(log_p, 2, family="iaf", layers=1, hidden=(8,), max_steps=20, checkpoint=ck, progress=False)


def test_same_seed_same_fit():
    log_p, _ = gaussian_target(2)
    a = flowvi.fit(log_p, 2, family="iaf", layers=1, hidden=(8,), max_steps=50, seed=5, progress=False)
    b = flowvi.fit(log_p, 2, family="iaf", layers=1, hidden=(8,), max_steps=50, seed=5, progress=False)
    assert a.trace == b.trace


def test_to_arviz_has_draws_and_log_weights():
    log_p, _ = gaussian_target(2)
    r = flowvi.fit(log_p, 2, family="affine", layers=1, max_steps=100, progress=False)
    idata = r.to_arviz(500)
    assert idata.posterior["x0"].shape == (1, 500)
    assert idata.sample_stats["log_weight"].shape == (1, 500)


def test_laplace_init_centres_the_flow():
    log_p, mvn = gaussian_target(2, seed=4)
    r = flowvi.fit(log_p, 2, family="realnvp", layers=1, hidden=(8,), max_steps=0, init="laplace", progress=False)
    torch.testing.assert_close(r.sample(20000).mean(0), mvn.mean, atol=0.05, rtol=0)


def test_bad_target_output_shape_is_reported():
    with pytest.raises(ValueError, match=r"\(n, dim\) -> \(n,\)"):
        flowvi.fit(lambda x: x.sum(), 2, family="affine", layers=1, max_steps=5, init=None, progress=False)


def test_banana_kl_below_bound():
    from flowvi import targets

    t = targets.get("banana")  # normalised: KL(q||p) = -ELBO
    r = flowvi.fit(t.log_prob, 2, family="realnvp", layers=2, hidden=(32, 32), max_steps=1000, progress=False)
    assert -r.elbo(20000) < 0.01


def test_correlated_gaussian_10d_kl_below_bound():
    from flowvi import targets

    t = targets.get("gaussian-cond100-10")
    r = flowvi.fit(t.log_prob, 10, family="realnvp", layers=1, hidden=(8,), max_steps=800, progress=False)
    assert -r.elbo(20000) < 0.01
    assert r.k_hat < 0.7


def test_k_hat_flags_a_diagonal_gaussian_on_the_funnel():
    from flowvi import targets

    t = targets.get("funnel-10")
    r = flowvi.fit(t.log_prob, 10, flow=build("affine", 10, layers=1), max_steps=800, progress=False)
    assert r.k_hat > 0.7 and r.verdict.startswith("not trustworthy")


def test_student_t_base_fits_heavy_tails():
    t = torch.distributions.StudentT(torch.tensor(2.5), torch.zeros(2), torch.ones(2))
    log_p = lambda x: t.log_prob(x).sum(-1)  # noqa: E731
    r = flowvi.fit(log_p, 2, family="realnvp", layers=1, hidden=(8,), base="student-t", max_steps=600, progress=False)
    df = r.flow.base.df.detach()
    assert -r.elbo(8000) < 0.05
    assert torch.all(df < 4.5), df  # learnt towards the target's 2.5 from its start at 5
