"""NPE: accuracy against an analytic posterior, bounded priors, persistence and input checks."""

import pytest
import torch

import flowvi.sbi as sbi
from flowvi.sbi.tasks import GaussianLinear


@pytest.fixture(scope="module")
def gaussian_npe():
    """NPE (default family "nsf", default MLP embedding, small nets) on 2000 simulations
    of a 2-D Gaussian linear task (posterior N(x/2, 0.05 I))."""
    task = GaussianLinear(dim=2)
    theta, x, _ = sbi.simulate(task.simulator, task.prior, 2000, seed=1)
    npe = sbi.NPE(task.prior, hidden=(32, 32), layers=2, seed=1)
    npe.append_simulations(theta, x).train(lr=2e-3, max_epochs=80, patience=15, show_progress=False)
    return task, npe


def test_gaussian_linear_matches_analytic_posterior(gaussian_npe):
    # tolerances from 5 seeds of this exact setup (worst: 0.43 sd, 0.021 cov) plus a margin:
    # posterior means within 0.5 posterior sd, covariance entries within 0.025 (variance 0.05)
    task, npe = gaussian_npe
    for i in range(3):
        _, x_o = task.observation(i, seed=123)
        exact = task.posterior_dist(x_o)
        draws = npe.posterior(x_o).sample((20_000,), seed=0)
        mean_err = ((draws.mean(0) - exact.mean) / exact.stddev).abs().max()
        cov_err = (torch.cov(draws.T) - torch.diag(exact.variance)).abs().max()
        assert mean_err < 0.5, (i, mean_err)
        assert cov_err < 0.025, (i, cov_err)


def test_posterior_api(gaussian_npe):
    task, npe = gaussian_npe
    _, x_o = task.observation(0, seed=123)
    post = npe.posterior(x_o)
    s = post.sample((7, 3), seed=0)
    assert s.shape == (7, 3, 2)
    assert torch.equal(post.sample((5,), seed=4), post.sample((5,), seed=4))  # seeded draws repeat
    lp = post.log_prob(s)
    assert lp.shape == (7, 3) and torch.isfinite(lp).all()
    # sample_and_log_prob agrees with log_prob (one pass vs the inverse pass)
    t, lq = post.sample_and_log_prob(50, seed=1)
    assert torch.allclose(lq, post.log_prob(t).detach(), atol=1e-3)
    mode = post.map(num_init=200, steps=100)
    assert (mode - task.posterior_dist(x_o).mean).abs().max() < 0.12
    idata = post.to_arviz(100, seed=0)
    assert set(idata.posterior.data_vars) == {"theta_0", "theta_1"}
    assert idata.posterior["theta_0"].shape == (1, 100)
    # batched use for diagnostics: (n, B, d) in one pass
    xs = torch.stack([task.observation(i, seed=5)[1] for i in range(4)])
    assert npe.sample_batched(6, xs, seed=0).shape == (6, 4, 2)


def test_save_load_round_trip(gaussian_npe, tmp_path):
    task, npe = gaussian_npe
    path = tmp_path / "npe.pt"
    npe.save(path)
    loaded = sbi.NPE.load(path)
    _, x_o = task.observation(0, seed=123)
    theta = npe.posterior(x_o).sample((100,), seed=0)
    assert torch.equal(npe.posterior(x_o).log_prob(theta), loaded.posterior(x_o).log_prob(theta))
    assert torch.equal(npe.posterior(x_o).sample((10,), seed=3), loaded.posterior(x_o).sample((10,), seed=3))
    assert len(loaded.history) == len(npe.history)


def test_load_refuses_other_format_version(gaussian_npe, tmp_path):
    _, npe = gaussian_npe
    path = tmp_path / "npe.pt"
    npe.save(path)
    payload = torch.load(path, weights_only=False)
    payload["format_version"] = 999
    torch.save(payload, path)
    with pytest.raises(ValueError, match="format version 999.*reads version 1"):
        sbi.NPE.load(path)
    torch.save({"something": "else"}, path)
    with pytest.raises(ValueError, match="not a flowvi NPE file"):
        sbi.NPE.load(path)


