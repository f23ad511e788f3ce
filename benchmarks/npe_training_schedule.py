"""NPE training recipes on the same simulations: held-out test NLL, time, and optionally C2ST.

Each call trains one estimator on one task and simulation budget with one recipe: flowvi's
NPE (spline flow) with a training recipe, or ``sbi`` (sbi 0.27's ``NPE``, "nsf", its
defaults) as the reference. It reports the training time, the epochs, and the **test
NLL**: the mean ``-log q(theta | x)`` over 20,000 fresh prior simulations drawn from a seed
of their own, the same for every recipe and seed of a task. The test NLL is a proper scoring
rule averaged over the prior predictive, so two recipes compare on the same test pairs with
a paired standard error far below the spread between training seeds; ``--c2st K`` adds the
C2ST at sbibm observations 1..K (``benchmarks/sbibm_export.py`` writes them). The
training simulations are those of ``benchmarks/npe_vs_sbi.py`` (same seeds).

    python benchmarks/npe_training_schedule.py two_moons 10000 plateau --csv docs/benchmarks/npe_training_recipes.csv

prints one JSON line; ``--csv FILE`` also appends it to a table and ``--nll-dir DIR`` saves
the per-pair NLLs (for paired differences). Both estimators are trained as in
``npe_vs_sbi.py`` (its ``train_flowvi`` / ``train_sbi``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from npe_vs_sbi import TASKS, observations, simulations, train_flowvi, train_sbi  # the benchmark's own

from flowvi import sbi as fsbi
from flowvi.sbi import tasks as ftasks

RECIPES = {
    # every recipe spelt out in full, so rows stay what they were when NPE.train's defaults move
    "constant": dict(lr=5e-4, lr_patience=None, patience=20, batch_size=100, ema_half_life=None),
    "plateau": dict(lr=1e-3, lr_patience=5, patience=20, batch_size=100, ema_half_life=None),
    "plateau-short": dict(lr=1e-3, lr_patience=5, patience=10, batch_size=100, ema_half_life=None),
    "batch200": dict(lr=5e-4, lr_patience=None, patience=20, batch_size=200, ema_half_life=None),  # sbi's recipe
    "batch200-lr1e-3": dict(lr=1e-3, lr_patience=None, patience=20, batch_size=200, ema_half_life=None),
    "batch200-plateau": dict(lr=1e-3, lr_patience=5, patience=20, batch_size=200, ema_half_life=None),
    "batch200-lr2e-3-plateau": dict(lr=2e-3, lr_patience=5, patience=20, batch_size=200, ema_half_life=None),
    "batch400-lr2e-3-plateau": dict(lr=2e-3, lr_patience=5, patience=20, batch_size=400, ema_half_life=None),
    # NPE.train's defaults: the recipe above with a moving average of the weights
    "batch200-lr2e-3-plateau-ema1": dict(lr=2e-3, lr_patience=5, patience=20, batch_size=200, ema_half_life=1.0),
    # a larger step that the average might make affordable, with NPE.train's patience of 10
    "batch200-lr4e-3-plateau-ema1-p10": dict(lr=4e-3, lr_patience=5, patience=10, batch_size=200, ema_half_life=1.0),
    # smaller fixed steps with the average, for the step-size rule below (gaussian_linear 10k)
    "batch200-lr1e-3-plateau-ema1-p10": dict(lr=1e-3, lr_patience=5, patience=10, batch_size=200, ema_half_life=1.0),
    "batch200-lr5e-4-plateau-ema1-p10": dict(lr=5e-4, lr_patience=5, patience=10, batch_size=200, ema_half_life=1.0),
    # NPE.train's defaults since lr="auto": the step starts at 0.12 / sqrt(training rows), within [5e-4, 4e-3]
    "batch200-auto-plateau-ema1-p10": dict(lr="auto", lr_patience=5, patience=10, batch_size=200, ema_half_life=1.0),
}
# recipes that also change the estimator (NPE's arguments); the others use NPE's defaults
ESTIMATORS = {
    "constant-lu": dict(flow_kwargs=dict(permute="lu")),  # a learnt LU mixing map between the couplings
}
RECIPES["constant-lu"] = RECIPES["constant"]
SIMS = [1000, 10000]
TEST_SIZE = 20_000


def test_pairs(task, task_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's ``TEST_SIZE`` held-out ``(theta, x)`` prior simulations (global RNG left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(999 + task_index)
        theta = task.prior.sample((TEST_SIZE,))
        return theta, task.simulator(theta)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("sims", type=int, choices=SIMS)
    ap.add_argument("recipe", choices=sorted(RECIPES) + ["sbi"])
    ap.add_argument("--c2st", type=int, default=0, help="also C2ST at sbibm observations 1..K (0: skip)")
    ap.add_argument("--refs", default="runs/sbibm_refs", help="folder of sbibm exports (<task>_<i>.npz)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the simulations stay the benchmark's)")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--nll-dir", default=None, help="save the per-pair test NLLs as <task>_<sims>_<recipe>_<seed>.npy")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = ftasks.get_task(args.task)
    theta, x = simulations(task, TASKS.index(args.task), SIMS.index(args.sims), args.sims, 0)
    test_theta, test_x = test_pairs(task, TASKS.index(args.task))
    if args.recipe == "sbi":
        trained = train_sbi(task, theta, x, args.seed)
    else:
        trained = train_flowvi(task, theta, x, args.seed, RECIPES[args.recipe], ESTIMATORS.get(args.recipe))
    nll = trained.nll(test_theta, test_x)
    row = dict(task=args.task, sims=args.sims, recipe=args.recipe, seed=args.seed, train_s=round(trained.seconds, 1),
               epochs=trained.epochs, best_epoch=trained.best_epoch, test_nll=round(float(nll.mean()), 4),
               test_nll_se=round(float(nll.std() / len(nll) ** 0.5), 4))
    if args.nll_dir:
        Path(args.nll_dir).mkdir(parents=True, exist_ok=True)
        np.save(Path(args.nll_dir) / f"{args.task}_{args.sims}_{args.recipe}_{args.seed}.npy", nll.numpy())
    if args.c2st:
        scores = [fsbi.c2st(ref, trained.sample(x_o, 10_000), seed=args.seed)
                  for _, x_o, ref, _ in observations(task, args.c2st, Path(args.refs), 10_000, 0)]
        row.update(c2st=" ".join(f"{s:.4f}" for s in scores), c2st_mean=round(float(np.mean(scores)), 4))
    print(json.dumps(row), flush=True)
    if args.csv:
        import pandas as pd

        pd.DataFrame([row]).to_csv(args.csv, mode="a", header=not Path(args.csv).exists(), index=False)
    return row


if __name__ == "__main__":
    main()
