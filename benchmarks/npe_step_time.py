"""Time per training step of flowvi's NPE and sbi 0.27's NPE, side by side in one run.

The head-to-head benchmark (``npe_vs_sbi.py``) times whole trainings, which mixes the
cost of a step with how many steps each library's early stopping takes. This script
isolates the first factor: both estimators ("nsf", each library's defaults) are built
on the same simulations of each task, then timed in alternating blocks of steps
(loss, backward, gradient clipping, Adam, and for flowvi the update of the moving
average of the weights that ``NPE.train`` keeps; a fresh random minibatch each step), one
torch thread. Both at minibatch 100 and at 200 (the default of both libraries).

    python benchmarks/npe_step_time.py --out docs/benchmarks

Run it in an environment with sbi 0.27 and flowvi. Writes ``<out>/npe_step_time.csv``
(one row per task and block) and prints the median milliseconds per step and the ratios.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from npe_vs_sbi import TASKS, simulations, to_sbi_prior

from flowvi import sbi as fsbi
from flowvi._optim import adam  # the optimiser NPE.train uses (flowvi.sbi.train)
from flowvi.sbi import tasks as ftasks
from flowvi.sbi.losses import npe_loss
from flowvi.sbi.train import _WeightAverage  # the weight average NPE.train keeps



def flowvi_step(task, theta, x, seed):
    """A closure doing one training step of flowvi's NPE at minibatch ``b``."""
    npe = fsbi.NPE(task.prior, "nsf", seed=seed).append_simulations(theta, x)
    npe.train(max_epochs=1, show_progress=False)  # fits the z-scoring and builds the estimator
    est = npe.estimator.train()
    z, _ = est.to_z(theta)
    opt, params = adam(est.parameters(), 5e-4), list(est.parameters())
    average = _WeightAverage(est, 0.99)

    def step(idx):
        loss = npe_loss(est, z[idx], x[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        average.update()

    return step


def sbi_step(task, theta, x, seed):
    """One training step as sbi 0.27's NPE trainer does it (loss, backward, clip 5, Adam)."""
    from sbi.inference import NPE

    torch.manual_seed(seed)
    inference = NPE(prior=to_sbi_prior(task.prior), density_estimator="nsf", show_progress_bars=False)
    inference.append_simulations(theta, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = inference.train(max_num_epochs=1, show_train_summary=False)
    net.train()
    opt, params = torch.optim.Adam(list(net.parameters()), lr=5e-4), list(net.parameters())

    def step(idx):
        loss = net.loss(theta[idx], condition=x[idx]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=5.0)
        opt.step()

    return step


def block_ms(step, n_rows: int, batch: int, steps: int, g: torch.Generator) -> float:
    idx = [torch.randint(n_rows, (batch,), generator=g) for _ in range(steps)]
    t0 = time.perf_counter()
    for i in idx:
        step(i)
    return (time.perf_counter() - t0) / steps * 1e3


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50, help="steps per timed block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.tasks.split(","):
        task = ftasks.get_task(name)
        theta, x = simulations(task, TASKS.index(name), 1, args.sims, args.seed)
        steps = {"flowvi b100": (flowvi_step(task, theta, x, args.seed), 100),
                 "sbi b100": (sbi_step(task, theta, x, args.seed), 100)}
        steps["flowvi b200"] = (steps["flowvi b100"][0], 200)
        steps["sbi b200"] = (steps["sbi b100"][0], 200)
        g = torch.Generator().manual_seed(args.seed)
        for step, batch in steps.values():
            block_ms(step, len(theta), batch, 10, g)  # warm-up
        for r in range(args.repeats):
            order = list(steps) if r % 2 == 0 else list(steps)[::-1]  # alternate who goes first
            for key in order:
                step, batch = steps[key]
                rows.append(dict(task=name, repeat=r, config=key, ms_per_step=round(block_ms(step, len(theta), batch, args.steps, g), 3)))
        df = pd.DataFrame([r for r in rows if r["task"] == name])
        med = df.groupby("config").ms_per_step.median()
        print(name, {k: round(v, 2) for k, v in med.items()},
              "step ratio flowvi/sbi at b100 %.2f, at b200 (both defaults) %.2f"
              % (med["flowvi b100"] / med["sbi b100"], med["flowvi b200"] / med["sbi b200"]), flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "npe_step_time.csv", index=False)
    return df


if __name__ == "__main__":
    main()