def test_bounded_prior_posterior_stays_in_support():
    low, high = torch.tensor([0.0, -1.0]), torch.tensor([1.0, 3.0])
    prior = sbi.BoxUniform(low, high)
    g = torch.Generator().manual_seed(1234)  # not 0: the global RNG (seeded 0 per test) draws theta
    theta = prior.sample((600,))
    x = theta + 0.05 * torch.randn(theta.shape, generator=g)
    npe = sbi.NPE(prior, "realnvp", hidden=(16, 16), layers=2).append_simulations(theta, x)
    npe.train(max_epochs=5, lr=3e-3, show_progress=False)
    # an observation at the corner puts much of the posterior against two walls
    post = npe.posterior(torch.tensor([0.99, -0.98]))
    draws = post.sample((10_000,), seed=0)
    assert ((draws >= low) & (draws <= high)).all()
    lp = post.log_prob(torch.tensor([[0.5, 0.0], [1.2, 0.0], [0.5, -1.5], [float("nan"), 0.0]]))
    assert torch.isfinite(lp[0]) and torch.isinf(lp[1:]).all() and (lp[1:] < 0).all()


def test_auto_lr_shrinks_with_the_training_rows_and_is_what_train_uses():
    assert sbi.auto_lr(900) == pytest.approx(4e-3) and sbi.auto_lr(50) == pytest.approx(4e-3)  # capped
    assert sbi.auto_lr(9000) == pytest.approx(4e-3 / 10**0.5)
    assert sbi.auto_lr(10**7) == pytest.approx(5e-4)  # floored
    assert all(sbi.auto_lr(n) >= sbi.auto_lr(n + 500) for n in range(1, 100_000, 997))
    prior = sbi.BoxUniform(-torch.ones(1), torch.ones(1))
    theta = prior.sample((400,))
    x = theta + 0.1 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1234))
    npe = sbi.NPE(prior, "affine", hidden=(8,), layers=1, embedding_net=None).append_simulations(theta, x)
    npe.train(max_epochs=1, show_progress=False)
    assert npe.history[-1].lr == sbi.auto_lr(npe.history[-1].n_train) and npe.history[-1].n_train < 400
    npe.train(max_epochs=1, lr=1e-3, show_progress=False)
    assert npe.history[-1].lr == 1e-3
    for bad in ("fast", 0.0, -1e-3):
        with pytest.raises(ValueError, match="lr must be a positive number or 'auto'"):
            npe.train(max_epochs=1, lr=bad, show_progress=False)
    # every row held out: the error says what to do, not what auto_lr needs
    with pytest.raises(ValueError, match="no training rows left after the validation split"):
        npe.train(max_epochs=1, val_fraction=0.9999, show_progress=False)


def test_bad_inputs():
    prior = sbi.BoxUniform(torch.zeros(2), torch.ones(2))
    theta = prior.sample((60,))
    x = torch.cat([theta, theta.sum(1, keepdim=True)], 1)  # x has 3 features
    npe = sbi.NPE(prior, "maf", hidden=(8,), layers=1)
    # NaN rows are dropped with a warning that counts them
    x_bad = x.clone()
    x_bad[:5, 0] = float("nan")
    x_bad[5, 2] = float("inf")
    with pytest.warns(sbi.InvalidSimulationsWarning, match="6 of 60"):
        npe.append_simulations(theta, x_bad)
    assert npe.num_simulations == 54
    with pytest.raises(ValueError, match="NaN/inf"):
        sbi.NPE(prior).append_simulations(theta, x_bad, exclude_invalid=False)
    # theta outside the prior's support
    with pytest.raises(ValueError, match="outside the prior's support"):
        npe.append_simulations(theta + 2.0, x)
    # shapes
    with pytest.raises(ValueError, match="theta must have shape"):
        npe.append_simulations(torch.zeros(60, 3), x)
    with pytest.raises(ValueError, match="rows like theta"):
        npe.append_simulations(theta, x[:10])
    with pytest.raises(ValueError, match="earlier simulations"):
        npe.append_simulations(theta, x[:, :2])
    with pytest.raises(RuntimeError, match="append_simulations"):
        sbi.NPE(prior).train()
    with pytest.raises(ValueError, match="unknown flow family"):
        sbi.NPE(prior, "no-such-flow")
    with pytest.raises(ValueError, match="needs a flow with an exact inverse"):
        sbi.NPE(prior, "planar")
    with pytest.raises(ValueError, match="event_shape"):
        sbi.NPE(torch.distributions.Normal(torch.zeros(2), 1.0))
    npe.train(max_epochs=1, show_progress=False)
    # x_o of the wrong shape, or not finite
    with pytest.raises(ValueError, match=r"x_o must have the shape of one simulation, \(3,\)"):
        npe.posterior(torch.zeros(2))
    with pytest.raises(ValueError, match=r"x_o must have"):
        npe.posterior(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        npe.posterior(torch.tensor([0.0, float("nan"), 1.0]))
    assert npe.posterior(torch.zeros(1, 3)).sample((2,)).shape == (2, 2)  # a leading batch of 1 is fine
    with pytest.raises(ValueError, match="theta must have shape"):
        npe.posterior(torch.zeros(3)).log_prob(torch.zeros(5))


def test_checkpoint_resume_continues_training(tmp_path):
    prior = sbi.BoxUniform(-torch.ones(1), torch.ones(1))
    theta = prior.sample((300,))
    x = theta + 0.1 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1234))
    ckpt = tmp_path / "train.ckpt"
    kw = dict(lr=3e-3, patience=1000, show_progress=False, checkpoint=ckpt)

    def fresh():
        return sbi.NPE(prior, "affine", hidden=(8,), layers=1, embedding_net=None).append_simulations(theta, x)

    full = fresh()
    full.train(max_epochs=6, **kw)
    part = fresh()
    part.train(max_epochs=3, **kw)  # "interrupted" after 3 epochs
    resumed = fresh()
    resumed.train(max_epochs=6, resume=True, **kw)
    assert resumed.history[-1].epochs == 6
    assert resumed.history[-1].val_loss[:3] == part.history[-1].val_loss
    assert resumed.history[-1].val_loss == pytest.approx(full.history[-1].val_loss, rel=1e-5)
    other = sbi.NPE(prior, "affine", hidden=(8,), layers=1, embedding_net=None).append_simulations(theta[:200], x[:200])
    with pytest.raises(sbi.CheckpointError, match="other data"):
        other.train(max_epochs=6, resume=True, **kw)


