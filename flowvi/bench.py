"""A small built-in throughput benchmark: flowvi's flow families against Pyro's transforms.

For each family, dimension and batch size, one layer of each library, of equal size
(conditioner hidden sizes ``hidden`` where there is one), is timed doing one training
step's work, forward and backward:

* ``sample``: draw a batch and its log-density in the sampling pass (what a VI step
  does): flowvi ``rsample_and_log_prob``; Pyro ``rsample`` then ``log_prob`` of that
  draw, which Pyro answers from its transform cache without an inverse;
* ``density``: ``log_prob`` of a fixed data batch (what density estimation and NPE do).

Pyro peers: ``planar``, ``radial``, ``householder`` (Pyro's ``Sylvester`` is the
Householder kind), ``iaf``/``maf`` (``affine_autoregressive``, used inverted for MAF),
``realnvp`` (``affine_coupling``), ``nsf`` (``spline_coupling``) and ``spline-ar``
(``spline_autoregressive``). Families Pyro lacks (orthogonal and triangular
Sylvester, LU-linear, elementwise affine) are timed for flowvi alone (ratio empty).

Fairness: both run in this process with the same torch thread count, alternately
(flowvi then Pyro, then Pyro then flowvi, ...) so slow drifts of machine load hit
both; each timing repeats the step until ``min_time`` seconds have passed; the ratio
reported is the median over ``repeats`` of per-repeat ratios flowvi / Pyro (below 1:
flowvi is faster), with the smallest and largest ratio to show the noise.

    table = flowvi.bench.run(dims=(2, 16), batch=1024)
    flowvi.bench.write(table, "bench_out")          # bench.csv, bench.md
"""
from __future__ import annotations

import math
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

HIDDEN = (64, 64)
BINS, BOUND = 8, 5.0

# (family, direction) cases of the default suite; the peer is Pyro where PYRO has the family
CASES: list[tuple[str, str]] = [
    ("planar", "sample"), ("radial", "sample"), ("householder", "sample"), ("sylvester", "sample"),
    ("triangular", "sample"), ("iaf", "sample"), ("realnvp", "sample"), ("nsf", "sample"), ("spline-ar", "sample"),
    ("affine", "sample"), ("lu", "sample"),
    ("maf", "density"), ("realnvp", "density"), ("nsf", "density"), ("spline-ar", "density"),
]
PYRO_FAMILIES = {"planar", "radial", "householder", "iaf", "maf", "realnvp", "nsf", "spline-ar"}
COLUMNS = ["family", "direction", "dim", "batch", "peer", "flowvi_ms", "peer_ms", "flowvi_per_s", "peer_per_s",
           "ratio", "ratio_min", "ratio_max", "repeats", "threads"]


def flowvi_layer(family: str, dim: int, direction: str, hidden: Sequence[int] = HIDDEN):
    """One flowvi layer of ``family`` as an unconditional ``Flow`` (its cheap direction set
    to match ``direction`` for the autoregressive spline)."""
    from .flows import build

    kw: dict = {}
    if family == "householder":
        kw["num_householder"] = min(dim, 8)
    if family in ("nsf", "spline-ar"):
        kw.update(bins=BINS, bound=BOUND)
    if family == "spline-ar":
        kw["cheap"] = "density" if direction == "density" else "sample"
    return build(family, dim, layers=1, hidden=tuple(hidden), **kw)


