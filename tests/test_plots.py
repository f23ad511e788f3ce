"""flowvi.plots: figures come back with the expected axes, and what they draw matches an
independent computation of the same numbers."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats  # noqa: E402

import flowvi  # noqa: E402
from flowvi import plots  # noqa: E402

torch.set_num_threads(1)


def _no_pyplot_figures():
    import matplotlib.pyplot as plt

    return plt.get_fignums()


def _gauss(x):
    # N((0.5, -0.3), diag(0.8^2, 1.3^2)), deliberately unnormalised by a constant
    return -0.5 * (((x[..., 0] - 0.5) / 0.8) ** 2 + ((x[..., 1] + 0.3) / 1.3) ** 2) + 7.0


def test_grid_density_matches_scipy_and_integrates_to_one():
    bounds = (-3.0, 4.0, -5.0, 4.0)
    xs, ys, dens = plots.grid_density(_gauss, bounds, grid=81)
    assert dens.shape == (81, 81)  # rows along y
    xx, yy = np.meshgrid(xs, ys)
    ref = stats.multivariate_normal([0.5, -0.3], np.diag([0.64, 1.69])).pdf(np.dstack([xx, yy]))
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert abs(dens.sum() * cell - 1) < 1e-9
    # the grid holds nearly all the mass, so grid-normalised equals the true density closely
    assert np.allclose(dens, ref, rtol=2e-3, atol=1e-6)


def test_density_2d_panels_target_and_q():
    before = _no_pyplot_figures()
    flow = flowvi.build("affine", 2, layers=1)  # identity map: q = N(0, I)
    bounds = (-4.0, 4.0, -4.0, 4.0)
    fig = plots.density_2d(flow, _gauss, bounds=bounds, grid=60, titles=("p", "q"))
    assert isinstance(fig, Figure) and _no_pyplot_figures() == before
    target_ax, q_ax = fig.axes[0], fig.axes[1]
    assert len(fig.axes) == 3  # two panels and the colour bar
    assert (target_ax.get_title(), q_ax.get_title()) == ("p", "q")
    xs = np.linspace(-4, 4, 60)
    xx, yy = np.meshgrid(xs, xs)
    q_ref = stats.multivariate_normal(np.zeros(2), np.eye(2)).pdf(np.dstack([xx, yy]))
    q_img = np.asarray(q_ax.images[0].get_array())
    assert np.allclose(q_img, q_ref / (q_ref.sum() * (xs[1] - xs[0]) ** 2), rtol=1e-4)
    # one colour scale for both panels
    assert target_ax.images[0].get_clim() == q_ax.images[0].get_clim()
    assert tuple(q_ax.images[0].get_extent()) == bounds


def test_density_2d_from_result_with_default_bounds_and_given_axes():
    from matplotlib.figure import Figure as F

    target = flowvi.targets.get("banana")
    result = flowvi.vi.VIResult(flowvi.build("realnvp", 2, layers=1, hidden=(4,)), target.log_prob, [0.0], 1, False, 0.0, 0)
    fig = F()
    axes = fig.subplots(1, 2)
    out = plots.density_2d(result, grid=30, axes=axes)
    assert out is fig and len(axes[0].images) == 1 and len(axes[1].images) == 1
    lo, hi = np.quantile(target.sample(4000, seed=0).numpy(), [0.005, 0.995], axis=0)
    x0, x1, y0, y1 = axes[0].images[0].get_extent()
    assert x0 < lo[0] and x1 > hi[0] and y0 < lo[1] and y1 > hi[1]
    with pytest.raises(ValueError, match="dim=3"):
        plots.density_2d(flowvi.build("affine", 3, layers=1), bounds=(0, 1, 0, 1))


def test_elbo_trace_lines_are_the_trace_and_its_running_mean():
    trace = np.sin(np.arange(200) / 7.0) - 3 + 0.01 * np.arange(200)
    fig = plots.elbo_trace(list(trace), window=10, log_z=-0.5)
    ax = fig.axes[0]
    raw, mean = ax.lines[0], ax.lines[1]
    assert np.array_equal(raw.get_ydata(), trace)
    expected = np.array([trace[max(0, i - 9): i + 1].mean() for i in range(200)])
    assert np.allclose(mean.get_ydata(), expected)
    assert ax.lines[2].get_ydata()[0] == -0.5  # the true log Z line
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "ELBO"
    with pytest.raises(ValueError):
        plots.elbo_trace([])


def test_pair_plot_grid_histograms_and_scatter():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(500, 3))
    r = rng.normal(1.0, 0.5, size=(300, 3))
    fig = plots.pair_plot(torch.tensor(s), r, names=["a", "b", "c"], bins=20, max_points=100)
    axes = np.array(fig.axes).reshape(3, 3)
    assert all(not axes[i, j].axison for i in range(3) for j in range(3) if j > i)
    assert all(axes[i, j].axison for i in range(3) for j in range(3) if j <= i)
    assert axes[2, 0].get_xlabel() == "a" and axes[2, 1].get_xlabel() == "b" and axes[1, 0].get_ylabel() == "b"
    # diagonal: the filled histogram is the density histogram of the samples on shared edges
    lo, hi = min(s[:, 1].min(), r[:, 1].min()), max(s[:, 1].max(), r[:, 1].max())
    heights, _ = np.histogram(s[:, 1], bins=np.linspace(lo, hi, 21), density=True)
    poly_y = axes[1, 1].patches[0].get_xy()[:, 1]
    assert math.isclose(poly_y.max(), heights.max(), rel_tol=1e-9)
    # below the diagonal: a seeded subset of each sample, coordinate j on x and i on y
    pts = axes[2, 0].collections[0].get_offsets()
    assert len(pts) == 100
    assert all(((s[:, [0, 2]] == p).all(1)).any() for p in np.asarray(pts))
    assert len(axes[2, 0].collections) == 2  # samples and reference


def test_tile_places_images_row_major():
    imgs = torch.arange(5 * 6, dtype=torch.float32).reshape(5, 6) / 30  # 5 images of 2x3
    out = plots.tile(imgs, image_shape=(2, 3), ncols=2, pad=1)
    assert out.shape == (3 * 3 - 1, 2 * 4 - 1)
    assert np.array_equal(out[0:2, 4:7], imgs[1].reshape(2, 3).numpy())  # second image: first row, second column
    assert np.array_equal(out[6:8, 0:3], imgs[4].reshape(2, 3).numpy())  # fifth image: third row
    assert (out[6:8, 4:7] == 0.5).all() and (out[2, :] == 0.5).all()  # empty slot and padding


def test_vae_grid_and_figure():
    from flowvi.vae import VAE

    torch.manual_seed(0)
    model = VAE(16, 2, family="planar", flow_layers=1, hidden=(8,))
    x = (torch.rand(10, 16) > 0.5).float()
    fig = plots.vae_figure(model, x, n=8, ncols=4, seed=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    samples_img = np.asarray(fig.axes[0].images[0].get_array())
    torch.manual_seed(3)
    assert np.allclose(samples_img, plots.tile(model.sample(8), ncols=4))  # 4x4 images, 2 rows of 4
    recon_img = np.asarray(fig.axes[1].images[0].get_array())
    assert recon_img.shape == (4 * 5 - 1, 4 * 5 - 1)  # rows: data, recon, data, recon
    assert np.array_equal(recon_img[0:4, 0:4], x[0].reshape(4, 4).numpy())
    again = plots.vae_figure(model, x, n=8, ncols=4, seed=3)
    assert np.array_equal(np.asarray(again.axes[1].images[0].get_array()), recon_img)
    with pytest.raises(ValueError, match="both"):
        plots.vae_grid(x, originals=x)


def test_save_writes_png(tmp_path):
    fig = plots.elbo_trace([1.0, 2.0, 3.0])
    plots.save(fig, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
