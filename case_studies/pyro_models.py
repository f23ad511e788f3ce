"""Case study: flowvi's Pyro guide against Pyro's autoguides on real models, scored by NUTS.

Models (all latents global and continuous):

* Eight schools (Rubin 1981), centred: theta_j ~ N(mu, tau), and non-centred:
  theta_j = mu + tau * eta_j with eta_j ~ N(0, 1); mu ~ N(0, 5), tau ~ HalfCauchy(5),
  y_j ~ N(theta_j, sigma_j). The centred posterior is a funnel in (log tau, theta).
* Bayesian logistic regression on scikit-learn's breast-cancer data (569 tumours,
  30 standardised features; loaded from the installed wheel, no download):
  w ~ N(0, 1) (30 weights), b ~ N(0, 5), malignant/benign ~ Bernoulli(logit = X w + b).

Methods: ``flowvi.pyro.fit_pyro`` (its defaults: 2 IAF layers, hidden 32x32, at most
2,000 steps of 32 particles), and Pyro's AutoNormal, AutoMultivariateNormal and
AutoIAFNormal (2 layers, hidden 32x32, as flowvi's) trained with SVI, Trace_ELBO (16
vectorised particles), Adam (lr 5e-3) for a fixed 2,000 steps (the same budget). Reference: NUTS
(pyro.infer.MCMC); the non-centred eight-schools run is the reference for both
eight-schools variants (same mu, tau, theta).

Scores, from ``--draws`` draws of each fitted guide (plain draws, no importance
correction): mean |E_q - E_ref| / sd_ref and mean |sd_q / sd_ref - 1| over the scalar
latents (mu, tau, theta_1..8; the 30 weights and the intercept), PSIS k-hat of
log p(x, z) - log q(z) computed the same way for every guide (including flowvi's,
whose own ``fit_pyro`` k-hat is reported beside it), the ELBO on those draws, and
wall seconds of training (NUTS: warmup + sampling).

    python case_studies/pyro_models.py --seed 0 --out docs/case_studies

Writes ``<out>/pyro_models.csv``, ``<out>/pyro_models.md`` and ``<out>/eight_schools.png``.
``--quick`` is a smoke run (minutes shorter, numbers not meaningful).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

from flowvi.pyro import fit_pyro

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

# ---------------------------------------------------------------- models

Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools_centered(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def schools_noncentered(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", y.shape[-1]):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * eta, sigma), obs=y)


def logistic(X, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    # (X * w).sum(-1), not X @ w: a leading batch of draws of w (shape (n, 1, p)) broadcasts
    logits = (X * w).sum(-1) + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)


def load_breast_cancer_data():
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        sys.exit(
            "pyro_models.py needs scikit-learn for the breast-cancer data (it ships inside the wheel, "
            "no download): pip install scikit-learn"
        )
    data = load_breast_cancer()
    X = np.asarray(data.data, dtype=np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(data.target, dtype=torch.float32)


def flat_latents(model_name: str, sites: dict) -> tuple[np.ndarray, list[str]]:
    """The scalar latents the scores are taken over, as ``(n, k)`` and their names."""
    if model_name.startswith("eight schools"):
        mu, tau = sites["mu"].reshape(-1, 1), sites["tau"].reshape(-1, 1)
        theta = sites["theta"] if "theta" in sites else mu + tau * sites["eta"].reshape(mu.shape[0], -1)
        theta = theta.reshape(mu.shape[0], -1)
        cols = torch.cat([mu, tau, theta], 1)
        names = ["mu", "tau"] + [f"theta_{j + 1}" for j in range(theta.shape[1])]
    else:
        w, b = sites["w"].reshape(sites["w"].shape[0], -1), sites["b"].reshape(-1, 1)
        cols = torch.cat([w, b], 1)
        names = [f"w_{j + 1}" for j in range(w.shape[1])] + ["b"]
    return cols.double().numpy(), names


# ---------------------------------------------------------------- PSIS

def check_psislw_sign(seed: int = 0) -> None:
    """arviz 0.x ``psislw`` takes the log *weights* (it smooths the right tail of
    exp(input)). Pareto weights w = U^(-k) have tail shape k: psislw(log w) must
    find k near 0.9, and psislw(-log w) a light tail."""
    rng = np.random.default_rng(seed)
    lw = -0.9 * np.log(rng.uniform(size=4000))
    _, k_right = az.psislw(lw, reff=1.0)
    _, k_wrong = az.psislw(-lw, reff=1.0)
    if not (0.7 < float(k_right) < 1.1 and float(k_wrong) < 0.5):
        raise RuntimeError(f"arviz.psislw sign convention changed: k(log w)={float(k_right):.2f}, k(-log w)={float(k_wrong):.2f}")


def psis_k(log_weights: np.ndarray) -> float:
    lw = np.asarray(log_weights, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(lw[np.isfinite(lw)], reff=1.0)
    return float(k)


def _per_draw(lp: torch.Tensor, n: int, particle_dim: int) -> torch.Tensor:
    """Sum a site's log-density over all dims but the draw dim (``particle_dim`` from the right)."""
    if lp.dim() < -particle_dim:
        return lp.sum().expand(n)
    axis = lp.dim() + particle_dim
    lp = lp.sum(dim=tuple(range(axis + 1, lp.dim()))) if axis + 1 < lp.dim() else lp
    lp = lp.sum(dim=tuple(range(axis))) if axis else lp
    return lp.expand(n)


