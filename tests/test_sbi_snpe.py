"""Sequential SNPE-C (APT): rounds help on a narrow posterior; proposal bookkeeping in NPE."""
import math
import warnings

import pytest
import torch

import flowvi.sbi as sbi

SIGMA = 0.005
PRIOR = sbi.BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
X_O = torch.tensor([1.0, -0.5])


def narrow(theta):
    """x ~ N(theta, 0.005^2 I): the posterior is ~1/1000 of the prior's width."""
    return theta + SIGMA * torch.randn_like(theta)


def exact_draws(n=4000):
    # the box is > 300 sd away from x_o, so the posterior is N(x_o, SIGMA^2 I) to float precision
    return X_O + SIGMA * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def cross_entropy(post):
    """E_exact[-log q(theta | x_o)]: KL(exact || q) + entropy(exact); lower is better."""
    return float(-post.log_prob(exact_draws()).mean())


def test_two_rounds_beat_one_round_at_equal_simulations():
    # a conditional Gaussian family ("affine") so the comparison is about the sequential
    # algorithm, not the flow. 800 simulations either way. Training on 400-800 rows at this
    # step is chaotic: a change in the optimiser's rounding alone (fused against foreach Adam)
    # moved seed 2's margin from +0.73 to -1.03 nats. So the claim is tested over seeds 0-5:
    # margins measured +0.29..+1.95 (one seed -1.03) with fused Adam, +0.62..+3.6 with foreach.
    kw = dict(hidden=(32, 32), layers=1, embedding_net=None, final_affine=False)
    train = dict(lr=5e-3, lr_patience=None, batch_size=100, max_epochs=300, patience=20)
    optimum = float(-torch.distributions.Normal(X_O, SIGMA).log_prob(exact_draws()).sum(-1).mean())
    margins = []
    for seed in range(6):
        one = sbi.SNPE(PRIOR, narrow, "affine", **kw).run(X_O, rounds=1, simulations_per_round=800, seed=seed,
                                                           train_kwargs=train)
        snpe = sbi.SNPE(PRIOR, narrow, "affine", **kw)
        two = snpe.run(X_O, rounds=2, simulations_per_round=400, seed=seed, train_kwargs=train)
        ce_two = cross_entropy(two)
        margins.append(cross_entropy(one) - ce_two)
        assert ce_two > optimum - 0.5  # no estimate beats the exact posterior by more than noise
    assert sum(m > 0 for m in margins) >= 5 and sum(margins) / 6 > 0.4, margins
    assert [h.loss for h in snpe.npe.history] == ["npe", "atomic"]
    assert [r["from_prior"] for r in snpe.npe.rounds] == [True, False]
    # the second round simulated near x_o: its parameters are far more concentrated
    second = snpe.npe._theta[400:]
    assert (second - X_O).abs().median() < 0.1 < (snpe.npe._theta[:400] - X_O).abs().median()


def test_proposal_rows_switch_to_atomic_loss_and_npe_loss_is_refused():
    prior = sbi.BoxUniform(-torch.ones(2), torch.ones(2))
    proposal = sbi.BoxUniform(-0.5 * torch.ones(2), 0.5 * torch.ones(2))
    theta_p, theta_q = prior.sample((80,)), proposal.sample((80,))
    npe = sbi.NPE(prior, "maf", hidden=(8,), layers=1)
    npe.append_simulations(theta_p, theta_p + 0.1)
    npe.append_simulations(theta_q, theta_q + 0.1, proposal=proposal)
    with pytest.raises(ValueError, match="80 simulations came from a proposal"):
        npe.train(loss="npe", show_progress=False)
    with pytest.raises(ValueError, match="num_atoms"):
        npe.train(batch_size=5, num_atoms=10, show_progress=False)
    npe.train(max_epochs=2, batch_size=32, show_progress=False)
    assert npe.history[-1].loss == "atomic"
    assert [r["from_prior"] for r in npe.rounds] == [True, False]
    assert "BoxUniform" in npe.rounds[1]["proposal"]  # a description, not the object
    # the prior itself, or "prior", counts as the prior
    npe2 = sbi.NPE(prior, "maf", hidden=(8,), layers=1).append_simulations(theta_p, theta_p, proposal=prior)
    npe2.append_simulations(theta_p, theta_p, proposal="prior").train(max_epochs=1, show_progress=False)
    assert npe2.history[-1].loss == "npe"


