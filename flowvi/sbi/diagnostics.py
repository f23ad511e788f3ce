"""Calibration diagnostics: simulation-based calibration (SBC) and expected coverage.

Both need posteriors for many observations at once. They accept an ``NPE`` (one
batched flow pass draws ``(L, B, d)`` for ``B`` observations) or plain callables:
``sampler(x (B, *x_shape), L) -> (L, B, d)`` and, for HPD coverage,
``log_prob(theta (L, B, d), x (B, *x_shape)) -> (L, B)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ._rng import generator, seeded

Sampler = Callable[[Tensor, int], Tensor]
LogProb = Callable[[Tensor, Tensor], Tensor]


def _adapt(posterior) -> tuple[Sampler, LogProb | None]:
    if hasattr(posterior, "sample_batched"):  # an NPE
        return (lambda x, n: posterior.sample_batched(n, x)), (lambda t, x: posterior.log_prob_batched(t, x))
    if callable(posterior):
        return posterior, None
    raise TypeError("pass an NPE or a callable sampler(x (B, ...), L) -> (L, B, d)")


def _sample_in_chunks(sample: Sampler, x: Tensor, n: int, chunk: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([sample(xc, n) for xc in x.split(chunk)], dim=1)


def sbc_ranks(samples: Tensor, theta: Tensor) -> Tensor:
    """Rank statistics: ``samples (L, B, d)``, true ``theta (B, d)`` -> ranks ``(B, d)`` in ``0..L``
    (how many posterior draws fall below the true value, per coordinate)."""
    if samples.shape[1:] != theta.shape:
        raise ValueError(f"samples (L, B, d) and theta (B, d) disagree: {tuple(samples.shape)} vs {tuple(theta.shape)}")
    return (samples < theta.unsqueeze(0)).sum(0)


def sbc_uniformity(ranks: Tensor, num_posterior_samples: int, seed: int = 0) -> Tensor:
    """KS test p-values ``(d,)`` that the ranks are uniform on ``0..L``.

    A rank ``r`` plus independent ``U(0, 1)`` jitter, divided by ``L + 1``, is exactly
    ``U(0, 1)`` under calibration, so a continuous KS test applies without binning.
    """
    from scipy import stats

    L = int(num_posterior_samples)
    g = generator(seed, 31)
    u = ((ranks.double() + torch.rand(ranks.shape, generator=g, dtype=torch.float64)) / (L + 1)).numpy()
    return torch.tensor([stats.kstest(u[:, j], "uniform").pvalue for j in range(u.shape[1])])


@dataclasses.dataclass
class SBCResult:
    """Ranks ``(B, d)`` out of ``num_posterior_samples``, KS p-values ``(d,)``, and the ``theta``/``x`` used."""

    ranks: Tensor
    num_posterior_samples: int
    pvalues: Tensor
    theta: Tensor
    x: Tensor

    def plot(self, **kwargs):
        """Rank histograms (see ``plot_sbc``)."""
        return plot_sbc(self.ranks, self.num_posterior_samples, **kwargs)


def _simulate_pairs(prior, simulator, n: int, seed: int) -> tuple[Tensor, Tensor]:
    with seeded(seed, 17), torch.no_grad():
        theta = prior.sample((n,))
        x = torch.as_tensor(simulator(theta), dtype=theta.dtype)
    ok = torch.isfinite(x.reshape(n, -1)).all(1)
    return theta[ok], x[ok]


def sbc(
    posterior,
    prior=None,
    simulator: Callable[[Tensor], Tensor] | None = None,
    *,
    theta: Tensor | None = None,
    x: Tensor | None = None,
    num_sbc: int = 500,
    num_posterior_samples: int = 100,
    seed: int = 0,
    chunk: int = 500,
) -> SBCResult:
    """Simulation-based calibration (Talts et al. 2018).

    For ``theta_b ~ prior``, ``x_b ~ simulator(theta_b)``, rank each ``theta_b``
    among ``L = num_posterior_samples`` draws from ``q(. | x_b)``; a calibrated
    posterior gives uniform ranks on ``0..L`` in every coordinate.

    Args:
        posterior: an ``NPE`` or a batched sampler ``(x (B, ...), L) -> (L, B, d)``.
        prior, simulator: to draw the ``num_sbc`` test pairs (or pass ``theta``, ``x``).
        theta, x: ready test pairs ``(B, d)``, ``(B, *x_shape)``.
        seed: seeds the test pairs, the posterior draws and the KS jitter.
        chunk: observations per batched sampling call.
    """
    if theta is None or x is None:
        if prior is None or simulator is None:
            raise ValueError("pass prior and simulator, or ready theta and x")
        theta, x = _simulate_pairs(prior, simulator, num_sbc, seed)
    sample, _ = _adapt(posterior)
    with seeded(seed, 23):
        draws = _sample_in_chunks(sample, x, num_posterior_samples, chunk)
    ranks = sbc_ranks(draws, theta)
    return SBCResult(ranks, num_posterior_samples, sbc_uniformity(ranks, num_posterior_samples, seed), theta, x)


def plot_sbc(ranks: Tensor, num_posterior_samples: int, bins: int | None = None, names=None, axes=None):
    """Histogram of the ranks per parameter with the 99% band of a uniform histogram.

    Needs matplotlib (imported here, so the rest of flowvi does not). Returns the figure.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plot_sbc needs matplotlib, which is not installed: pip install matplotlib") from err
    from scipy import stats

    r = ranks.numpy() if isinstance(ranks, Tensor) else np.asarray(ranks)
    n, d = r.shape
    L = int(num_posterior_samples)
    bins = bins or int(min(L + 1, max(5, n // 20)))
    if axes is None:
        fig, axes = plt.subplots(1, d, figsize=(3 * d, 2.6), squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(axes)
        fig = axes[0].figure
    lo, hi = stats.binom.ppf([0.005, 0.995], n, 1.0 / bins)
    for j, ax in enumerate(axes[:d]):
        ax.axhspan(lo, hi, color="0.85", zorder=0)
        ax.hist(r[:, j], bins=bins, range=(-0.5, L + 0.5), color="C0", alpha=0.8)
        ax.set_title(names[j] if names else f"theta_{j}")
        ax.set_xlabel("rank")
    fig.tight_layout()
    return fig


@dataclasses.dataclass
class Coverage:
    """Empirical coverage at credibility ``levels`` (``(K,)``); ``coverage`` is ``(K,)`` (HPD,
    joint) or ``(K, d)`` (quantile, per coordinate). Calibrated: coverage == levels."""

    levels: Tensor
    coverage: Tensor
    method: str

    def max_error(self) -> float:
        lv = self.levels if self.coverage.dim() == 1 else self.levels.unsqueeze(1)
        return float((self.coverage - lv).abs().max())


def expected_coverage(
    posterior,
    theta: Tensor,
    x: Tensor,
    *,
    levels: Tensor | None = None,
    method: str = "hpd",
    num_posterior_samples: int = 500,
    log_prob: LogProb | None = None,
    seed: int = 0,
    chunk: int = 200,
) -> Coverage:
    """Expected coverage of posterior credible regions over test pairs ``theta (B, d)``, ``x (B, ...)``.

    ``method="hpd"``: the true ``theta_b`` lies in the level-``a`` highest-density
    region iff fewer than a fraction ``a`` of posterior draws have a higher density
    than it (needs log-densities: an ``NPE`` or ``log_prob=``). ``method="quantile"``:
    per coordinate, the central ``a`` interval of the draws.
    """
    if method not in ("hpd", "quantile"):
        raise ValueError(f"method must be 'hpd' or 'quantile', got {method!r}")
    levels = torch.linspace(0.05, 0.95, 19) if levels is None else torch.as_tensor(levels, dtype=torch.float32)
    sample, lp = _adapt(posterior)
    lp = log_prob or lp
    with seeded(seed, 29):
        draws = _sample_in_chunks(sample, x, num_posterior_samples, chunk)  # (L, B, d)
    L = draws.shape[0]
    if method == "quantile":
        frac = sbc_ranks(draws, theta).double() / L  # (B, d)
        inside = (frac.unsqueeze(0) - 0.5).abs() <= levels.double().view(-1, 1, 1) / 2
        return Coverage(levels, inside.double().mean(1).float(), method)
    if lp is None:
        raise ValueError("HPD coverage needs log-densities: pass an NPE or log_prob=, or use method='quantile'")
    with torch.no_grad():
        lq_draws = torch.cat([lp(draws[:, i : i + chunk], x[i : i + chunk]) for i in range(0, x.shape[0], chunk)], 1)
        lq_true = torch.cat([lp(theta[i : i + chunk].unsqueeze(0), x[i : i + chunk]) for i in range(0, x.shape[0], chunk)], 1)
    # credibility level at which theta_b enters the HPD region
    alpha = (lq_draws > lq_true).double().mean(0)  # (B,)
    return Coverage(levels, (alpha.unsqueeze(0) < levels.double().unsqueeze(1)).double().mean(1).float(), method)
