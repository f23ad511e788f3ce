"""Export sbibm's observations and reference posterior samples to ``<out>/<task>_<i>.npz``.

sbibm pins an old sbi, so it lives in its own environment; this script is the only
code that imports it, and flowvi never does at run time. The files it writes feed
``benchmarks/npe_vs_sbi.py --refs <out>`` (so C2ST uses the published reference
posteriors and observations) and ``--check-tasks`` (flowvi's own reference
posteriors scored against sbibm's at the same observation: ~0.5 when the task
definitions agree).

    /path/to/sbibm-env/bin/python benchmarks/sbibm_export.py --out runs/sbibm_refs
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="two_moons,gaussian_linear,gaussian_mixture,slcp,bernoulli_glm")
    ap.add_argument("--observations", type=int, default=10)
    ap.add_argument("--out", default="runs/sbibm_refs")
    args = ap.parse_args(argv)
    import sbibm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.tasks.split(","):
        task = sbibm.get_task(name)
        for i in range(1, args.observations + 1):
            x_o = task.get_observation(num_observation=i).numpy()
            ref = task.get_reference_posterior_samples(num_observation=i).numpy()
            theta_o = task.get_true_parameters(num_observation=i).numpy()
            np.savez(out / f"{name}_{i}.npz", x_o=x_o, reference=ref, theta_o=theta_o)
            print(name, i, x_o.shape, ref.shape)


if __name__ == "__main__":
    main()
