"""Targets: densities, samplers and stated moments agree with each other and with
independent references (scipy, the papers' formulas, quadrature on other grids)."""
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from flowvi import targets
from flowvi.targets import Banana, CorrelatedGaussian, Energy2D, Funnel, GaussianMixture

ALL = targets.names()
_CACHE: dict = {}


def get(name):
    """One instance per name for the whole module (energies' quadrature is done once)."""
    if name not in _CACHE:
        _CACHE[name] = targets.get(name)
    return _CACHE[name]


def draws(name, n=40_000):
    key = (name, n)
    if key not in _CACHE:
        _CACHE[key] = get(name).sample(n, seed=1)
    return _CACHE[key]


TWO_D = [n for n in ALL if get(n).dim == 2]
NORMALISED = [n for n in ALL if get(n).normalised]


# ---------------------------------------------------------------- registry and interface

def test_registry_lists_every_kind_and_describes_them():
    expected = {"banana", "haario-0.03", "haario-0.1", "haario-10d", "gaussian-scales-20", "gaussian-scales-20-axis",
                "gaussian-cond100-2", "gaussian-cond100-10", "gaussian-cond10000-100", "funnel-2", "funnel-10",
                "mixture-2d", "mixture-10d", "u1", "u2", "u3", "u4", "two-moons"}
    assert set(ALL) == expected
    assert set(targets.describe()) == expected
    assert targets.get("banana-pyro").name == "banana" and targets.get("funnel").name == "funnel-2"
    assert all(get(n).name == n for n in ALL)


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match="unknown target 'bananna'.*banana.*two-moons"):
        targets.get("bananna")
    with pytest.raises(TypeError, match="dim"):
        targets.get("haario-0.1", dimension=3)
    with pytest.raises(TypeError, match="none"):
        targets.get("u1", dim=3)


def test_registry_keywords_override_defaults():
    t = targets.get("haario-0.1", dim=8)
    assert t.dim == 8 and t.twist == -0.1 and t.name == "haario-0.1(dim=8)"
    assert torch.count_nonzero(targets.get("gaussian-scales-20", rotate=False).cov - torch.diag(get("gaussian-scales-20").scales**2)) == 0
    assert targets.get("mixture-2d", k=6).means.shape == (6, 2)


@pytest.mark.parametrize("name", ALL)
def test_interface_shapes_dtypes_and_seeds(name):
    t = get(name)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 4, t.dim, dtype=dtype)
        lp = t.log_prob(x)
        assert lp.shape == (3, 4) and lp.dtype == dtype
        torch.testing.assert_close(t(x), lp)
    assert t.log_prob(torch.zeros(t.dim)).shape == ()
    with pytest.raises(ValueError, match=rf"\(\.\.\., {t.dim}\)"):
        t.log_prob(torch.zeros(2, t.dim + 1))
    x = t.sample(7, seed=3)
    assert x.shape == (7, t.dim) and x.dtype == torch.float64
    assert torch.equal(x, t.sample(7, seed=3)) and not torch.equal(x, t.sample(7, seed=4))
    assert t.mean.shape == (t.dim,) and t.cov.shape == (t.dim, t.dim)
    torch.testing.assert_close(t.cov, t.cov.T)
    assert torch.linalg.eigvalsh(t.cov).min() > 0
    assert t.normalised == (t.log_z == 0.0) and math.isfinite(t.log_z)


# ---------------------------------------------------------------- sampler vs stated moments

@pytest.mark.parametrize("name", ALL)
def test_sample_moments_match_stated(name):
    t, x = get(name), draws(name)
    n, d = x.shape
    c = x - t.mean
    se = (t.cov.diagonal() / n).sqrt()
    z_mean = (c.mean(0) / se).abs().max()
    assert z_mean < 5, (c.mean(0), se)
    if isinstance(t, Funnel):  # the x_i have kurtosis 3 e^9: only v's second moment is checkable
        dirs = torch.eye(d, dtype=torch.float64)[:1]
    else:  # second moments along the axes, along pairs of axes (covariances) and random directions
        g = torch.Generator().manual_seed(0)
        i, j = torch.randint(d, (2, 30), generator=g)
        keep = i != j
        pairs = torch.zeros(int(keep.sum()), d, dtype=torch.float64)
        pairs[torch.arange(len(pairs)), i[keep]] = 1.0
        pairs[torch.arange(len(pairs)), j[keep]] += 1.0
        dirs = torch.cat([torch.eye(d, dtype=torch.float64), pairs, torch.randn(10, d, generator=g, dtype=torch.float64)])
    proj2 = (c @ dirs.T) ** 2  # (n, directions)
    stated = torch.einsum("ki,ij,kj->k", dirs, t.cov, dirs)
    z = (proj2.mean(0) - stated) / (proj2.std(0) / math.sqrt(n))
    assert z.abs().max() < 5, (z.abs().max(), proj2.mean(0) / stated)