def test_lr_plateau_schedule_lowers_the_step_and_is_checkpointed(tmp_path):
    prior = sbi.BoxUniform(-torch.ones(1), torch.ones(1))
    theta = prior.sample((200,))
    x = theta + 0.1 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1234))
    ckpt = tmp_path / "train.ckpt"
    npe = sbi.NPE(prior, "affine", hidden=(8,), layers=1, embedding_net=None).append_simulations(theta, x)
    # a step far below float32 resolution leaves the weights as they are: every epoch is "no better"
    npe.train(lr=1e-30, lr_patience=2, lr_factor=0.5, patience=7, max_epochs=50, show_progress=False, checkpoint=ckpt)
    assert npe.history[-1].epochs == 7 and npe.history[-1].stopped == "patience"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-30 * 0.5**3)  # halved at 2, 4, 6
    with pytest.raises(ValueError, match="lr_patience"):
        npe.train(lr_patience=0, show_progress=False)


def test_embeddings_and_zscore():
    # each built-in embedding maps (B, *x_shape) -> (B, k) and trains inside NPE
    prior = sbi.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((64,))
    series = theta[:, :1, None] * torch.linspace(0, 1, 20) + theta[:, 1:, None]  # (64, 1, 20)
    sets = theta[:, None, :] + 0.1 * torch.randn(64, 7, 2)  # (64, 7, 2)
    for net, x, mode in [("cnn", series[:, 0], "structured"), ("deepset", sets, "last"), (None, theta, "independent")]:
        npe = sbi.NPE(prior, "maf", hidden=(8,), layers=1, embedding_net=net).append_simulations(theta, x)
        npe.train(max_epochs=1, batch_size=32, show_progress=False)
        assert npe.estimator.x_zscore.mode == mode
        assert npe.posterior(x[0]).sample((3,)).shape == (3, 2)
    deepset = sbi.DeepSetEmbedding((7, 2), out_features=5)
    perm = torch.randperm(7)
    assert torch.allclose(deepset(sets[:4]), deepset(sets[:4, perm]), atol=1e-6)  # permutation invariant
    custom = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(14, 4))
    npe = sbi.NPE(prior, "maf", hidden=(8,), layers=1, embedding_net=custom).append_simulations(theta, sets)
    npe.train(max_epochs=1, batch_size=32, show_progress=False)
    assert npe.estimator.flow.context_dim == 4

    # z-scoring rule: constant features get scale 1 (centred only), others mean/std,
    # scales clamped from below; robust mode ignores an outlier
    data = torch.stack([torch.full((100,), 3.0), torch.linspace(-1, 1, 100), torch.linspace(0, 1e-7, 100)], 1)
    z = sbi.ZScore((3,)).fit(data)
    assert z.scale[0] == 1 and z.loc[0] == 3
    assert torch.allclose(z.scale[1], data[:, 1].std())
    assert z.scale[2] == pytest.approx(1e-6)  # std 2.9e-8: not constant, clamped up to min_scale
    assert sbi.ZScore((1,)).fit(data[:, 2:] * 1e-2).scale == 1  # std 2.9e-10 <= 1e-8: constant
    spiky = torch.linspace(-1, 1, 101).unsqueeze(1).clone()
    spiky[0] = 1e6
    assert sbi.ZScore((1,), robust=True).fit(spiky).scale < 2 < sbi.ZScore((1,)).fit(spiky).scale


