"""The ``flowvi`` command: flowvi's main jobs on built-in defaults.

    flowvi fit   --target banana          reverse-KL VI on a built-in target
    flowvi npe   --task two_moons         neural posterior estimation on a benchmark task
    flowvi vae   --data synthetic|mnist   a VAE with a flow posterior
    flowvi bench                          flow-layer throughput against Pyro

Every subcommand takes ``--seed``, ``--out`` (a folder for ``report.json``, figures and
saved models), ``--threads``, ``--quiet`` (no progress bars), ``--strict`` and ``--help``.

Exit codes: 0 success; 1 the job ran but its result is not trustworthy (only with
``--strict``; each subcommand's help says what it checks); 2 bad usage or input
(unknown name, missing data file, invalid option); 3 the job failed (e.g. a fit that
went non-finite). The work itself is done by library functions (``flowvi.fit``,
``flowvi.sbi``, ``flowvi.vae``, ``flowvi.bench``, ``flowvi.io``, ``flowvi.plots``);
this module only wires them to options and files.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_UNTRUSTWORTHY, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


class UsageError(Exception):
    """Bad options or input: exit code 2."""


# -- shared plumbing -------------------------------------------------------------------------
def _json_safe(v):
    """NaN/inf become None (strict JSON); numpy/torch scalars become numbers."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _figures(out: Path, report: dict, make: dict) -> list[Path]:
    """Write each ``name -> (lambda: Figure)``; a missing matplotlib or a failing figure is
    reported (``report["figures_skipped"]``) rather than failing the job."""
    written = []
    try:
        from . import plots
    except ImportError as err:  # pragma: no cover - matplotlib is imported lazily inside plots
        report["figures_skipped"] = str(err)
        return written
    for name, draw in make.items():
        try:
            fig = draw()
        except ImportError as err:
            report["figures_skipped"] = f"{err}"
            break
        except Exception as err:  # a figure is a by-product: report it, keep the job's results
            report.setdefault("figure_errors", {})[name] = f"{type(err).__name__}: {err}"
            continue
        plots.save(fig, out / name)
        written.append(out / name)
    return written


def _finish(args, report: dict, files: list[Path], trustworthy: bool, why: str) -> int:
    out = Path(args.out)
    report.update(command=args.command, seed=args.seed, trustworthy=trustworthy, trust_check=why)
    (out / "report.json").write_text(json.dumps(_json_safe(report), indent=2))
    if not args.quiet:
        for k, v in report.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                print(f"{k:>24s}: {v:.4g}" if isinstance(v, float) else f"{k:>24s}: {v}")
    print(f"wrote {', '.join(str(p) for p in [out / 'report.json', *files])}")
    if args.strict and not trustworthy:
        print(f"flowvi {args.command}: not trustworthy ({why}); exit 1 because of --strict", file=sys.stderr)
        return EXIT_UNTRUSTWORTHY
    return EXIT_OK