def _scored(site) -> bool:
    # plates record their subsample indices as sample sites: not densities
    return site["type"] == "sample" and not site_is_subsample(site)


def guide_draws(model, guide, args, n: int, nesting: int, chunk: int = 500) -> tuple[dict, np.ndarray]:
    """``n`` draws of a fitted Pyro guide: their latent values (constrained) and
    log weights log p(x, z) - log q(z), each guide and model run vectorised over a
    plate of draws left of the model's ``nesting`` plate dims. The guide's log q
    includes its Delta sites' log-Jacobians (Pyro's ``AutoContinuous``), so both
    densities live on the constrained latents."""
    values, weights = {}, []
    latent = None
    with torch.no_grad():
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            with pyro.plate("_draws", m, dim=-(nesting + 1)):
                g = poutine.trace(guide).get_trace(*args)
                t = poutine.trace(poutine.replay(model, trace=g)).get_trace(*args)
            if latent is None:
                latent = [k for k, s in t.nodes.items() if _scored(s) and not s["is_observed"]]
            log_p = sum(_per_draw(s["fn"].log_prob(s["value"]), m, -(nesting + 1)) for s in t.nodes.values() if _scored(s))
            log_q = sum(_per_draw(s["fn"].log_prob(s["value"]), m, -(nesting + 1)) for s in g.nodes.values() if _scored(s))
            weights.append((log_p - log_q).double())
            for k in latent:
                v = t.nodes[k]["value"]
                values.setdefault(k, []).append(v.reshape(m, -1) if v.numel() >= m else v.expand(m).reshape(m, 1))
    return {k: torch.cat(v) for k, v in values.items()}, torch.cat(weights).numpy()


# ---------------------------------------------------------------- methods

