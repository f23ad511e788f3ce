"""flowvi NPE vs sbi 0.27 NPE, side by side in one run: C2ST to reference posteriors and time.

For every task and simulation budget both methods train on the *same* simulations
(density estimator "nsf" on both sides, each library's defaults otherwise), one
after the other in alternating order, with the same torch threads, after an untimed warm-up of both. Each trained
posterior then draws 10,000 samples at each observation and is scored by C2ST
against 10,000 reference draws (``flowvi.sbi.c2st``: an MLP classifier z-scored on
the reference, 5-fold, as in the SBI benchmark; 0.5 is perfect).

Run it in an environment that has sbi 0.27 and flowvi, e.g.

    python benchmarks/npe_vs_sbi.py --out docs/benchmarks --observations 10

Rows are appended to ``<out>/npe_vs_sbi.csv`` as they finish and finished rows are
skipped on a rerun, so an interrupted run resumes. ``--seed`` draws other simulations and
trains both sides with another seed; runs with several seeds go into the same CSV, and the
summary gives the C2ST over all of them and the median of the per-seed time ratios. ``--refs DIR`` uses observations
and reference samples exported from sbibm (``benchmarks/sbibm_export.py``, run in
an environment with sbibm) instead of flowvi's own tasks' observations/references.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from flowvi import sbi as fsbi
from flowvi.sbi import tasks as ftasks

TASKS = ["two_moons", "gaussian_linear", "gaussian_mixture", "slcp", "bernoulli_glm"]
COLUMNS = ["task", "sims", "method", "obs", "c2st", "train_s", "epochs", "sample10k_s", "obs_source", "seed"]


def to_sbi_prior(prior):
    """The same prior as a distribution sbi's prior checks accept."""
    from sbi.utils import BoxUniform

    if isinstance(prior, fsbi.BoxUniform):
        return BoxUniform(prior.low, prior.high)
    if isinstance(prior, torch.distributions.MultivariateNormal):
        return torch.distributions.MultivariateNormal(prior.loc, scale_tril=prior.scale_tril)
    if isinstance(prior, torch.distributions.Independent):
        base = prior.base_dist
        return torch.distributions.Independent(torch.distributions.Normal(base.loc, base.scale), 1)
    raise TypeError(f"no sbi conversion for {type(prior).__name__}")


@dataclasses.dataclass
class Trained:
    """A trained posterior estimator as the benchmarks use it."""

    sample: Callable[[torch.Tensor, int], torch.Tensor]  # (x_o, n) -> (n, d) posterior draws
    nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (theta (N, d), x (N, ...)) -> -log q (N,)
    seconds: float  # training wall time
    epochs: int
    best_epoch: int | None = None


def train_flowvi(task, theta, x, seed, train_kwargs=None, npe_kwargs=None) -> Trained:
    """flowvi's NPE ("nsf"; its defaults unless ``train_kwargs`` / ``npe_kwargs`` say otherwise)."""
    npe = fsbi.NPE(task.prior, "nsf", seed=seed, **(npe_kwargs or {}))
    npe.append_simulations(theta, x)
    t0 = time.perf_counter()
    npe.train(show_progress=False, **(train_kwargs or {}))
    seconds = time.perf_counter() - t0

    def sample(x_o, n):
        return npe.posterior(x_o).sample((n,), seed=seed)

    @torch.no_grad()
    def nll(t, xs):
        return -npe.log_prob_batched(t, xs)

    h = npe.history[-1]
    return Trained(sample, nll, seconds, h.epochs, h.best_epoch)


def train_sbi(task, theta, x, seed, train_kwargs=None) -> Trained:
    """sbi 0.27's NPE ("nsf", its defaults unless ``train_kwargs`` say otherwise). ``nll`` is its
    network's density: no correction for mass outside a bounded prior (at worst pessimistic; the
    sbibm posteriors sit inside their priors)."""
    from sbi.inference import NPE

    torch.manual_seed(seed)
    inference = NPE(prior=to_sbi_prior(task.prior), density_estimator="nsf", show_progress_bars=False)
    inference.append_simulations(theta, x)
    t0 = time.perf_counter()
    net = inference.train(show_train_summary=False, **(train_kwargs or {}))
    seconds = time.perf_counter() - t0
    posterior = inference.build_posterior()

    def sample(x_o, n):
        torch.manual_seed(seed)
        return posterior.sample((n,), x=x_o.unsqueeze(0), show_progress_bars=False)

    @torch.no_grad()
    def nll(t, xs):
        net.eval()
        return torch.cat([net.loss(a, condition=b) for a, b in zip(t.split(2000), xs.split(2000))])

    return Trained(sample, nll, seconds, int(inference._summary["epochs_trained"][-1]))