# ---------------------------------------------------------------- density is normalised / matches references

def _grid(lo, hi, n=801):
    g1, g2 = (torch.linspace(float(lo[i]), float(hi[i]), n, dtype=torch.float64) for i in range(2))
    return g1, g2, torch.stack(torch.meshgrid(g1, g2, indexing="ij"), -1)


def _box(name):
    """A quadrature box independent of the energies' own: sample range widened by half on each side."""
    if isinstance(get(name), Energy2D):
        return torch.tensor([-8.0, -9.0]), torch.tensor([8.0, 7.5])
    x = draws(name)
    lo, hi = x.min(0).values, x.max(0).values
    return lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)


@pytest.mark.parametrize("name", [n for n in TWO_D if not n.startswith("funnel")])
def test_2d_density_integrates_to_exp_log_z(name):
    t = get(name)
    g1, g2, pts = _grid(*_box(name))
    def integral(f):
        return torch.trapezoid(torch.trapezoid(f, g2, dim=1), g1)

    dens = (t.log_prob(pts) - t.log_z).exp()
    mass = integral(dens)
    tol = 10 * t.log_z_error + 1e-7 if isinstance(t, Energy2D) else 1e-4
    assert abs(float(mass) - 1) < tol, float(mass)
    # the stated moments (analytic or the energies' own quadrature) on this independent grid
    mean = torch.stack([integral(dens * pts[..., i]) for i in range(2)])
    c = pts - mean
    cov = torch.stack([torch.stack([integral(dens * c[..., i] * c[..., j]) for j in range(2)]) for i in range(2)])
    scale = t.cov.diagonal().sqrt()
    assert ((mean - t.mean) / scale).abs().max() < 1e-4, (mean, t.mean)
    assert ((cov - t.cov) / torch.outer(scale, scale)).abs().max() < 1e-4, (cov, t.cov)


def test_2d_funnel_integrates_to_one_in_its_own_coordinates():
    """No fixed grid resolves the neck: integrate x on a grid scaled by e^{v/2} at each v."""
    t = get("funnel-2")
    v = torch.linspace(-30, 30, 1201, dtype=torch.float64)
    u = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    s = torch.exp(v / 2)[:, None]
    dens = t.log_prob(torch.stack([v[:, None].expand(-1, len(u)), s * u], -1)).exp() * s
    assert float(torch.trapezoid(torch.trapezoid(dens, u, dim=1), v)) == pytest.approx(1.0, abs=1e-9)


def _scipy_logpdf(t, x: np.ndarray) -> np.ndarray:
    """Each normalised target's log density written independently with scipy."""
    if isinstance(t, Banana) and t.scale == 10.0 and t.offset == 100.0:  # Haario's f_b = f o phi_b
        b = -t.twist
        phi = x.copy()
        phi[:, 1] = x[:, 1] + b * x[:, 0] ** 2 - 100 * b
        return stats.multivariate_normal(np.zeros(t.dim), np.diag([100.0] + [1.0] * (t.dim - 1))).logpdf(phi)
    if isinstance(t, Banana):  # x1 = s z1, x2 = z2 + b (x1^2 - c)
        z2 = x[:, 1] - t.twist * (x[:, 0] ** 2 - t.offset)
        return stats.norm(0, t.scale).logpdf(x[:, 0]) + stats.norm.logpdf(z2) + stats.norm.logpdf(x[:, 2:]).sum(1)
    if isinstance(t, CorrelatedGaussian):
        return stats.multivariate_normal(t.mean.numpy(), t.cov.numpy()).logpdf(x)
    if isinstance(t, Funnel):
        v = x[:, 0]
        return stats.norm(0, t.v_scale).logpdf(v) + stats.norm.logpdf(x[:, 1:], 0, np.exp(v / 2)[:, None]).sum(1)
    if isinstance(t, GaussianMixture):
        comp = np.stack([stats.multivariate_normal(m, t.scale**2 * np.eye(t.dim)).logpdf(x) for m in t.means.numpy()], -1)
        return special.logsumexp(comp + np.log(t.weights.numpy()), -1)
    raise AssertionError(type(t))


