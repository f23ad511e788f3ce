"""Case study: flow posteriors for an MLP VAE on statically binarized MNIST.

Every family gets the same encoder/decoder (784-300-300 MLPs, z=50 by default) and
the same wall-clock training budget; the table reports test -ELBO, the IWAE
estimate of -log p(x) on a seeded random subset of the (class-sorted) test set,
epochs done and seconds per epoch.

    python case_studies/vae_mnist.py --budget-seconds 1800 --k 1000 --test-size 2000

Writes <out>/vae_mnist.csv, <out>/vae_mnist.md and a figure per family (samples,
and test images over their reconstructions), <out>/vae_mnist_<family>.png. Nothing is downloaded: the data
file is ../shared/data/binarized_mnist/binarized_mnist.npz unless --data is given.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import flowvi.vae as V

LABELS = {"diagonal": None, "planar": "planar", "sylvester": "sylvester", "householder": "householder",
          "triangular": "triangular", "iaf": "iaf", "realnvp": "realnvp", "nsf": "nsf"}


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no optional dependency)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def figure(model, test, path: Path, seed: int) -> None:
    """Samples from p(x), and 16 test images over their reconstructions."""
    from flowvi import plots

    plots.save(plots.vae_figure(model, test[:16], n=32, image_shape=(28, 28), seed=seed), path)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="diagonal,planar,sylvester,householder,triangular,iaf",
                    help=f"comma list from {','.join(LABELS)}")
    ap.add_argument("--z-dim", type=int, default=50)
    ap.add_argument("--hidden", default="300,300", help="encoder hidden sizes (decoder mirrors them)")
    ap.add_argument("--gated", action="store_true",
                    help="gated units (flowvi.vae.GatedLinear) in the encoder/decoder MLPs instead of softplus layers")
    ap.add_argument("--flow-layers", type=int, default=4)
    ap.add_argument("--budget-seconds", type=float, default=600.0, help="training wall-clock per family")
    ap.add_argument("--budget-clock", choices=("wall", "process"), default="wall",
                    help="what the budget counts: elapsed time, or this process's CPU time (fair when other jobs share the CPU)")
    ap.add_argument("--max-epochs", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--flow-lr-scale", type=float, default=0.1,
                    help="learning-rate factor of the flow layers (flowvi.vae.train's flow_lr_scale)")
    ap.add_argument("--patience", type=int, default=None,
                    help="early stopping on the validation -ELBO (epochs without improvement); the best epoch's weights are kept")
    ap.add_argument("--clip-grad", type=float, default=100.0, help="gradient-norm clip (<= 0: off)")
    ap.add_argument("--warmup-epochs", type=float, default=0.0, help="KL warm-up length (epochs)")
    ap.add_argument("--free-bits", type=float, default=0.0, help="nats per latent dim (floor on total KL)")
    ap.add_argument("--flow-hidden", default=None,
                    help="hidden sizes of the flows' conditioner/hyper networks, e.g. 64 or 100,100 (default: the VAE's)")
    ap.add_argument("--shared-flow", action="store_true",
                    help="flow layers shared by all datapoints (only the Gaussian head amortised), as Pyro's IAF-VAE")
    ap.add_argument("--sylvester-m", type=int, default=None,
                    help="columns of Q for orthogonal Sylvester (default z-dim; van den Berg et al. use 32 of 64)")
    ap.add_argument("--sylvester-ortho", choices=("bjorck", "qr"), default="bjorck",
                    help="how orthogonal Sylvester makes Q orthonormal (flowvi.flows.Sylvester's ortho=; qr is cheaper per point)")
    ap.add_argument("--num-householder", type=int, default=None, help="reflections per Householder Sylvester layer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=1000, help="importance samples for the IWAE log-likelihood")
    ap.add_argument("--test-size", type=int, default=1000, help="seeded random test subset for IWAE (<=0: all)")
    ap.add_argument("--elbo-size", type=int, default=0, help="seeded random test subset for -ELBO (<=0: all 10000)")
    ap.add_argument("--valid-size", type=int, default=2000, help="seeded random valid subset checked each epoch (<=0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=None, help="path to binarized_mnist.npz")
    ap.add_argument("--out", default="case_studies/results")
    ap.add_argument("--checkpoint-dir", default=None, help="resume per-family runs from here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: score each family's checkpoint (its best epoch's weights when it kept them)")
    ap.add_argument("--figures-only", action="store_true",
                    help="only redraw each family's samples/reconstructions figure from its checkpoint")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = V.load_binarized_mnist(args.data)
    # test is sorted by class: only seeded random subsets (never a leading slice)
    test_ll = V.seeded_subset(data["test"], args.test_size if args.test_size > 0 else None, seed=args.seed)
    test_elbo = V.seeded_subset(data["test"], args.elbo_size if args.elbo_size > 0 else None, seed=args.seed)  # nested with test_ll
    valid = V.seeded_subset(data["valid"], args.valid_size if args.valid_size > 0 else None, seed=args.seed)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.families.split(","):
        if name not in LABELS:
            raise SystemExit(f"unknown family {name!r}; choose from {','.join(LABELS)}")
        torch.manual_seed(args.seed)
        extra = {}
        if name == "sylvester" and args.sylvester_m:
            extra["m"] = args.sylvester_m
        if name == "sylvester" and args.sylvester_ortho != "bjorck":
            extra["ortho"] = args.sylvester_ortho
        if name == "householder" and args.num_householder:
            extra["num_householder"] = args.num_householder
        if args.shared_flow and name != "diagonal":
            extra["amortize_flow"] = False
        if args.flow_hidden is not None and name != "diagonal":
            extra["flow_hidden"] = tuple(int(h) for h in args.flow_hidden.split(",") if h)
        model = V.VAE(784, args.z_dim, family=LABELS[name], flow_layers=args.flow_layers, hidden=hidden,
                      gated=args.gated, **extra)
        ckpt = Path(args.checkpoint_dir) / f"vae_{name}.pt" if args.checkpoint_dir else None
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        if args.figures_only or args.eval_only:
            if ckpt is None or not ckpt.exists():
                raise SystemExit(f"--figures-only/--eval-only need --checkpoint-dir with vae_{name}.pt in it")
            hist = V.load_checkpoint(model, ckpt)  # the best epoch's weights when the run kept them
            if args.figures_only:
                figure(model, test_ll, out / f"vae_mnist_{name}.png", args.seed)
                continue
        else:
            hist = V.train(model, data["train"], valid, epochs=args.max_epochs, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, checkpoint=ckpt, progress=not args.no_progress,
                           time_budget=args.budget_seconds, warmup_epochs=args.warmup_epochs,
                           free_bits=args.free_bits, flow_lr_scale=args.flow_lr_scale, clock=args.budget_clock,
                           clip_grad=args.clip_grad if args.clip_grad > 0 else None,
                           patience=args.patience, keep_best=args.patience is not None)
        t0 = time.perf_counter()
        neg_elbo = -V.evaluate_elbo(model, test_elbo, seed=args.seed)
        ll = model.log_likelihood(test_ll, k=args.k, batch=100, chunk=100, seed=args.seed)
        eval_s = time.perf_counter() - t0
        figure(model, test_ll, out / f"vae_mnist_{name}.png", args.seed)
        steps_per_epoch = -(-data["train"].shape[0] // args.batch_size)
        steps, secs = int(hist.steps.sum()), float(hist.seconds.sum())
        row = {
            "family": name,
            "params": sum(p.numel() for p in model.parameters()),
            "epochs": round(steps / steps_per_epoch, 2),
            "train_seconds": round(secs, 1),  # on --budget-clock
            # from the measured time per step, so it is defined even when no epoch finished
            "sec_per_epoch": round(secs / max(steps, 1) * steps_per_epoch, 1),
            "valid_neg_elbo": round(float(hist.valid_neg_elbo.iloc[-1]), 2),
            "best_valid_neg_elbo": round(float(hist.valid_neg_elbo.min()), 2),
            "test_neg_elbo": round(neg_elbo, 2),
            f"test_nll_iwae_k{args.k}": round(float(-ll.mean()), 2),
            "test_nll_se": round(float(ll.std() / len(ll) ** 0.5), 2),  # over test images
            "eval_seconds": round(eval_s, 1),
        }
        print(row, flush=True)
        rows.append(row)
        table = pd.DataFrame(rows)
        table.to_csv(out / "vae_mnist.csv", index=False)
        (out / "vae_mnist.md").write_text(to_markdown(table))
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
