"""Training-step time of an IAF-VAE: flowvi against Pyro's own VAE with an IAF guide.

Three ways to train the same VAE (784-300-300 softplus MLP encoder and mirrored
decoder, z = 50, a diagonal-Gaussian head then 4 IAF layers whose MADEs take the
encoder's h as context, hidden 4z x 4z; batch 100 of binarized MNIST, Adam 1e-3):

* ``flowvi``: ``flowvi.vae.VAE(family="iaf")`` in a plain torch loop (what
  ``flowvi.vae.train`` does): ``loss`` from one sampling pass, backward, Adam;
* ``pyro-iaf``: Pyro's VAE recipe: ``SVI(model, guide, Adam, Trace_ELBO())`` with the
  guide built from Pyro's ``ConditionalAffineAutoregressive`` layers (reversal
  permutations between them, as flowvi puts) on a ``Normal(mu, sigma)`` base;
  encoder and decoder are the same modules as flowvi's;
* ``pyro-flowvi``: SVI with flowvi's ``VAE.pyro_model`` / ``pyro_guide`` (flowvi's
  posterior used from Pyro).

Fairness: one process, the same thread count, the same batches; the methods take
turns (rotating who goes first) over ``--repeats`` rounds, each timing ``--steps``
steps after warm-up steps; the table gives the median ms per step, the epoch time
(50,000 / batch steps) and the median over rounds of the per-round ratio against
``pyro-iaf`` (below 1: faster than Pyro).

    python benchmarks/vae_vs_pyro.py --out docs/benchmarks --threads 1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import pyro
import pyro.distributions as pdist
import torch
from pyro.distributions.transforms import Permute, conditional_affine_autoregressive
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

import flowvi.vae as V


class PyroIAFVAE(nn.Module):
    """Pyro's VAE recipe with an IAF guide, sharing flowvi's encoder/decoder classes."""

    def __init__(self, x_dim: int, z_dim: int, hidden=(300, 300), layers: int = 4):
        super().__init__()
        ref = V.VAE(x_dim, z_dim, family=None, hidden=hidden)  # the same encoder and decoder networks
        self.encoder, self.decoder, self.z_dim = ref.encoder, ref.decoder, z_dim
        self.head = nn.Linear(ref.h_dim, 2 * z_dim)
        self.iafs = nn.ModuleList(
            conditional_affine_autoregressive(z_dim, ref.h_dim, hidden_dims=[4 * z_dim, 4 * z_dim])
            for _ in range(layers))
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        zero = x.new_zeros(self.z_dim)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(zero, torch.ones_like(zero)).to_event(1))
            pyro.sample("x", self.decoder.distribution(z), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        pyro.module("head", self.head)
        pyro.module("iafs", self.iafs)
        h = self.encoder(x)
        mu, log_sigma = self.head(h).chunk(2, -1)
        transforms = []
        for i, t in enumerate(self.iafs):
            if i:
                transforms.append(Permute(self.reverse))
            transforms.append(t.condition(h))
        q = pdist.TransformedDistribution(pdist.Normal(mu, log_sigma.exp()).to_event(1), transforms)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)


def make_steppers(x_dim, z_dim, hidden, layers, lr, seed):
    """name -> a function doing one training step on a batch."""
    torch.manual_seed(seed)
    fv = V.VAE(x_dim, z_dim, family="iaf", flow_layers=layers, hidden=hidden)
    opt = torch.optim.Adam(fv.parameters(), lr=lr)

    def flowvi_step(x):
        loss, _ = fv.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    pyro.clear_param_store()
    torch.manual_seed(seed)
    pv = PyroIAFVAE(x_dim, z_dim, hidden, layers)
    svi_p = SVI(pv.model, pv.guide, Adam({"lr": lr}), Trace_ELBO())
    torch.manual_seed(seed)
    fv2 = V.VAE(x_dim, z_dim, family="iaf", flow_layers=layers, hidden=hidden)
    svi_f = SVI(fv2.pyro_model, fv2.pyro_guide, Adam({"lr": lr}), Trace_ELBO())
    sizes = {"flowvi": sum(p.numel() for p in fv.parameters()),
             "pyro-iaf": sum(p.numel() for p in pv.parameters()),
             "pyro-flowvi": sum(p.numel() for p in fv2.parameters())}
    return {"flowvi": flowvi_step, "pyro-iaf": svi_p.step, "pyro-flowvi": svi_f.step}, sizes


def load_batches(path, n_batches: int, batch: int, seed: int):
    try:
        data = V.load_binarized_mnist(path)["train"]
        source = "binarized MNIST"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(seed)
        data = (torch.rand(n_batches * batch, 784, generator=g) < 0.13).float()
        source = "random binary (MNIST file not found)"
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: n_batches * batch]
    return [torch.as_tensor(data[i]).float() for i in idx.split(batch)], source


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--z-dim", type=int, default=50)
    ap.add_argument("--hidden", default="300,300")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per method per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="binarized_mnist.npz (default: the shared data folder)")
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    batches, source = load_batches(args.data, args.steps + args.warmup, args.batch, args.seed)
    steppers, sizes = make_steppers(784, args.z_dim, hidden, args.layers, 1e-3, args.seed)
    names = list(steppers)
    for name in names:  # warm-up: allocator, autograd graph caches
        for x in batches[: args.warmup]:
            steppers[name](x)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            for x in batches[args.warmup:]:
                steppers[name](x)
            per_round[name].append(1000 * (time.perf_counter() - t0) / args.steps)
        print({n: round(v[-1], 1) for n, v in per_round.items()}, flush=True)
    epoch_steps = 50_000 // args.batch
    rows = []
    for name in names:
        ratios = [a / b for a, b in zip(per_round[name], per_round["pyro-iaf"])]
        ms = statistics.median(per_round[name])
        rows.append(dict(method=name, params=sizes[name], ms_per_step=round(ms, 1),
                         epoch_s=round(ms * epoch_steps / 1000, 1), ratio_vs_pyro=round(statistics.median(ratios), 3),
                         ratio_min=round(min(ratios), 3), ratio_max=round(max(ratios), 3),
                         threads=args.threads, repeats=args.repeats, data=source))
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "vae_vs_pyro.csv", index=False)
    md = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    cmd = "python benchmarks/vae_vs_pyro.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    (out / "vae_vs_pyro.md").write_text(f"`{cmd}` ({platform.processor() or platform.machine()}, torch "
                                        f"{torch.__version__}, pyro {pyro.__version__})\n\n" + "\n".join(md) + "\n")
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
