"""Pin arviz's PSIS convention and check the importance-sampling diagnostics."""
import math

import numpy as np
import pytest

from flowvi.vi.importance import diagnose, psis, verdict


def gaussian_log_weights(q_sd, p_sd, n=4000, seed=0):
    """Draws from q = N(0, q_sd^2); log weights of the normalised p = N(0, p_sd^2)."""
    x = np.random.default_rng(seed).normal(0, q_sd, n)
    lw = (-0.5 * (x / p_sd) ** 2 - math.log(p_sd)) - (-0.5 * (x / q_sd) ** 2 - math.log(q_sd))
    return x, lw


def test_psislw_takes_log_weights_not_their_negation():
    # p wider than q: weights p/q have a heavy right tail (true k = 1 - q_sd^2/p_sd^2 = 0.89)
    _, heavy = gaussian_log_weights(1.0, 3.0)
    assert psis(heavy)[1] > 0.7
    # passing -log w (arviz-stats' other convention) would read the light left tail instead
    assert psis(-heavy)[1] < 0.5
    # p narrower than q: bounded weights
    _, light = gaussian_log_weights(1.0, 0.8)
    assert psis(light)[1] < 0.5


def test_diagnose_log_z_and_moments():
    x, lw = gaussian_log_weights(1.0, 0.8, n=20000, seed=1)
    d = diagnose(x[:, None], lw + 3.0)  # target known up to log Z = 3
    assert abs(d.log_z - 3.0) < 4 * d.log_z_se + 1e-3
    assert abs(d.psis_mean[0]) < 0.03
    assert d.psis_sd[0] == pytest.approx(0.8, abs=0.03)
    assert d.sd[0] == pytest.approx(1.0, abs=0.03)
    assert 0 < d.ess < 20000


def test_verdict_words():
    assert verdict(0.3).startswith("trustworthy")
    assert verdict(0.6).startswith("usable")
    assert verdict(0.9).startswith("not trustworthy")
    assert verdict(float("nan")).startswith("not trustworthy")
    # a heavy-shaped but negligible tail (near-exact q) is not called untrustworthy...
    assert verdict(0.9, ess_fraction=0.999, log_weight_sd=0.01).startswith("trustworthy")
    # ...but a heavy tail of real size is
    assert verdict(0.9, ess_fraction=0.95, log_weight_sd=0.01).startswith("not trustworthy")
    assert verdict(0.9, ess_fraction=0.999, log_weight_sd=0.5).startswith("not trustworthy")


def test_minus_inf_weights_are_zeros_not_errors():
    x, lw = gaussian_log_weights(1.0, 0.8, n=2000)
    lw[:10] = -np.inf
    d = diagnose(x[:, None], lw)
    assert np.isfinite(d.log_z) and np.isfinite(d.psis_mean).all()