def _run(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        return args.job(args)
    except UsageError as err:
        print(f"flowvi {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"flowvi {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:
        if args.traceback:
            traceback.print_exc()
        print(f"flowvi {args.command}: failed: {type(err).__name__}: {err}"
              + ("" if args.traceback else " (--traceback shows where)"), file=sys.stderr)
        return EXIT_FAILED


# -- fit ---------------------------------------------------------------------------------------
def _fit(args) -> int:
    import flowvi
    from flowvi import io, plots, targets

    try:
        target = targets.get(args.target)
        flowvi.flows.build(args.family, 2, layers=1)
    except (KeyError, ValueError, TypeError) as err:
        raise UsageError(err) from None
    t0 = time.perf_counter()
    result = flowvi.fit(target.log_prob, target.dim, family=args.family, layers=args.layers, particles=args.particles,
                        max_steps=args.steps, seed=args.seed, progress=not args.quiet)  # FitError: exit 3
    d = result.diagnostics
    report = {"target": args.target, "family": args.family, "dim": target.dim, "steps": result.steps,
              "converged": result.converged, "seconds": round(time.perf_counter() - t0, 2), "elbo": result.elbo(),
              "k_hat": d.k_hat, "ess": d.ess, "log_z": d.log_z, "log_z_se": d.log_z_se, "verdict": d.verdict}
    if getattr(target, "log_z", None) is not None:  # KL(q||p) = log Z - ELBO for a known normaliser
        report["true_log_z"] = float(target.log_z)
        report["kl_q_p"] = float(target.log_z) - report["elbo"]
    out = Path(args.out)
    result.summary().to_csv(out / "summary.csv")
    meta = {"target": args.target, "family": args.family, "layers": args.layers}
    files = [out / "summary.csv", io.save_flow(result.flow, out / "flow.pt", meta), io.save_result(result, out / "result.pt", meta)]
    k = min(target.dim, 5)  # a pair plot of more coordinates is unreadable
    files += _figures(out, report, {
        "elbo.png": lambda: plots.elbo_trace(result, log_z=report.get("true_log_z")),
        **({"density.png": lambda: plots.density_2d(result, target, seed=args.seed)} if target.dim == 2 else {}),
        "pairs.png": lambda: plots.pair_plot(result.sample(2000)[:, :k], target.sample(2000, seed=args.seed)[:, :k],
                                             labels=("q", "target"), names=result.names[:k], seed=args.seed),
    })
    return _finish(args, report, files, not d.verdict.startswith("not trustworthy"), d.verdict)


# -- npe ---------------------------------------------------------------------------------------
def _npe(args) -> int:
    import torch

    from flowvi import plots, sbi

    try:
        task = sbi.tasks.get_task(args.task)
        npe = sbi.NPE(task.prior, family=args.family, seed=args.seed, param_names=task.param_names)
    except (KeyError, ValueError) as err:
        raise UsageError(err) from None
    t0 = time.perf_counter()
    sims = sbi.simulate(task.simulator, task.prior, args.simulations, seed=args.seed, show_progress=not args.quiet)
    npe.append_simulations(sims.theta, sims.x)
    npe.train(max_epochs=args.max_epochs, seed=args.seed, show_progress=not args.quiet)
    theta_o, x_o = task.observation(args.observation, seed=args.seed)
    samples = npe.posterior(x_o).sample((args.num_samples,), seed=args.seed)
    reference = task.reference_posterior(x_o, args.num_samples, seed=args.seed)
    score = sbi.c2st(reference, samples, seed=args.seed)
    cal = sbi.sbc(npe, task.prior, task.simulator, num_sbc=args.num_sbc, num_posterior_samples=100, seed=args.seed)
    out = Path(args.out)
    names = task.param_names
    _write_csv(out / "posterior_samples.csv", samples, names)
    _write_csv(out / "reference_samples.csv", reference, names)
    npe.save(out / "npe.pt")
    p_min, alpha = float(cal.pvalues.min()), 0.01 / task.dim_theta  # Bonferroni over coordinates
    report = {"task": args.task, "family": args.family, "simulations": sims.summary.valid,
              "epochs": npe.history[-1].epochs, "observation": args.observation, "theta_o": theta_o.tolist(),
              "x_o": torch.as_tensor(x_o).tolist(), "c2st": score, "sbc_pvalues": cal.pvalues.tolist(),
              "sbc_min_pvalue": p_min, "num_sbc": int(cal.ranks.shape[0]), "seconds": round(time.perf_counter() - t0, 2)}
    files = [out / "posterior_samples.csv", out / "reference_samples.csv", out / "npe.pt"]
    files += _figures(out, report, {
        "pairs.png": lambda: plots.pair_plot(samples, reference, names=names, labels=("NPE", "reference"), seed=args.seed),
        "sbc.png": lambda: sbi.plot_sbc(cal.ranks, cal.num_posterior_samples, names=names),
    })
    ok = p_min >= alpha and score <= args.max_c2st
    why = f"SBC min p-value {p_min:.3g} vs {alpha:.3g} (0.01 / {task.dim_theta}); C2ST {score:.3f} vs --max-c2st {args.max_c2st}"
    return _finish(args, report, files, ok, why)


def _write_csv(path: Path, x, names) -> None:
    import pandas as pd

    pd.DataFrame(x.numpy(), columns=list(names)).to_csv(path, index=False)


# -- vae ---------------------------------------------------------------------------------------
PROTOTYPES, SIDE, FLIP = 10, 8, 0.05


def _prototypes():
    import torch

    g = torch.Generator().manual_seed(20_240_601)  # fixed: train, valid and test share the prototypes
    return (torch.rand(PROTOTYPES, SIDE * SIDE, generator=g) < 0.5).float()


def synthetic_images(n: int, seed: int = 0):
    """``n`` synthetic binary 8x8 images, ``(n, 64)``: one of 10 fixed random prototypes
    (chosen uniformly) with each pixel flipped with probability 0.05. Structure a VAE
    can learn and independent pixels cannot; ``synthetic_log_likelihood`` is exact."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    k = torch.randint(PROTOTYPES, (int(n),), generator=g)
    flips = (torch.rand(int(n), SIDE * SIDE, generator=g) < FLIP).float()
    return (_prototypes()[k] + flips) % 2


def synthetic_log_likelihood(x) -> float:
    """Exact mean log p(x) of ``x (N, 64)`` under the ``synthetic_images`` mixture (about -15 nats)."""
    import torch

    diff = (x.unsqueeze(1) != _prototypes().unsqueeze(0)).double().sum(-1)  # (N, K) flipped pixels
    lp = diff * math.log(FLIP) + (SIDE * SIDE - diff) * math.log(1 - FLIP) - math.log(PROTOTYPES)
    return float(torch.logsumexp(lp, 1).mean())


def _vae_data(args) -> dict:
    from flowvi import vae

    if args.data == "synthetic":
        return {"train": synthetic_images(args.train_size or 2000, seed=args.seed),
                "valid": synthetic_images(500, seed=args.seed + 1), "test": synthetic_images(500, seed=args.seed + 2)}
    try:
        data = vae.load_binarized_mnist(args.data_path)
    except FileNotFoundError as err:
        raise UsageError(f"{err} (or run with --data synthetic, which needs no file)") from None
    return {"train": vae.seeded_subset(data["train"], args.train_size or 10_000, args.seed),
            "valid": vae.seeded_subset(data["valid"], 1000, args.seed),
            "test": vae.seeded_subset(data["test"], 1000, args.seed)}  # test is class-sorted: a random subset


# per data set: a short budget that still learns (the KL warm-up avoids the posterior collapse
# that plain training falls into on the synthetic images within this budget)
VAE_DEFAULTS = {
    "synthetic": dict(z_dim=4, hidden=[64, 64], epochs=20, batch_size=50, lr=3e-3, warmup_epochs=5.0),
    "mnist": dict(z_dim=32, hidden=[300, 300], epochs=5, batch_size=100, lr=1e-3, warmup_epochs=1.0),
}


def independent_bernoulli_log_likelihood(train, test) -> float:
    """Mean log-likelihood on ``test (N, D)`` of independent pixels with ``train``'s marginals
    (add-one smoothed): the baseline a VAE must beat to have learned any structure."""
    p = (train.sum(0) + 1) / (train.shape[0] + 2)
    return float((test * p.log() + (1 - test) * (1 - p).log()).sum(1).mean())


def _vae(args) -> int:
    from flowvi import io, plots, vae

    if args.family not in (None, "none", "diagonal"):
        try:
            import flowvi

            flowvi.flows.build(args.family, 2, layers=1)
        except ValueError as err:
            raise UsageError(err) from None
    data = _vae_data(args)
    for k, v in VAE_DEFAULTS[args.data].items():  # options left unset take the data set's default
        if getattr(args, k) is None:
            setattr(args, k, v)
    t0 = time.perf_counter()
    model = vae.VAE(data["train"].shape[1], args.z_dim, family=args.family, flow_layers=args.flow_layers,
                    hidden=tuple(args.hidden))
    history = vae.train(model, data["train"], data["valid"], epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, seed=args.seed, progress=not args.quiet, time_budget=args.time_budget,
                        warmup_epochs=args.warmup_epochs)
    ll = float(model.log_likelihood(data["test"], k=args.iwae_k, seed=args.seed).mean())
    baseline = independent_bernoulli_log_likelihood(data["train"], data["test"])
    out = Path(args.out)
    history.to_csv(out / "history.csv", index=False)
    meta = {"data": args.data, "z_dim": args.z_dim, "hidden": list(args.hidden), "family": args.family, "seed": args.seed}
    files = [out / "history.csv", io.save_vae(model, out / "vae.pt", meta, history=history)]
    report = {"data": args.data, "family": args.family, "z_dim": args.z_dim, "n_train": int(data["train"].shape[0]),
              "epochs": int(history["epoch"].max()) if len(history) else 0,
              "last_epoch_complete": bool(history["complete"].iloc[-1]) if len(history) else None,
              "valid_neg_elbo": float(history["valid_neg_elbo"].iloc[-1]) if len(history) else None,
              "test_log_likelihood": ll, "iwae_k": args.iwae_k, "n_test": int(data["test"].shape[0]),
              "independent_pixels_log_likelihood": baseline, "seconds": round(time.perf_counter() - t0, 2)}
    if args.data == "synthetic":
        report["true_log_likelihood"] = synthetic_log_likelihood(data["test"])
    files += _figures(out, report, {"samples.png": lambda: plots.vae_figure(model, data["test"], n=32, seed=args.seed)})
    if not math.isfinite(ll):
        raise FloatingPointError(f"the test log-likelihood is {ll}")
    why = f"test log-likelihood {ll:.2f} vs independent pixels {baseline:.2f} nats"
    return _finish(args, report, files, ll > baseline, why)


# -- bench -------------------------------------------------------------------------------------
def _bench(args) -> int:
    from flowvi import bench

    try:
        table = bench.run(families=args.families, dims=args.dims, batch=args.batch, repeats=args.repeats,
                          min_time=args.min_time, threads=args.threads, seed=args.seed, progress=not args.quiet)
    except ValueError as err:
        raise UsageError(err) from None
    files = bench.write(table, args.out)
    if not args.quiet:
        print(bench.to_markdown(table))
    bad = bench.noisy(table, args.max_spread)
    ratios = table["ratio"].dropna()
    report = {"rows": len(table), "median_ratio": float(ratios.median()) if len(ratios) else None,
              "slower_than_pyro": table.loc[table["ratio"] > 1, ["family", "direction", "dim"]].to_dict("records"),
              "noisy_rows": bad[["family", "direction", "dim"]].to_dict("records"), "environment": bench.environment()}
    why = f"{len(bad)} rows whose ratio varies by more than {args.max_spread:.0%} of its median across repeats"
    return _finish(args, report, files, bad.empty, why)


# -- the parser --------------------------------------------------------------------------------
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


EPILOG = ("exit codes: 0 success; 1 not trustworthy (with --strict); 2 bad usage or input; 3 the job failed. "
          "Docs: docs/cli.md")


def parser() -> argparse.ArgumentParser:
    """The ``flowvi`` argument parser (every subcommand, its options and defaults)."""
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--seed", type=int, default=0, help="seeds every random draw of the job (default 0)")
    g.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no summary lines")
    g.add_argument("--strict", action="store_true", help="exit 1 when the result is not trustworthy")
    g.add_argument("--traceback", action="store_true", help="print the full traceback when the job fails")

    top = argparse.ArgumentParser(prog="flowvi", description="Flow-based variational and simulation-based inference.",
                                  epilog=EPILOG)
    top.add_argument("--version", action="version", version=f"flowvi {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="{fit,npe,vae,bench}")

    def add(name, job, help, strict, out):
        p = sub.add_parser(name, parents=[common], help=help, description=f"{help}. --strict: {strict}.", epilog=EPILOG)
        p.add_argument("--out", default=out, help=f"output folder (default {out})")
        p.set_defaults(job=job)
        return p

    p = add("fit", _fit, "fit a flow to a built-in target by reverse KL and report the diagnostics",
            "exit 1 when the PSIS verdict is 'not trustworthy' (k-hat >= 0.7 on a tail that matters)", "runs/fit")
    p.add_argument("--target", default="banana", help="built-in target name (flowvi.targets.names())")
    p.add_argument("--family", default="realnvp", help="flow family (flowvi.flows.family_names())")
    p.add_argument("--layers", type=_positive_int, default=4)
    p.add_argument("--particles", type=_positive_int, default=128, help="draws per step")
    p.add_argument("--steps", type=_positive_int, default=3000, help="step budget (convergence may stop earlier)")

    p = add("npe", _npe, "neural posterior estimation on a benchmark task, checked against its reference posterior",
            "exit 1 when SBC rejects calibration (a KS p-value < 0.01 / dim) or C2ST > --max-c2st", "runs/npe")
    p.add_argument("--task", default="two_moons", help="task name (flowvi.sbi.tasks.TASKS)")
    p.add_argument("--family", default="nsf", help="flow family with an exact inverse: nsf, maf, realnvp")
    p.add_argument("--simulations", type=_positive_int, default=1000, help="simulation budget")
    p.add_argument("--max-epochs", type=_positive_int, default=1000, help="training epochs at most (early stopping)")
    p.add_argument("--observation", type=_positive_int, default=1, help="which task observation (1-10)")
    p.add_argument("--num-samples", type=_positive_int, default=2000, help="posterior and reference draws")
    p.add_argument("--num-sbc", type=_positive_int, default=500, help="SBC test simulations")
    p.add_argument("--max-c2st", type=_positive_float, default=0.75, help="largest C2ST accepted by --strict")

    p = add("vae", _vae, "train a VAE with a flow posterior on binarized MNIST or synthetic binary images",
            "exit 1 when the test log-likelihood does not beat independent pixels", "runs/vae")
    p.add_argument("--data", choices=["synthetic", "mnist"], default="synthetic",
                   help="synthetic: 8x8 binary images (10 noisy prototypes) made on the fly; mnist: the shared binarized MNIST file")
    p.add_argument("--data-path", default=None, help="binarized_mnist.npz (default ../shared/data/binarized_mnist/)")
    p.add_argument("--family", default="iaf", help="posterior flow family, or 'none' for a diagonal Gaussian")
    p.add_argument("--flow-layers", type=_positive_int, default=4)
    p.add_argument("--z-dim", type=_positive_int, default=None, help="latent size (default 4 synthetic, 32 mnist)")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=None,
                   help="encoder/decoder hidden sizes (default 64 64 synthetic, 300 300 mnist)")
    p.add_argument("--train-size", type=_positive_int, default=None, help="training rows (default 2000 synthetic, 10000 mnist)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="default 20 synthetic, 5 mnist")
    p.add_argument("--time-budget", type=_positive_float, default=120.0, help="training seconds at most (default 120)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="default 50 synthetic, 100 mnist")
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam step size (default 3e-3 synthetic, 1e-3 mnist)")
    p.add_argument("--warmup-epochs", type=float, default=None, help="KL warm-up epochs (default 5 synthetic, 1 mnist)")
    p.add_argument("--iwae-k", type=_positive_int, default=100, help="importance samples per test point")

    p = add("bench", _bench, "time flowvi's flow layers against Pyro's equivalents (forward + backward)",
            "exit 1 when a ratio varies across repeats by more than --max-spread of its median", "runs/bench")
    p.add_argument("--families", nargs="+", default=None, help="families to run (default: the whole suite)")
    p.add_argument("--dims", type=_positive_int, nargs="+", default=[2, 16])
    p.add_argument("--batch", type=_positive_int, default=1024)
    p.add_argument("--repeats", type=_positive_int, default=5)
    p.add_argument("--min-time", type=_positive_float, default=0.05, help="seconds per timing")
    p.add_argument("--max-spread", type=_positive_float, default=0.5)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run ``flowvi`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # argparse: 2 for bad usage, 0 for --help/--version
        return int(e.code or 0)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