def pyro_layer(family: str, dim: int, direction: str, hidden: Sequence[int] = HIDDEN):
    """``(TransformedDistribution, module)``: Pyro's equivalent of one flowvi layer, or None."""
    if family not in PYRO_FAMILIES:
        return None
    import pyro.distributions as pdist
    import pyro.distributions.transforms as T

    h = list(hidden)
    make = {
        "planar": lambda: T.planar(dim),
        "radial": lambda: T.radial(dim),
        "householder": lambda: T.sylvester(dim, count_transforms=min(dim, 8)),
        "iaf": lambda: T.affine_autoregressive(dim, hidden_dims=h),
        # MAF = an autoregressive layer whose density direction is the one-pass one
        "maf": lambda: T.affine_autoregressive(dim, hidden_dims=h).inv,
        "realnvp": lambda: T.affine_coupling(dim, hidden_dims=h),
        "nsf": lambda: T.spline_coupling(dim, hidden_dims=h, count_bins=BINS, bound=BOUND),
        "spline-ar": lambda: (T.spline_autoregressive(dim, hidden_dims=h, count_bins=BINS, bound=BOUND).inv
                              if direction == "density" else
                              T.spline_autoregressive(dim, hidden_dims=h, count_bins=BINS, bound=BOUND)),
    }[family]
    t = make()
    module = t._inv if isinstance(t, torch.distributions.transforms._InverseTransform) else t
    base = pdist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
    return pdist.TransformedDistribution(base, [t]), module


def make_step(lib: str, obj, direction: str, batch: int, dim: int, seed: int = 0) -> Callable[[], float]:
    """A closure doing one step's work (forward + backward) and returning the loss value."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(batch, dim, generator=gen)
    if lib == "pyro":
        dist, module = obj
    else:
        dist, module = None, obj
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> float:
        if direction == "sample":
            if lib == "pyro":
                x = dist.rsample((batch,))
                lq = dist.log_prob(x)  # a cache hit: no inverse
            else:
                x, lq = module(None).rsample_and_log_prob((batch,))
            loss = lq.mean() + x.square().mean()
        else:
            # a fresh tensor each step: Pyro's transform cache keys on tensor identity
            d = dist if lib == "pyro" else module(None)
            loss = -d.log_prob(data.clone()).mean()
        if params:
            torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss.detach())

    return step


def _time(step: Callable, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t) / iters


def time_pair(ours: Callable, peer: Callable | None, repeats: int = 5, min_time: float = 0.05,
              warmup: int = 2) -> tuple[list[float], list[float]]:
    """Seconds per call of ``ours`` and ``peer``, ``repeats`` times each, alternating their order.

    Each timing runs the call ``iters`` times, ``iters`` chosen from the slower one's
    first timing so a timing lasts about ``min_time`` seconds. Returns two lists of
    ``repeats`` per-call times (the second empty without a peer).
    """
    steps = [ours] + ([peer] if peer is not None else [])
    for s in steps:
        for _ in range(warmup):
            s()
    first = max(_time(s, 1) for s in steps)
    iters = max(1, math.ceil(min_time / max(first, 1e-7)))
    a, b = [], []
    for r in range(int(repeats)):
        if peer is None:
            a.append(_time(ours, iters))
        elif r % 2 == 0:
            a.append(_time(ours, iters))
            b.append(_time(peer, iters))
        else:
            b.append(_time(peer, iters))
            a.append(_time(ours, iters))
    return a, b


def run(cases: Sequence[tuple[str, str]] | None = None, *, families: Sequence[str] | None = None,
        dims: Sequence[int] = (2, 16), batch: int = 1024, repeats: int = 5, min_time: float = 0.05,
        hidden: Sequence[int] = HIDDEN, threads: int = 1, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Run the suite; one row per (family, direction, dim).

    Args:
        cases: ``(family, direction)`` pairs (default ``CASES``); ``families`` keeps only those.
        dims, batch: event sizes and batch size.
        repeats, min_time: alternating repeats and seconds per timing (see ``time_pair``).
        hidden: conditioner hidden sizes for both libraries.
        threads: torch threads for the whole run (restored afterwards).
        seed: seeds layer initialisation and the data batch.
        progress: a tqdm bar over cases.
    Returns:
        DataFrame with ``COLUMNS``: median milliseconds per step and items (draws or
        scored points) per second for each library, and the median, smallest and
        largest per-repeat ratio flowvi / peer (NaN without a peer).
    """
    from tqdm.auto import tqdm

    cases = list(cases or CASES)
    if families:
        unknown = sorted(set(families) - {f for f, _ in CASES} - {f for f, _ in cases})
        if unknown:
            raise ValueError(f"unknown families {unknown}; the suite has {sorted({f for f, _ in CASES})}")
        cases = [c for c in cases if c[0] in set(families)]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    rows = []
    try:
        jobs = [(f, d, dim) for f, d in cases for dim in dims]
        for family, direction, dim in tqdm(jobs, desc="bench", disable=not progress, leave=False):
            torch.manual_seed(seed)
            ours = make_step("flowvi", flowvi_layer(family, dim, direction, hidden), direction, batch, dim, seed)
            peer_obj = pyro_layer(family, dim, direction, hidden)
            peer = None if peer_obj is None else make_step("pyro", peer_obj, direction, batch, dim, seed)
            a, b = time_pair(ours, peer, repeats, min_time)
            ratios = [x / y for x, y in zip(a, b)] if b else []
            ta, tb = statistics.median(a), (statistics.median(b) if b else float("nan"))
            rows.append(dict(
                family=family, direction=direction, dim=int(dim), batch=int(batch), peer="pyro" if b else "",
                flowvi_ms=1e3 * ta, peer_ms=1e3 * tb, flowvi_per_s=batch / ta, peer_per_s=batch / tb if b else float("nan"),
                ratio=statistics.median(ratios) if ratios else float("nan"),
                ratio_min=min(ratios) if ratios else float("nan"), ratio_max=max(ratios) if ratios else float("nan"),
                repeats=int(repeats), threads=int(threads),
            ))
    finally:
        torch.set_num_threads(old_threads)
    return pd.DataFrame(rows, columns=COLUMNS)


