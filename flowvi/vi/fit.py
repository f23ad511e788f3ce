"""``fit``: a flow fitted to an unnormalised log density by maximising the ELBO."""
from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..flows import Flow, StudentTBase, build
from .._atomic import save_atomic
from .._optim import adam
from .guards import FitError, Plateau, Snapshot, explain_nonfinite
from .init import advi_init, laplace_init
from .objectives import elbo_step
from .result import VIResult

CHECKPOINT_VERSION = 1


def fit(
    log_prob: Callable[[Tensor], Tensor],
    dim: int | None = None,
    family: str | Sequence = "realnvp",
    *,
    flow: Flow | None = None,
    layers: int = 4,
    hidden: Sequence[int] = (64, 64),
    base: str = "normal",
    particles: int = 64,
    iw: int = 1,
    stl: bool = True,
    lr: float = 5e-3,
    max_steps: int = 5000,
    init: str | None = "advi",
    init_steps: int = 300,
    clip: float = 10.0,
    plateau: Plateau | None = None,
    max_bad_steps: int = 10,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    dtype: torch.dtype = torch.float32,
) -> VIResult:
    """Fit a normalizing flow q to ``exp(log_prob)`` by reverse KL.

    Args:
        log_prob: unnormalised log density, ``(n, dim) -> (n,)``, differentiable.
        dim: event size (taken from ``flow`` when one is given).
        family: flow family name or layer list for ``flowvi.flows.build``; the
            flow is ``layers`` of it, then an LU-linear and an elementwise affine layer.
        flow: a ready unconditional ``Flow`` instead of ``family``.
        base: ``"normal"`` or ``"student-t"`` (learnable df, for heavy tails).
        particles, iw: draws per step; ``iw > 1`` maximises the IW-ELBO with DReG.
        stl: path-derivative gradient (zero variance at q = p).
        lr, clip: Adam step size and gradient-norm clip.
        max_steps: step budget; ``plateau`` decides convergence before it.
        init: ``"advi"``, ``"laplace"`` or ``None``: the Gaussian warm start of
            the final affine layer (see ``flowvi.vi.init``).
        max_bad_steps: consecutive non-finite steps tolerated before ``FitError``.
        seed: seeds every random draw of the fit.
        checkpoint: file to save to every ``checkpoint_every`` steps and to resume
            from when it exists.
    Returns:
        A ``VIResult`` (samples, log-densities, ELBO trace, PSIS diagnostics).
    """
    torch.manual_seed(seed)
    if flow is None:
        if dim is None:
            raise ValueError("give dim (the target's dimension) or a ready flow")
        base_mod = StudentTBase(dim) if base == "student-t" else None
        spec = [family] * layers if isinstance(family, str) else list(family)
        # a full-rank linear layer before the final affine: Gaussian targets become exact
        flow = build([*spec, "lu"], dim, hidden=hidden, base=base_mod, final_affine=True)
    flow = flow.to(dtype)
    params = list(flow.parameters())
    opt = adam(params, lr)
    plateau = plateau or Plateau()
    trace: list[float] = []
    step, t_used, t0 = 0, 0.0, time.perf_counter()
    if checkpoint and os.path.exists(checkpoint):
        step, trace, t_used = _resume(checkpoint, flow, opt, plateau)
    elif init == "laplace":
        laplace_init(flow, log_prob)
    elif init == "advi":
        advi_init(flow, log_prob, steps=init_steps, particles=particles)
    snap, bad, converged = Snapshot(flow, opt), 0, False
    bar = tqdm(total=max_steps, initial=step, disable=not progress, desc="fit", leave=False)
    while step < max_steps and not converged:
        loss, value, x, lp, lq = elbo_step(flow, log_prob, particles, stl=stl, iw=iw)
        opt.zero_grad(set_to_none=True)
        ok = bool(torch.isfinite(loss))
        if ok:
            loss.backward()
            ok = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)))
        if not ok:
            bad += 1
            snap.restore()
            for g in opt.param_groups:
                g["lr"] *= 0.5
            if bad >= max_bad_steps:
                result = VIResult(flow, log_prob, trace, step, False, t_used + time.perf_counter() - t0, seed)
                raise FitError(f"fit stopped after {bad} non-finite steps in a row: {explain_nonfinite(x, lp, lq)}", result)
            continue
        opt.step()
        bad, step = 0, step + 1
        trace.append(float(value))
        converged = plateau.update(step - 1, trace[-1], opt)
        if step % 100 == 0:
            snap.take()
            bar.set_postfix(elbo=f"{plateau.ema:.3f}")
        bar.update(1)
        if checkpoint and (step % checkpoint_every == 0 or converged or step == max_steps):
            _save(checkpoint, flow, opt, plateau, step, trace, t_used + time.perf_counter() - t0)
    bar.close()
    return VIResult(flow, log_prob, trace, step, converged, t_used + time.perf_counter() - t0, seed)


def _save(path, flow, opt, plateau, step, trace, seconds) -> None:
    save_atomic(
        {
            "version": CHECKPOINT_VERSION, "flow": flow.state_dict(), "opt": opt.state_dict(),
            "plateau": plateau.state_dict(), "step": step, "trace": trace, "seconds": seconds,
            "rng": torch.get_rng_state(),
        },
        path,
    )


def _resume(path, flow, opt, plateau):
    state = torch.load(path, weights_only=False)
    if state.get("version") != CHECKPOINT_VERSION:
        raise FitError(f"checkpoint {path} has format version {state.get('version')}, this flowvi reads {CHECKPOINT_VERSION}")
    try:
        flow.load_state_dict(state["flow"])
    except RuntimeError as e:
        raise FitError(f"checkpoint {path} was written by a different flow architecture: {e}") from e
    opt.load_state_dict(state["opt"])
    plateau.load_state_dict(state["plateau"])
    torch.set_rng_state(state["rng"])
    return state["step"], list(state["trace"]), state["seconds"]