def run_nuts(model, args, warmup: int, draws: int, chains: int, seed: int, full_mass: bool = False):
    """NUTS chains run one after another (2 cores); returns ({site: (chains*draws, ...)}, seconds, min bulk ESS, divergences)."""
    per_chain, divergences = [], 0
    t0 = time.perf_counter()
    for c in range(chains):
        pyro.set_rng_seed(seed + 1000 * c)
        kernel = NUTS(model, jit_compile=True, ignore_jit_warnings=True, full_mass=full_mass)
        mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mcmc.run(*args)
        per_chain.append({k: v.detach() for k, v in mcmc.get_samples().items()})
        divergences += sum(len(v) for v in mcmc.diagnostics()["divergences"].values())
    seconds = time.perf_counter() - t0
    samples = {k: torch.cat([pc[k] for pc in per_chain]) for k in per_chain[0]}
    posterior = {k: torch.stack([pc[k] for pc in per_chain]).double().numpy() for k in per_chain[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = az.ess(az.from_dict(posterior=posterior), method="bulk")
        rhat = az.rhat(az.from_dict(posterior=posterior)) if chains > 1 else None
    ess_min = min(float(np.min(ess[k].values)) for k in ess.data_vars)
    rhat_max = max(float(np.max(rhat[k].values)) for k in rhat.data_vars) if rhat is not None else float("nan")
    return samples, seconds, ess_min, rhat_max, divergences


def run_pyro_guide(kind: str, model, args, steps: int, particles: int, lr: float, seed: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    if kind == "AutoNormal":
        guide = AutoNormal(model)
    elif kind == "AutoMultivariateNormal":
        guide = AutoMultivariateNormal(model)
    elif kind == "AutoIAFNormal":
        guide = AutoIAFNormal(model, hidden_dim=[32, 32], num_transforms=2)
    else:
        raise ValueError(kind)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1))
    for _ in range(steps):
        svi.step(*args)
    return guide, time.perf_counter() - t0, steps


def run_flowvi(model, args, steps: int, seed: int):
    pyro.clear_param_store()
    t0 = time.perf_counter()
    result = fit_pyro(model, *args, steps=steps, seed=seed)
    return result, time.perf_counter() - t0


# ---------------------------------------------------------------- study

def scores(q: np.ndarray, ref_mean: np.ndarray, ref_sd: np.ndarray) -> tuple[float, float]:
    mean_err = float(np.mean(np.abs(q.mean(0) - ref_mean) / ref_sd))
    sd_err = float(np.mean(np.abs(q.std(0, ddof=1) / ref_sd - 1)))
    return mean_err, sd_err


def study(name: str, model, args, nesting: int, ref: np.ndarray, cfg, keep: dict) -> list[dict]:
    ref_mean, ref_sd = ref.mean(0), ref.std(0, ddof=1)
    rows = []
    methods = ["flowvi (fit_pyro, IAF)", "AutoNormal", "AutoMultivariateNormal", "AutoIAFNormal"]
    for method in methods:
        own_k = float("nan")
        try:
            if method.startswith("flowvi"):
                result, seconds = run_flowvi(model, args, cfg.flowvi_steps, cfg.seed)
                guide, steps, own_k = result.guide, result.steps, result.diagnostics.k_hat
            else:
                guide, seconds, steps = run_pyro_guide(method, model, args, cfg.pyro_steps, cfg.particles, cfg.lr, cfg.seed)
            pyro.set_rng_seed(cfg.seed + 17)
            sites, lw = guide_draws(model, guide, args, cfg.draws, nesting)
        except Exception as e:  # a failed fit is a result too: report it
            print(f"{name} / {method}: {type(e).__name__}: {e}", flush=True)
            rows.append(dict(model=name, method=method, error=f"{type(e).__name__}: {e}"))
            continue
        flat, _ = flat_latents(name, sites)
        mean_err, sd_err = scores(flat, ref_mean, ref_sd)
        finite = np.isfinite(lw)
        rows.append(dict(
            model=name, method=method, mean_err_sd=mean_err, sd_rel_err=sd_err, k_hat=psis_k(lw),
            k_hat_fit_pyro=own_k, elbo=float(lw[finite].mean()), seconds=seconds, steps=steps,
        ))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
        keep[(name, method)] = flat
    return rows


def fmt(v, digits=2):
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.{digits}f}"


