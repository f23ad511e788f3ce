"""Throughput of flowvi's families against Pyro's and zuko's equivalents, in one run.

For each family, dim in {2, 10, 50} and batch in {256, 4096}, one layer of equal
size (hidden 64x64 where there is a conditioner) is timed forward + backward:

* VI direction: draw a batch and its log-density in the sampling pass
  (flowvi ``rsample_and_log_prob``; Pyro ``rsample`` then ``log_prob`` of the
  draw, which Pyro answers from its cache; zuko ``rsample_and_log_prob``);
* density direction: ``log_prob`` of a fixed data batch.

flowvi and the peer run alternately, on the same thread count, ``--repeats``
times; the table reports the median of the per-repeat time ratios
flowvi / peer (below 1 means flowvi is faster).

Run with the peers' environment (pyro-ppl, zuko and flowvi installed):
    python benchmarks/flows_throughput.py --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from flowvi.bench import flowvi_layer, pyro_layer

HIDDEN = (64, 64)


def pyro_factory(name, dim):
    # the same Pyro peers as ``flowvi bench`` (spline-ar forward, MAF as an inverted IAF)
    return pyro_layer(name, dim, "sample", HIDDEN)


def zuko_factory(name, dim):
    import zuko

    cls = {"realnvp": zuko.flows.RealNVP, "maf": zuko.flows.MAF, "spline-ar": zuko.flows.NSF}[name]
    flow = cls(dim, transforms=1, hidden_features=HIDDEN)
    return flow, flow


def flowvi_factory(name, dim):
    # the same flowvi layers as ``flowvi bench``
    flow = flowvi_layer(name, dim, "density" if CURRENT["direction"] == "density" else "sample", HIDDEN)
    return flow, flow


CURRENT = {"direction": "vi"}

# (family, direction, peers)
PAIRS = [
    ("planar", "vi", ["pyro"]),
    ("radial", "vi", ["pyro"]),
    ("householder", "vi", ["pyro"]),
    ("iaf", "vi", ["pyro"]),
    ("realnvp", "vi", ["pyro", "zuko"]),
    ("nsf", "vi", ["pyro"]),
    ("spline-ar", "vi", ["pyro"]),
    ("maf", "density", ["pyro", "zuko"]),
    ("realnvp", "density", ["pyro", "zuko"]),
    ("nsf", "density", ["pyro"]),
    ("spline-ar", "density", ["zuko"]),
]


def make_step(lib, dist_factory, direction, batch, dim):
    dist, module = dist_factory
    data = torch.randn(batch, dim)
    params = list(module.parameters())

    def step():
        if lib == "pyro":
            d = dist
            if direction == "vi":
                x = d.rsample((batch,))
                lq = d.log_prob(x)
                loss = lq.mean() + x.square().mean()
            else:
                # a fresh tensor each step: Pyro's transform cache keys on tensor identity
                loss = -d.log_prob(data.clone()).mean()
        else:
            d = dist()
            if direction == "vi":
                x, lq = d.rsample_and_log_prob((batch,))
                loss = lq.mean() + x.square().mean()
            else:
                loss = -d.log_prob(data.clone()).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return grads

    return step


def time_it(step, iters):
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 10, 50])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="family names to run")
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for family, direction, peers in PAIRS:
        if args.only and family not in args.only:
            continue
        CURRENT["direction"] = direction
        for dim in args.dims:
            for batch in args.batches:
                torch.manual_seed(args.seed)
                ours = make_step("flowvi", flowvi_factory(family, dim), direction, batch, dim)
                theirs = {p: make_step(p, (pyro_factory if p == "pyro" else zuko_factory)(family, dim), direction, batch, dim) for p in peers}
                for s in [ours, *theirs.values()]:
                    s(), s()  # warm-up
                t1 = time_it(ours, 3)
                iters = max(3, int(0.15 / max(t1, 1e-5)))
                for peer, step in theirs.items():
                    ratios, ts_ours, ts_peer = [], [], []
                    for _ in range(args.repeats):
                        a = time_it(ours, iters)
                        b = time_it(step, iters)
                        ratios.append(a / b)
                        ts_ours.append(a)
                        ts_peer.append(b)
                    rows.append(dict(
                        family=family, direction=direction, dim=dim, batch=batch, peer=peer,
                        flowvi_ms=1e3 * statistics.median(ts_ours), peer_ms=1e3 * statistics.median(ts_peer),
                        ratio=statistics.median(ratios),
                    ))
                    print(f"{family:12s} {direction:8s} d={dim:3d} b={batch:5d} vs {peer:5s}: "
                          f"{rows[-1]['flowvi_ms']:8.2f} ms / {rows[-1]['peer_ms']:8.2f} ms = {rows[-1]['ratio']:.2f}", flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "flows_throughput.csv", index=False)
    print(table.groupby(["family", "direction", "peer"])["ratio"].agg(["median", "max"]).to_string())


if __name__ == "__main__":
    main()
