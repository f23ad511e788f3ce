"""Reverse-KL fits: flowvi.fit against Pyro's autoguides with SVI, in one run.

For each target with a known normaliser, every method is trained and its
KL(q || p) = log Z - E_q[log p~ - log q] is estimated on 20,000 fresh draws of q.
Methods alternate target by target on the same thread count, so wall times are
comparable within the run.

Peers (Pyro, as its users run it): AutoIAFNormal (4 IAF layers, hidden 64x64),
AutoMultivariateNormal and AutoNormal, Trace_ELBO with 16 vectorised particles,
Adam 1e-3, 3,000 steps.

    python benchmarks/vi_vs_pyro.py --out docs/benchmarks            # peers vs flowvi
    python benchmarks/vi_vs_pyro.py --families-table --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import pyro
import pyro.distributions as pdist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal, init_to_value

import flowvi
from flowvi import targets

N_EVAL = 20000


def kl_from_draws(x: torch.Tensor, log_q: torch.Tensor, target) -> float:
    """KL(q||p) = E_q[log q - log p~] + log Z, p~ the target's (possibly unnormalised) density."""
    with torch.no_grad():
        return float((log_q.double() - target.log_prob(x).double()).mean() + float(target.log_z))


def pyro_fit(target, kind: str, steps: int, particles: int, seed: int):
    """Train a Pyro autoguide on ``target`` with SVI; returns (KL, seconds)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    dim = target.dim

    std = pdist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)

    def model():
        # a sampleable site whose log-density the factor cancels: the joint is exactly the target
        x = pyro.sample("x", std)
        pyro.factor("log_p", target.log_prob(x) - std.log_prob(x))

    init = init_to_value(values={"x": torch.zeros(dim)})
    guide = {
        "AutoIAFNormal": lambda: AutoIAFNormal(model, hidden_dim=[64, 64], num_transforms=4, init_loc_fn=init),
        "AutoMultivariateNormal": lambda: AutoMultivariateNormal(model, init_loc_fn=init),
        "AutoNormal": lambda: AutoNormal(model, init_loc_fn=init),
    }[kind]()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO(num_particles=particles, vectorize_particles=True))
    t = time.perf_counter()
    for _ in range(steps):
        svi.step()
    seconds = time.perf_counter() - t
    with torch.no_grad():
        if kind == "AutoNormal":
            q = pdist.Normal(guide.locs.x, guide.scales.x).to_event(1)
        else:
            q = guide.get_posterior()
        x = q.sample((N_EVAL,))
        log_q = q.log_prob(x)
    return kl_from_draws(x, log_q, target), seconds


def flowvi_kl(r, target, seed):
    torch.manual_seed(seed + 7)
    with torch.no_grad():
        x, log_q = r.flow.rsample_and_log_prob((N_EVAL,))
    return kl_from_draws(x, log_q, target)


def flowvi_fit(target, family: str, seed: int, **kw):
    """flowvi.fit with its defaults; returns (KL, seconds, k-hat, steps)."""
    r = flowvi.fit(target.log_prob, target.dim, family=family, seed=seed, progress=False, **kw)
    return flowvi_kl(r, target, seed), r.seconds, r.k_hat, r.steps


def flowvi_time_to(target, family: str, seed: int, goal: float = 0.01, every: int = 100, max_steps: int = 5000):
    """Training seconds until KL <= goal, checked every ``every`` steps. The fit is
    resumed from its checkpoint each time (bit-identical to an uninterrupted fit,
    tests/test_vi.py) to find the step count; the seconds are then those of one
    uninterrupted fit with exactly that budget, so neither evaluation nor
    checkpointing is counted."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ck = f"{tmp}/fit.pt"
        for steps in range(every, max_steps + 1, every):
            r = flowvi.fit(target.log_prob, target.dim, family=family, seed=seed, progress=False, max_steps=steps, checkpoint=ck)
            kl = flowvi_kl(r, target, seed)
            if kl <= goal:
                again = flowvi.fit(target.log_prob, target.dim, family=family, seed=seed, progress=False, max_steps=r.steps)
                return again.seconds, r.steps, kl
            if r.converged:
                break
    return float("nan"), max_steps, kl