def markdown_table(table: pd.DataFrame) -> str:
    cols = [("model", "model", None), ("method", "method", None), ("mean_err_sd", "mean err (ref sd)", 3),
            ("sd_rel_err", "sd rel. err", 3), ("k_hat", "PSIS k-hat", 2), ("k_hat_fit_pyro", "k-hat (fit_pyro's own)", 2),
            ("elbo", "ELBO", 2), ("seconds", "seconds", 1), ("steps", "steps / draws", None)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in table.to_dict("records"):
        cells = []
        for key, _, digits in cols:
            v = r.get(key)
            if key == "steps" and isinstance(v, float) and np.isfinite(v):
                v = int(v)
            cells.append(fmt(v, digits) if digits else fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, keep: dict, ref: np.ndarray, seed: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    panels = [("NUTS (non-centred, reference)", ref), ("flowvi (fit_pyro, IAF)", keep.get(("eight schools, centred", "flowvi (fit_pyro, IAF)"))),
              ("AutoNormal", keep.get(("eight schools, centred", "AutoNormal")))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, panels):
        if x is None:
            ax.set_title(f"{title}: failed")
            continue
        idx = rng.choice(x.shape[0], size=min(1500, x.shape[0]), replace=False)
        ax.scatter(x[idx, 2], x[idx, 1], s=3, alpha=0.4)
        ax.set_yscale("log")
        ax.set_title(title if title.startswith("NUTS") else f"{title}, centred")
        ax.set_xlabel("theta_1")
    axes[0].set_ylabel("tau (log scale)")
    axes[0].set_ylim(1e-2, 1e2)
    axes[0].set_xlim(-30, 60)
    fig.suptitle("Eight schools: posterior draws of (theta_1, tau)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/case_studies")
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps and draws (numbers not meaningful)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    check_psislw_sign(args.seed)
    cfg = argparse.Namespace(
        seed=args.seed, lr=5e-3, particles=16,
        flowvi_steps=150 if args.quick else 2000, pyro_steps=150 if args.quick else 2000, draws=500 if args.quick else 4000,
        schools_nuts=(100, 100, 1) if args.quick else (1000, 2000, 2), logistic_nuts=(100, 100, 1) if args.quick else (500, 1000, 2),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows, keep = [], {}

    # eight schools: one NUTS reference (non-centred) for both parametrisations
    warm, n, chains = cfg.schools_nuts
    samples, sec, ess, rhat, div = run_nuts(schools_noncentered, (Y8, SIGMA8), warm, n, chains, args.seed)
    ref8, _ = flat_latents("eight schools", samples)
    print(f"NUTS eight schools: {sec:.1f}s, min bulk ESS {ess:.0f}, max R-hat {rhat:.3f}, {div} divergences", flush=True)
    for name, model in [("eight schools, centred", schools_centered), ("eight schools, non-centred", schools_noncentered)]:
        rows.append(dict(model=name, method="NUTS (non-centred; reference)", seconds=sec, steps=chains * n,
                         ess_min=ess, rhat_max=rhat, divergences=div))
        rows += study(name, model, (Y8, SIGMA8), 1, ref8, cfg, keep)

    X, yb = load_breast_cancer_data()
    warm, n, chains = cfg.logistic_nuts
    samples, sec, ess, rhat, div = run_nuts(logistic, (X, yb), warm, n, chains, args.seed, full_mass=True)
    ref_lr, _ = flat_latents("logistic", samples)
    print(f"NUTS logistic: {sec:.1f}s, min bulk ESS {ess:.0f}, max R-hat {rhat:.3f}, {div} divergences", flush=True)
    name = "logistic regression (breast cancer)"
    rows.append(dict(model=name, method="NUTS (reference)", seconds=sec, steps=chains * n, ess_min=ess, rhat_max=rhat, divergences=div))
    rows += study(name, logistic, (X, yb), 1, ref_lr, cfg, keep)

    table = pd.DataFrame(rows)
    total = time.perf_counter() - t_start
    table.to_csv(out / "pyro_models.csv", index=False)
    plot(out / "eight_schools.png", keep, ref8, args.seed)
    command = "python case_studies/pyro_models.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    nuts = table[table.method.str.startswith("NUTS")].drop_duplicates("seconds")
    nuts_lines = "\n".join(
        f"- {r.model.split(',')[0] if 'schools' in r.model else r.model}: NUTS {int(r.steps)} draws, min bulk ESS {r.ess_min:.0f}, "
        f"max R-hat {r.rhat_max:.3f}, {int(r.divergences)} divergent transitions, {r.seconds:.0f} s"
        for r in nuts.itertuples()
    )
    (out / "pyro_models.md").write_text(
        f"# Pyro models: flowvi vs Pyro autoguides vs NUTS\n\n"
        f"Command: `{command.strip()}` (torch {torch.__version__}, pyro {pyro.__version__}, "
        f"{args.threads} thread(s); whole run {total:.0f} s){' — QUICK smoke run, numbers not meaningful' if args.quick else ''}\n\n"
        f"Scores from {cfg.draws} plain draws of each guide; errors in units of the NUTS posterior sd, averaged over the "
        f"scalar latents (eight schools: mu, tau, theta_1..8; logistic: 30 weights and the intercept). "
        f"Pyro guides: SVI, Trace_ELBO with {cfg.particles} vectorised particles, Adam lr {cfg.lr}, {cfg.pyro_steps} steps; "
        f"flowvi: `fit_pyro` defaults (IAF, 2 layers, hidden 32x32, 32 particles, at most {cfg.flowvi_steps} steps).\n\n"
        f"{markdown_table(table)}\n\nReferences:\n\n{nuts_lines}\n"
    )
    print(table.to_string())
    print(f"total {total:.1f}s; wrote {out}/pyro_models.csv, pyro_models.md, eight_schools.png")
    return table


if __name__ == "__main__":
    main()