METHODS = {"flowvi": train_flowvi, "sbi": train_sbi}


def warm_up(seed: int) -> None:
    """Train each library for two epochs on a few simulations, untimed. The first model a
    process trains pays one-time costs (torch's Adam imports ``torch._dynamo`` on first use,
    about 3 s here) that would otherwise be charged to whichever library goes first."""
    task = ftasks.get_task("gaussian_linear")
    theta, x = simulations(task, TASKS.index("gaussian_linear"), 9, 300, seed)
    train_flowvi(task, theta, x, seed, dict(max_epochs=2))
    with warnings.catch_warnings():  # "not yet fully converged": two epochs are the point
        warnings.simplefilter("ignore")
        train_sbi(task, theta, x, seed, dict(max_num_epochs=2))


def observations(task, k, refs: Path | None, n_ref, seed):
    """``[(i, x_o, reference (n_ref, d), source)]`` for observations 1..k."""
    out = []
    for i in range(1, k + 1):
        f = None if refs is None else refs / f"{task.name}_{i}.npz"
        if f is not None and f.exists():
            data = np.load(f)
            x_o = torch.as_tensor(data["x_o"], dtype=torch.float32).reshape(task.x_shape)
            ref = torch.as_tensor(data["reference"][:n_ref], dtype=torch.float32)
            out.append((i, x_o, ref, "sbibm"))
        else:
            _, x_o = task.observation(i, seed=seed)
            out.append((i, x_o, task.reference_posterior(x_o, n_ref, seed=seed), "flowvi"))
    return out


def simulations(task, task_index: int, sims_index: int, sims: int, seed: int):
    """``theta (sims, d)``, ``x`` for one task and budget, from a seed of their own (global RNG left as it was)."""
    g = torch.Generator().manual_seed(seed + 1000 * task_index + sims_index)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**31 - 1, (), generator=g)))
        theta = task.prior.sample((sims,))
        return theta, task.simulator(theta)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="a subset of the tasks (each keeps its simulations)")
    ap.add_argument("--sims", default="1000,10000")
    ap.add_argument("--observations", type=int, default=3)
    ap.add_argument("--n-samples", type=int, default=10_000, help="posterior and reference draws for C2ST")
    ap.add_argument("--refs", default=None, help="folder of sbibm exports (<task>_<i>.npz)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--check-tasks", action="store_true",
                    help="only score flowvi's reference posteriors against sbibm's (needs --refs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.check_tasks:
        return check_tasks(args, out)
    csv = out / "npe_vs_sbi.csv"
    done = pd.DataFrame(columns=COLUMNS)
    if csv.exists():
        done = read_rows(csv)
        done[COLUMNS].to_csv(csv, index=False)  # a file from before the seed column: rows appended next must fit
    refs = Path(args.refs) if args.refs else None
    sims_list = [int(s) for s in args.sims.split(",")]
    warm_up(args.seed)
    for name in args.tasks.split(","):
        ti = TASKS.index(name)  # a task's simulations do not depend on which others run
        task = ftasks.get_task(name)
        obs = None
        for si, sims in enumerate(sims_list):
            here = (done.task == name) & (done.sims == sims) & (done.seed == args.seed)
            todo = [m for m in METHODS if not (here & (done.method == m)).any()]
            if not todo:
                continue
            obs = obs or observations(task, args.observations, refs, args.n_samples, args.seed)
            theta, x = simulations(task, ti, si, sims, args.seed)
            # alternate who goes first so slow drift in machine load does not favour one side
            order = todo if (ti + si) % 2 == 0 else todo[::-1]
            for method in order:
                trained = METHODS[method](task, theta, x, args.seed)
                sample, seconds, epochs = trained.sample, trained.seconds, trained.epochs
                rows = []
                for i, x_o, ref, source in obs:
                    t0 = time.perf_counter()
                    draws = sample(x_o, args.n_samples)
                    t_sample = time.perf_counter() - t0
                    score = fsbi.c2st(ref, draws, seed=args.seed)
                    rows.append(dict(task=name, sims=sims, method=method, obs=i, c2st=round(score, 4),
                                     train_s=round(seconds, 2), epochs=epochs, sample10k_s=round(t_sample, 3),
                                     obs_source=source, seed=args.seed))
                    print(rows[-1], flush=True)
                # a method's rows are written together, so a resumed run never keeps half a method
                pd.DataFrame(rows, columns=COLUMNS).to_csv(csv, mode="a", header=not csv.exists(), index=False)
                done = read_rows(csv)
    table = summarise(read_rows(csv))
    (out / "npe_vs_sbi.md").write_text(table)
    print(table)
    return done


def check_tasks(args, out: Path) -> pd.DataFrame:
    """C2ST of flowvi's task reference posterior vs sbibm's at sbibm's observations (~0.5 if they agree)."""
    if not args.refs:
        raise SystemExit("--check-tasks needs --refs (run benchmarks/sbibm_export.py first)")
    rows = []
    for name in args.tasks.split(","):
        task = ftasks.get_task(name)
        for i, x_o, ref, source in observations(task, args.observations, Path(args.refs), args.n_samples, args.seed):
            if source != "sbibm":
                continue
            t0 = time.perf_counter()
            ours = task.reference_posterior(x_o, args.n_samples, seed=args.seed)
            seconds = time.perf_counter() - t0
            rows.append(dict(task=name, obs=i, c2st=round(fsbi.c2st(ref, ours, seed=args.seed), 4),
                             reference_s=round(seconds, 1)))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "sbi_tasks_vs_sbibm.csv", index=False)
    print(df.groupby("task").c2st.agg(["mean", "max"]))
    return df