PEER_TARGETS = ["banana", "gaussian-scales-20"]
TABLE_TARGETS = ["banana", "haario-0.03", "haario-0.1", "funnel-2", "funnel-10", "u1", "two-moons", "gaussian-scales-20"]
TABLE_FAMILIES = ["lu", "planar", "radial", "sylvester", "householder", "triangular", "iaf", "maf", "realnvp", "nsf", "spline-ar"]


def peers_table(args):
    rows = []
    for name in PEER_TARGETS:
        target = targets.get(name)
        for method in ["flowvi-realnvp", "AutoIAFNormal", "AutoMultivariateNormal", "AutoNormal", "flowvi-nsf"]:
            t_goal = s_goal = float("nan")
            if method.startswith("flowvi"):
                kl, sec, k, steps = flowvi_fit(target, method.split("-", 1)[1], args.seed)
                t_goal, s_goal, _ = flowvi_time_to(target, method.split("-", 1)[1], args.seed)
            else:
                kl, sec = pyro_fit(target, method, args.steps, 16, args.seed)
                k, steps = float("nan"), args.steps
            rows.append(dict(target=name, method=method, kl=kl, seconds=sec, k_hat=k, steps=steps,
                             seconds_to_kl_0_01=t_goal, steps_to_kl_0_01=s_goal))
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def families_table(args, csv: Path):
    """Every family x target, one fit each with flowvi's defaults and ``--max-steps``.

    Rows are appended to ``csv`` as fits finish and finished (target, family) pairs are
    skipped on a rerun, so an interrupted table resumes. ``gap_closed`` is the share of
    the best full-rank Gaussian's KL (the ``lu`` row: flowvi's LU + affine layers alone)
    that the family removes."""
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    for name in args.targets or TABLE_TARGETS:
        target = targets.get(name)
        for family in args.families or TABLE_FAMILIES:
            if len(done) and ((done.target == name) & (done.family == family)).any():
                continue
            try:
                kl, sec, k, steps = flowvi_fit(target, family, args.seed, max_steps=args.max_steps)
            except Exception as e:  # a failed fit is a result too: report it
                kl, sec, k, steps = float("nan"), float("nan"), float("nan"), 0
                print(f"{name} {family}: {type(e).__name__}: {e}")
            row = dict(target=name, family=family, kl=kl, k_hat=k, seconds=sec, steps=steps)
            pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.exists(), index=False)
            done = pd.read_csv(csv)
            print(row, flush=True)
    table = pd.read_csv(csv)
    gauss = table[table.family == "lu"].set_index("target")["kl"]
    table["gap_closed"] = [1 - r.kl / gauss[r.target] if r.target in gauss and gauss[r.target] > 0 else math.nan
                           for r in table.itertuples()]
    return table


def families_markdown(table: pd.DataFrame) -> str:
    """KL (k-hat) per family (rows) and target (columns), and the gap closed."""
    cell = lambda r: f"{r.kl:.2g} ({r.k_hat:.2f})" if r.kl == r.kl else "failed"
    targets_ = list(dict.fromkeys(table.target))
    lines = ["| family | " + " | ".join(targets_) + " |", "|---|" + "---|" * len(targets_)]
    for fam in dict.fromkeys(table.family):
        sub = table[table.family == fam].set_index("target")
        cells = [cell(sub.loc[t]) if t in sub.index else "" for t in targets_]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines += ["", "Share of the full-rank Gaussian's KL removed (1 - KL / KL_lu):", "",
              "| family | " + " | ".join(targets_) + " |", "|---|" + "---|" * len(targets_)]
    for fam in dict.fromkeys(table.family):
        sub = table[table.family == fam].set_index("target")
        cells = [f"{sub.loc[t].gap_closed:.0%}" if t in sub.index and sub.loc[t].gap_closed == sub.loc[t].gap_closed
                 else "" for t in targets_]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000, help="SVI steps for the Pyro peers")
    ap.add_argument("--max-steps", type=int, default=5000, help="flowvi step budget in the families table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families-table", action="store_true", help="every family x target instead of the peer comparison")
    ap.add_argument("--targets", nargs="*")
    ap.add_argument("--families", nargs="*")
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.families_table:
        table = families_table(args, out / "vi_families.csv")
        (out / "vi_families.md").write_text(families_markdown(table))
    else:
        table = peers_table(args)
        table.to_csv(out / "vi_vs_pyro.csv", index=False)
    print(table.to_string())


if __name__ == "__main__":
    main()