def test_undeclared_proposal_draws_are_flagged():
    # sbi's silent failure: proposal draws appended as if from the prior
    prior = sbi.BoxUniform(-torch.ones(2), torch.ones(2))
    narrow = sbi.BoxUniform(-0.2 * torch.ones(2), 0.2 * torch.ones(2)).sample((300,))
    npe = sbi.NPE(prior, "maf", hidden=(8,), layers=1)
    with pytest.warns(sbi.ProposalWarning, match="do not look like draws from the prior"):
        npe.append_simulations(narrow, narrow)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        npe.append_simulations(prior.sample((300,)), narrow)  # genuine prior draws: silent
        npe.append_simulations(narrow, narrow, check_prior_draws=False)
    # a posterior refined for one x_o warns when asked about another observation
    npe.append_simulations(narrow, narrow, proposal=type("Prop", (), {"x_o": torch.zeros(2)})())
    npe.train(max_epochs=1, batch_size=50, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        npe.posterior(torch.zeros(2))
    with pytest.warns(sbi.ProposalWarning, match="focused on another observation"):
        npe.posterior(torch.ones(2))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_atomic_loss_recovers_posterior_from_a_fixed_proposal(seed):
    # the proposal posterior differs a lot from the posterior here; the atomic loss must undo it
    torch.manual_seed(seed)
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1), 2.0), 1)
    proposal = torch.distributions.Independent(torch.distributions.Normal(torch.tensor([0.8]), 0.5), 1)
    # the noise has its own stream: seeded like the global RNG, it would redraw theta's own normals
    # (x = 2 theta - 0.8, a near-deterministic simulator whose true posterior is a spike)
    g = torch.Generator().manual_seed(10_000 + seed)
    theta = proposal.sample((1500,))
    x = theta + 0.5 * torch.randn(theta.shape, generator=g)
    npe = sbi.NPE(prior, "affine", hidden=(16,), layers=1, embedding_net=None, final_affine=False, seed=0)
    npe.append_simulations(theta, x, proposal=proposal).train(lr=3e-3, batch_size=100, max_epochs=150, show_progress=False)
    draws = npe.posterior(torch.tensor([0.0])).sample((20_000,), seed=0)
    # exact: prior var 4, noise var 0.25 -> N(0, 0.2353); the proposal posterior would be N(0.148, 0.2),
    # 0.053 nats from it. KL from the moment-matched Gaussian, measured over seeds 0-5: 0.000-0.020
    # (0.000-0.027 without weight averaging)
    m, v, v0 = float(draws.mean()), float(draws.var()), 4 * 0.25 / 4.25
    kl = 0.5 * (v / v0 + m * m / v0 - 1 - math.log(v / v0))
    assert kl < 0.025, (m, v, kl)


def test_rounds_use_a_fixed_step_unless_told_otherwise():
    # SNPE keeps lr=2e-3 in every round (see SNPE.run); NPE.train's "auto" rule only when asked
    kw = dict(hidden=(8,), layers=1, embedding_net=None, final_affine=False)
    snpe = sbi.SNPE(PRIOR, narrow, "affine", **kw)
    snpe.run(X_O, rounds=2, simulations_per_round=120, seed=0, train_kwargs=dict(max_epochs=1))
    assert [h.lr for h in snpe.npe.history] == [sbi.snpe.SNPE_LR] * 2 == [2e-3] * 2
    snpe = sbi.SNPE(PRIOR, narrow, "affine", **kw)
    snpe.run(X_O, rounds=2, simulations_per_round=120, seed=0, train_kwargs=dict(max_epochs=1, lr="auto"))
    assert [h.lr for h in snpe.npe.history] == [sbi.auto_lr(h.n_train) for h in snpe.npe.history]
