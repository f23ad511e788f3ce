"""Figures for fits, posteriors and VAEs (matplotlib).

Every function returns a ``matplotlib.figure.Figure`` and takes an optional ``ax``
(or ``axes``) to draw into an existing figure. New figures are made with
``matplotlib.figure.Figure`` directly, not through ``pyplot``: no GUI backend is
touched (safe on headless machines and in threads) and nothing is kept alive in
pyplot's figure registry; ``fig.savefig(path)`` works as usual.

* ``density_2d``: fitted density next to the target on a 2-D grid (heatmaps with
  contour lines, one colour scale);
* ``elbo_trace``: the ELBO per step with its running mean;
* ``pair_plot``: posterior draws against a reference sample (marginal histograms on
  the diagonal, scatter below it);
* ``vae_grid`` / ``vae_figure``: VAE samples, and data over their reconstructions.

SBC rank histograms are ``flowvi.sbi.plot_sbc`` (not repeated here).
matplotlib is imported when a function is called, so the rest of flowvi does not need it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("flowvi.plots needs matplotlib, which is not installed: pip install matplotlib") from err
    return Figure(figsize=figsize, layout="constrained")


def _numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _row_of_axes(axes, n: int, panel_size: tuple[float, float]):
    """``(fig, axes)``: a new figure with ``n`` panels in a row, or the given axes checked."""
    if axes is None:
        fig = _figure((panel_size[0] * n, panel_size[1]))
        return fig, fig.subplots(1, n, squeeze=False)[0]
    axes = np.atleast_1d(axes)
    if len(axes) < n:
        raise ValueError(f"need {n} axes, got {len(axes)}")
    return axes[0].figure, axes


def save(fig, path, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` (format from the suffix) and release it from pyplot if it is
    registered there (figures from ``flowvi.sbi.plot_sbc`` are)."""
    fig.savefig(path, dpi=dpi)
    if getattr(fig, "number", None) is not None:  # only pyplot-made figures are numbered
        import matplotlib.pyplot as plt

        plt.close(fig)


# -- densities on a grid -------------------------------------------------------------------
def _as_log_density(obj) -> Callable[[Tensor], Tensor]:
    """A ``(n, 2) -> (n,)`` log density from a Flow, VIResult, flowvi target or callable."""
    flow = getattr(obj, "flow", None)
    if flow is not None and hasattr(flow, "log_prob"):  # a VIResult
        obj = flow
    if hasattr(obj, "log_prob"):
        return obj.log_prob
    if callable(obj):
        return obj
    raise TypeError(f"expected a Flow, VIResult, target or callable log density, got {type(obj).__name__}")


def _dtype_of(obj) -> torch.dtype:
    mod = getattr(obj, "flow", obj)
    if isinstance(mod, torch.nn.Module):
        for t in mod.state_dict().values():
            if t.is_floating_point():
                return t.dtype
    return torch.get_default_dtype()


