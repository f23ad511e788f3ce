"""NPE training recipes on the same simulations: C2ST to sbibm reference posteriors, time, held-out loss.

Each call trains flowvi's NPE (spline flow, defaults otherwise) once with one training
recipe on one task and simulation budget, draws 10,000 posterior samples at sbibm
observations 1..k and scores them by C2ST against sbibm's reference draws
(``benchmarks/sbibm_export.py`` writes them). The simulations are those of
``benchmarks/npe_vs_sbi.py`` (same seeds), so rows compare with that table's.

    python benchmarks/npe_training_schedule.py two_moons 10000 plateau --refs runs/sbibm_refs

prints one JSON line; ``--csv FILE`` also appends it to a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from npe_vs_sbi import observations, simulations  # the benchmark's simulations and sbibm observations

from flowvi import sbi as fsbi
from flowvi.sbi import tasks as ftasks

RECIPES = {
    # every recipe spelt out in full, so rows stay what they were when NPE.train's defaults move
    "constant": dict(lr=5e-4, lr_patience=None, patience=20, batch_size=100),  # NPE.train's defaults
    "plateau": dict(lr=1e-3, lr_patience=5, patience=20, batch_size=100),  # NPE.train(lr=1e-3, lr_patience=5): an option
    "plateau-short": dict(lr=1e-3, lr_patience=5, patience=10, batch_size=100),
    "batch200-plateau": dict(lr=1e-3, lr_patience=5, patience=20, batch_size=200),
}
# recipes that also change the estimator (NPE's arguments); the others use NPE's defaults
ESTIMATORS = {
    "constant-lu": dict(flow_kwargs=dict(permute="lu")),  # a learnt LU mixing map between the couplings
}
RECIPES["constant-lu"] = RECIPES["constant"]
TASKS = ["two_moons", "gaussian_linear", "gaussian_mixture", "slcp", "bernoulli_glm"]
SIMS = [1000, 10000]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("sims", type=int, choices=SIMS)
    ap.add_argument("recipe", choices=sorted(RECIPES))
    ap.add_argument("--observations", type=int, default=3)
    ap.add_argument("--refs", default="runs/sbibm_refs", help="folder of sbibm exports (<task>_<i>.npz)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = ftasks.get_task(args.task)
    theta, x = simulations(task, TASKS.index(args.task), SIMS.index(args.sims), args.sims, args.seed)
    npe = fsbi.NPE(task.prior, "nsf", seed=args.seed, **ESTIMATORS.get(args.recipe, {})).append_simulations(theta, x)
    t0 = time.perf_counter()
    npe.train(show_progress=False, **RECIPES[args.recipe])
    seconds = time.perf_counter() - t0
    scores = [fsbi.c2st(ref, npe.posterior(x_o).sample((10_000,), seed=args.seed), seed=args.seed)
              for _, x_o, ref, _ in observations(task, args.observations, Path(args.refs), 10_000, args.seed)]
    h = npe.history[-1]
    row = dict(task=args.task, sims=args.sims, recipe=args.recipe, c2st=[round(s, 4) for s in scores],
               mean=round(float(np.mean(scores)), 4), train_s=round(seconds, 1), epochs=h.epochs,
               best_epoch=h.best_epoch, best_val=round(h.best_val_loss, 4))
    print(json.dumps(row), flush=True)
    if args.csv:
        import pandas as pd

        flat = dict(row, c2st=" ".join(map(str, row["c2st"])))
        pd.DataFrame([flat]).to_csv(args.csv, mode="a", header=not Path(args.csv).exists(), index=False)
    return row


if __name__ == "__main__":
    main()