def noisy(table: pd.DataFrame, max_spread: float = 0.5) -> pd.DataFrame:
    """Rows whose ratio is not trustworthy: ``(ratio_max - ratio_min) / ratio > max_spread``."""
    spread = (table["ratio_max"] - table["ratio_min"]) / table["ratio"]
    return table[spread > max_spread]


def environment() -> dict[str, str | int]:
    """What the numbers depend on: versions, threads, machine."""
    import pyro

    from . import __version__

    return {"flowvi": __version__, "torch": str(torch.__version__), "pyro": pyro.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "torch_threads": torch.get_num_threads()}


def _fmt(v, digits: int) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def to_markdown(table: pd.DataFrame) -> str:
    """A markdown table: family, direction, dim, ms per step, items/s, ratio [min, max]."""
    head = "| family | direction | dim | batch | flowvi ms | Pyro ms | flowvi items/s | ratio flowvi/Pyro | min | max |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        lines.append(
            f"| {r.family} | {r.direction} | {r.dim} | {r.batch} | {_fmt(r.flowvi_ms, 3)} | {_fmt(r.peer_ms, 3)} | "
            f"{r.flowvi_per_s:,.0f} | {_fmt(r.ratio, 2)} | {_fmt(r.ratio_min, 2)} | {_fmt(r.ratio_max, 2)} |"
        )
    return "\n".join(lines) + "\n"


def write(table: pd.DataFrame, out: str | Path, env: dict | None = None) -> list[Path]:
    """Write ``bench.csv`` (all columns) and ``bench.md`` (the markdown table with the
    environment and how the ratio is formed) to folder ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = env or environment()
    csv, md = out / "bench.csv", out / "bench.md"
    table.to_csv(csv, index=False)
    ratios = table["ratio"].dropna()
    summary = (f"Median ratio over the {len(ratios)} rows with a Pyro peer: {ratios.median():.2f}."
               if len(ratios) else "No row has a Pyro peer.")
    md.write_text(
        "# flowvi bench: flow layers vs Pyro\n\n"
        "One layer per library, forward + backward per step; ratio = flowvi time / Pyro time, the median "
        "of per-repeat ratios with flowvi and Pyro alternating in one process (below 1: flowvi faster).\n\n"
        + "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n\n"
        + to_markdown(table) + "\n" + summary + "\n"
    )
    return [csv, md]


__all__ = ["CASES", "COLUMNS", "PYRO_FAMILIES", "environment", "flowvi_layer", "make_step", "noisy", "pyro_layer",
           "run", "time_pair", "to_markdown", "write"]