def grid_density(log_density, bounds: Sequence[float], grid: int = 120, dtype: torch.dtype | None = None,
                 chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A log density normalised over a 2-D grid.

    Args:
        log_density: ``(n, 2) -> (n,)``, any normalisation (Flow, VIResult, target or callable).
        bounds: ``(x_min, x_max, y_min, y_max)``.
        grid: points per axis.
    Returns:
        ``xs (grid,)``, ``ys (grid,)`` and the density ``(grid, grid)`` (rows: y, columns: x),
        divided by its Riemann sum over the grid so it integrates to one there
        (non-finite log-densities count as zero density).
    """
    f = _as_log_density(log_density)
    x0, x1, y0, y1 = map(float, bounds)
    xs, ys = np.linspace(x0, x1, grid), np.linspace(y0, y1, grid)
    xx, yy = np.meshgrid(xs, ys)
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=dtype or _dtype_of(log_density))
    with torch.no_grad():
        lp = torch.cat([f(c).reshape(-1) for c in pts.split(chunk)]).double().numpy()
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    m = lp.max()
    if not np.isfinite(m):
        raise ValueError("the log density is -inf or non-finite everywhere on the grid; widen the bounds")
    dens = np.exp(lp - m)
    dens /= dens.sum() * cell
    return xs, ys, dens.reshape(grid, grid)


def _default_bounds(samples: np.ndarray, pad: float = 0.15) -> tuple[float, float, float, float]:
    lo, hi = np.quantile(samples, [0.005, 0.995], axis=0)
    w = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * w, hi + pad * w
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _draw(obj, n: int, seed: int) -> np.ndarray | None:
    """``n`` draws (numpy) of a target (``sample(n, seed=)``) or flow/result (``sample``), or None."""
    owner = getattr(obj, "__self__", None)  # ``target.log_prob`` (what a VIResult keeps): draw from the target
    if not hasattr(obj, "sample") and hasattr(owner, "sample"):
        obj = owner
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if hasattr(obj, "sample"):
                try:
                    s = obj.sample(n, seed=seed)
                except TypeError:
                    s = obj.sample((n,)) if not hasattr(obj, "flow") else obj.sample(n)
                return _numpy(s)
        except Exception:  # a target without a sampler: bounds come from elsewhere
            return None
    return None


def density_2d(q, target=None, *, bounds: Sequence[float] | None = None, grid: int = 120, axes=None,
               titles: Sequence[str] = ("target", "fitted q"), seed: int = 0, contours: int = 6):
    """Fitted density next to the target on a 2-D problem, as heatmaps with contour lines.

    Both are normalised over the same grid and drawn on one colour scale, so brightness
    compares directly (the target may be unnormalised).

    Args:
        q: the fit: a ``VIResult``, an unconditional 2-D ``Flow`` or a log density ``(n, 2) -> (n,)``.
        target: the target's log density (callable or ``flowvi.targets`` target); default:
            ``q.target`` of a VIResult. ``None`` and no VIResult: only q is drawn.
        bounds: ``(x_min, x_max, y_min, y_max)``; default: the 0.5-99.5% range of draws
            of the target (if it has ``sample``) or of q, padded by 15%.
        grid: points per axis (q is evaluated at ``grid**2`` points through its inverse).
        axes: two axes to draw into (one when there is no target); default: a new figure.
        seed: draws used for the default bounds.
    Returns:
        The figure; its first axes show the target, the last q (``ax.images[0]`` holds
        the ``(grid, grid)`` density, rows along y).
    """
    from .io import MissingLogProb

    if target is None and hasattr(q, "target") and not isinstance(q.target, MissingLogProb):
        target = q.target
    dim = getattr(getattr(q, "flow", q), "dim", 2)
    if dim != 2:
        raise ValueError(f"density_2d draws 2-D densities; this one has dim={dim} (use pair_plot)")
    panels = ([target] if target is not None else []) + [q]
    if bounds is None:
        draws = _draw(target, 4000, seed) if target is not None else None
        if draws is None:
            draws = _draw(q, 4000, seed)
        if draws is None:
            raise ValueError("give bounds=(x_min, x_max, y_min, y_max): neither q nor the target can be sampled")
        bounds = _default_bounds(draws)
    dens = [grid_density(p, bounds, grid, dtype=_dtype_of(q))[2] for p in panels]
    fig, axes = _row_of_axes(axes, len(panels), (4.2, 3.8))
    vmax = max(float(d.max()) for d in dens)
    names = list(titles)[-len(panels):] if target is not None else [list(titles)[-1]]
    extent = tuple(bounds)
    xs, ys = np.linspace(bounds[0], bounds[1], grid), np.linspace(bounds[2], bounds[3], grid)
    for ax, d, name in zip(axes, dens, names):
        im = ax.imshow(d, origin="lower", extent=extent, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        if contours and d.max() > 0:
            ax.contour(xs, ys, d, levels=np.linspace(0, d.max(), contours + 2)[1:-1], colors="white", linewidths=0.6)
        ax.set_title(name)
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
    fig.colorbar(im, ax=list(axes[: len(panels)]), shrink=0.85, label="density (normalised on the grid)")
    return fig


# -- ELBO trace ----------------------------------------------------------------------------
def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (shorter at the start): ``(n,) -> (n,)``."""
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    start = np.maximum(idx - int(window), 0)
    return (c[idx] - c[start]) / (idx - start)


def elbo_trace(trace, *, ax=None, window: int | None = None, log_z: float | None = None, title: str = "ELBO"):
    """The ELBO estimate per step (faint) and its trailing running mean.

    Args:
        trace: a ``VIResult`` (its ``.trace``) or a sequence of per-step ELBO values.
        window: running-mean window (default: ``max(10, steps // 50)``).
        log_z: draw the true log normaliser as a dashed line (the ELBO's ceiling).
        ax: axes to draw into; default: a new figure.
    Returns:
        The figure; ``ax.lines[0]`` is the raw trace, ``ax.lines[1]`` the running mean.
    """
    values = np.asarray(getattr(trace, "trace", trace), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"the trace must be a non-empty 1-D sequence, got shape {values.shape}")
    window = window or max(10, values.size // 50)
    if ax is None:
        fig = _figure((5.5, 3.4))
        ax = fig.subplots()
    else:
        fig = ax.figure
    steps = np.arange(1, values.size + 1)
    ax.plot(steps, values, color="C0", alpha=0.3, lw=0.7, label="per step")
    ax.plot(steps, running_mean(values, window), color="C0", lw=1.6, label=f"mean of {window}")
    if log_z is not None:
        ax.axhline(float(log_z), color="k", ls="--", lw=1, label="log Z (true)")
    finite = values[np.isfinite(values)]
    if finite.size > 20:  # early steps can be far below the rest; keep the converged part readable
        lo = np.quantile(finite, 0.02)
        hi = max(finite.max(), float(log_z) if log_z is not None else -np.inf)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


# -- pair plot -----------------------------------------------------------------------------
def pair_plot(samples, reference=None, *, names: Sequence[str] | None = None, axes=None, bins: int = 40,
              max_points: int = 2000, labels: Sequence[str] = ("flowvi", "reference"), seed: int = 0):
    """Posterior draws against a reference sample: histograms on the diagonal, scatter below.

    Args:
        samples: ``(n, d)`` draws (tensor or array).
        reference: ``(m, d)`` reference draws (e.g. a task's reference posterior), or None.
        names: ``d`` axis labels (default ``theta_0 ...``).
        axes: a ``(d, d)`` array of axes; default: a new figure.
        bins: histogram bins per coordinate, shared by both samples (range of both).
        max_points: scatter at most this many points of each sample (a seeded subset).
        seed: chooses the scatter subset.
    Returns:
        The figure. ``axes[i, i]`` hold density histograms (samples first), ``axes[i, j]``
        for ``i > j`` scatter coordinate ``j`` (x) against ``i`` (y); the upper triangle is off.
    """
    s = _numpy(samples)
    if s.ndim != 2:
        raise ValueError(f"samples must be (n, d), got shape {s.shape}")
    r = None if reference is None else _numpy(reference)
    if r is not None and (r.ndim != 2 or r.shape[1] != s.shape[1]):
        raise ValueError(f"reference must be (m, {s.shape[1]}), got shape {r.shape}")
    d = s.shape[1]
    names = list(names) if names is not None else [f"theta_{i}" for i in range(d)]
    if axes is None:
        fig = _figure((2.3 * d + 0.6, 2.3 * d + 0.3))
        axes = fig.subplots(d, d, squeeze=False)
    else:
        axes = np.asarray(axes).reshape(d, d)
        fig = axes[0, 0].figure
    rng = np.random.default_rng(seed)

    def subset(a):
        return a if a.shape[0] <= max_points else a[rng.choice(a.shape[0], max_points, replace=False)]

    s_pts, r_pts = subset(s), (subset(r) if r is not None else None)
    both = s if r is None else np.concatenate([s, r])
    lo, hi = both.min(0), both.max(0)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                edges = np.linspace(lo[i], hi[i] if hi[i] > lo[i] else lo[i] + 1.0, bins + 1)
                ax.hist(s[:, i], bins=edges, density=True, histtype="stepfilled", alpha=0.5, color="C0", label=labels[0])
                if r is not None:
                    ax.hist(r[:, i], bins=edges, density=True, histtype="step", lw=1.4, color="C1", label=labels[1])
                ax.set_yticks([])
            else:
                ax.scatter(s_pts[:, j], s_pts[:, i], s=2, alpha=0.3, color="C0", rasterized=True, label=labels[0])
                if r_pts is not None:  # on top, smaller: a tight reference stays visible over a wide fit
                    ax.scatter(r_pts[:, j], r_pts[:, i], s=1, alpha=0.3, color="C1", rasterized=True, label=labels[1])
                ax.set_ylabel(names[i]) if j == 0 else None
            if i == d - 1:
                ax.set_xlabel(names[j])
    if r is not None:
        axes[0, 0].legend(fontsize=7, loc="upper right")
    return fig


# -- VAE images ----------------------------------------------------------------------------
def _image_shape(x_dim: int, image_shape) -> tuple[int, int]:
    if image_shape is not None:
        h, w = map(int, image_shape)
        if h * w != x_dim:
            raise ValueError(f"image_shape {image_shape} has {h * w} pixels but the data have {x_dim}")
        return h, w
    side = math.isqrt(x_dim)
    return (side, side) if side * side == x_dim else (1, x_dim)


def tile(images, image_shape=None, ncols: int = 8, pad: int = 1) -> np.ndarray:
    """``(n, x_dim)`` images tiled row-major into one ``(rows*(h+pad)-pad, ncols*(w+pad)-pad)`` array
    (padding value 0.5, so borders are visible against 0/1 pixels)."""
    a = _numpy(images)
    n, x_dim = a.shape
    h, w = _image_shape(x_dim, image_shape)
    ncols = max(1, min(int(ncols), n))
    rows = math.ceil(n / ncols)
    out = np.full((rows * (h + pad) - pad, ncols * (w + pad) - pad), 0.5)
    for k in range(n):
        r, c = divmod(k, ncols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = a[k].reshape(h, w)
    return out


def vae_grid(samples, originals=None, reconstructions=None, *, image_shape=None, ncols: int = 8, axes=None):
    """VAE samples, and data with their reconstructions, as image grids.

    Args:
        samples: ``(n, x_dim)`` model samples (e.g. decoder means, values in [0, 1]).
        originals, reconstructions: ``(m, x_dim)`` data and their reconstructions (both or neither).
        image_shape: ``(h, w)``; default square when ``x_dim`` is a square, else one row.
        ncols: images per grid row.
        axes: one axes (samples only) or two; default: a new figure.
    Returns:
        The figure: ``axes[0]`` shows ``tile(samples)``; ``axes[1]`` shows the data and
        reconstructions interleaved by rows: a row of ``ncols`` data images, then the
        same images reconstructed.
    """
    if (originals is None) != (reconstructions is None):
        raise ValueError("give both originals and reconstructions, or neither")
    panels = [("samples", tile(samples, image_shape, ncols))]
    if originals is not None:
        o, r = _numpy(originals), _numpy(reconstructions)
        if o.shape != r.shape:
            raise ValueError(f"originals {o.shape} and reconstructions {r.shape} differ in shape")
        k = max(1, min(int(ncols), o.shape[0]))
        rows = [blk for s in range(0, o.shape[0], k) for blk in (o[s:s + k], r[s:s + k])]
        rows = [np.pad(b, ((0, k - b.shape[0]), (0, 0)), constant_values=0.5) for b in rows]
        panels.append(("data (odd rows) / reconstructions (even rows)", tile(np.concatenate(rows), image_shape, k)))
    fig, axes = _row_of_axes(axes, len(panels), (4.0, 4.2))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    return fig


@torch.no_grad()
def vae_figure(model, x, n: int = 32, *, image_shape=None, ncols: int = 8, seed: int = 0, axes=None):
    """``vae_grid`` for a ``flowvi.vae.VAE``: ``n`` samples (decoder means at z ~ N(0, I)) and
    the first ``n`` rows of ``x (N, x_dim)`` reconstructed (decoder means at one z ~ q(z|x)).

    ``seed`` fixes the latent draws (the global RNG is left as it was).
    """
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            samples = model.sample(n)
            xs = model.check_x(x[:n])
            z = model.posterior(xs).sample()
            recon = model.decoder.mean(z)
    finally:
        model.train(was)
    return vae_grid(samples, xs, recon, image_shape=image_shape, ncols=ncols, axes=axes)


__all__ = ["density_2d", "elbo_trace", "grid_density", "pair_plot", "running_mean", "save", "tile", "vae_figure", "vae_grid"]
