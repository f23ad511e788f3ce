"""Early-stopping rules for NPE training, replayed on recorded training runs.

Each call trains flowvi's NPE (its defaults, but with a long patience) on one task and
simulation budget, and records after every epoch the validation loss that training sees
and the **test NLL** of the weights it would keep (the moving average): the mean
``-log q(theta | x)`` over the first ``--test-size`` held-out pairs of
``npe_training_schedule.py`` (same simulations and test pairs). A stopping rule only decides
*when* training ends; until then the run is the same, step for step, because the step-size
schedule does not depend on the rule. So every rule is replayed exactly on one recorded run:
where it stops, which epoch it keeps (the best validation loss so far), and that epoch's test
NLL.

    python benchmarks/npe_stopping_rules.py two_moons 10000 --seed 0 --jsonl runs/stopping.jsonl
    python benchmarks/npe_stopping_rules.py --replay runs/stopping.jsonl --csv docs/benchmarks/npe_stopping_rules.csv

Rules: ``pP`` stops after P epochs in a row without a better validation loss (NPE.train's
``patience``); ``pP-dD`` counts an epoch as progress only when it beats the best by more
than D nats (the kept epoch is still the best one).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from npe_training_schedule import SIMS, test_pairs
from npe_vs_sbi import TASKS, simulations

import flowvi.sbi.train as sbi_train
from flowvi import sbi as fsbi
from flowvi.sbi import tasks as ftasks

RULES = [(20, 0.0), (15, 0.0), (10, 0.0), (20, 1e-3), (10, 1e-3), (10, 3e-3)]


def record(task_name: str, sims: int, seed: int, patience: int, test_size: int) -> dict:
    """Train once with ``patience`` and return the per-epoch validation losses and test NLLs."""
    task = ftasks.get_task(task_name)
    theta, x = simulations(task, TASKS.index(task_name), SIMS.index(sims), sims, 0)
    test_theta, test_x = (t[:test_size] for t in test_pairs(task, TASKS.index(task_name)))
    val, test = [], []
    original = sbi_train._val_loss

    # NPE.train has no per-epoch hook, so the loop's (private) validation function is wrapped: it
    # runs once on the starting weights and then once per epoch, on the weights training keeps
    def scored(est, data, val_idx, *args, **kwargs):
        value = original(est, data, val_idx, *args, **kwargs)
        with torch.no_grad():
            test.append(float(-est.log_prob(test_theta, test_x).mean()))
        val.append(value)
        return value

    sbi_train._val_loss = scored
    try:
        npe = fsbi.NPE(task.prior, "nsf", seed=seed).append_simulations(theta, x)
        npe.train(patience=patience, show_progress=False)
    finally:
        sbi_train._val_loss = original
    # entry 0 scores the starting weights (the bar every epoch must beat), entry k epoch k
    return dict(task=task_name, sims=sims, seed=seed, patience=patience, val=val, test=test)


def replay(run: dict, patience: int, delta: float) -> tuple[int, int, float]:
    """(epochs run, epoch kept, its test NLL) had training stopped by rule ``(patience, delta)``."""
    best, kept, ref, stalled = run["val"][0], 0, run["val"][0], 0
    for epoch, value in enumerate(run["val"][1:], start=1):
        if value < best:
            best, kept = value, epoch
        if value < ref - delta:
            ref, stalled = value, 0
        else:
            stalled += 1
            if stalled >= patience:
                return epoch, kept, run["test"][kept]
    raise ValueError(f"the run {run['task']} {run['sims']} {run['seed']} ended before rule p{patience} stopped it")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", nargs="?", choices=TASKS)
    ap.add_argument("sims", nargs="?", type=int, choices=SIMS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patience", type=int, default=40, help="patience of the recorded run (>= every rule's)")
    ap.add_argument("--test-size", type=int, default=10_000)
    ap.add_argument("--jsonl", default="runs/stopping.jsonl", help="recorded runs are appended here")
    ap.add_argument("--replay", default=None, help="replay the rules on the runs in this file")
    ap.add_argument("--csv", default=None, help="with --replay: write the table here")
    args = ap.parse_args(argv)
    if args.replay:
        import pandas as pd

        runs = [json.loads(line) for line in open(args.replay)]
        rows = []
        for run in runs:
            base_epochs, _, base_nll = replay(run, 20, 0.0)
            for p, d in RULES:
                epochs, kept, nll = replay(run, p, d)
                rows.append(dict(task=run["task"], sims=run["sims"], seed=run["seed"], rule=f"p{p}" + (f"-d{d:g}" if d else ""),
                                 epochs=epochs, kept_epoch=kept, test_nll=round(nll, 4),
                                 epochs_vs_p20=round(epochs / base_epochs, 3), test_nll_vs_p20=round(nll - base_nll, 4)))
        table = pd.DataFrame(rows)
        summary = table.groupby("rule", sort=False).agg(
            mean_epochs_vs_p20=("epochs_vs_p20", "mean"), runs_worse_by_0_01=("test_nll_vs_p20", lambda s: int((s > 0.01).sum())),
            worst_test_nll_vs_p20=("test_nll_vs_p20", "max"), runs=("epochs", "size"))
        print(summary.round(3).to_string())
        if args.csv:
            table.to_csv(args.csv, index=False)
        return
    if args.task is None or args.sims is None:
        ap.error("give a task and a budget to record, or --replay FILE")
    torch.set_num_threads(1)
    run = record(args.task, args.sims, args.seed, args.patience, args.test_size)
    Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
    with open(args.jsonl, "a") as f:
        f.write(json.dumps(run) + "\n")
    print(args.task, args.sims, args.seed, "epochs", len(run["val"]) - 1)


if __name__ == "__main__":
    main()