def read_rows(csv: Path) -> pd.DataFrame:
    """The benchmark's rows; rows written before the ``seed`` column were all seed 0."""
    df = pd.read_csv(csv)
    if "seed" not in df:
        df["seed"] = 0
    return df.fillna({"seed": 0}).astype({"seed": int})


def summarise(df: pd.DataFrame) -> str:
    """Markdown: mean C2ST per task/sims/method (over seeds and observations), median training
    time, the median over seeds of the flowvi/sbi time ratio (its range when there are several)."""
    seeds = sorted(df.seed.unique())
    lines = ["| task | sims | C2ST flowvi | C2ST sbi | train s flowvi | train s sbi | time ratio | epochs flowvi / sbi | 10k draws s flowvi / sbi |",
             "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for (task, sims), g in df.groupby(["task", "sims"], sort=False):
        m = {k: v for k, v in g.groupby("method")}
        if set(m) != {"flowvi", "sbi"}:
            continue
        f, s = m["flowvi"], m["sbi"]
        # one training per method and seed: its time and epochs repeat on every observation's row
        t = g.groupby(["seed", "method"])[["train_s", "epochs"]].first().unstack("method").dropna()
        if t.empty:
            continue
        r = t.train_s.flowvi / t.train_s.sbi
        ratios.append(r.median())
        ratio = f"{r.median():.2f}" if len(r) == 1 else f"{r.median():.2f} ({r.min():.2f}-{r.max():.2f})"
        epochs = ", ".join(f"{int(a)} / {int(b)}" for a, b in zip(t.epochs.flowvi, t.epochs.sbi))
        lines.append(f"| {task} | {sims} | {f.c2st.mean():.3f} | {s.c2st.mean():.3f} | {t.train_s.flowvi.median():.1f} | "
                     f"{t.train_s.sbi.median():.1f} | {ratio} | {epochs} | "
                     f"{f.sample10k_s.median():.2f} / {s.sample10k_s.median():.2f} |")
    if ratios:
        lines.append(f"\nMedian training-time ratio flowvi/sbi: {statistics.median(ratios):.2f}"
                     + (f" (seeds {', '.join(map(str, seeds))}; per row, the median over seeds)" if len(seeds) > 1 else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