def test_mlp_embedding_skip_passes_raw_x_for_small_observations():
    small = sbi.MLPEmbedding((3,), out_features=5)
    x = torch.randn(4, 3)
    out = small(x)
    assert small.skip and small.out_features == 8 and out.shape == (4, 8)
    assert torch.equal(out[:, :3], x)  # the raw (z-scored) x reaches the flow unchanged
    assert torch.allclose(out[:, 3:], small.net(x))
    big = sbi.MLPEmbedding((10, 10), out_features=5)  # 100 numbers > 64: summary only
    assert not big.skip and big(torch.randn(2, 10, 10)).shape == (2, 5)
    assert sbi.MLPEmbedding((10, 10), out_features=5, skip=True)(torch.randn(2, 10, 10)).shape == (2, 105)
    with pytest.raises(ValueError, match="skip"):
        sbi.MLPEmbedding((3,), skip="yes")


def test_weight_average_is_the_exponential_average_of_the_steps(tmp_path):
    # recompute the average from the raw weights after every Adam step: e_1 = w_1, e_t = d e_(t-1) + (1 - d) w_t, d = 0.5 ** (1 / (half_life * steps/epoch))
    from torch.optim.optimizer import register_optimizer_step_post_hook

    prior = sbi.BoxUniform(-torch.ones(1), torch.ones(1))
    theta = prior.sample((250,))
    x = theta + 0.1 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(7))
    npe = sbi.NPE(prior, "affine", hidden=(8,), layers=1, embedding_net=None, seed=3).append_simulations(theta, x)
    npe.train(max_epochs=1, show_progress=False)  # builds the estimator; the average is per call
    est = npe.estimator
    names = [n for n, p in est.named_parameters()]
    start = [p.detach().double().clone() for p in est.parameters()]
    steps = []
    handle = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: steps.append([p.detach().double().clone() for p in est.parameters()]))
    ckpt = tmp_path / "t.ckpt"
    try:
        npe.train(max_epochs=2, patience=1000, batch_size=50, ema_half_life=0.7, show_progress=False, checkpoint=ckpt)
    finally:
        handle.remove()
    n_train = int(npe.history[-1].n_train)
    per_epoch = -(-n_train // 50)
    assert len(steps) == 2 * per_epoch
    d = 0.5 ** (1 / (0.7 * per_epoch))
    ema, at_epoch_end = steps[0], [start]
    for t, w in enumerate(steps[1:], start=2):
        ema = [d * e + (1 - d) * wi for e, wi in zip(ema, w)]
        if t % per_epoch == 0:
            at_epoch_end.append(ema)
    saved = torch.load(ckpt, weights_only=False)
    for name, e, w in zip(names, ema, steps[-1]):
        avg = saved["average"]["module"][name].double()
        assert torch.allclose(avg, e, atol=1e-6), name
        assert torch.equal(saved["model"][name].double(), w)  # Adam steps the raw weights
    assert max(float((e - w).abs().max()) for e, w in zip(ema, steps[-1])) > 1e-4  # the two differ
    # the estimator ends at the average of the epoch that validated best (0: the weights it started from)
    assert npe.history[-1].best_epoch > 0  # training improved on the starting weights
    best = at_epoch_end[npe.history[-1].best_epoch]
    for name, e in zip(names, best):
        assert torch.allclose(dict(est.named_parameters())[name].detach().double(), e, atol=1e-6), name
    with pytest.raises(ValueError, match="ema_half_life"):
        npe.train(ema_half_life=0.0, show_progress=False)
    with pytest.raises(sbi.CheckpointError, match="without weight averaging"):
        npe.train(max_epochs=1, ema_half_life=None, show_progress=False, checkpoint=tmp_path / "raw.ckpt")
        npe.train(max_epochs=2, ema_half_life=1.0, show_progress=False, checkpoint=tmp_path / "raw.ckpt", resume=True)