@pytest.mark.parametrize("name", NORMALISED)
def test_normalised_log_prob_matches_scipy(name):
    t = get(name)
    x = torch.cat([draws(name)[:300], t.mean + 2 * torch.randn(100, t.dim, dtype=torch.float64) @ torch.linalg.cholesky(t.cov).T])
    ref = _scipy_logpdf(t, x.numpy())
    np.testing.assert_allclose(t.log_prob(x).numpy(), ref, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(t.log_prob(x.float()).numpy(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["haario-10d", "gaussian-scales-20"])
def test_normalised_by_importance_sampling(name):
    """log E_q[p / q] = 0 for a heavy-tailed q covering p (a multivariate t with the stated moments)."""
    t = get(name)
    q = stats.multivariate_t(t.mean.numpy(), t.cov.numpy(), df=4)
    y = q.rvs(100_000, random_state=np.random.default_rng(5))
    lw = t.log_prob(torch.from_numpy(y)).numpy() - q.logpdf(y)
    w = np.exp(lw - lw.max())
    assert w.sum() ** 2 / (w**2).sum() > 5000  # effective sample size: the estimate's s.e. is < 0.015
    assert abs(float(special.logsumexp(lw) - math.log(len(lw)))) < 0.05


def _paper_energy(which, z):
    """Rezende & Mohamed 2015 Table 1 (and the two-moons energy), transcribed with numpy."""
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    r = np.hypot(z1, z2)
    if which == "u1":
        return 0.5 * ((r - 2) / 0.4) ** 2 - np.log(np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2))
    if which == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if which == "u3":
        return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    if which == "u4":
        return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))
    a = np.abs(z1)
    return 0.5 * ((r - 2) / 0.2) ** 2 + 0.5 * ((a - 2) / 0.3) ** 2 - np.log(1 + np.exp(-4 * a / 0.09))


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4", "two-moons"])
def test_energies_are_the_papers_inside_the_plotted_box(name):
    z = np.random.default_rng(0).uniform(-4, 4, (2000, 2))
    np.testing.assert_allclose(-get(name).log_prob(torch.from_numpy(z)).numpy(), _paper_energy(name, z), rtol=1e-10, atol=1e-10)
    t = get(name)
    assert t.log_z_error < 1e-7 and t.edge_mass < 1e-15


# ---------------------------------------------------------------- sampler vs density

def _ks_p(values, cdf):
    return stats.kstest(np.asarray(values), cdf).pvalue


@pytest.mark.parametrize("name", TWO_D)
def test_2d_sampler_marginals_match_density_quadrature(name):
    """KS test of each coordinate's draws against the marginal CDF integrated from log_prob."""
    t, x = get(name), draws(name)[:20_000]
    if isinstance(t, Funnel):
        lo, hi = torch.tensor([-15.0, -5.0]), torch.tensor([15.0, 5.0])  # x's marginal: only its centre is gridable
    else:
        lo, hi = _box(name)
    g1, g2, pts = _grid(lo, hi, 801)
    dens = (t.log_prob(pts) - t.log_z).exp()
    for axis, (g, f) in enumerate([(g1, torch.trapezoid(dens, g2, dim=1)), (g2, torch.trapezoid(dens, g1, dim=0))]):
        g, f = g.numpy(), f.numpy()
        cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(g))])
        if isinstance(t, Funnel) and axis == 0:
            continue  # v's marginal needs the funnel's whole mouth (|x| up to e^7): checked by the next test
        if isinstance(t, Funnel):  # the grid misses the neck's mass; compare inside the window
            inside = np.abs(x[:, 1].numpy()) < 5
            vals, cdf = x[inside, 1].numpy(), cdf / cdf[-1]
        else:
            vals = x[:, axis].numpy()
            assert abs(cdf[-1] - 1) < 1e-3
        assert _ks_p(vals, lambda v: np.interp(v, g, cdf)) > 1e-3, (name, axis)


@pytest.mark.parametrize("name", [n for n in ALL if not isinstance(get(n), Energy2D)])
def test_sampler_has_the_known_1d_marginals(name):
    """KS tests on marginals known in closed form (after undoing the twist / funnel)."""
    t, x = get(name), draws(name)[:20_000]
    g = torch.Generator().manual_seed(7)
    u = torch.randn(t.dim, generator=g, dtype=torch.float64)
    u /= u.norm()
    if isinstance(t, (Banana, Funnel)):
        z = t.unwarp(x)
        for i in range(min(t.dim, 4)):
            assert _ks_p(z[:, i], stats.norm.cdf) > 1e-3, i
    elif isinstance(t, CorrelatedGaussian):
        s = math.sqrt(float(u @ t.cov @ u))
        assert _ks_p(x @ u / s, stats.norm.cdf) > 1e-3
    else:
        mu, w = (t.means @ u).numpy(), t.weights.numpy()
        assert _ks_p(x @ u, lambda v: (w * stats.norm.cdf((np.asarray(v)[:, None] - mu) / t.scale)).sum(-1)) > 1e-3


@pytest.mark.parametrize("name", ALL)
def test_stein_identity_links_sampler_and_density(name):
    """E_p[grad log p(x) (x - m)^T] = -I whatever the normaliser: in whitened coordinates,
    E[g y^T] = -I with y = L^-1 (x - m), g = L^T grad log p, L = chol(cov)."""
    t = get(name)
    x = draws(name)[:20_000].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(t.log_prob(x).sum(), x)
    chol = torch.linalg.cholesky(t.cov)
    y = torch.linalg.solve_triangular(chol, (x.detach() - t.mean).T, upper=False).T
    gy = grad @ chol
    n = len(y)
    est = gy.T @ y / n
    se = (((gy**2).T @ y**2 / n - est**2) / n).sqrt()
    z = (est + torch.eye(t.dim, dtype=torch.float64)) / se
    assert z.abs().max() < 6, (z.abs().max(), est.diagonal()[:4])


# ---------------------------------------------------------------- numerics far out

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_and_gradient_finite_far_out(name, dtype):
    t = get(name)
    d = t.dim
    rows = [[0.0] * d, [1e4] * d, [-1e4] * d, [-50.0] + [30.0] * (d - 1), [-200.0] + [1e3] * (d - 1),
            [-200.0] + [0.0] * (d - 1), [1e-30] * d, [1e4, -1e4] * (d // 2) + [0.0] * (d % 2)]
    x = torch.tensor(rows, dtype=dtype, requires_grad=True)
    lp = t.log_prob(x)
    assert lp.dtype == dtype and torch.isfinite(lp).all(), lp
    (g,) = torch.autograd.grad(lp.sum(), x)
    assert torch.isfinite(g).all(), g


def test_funnel_is_exact_deep_in_the_neck_in_float64():
    t = Funnel(dim=3)
    x = torch.tensor([[-50.0, 0.1, -0.2], [-300.0, 0.0, 1e-60]], dtype=torch.float64)
    ref = [stats.norm(0, 3).logpdf(v) + stats.norm.logpdf(np.array(r) * math.exp(-v / 2)).sum() - v for v, *r in x.tolist()]
    np.testing.assert_allclose(t.log_prob(x).numpy(), ref, rtol=1e-12)


# ---------------------------------------------------------------- construction details

def test_gaussian_condition_numbers_and_axes():
    for name, cond in [("gaussian-cond100-2", 100), ("gaussian-cond100-10", 100), ("gaussian-cond10000-100", 1e4), ("gaussian-scales-20", 1e4)]:
        ev = torch.linalg.eigvalsh(get(name).cov)
        assert float(ev.max() / ev.min()) == pytest.approx(cond, rel=1e-8)
    axis = get("gaussian-scales-20-axis").cov
    assert torch.equal(axis, torch.diag(axis.diagonal()))
    assert not torch.allclose(get("gaussian-scales-20").cov, targets.get("gaussian-scales-20", seed=1).cov)


@pytest.mark.parametrize("dim,k", [(2, 2), (2, 8), (3, 5), (3, 8), (10, 8), (5, 12)])
def test_mixture_means_are_separated_and_equidistant_from_0(dim, k):
    t = GaussianMixture(dim=dim, k=k, separation=7.0, scale=0.5, seed=2)
    dist = torch.cdist(t.means, t.means) + torch.eye(k, dtype=torch.float64) * 1e9
    assert float(dist.min()) >= 3.5 - 1e-9
    r = t.means.norm(dim=1)
    torch.testing.assert_close(r, r[:1].expand(k))


def test_haario_is_the_papers_f_b():
    """phi_b(x) = (x1, x2 + b x1^2 - 100 b, x3, ...) maps Haario's banana to N(0, diag(100, 1, ...)):
    its ridge x2 = 100 b - b x1^2 opens downwards."""
    t = get("haario-0.1")
    x = t.sample(20_000, seed=0)
    phi = x.clone()
    phi[:, 1] += 0.1 * x[:, 0] ** 2 - 10
    assert _ks_p(phi[:, 1], stats.norm.cdf) > 1e-3
    assert float(t.log_prob(torch.tensor([0.0, 10.0]))) > float(t.log_prob(torch.tensor([0.0, -10.0])))
