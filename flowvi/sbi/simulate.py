"""``simulate``: run a simulation campaign in batches, in parallel, resumably.

* Batch ``k`` draws its parameters from ``prior`` under a seed derived from
  ``(seed, k)`` and runs the simulator under another derived seed, so results do
  not depend on which worker ran which batch, or on whether the campaign was
  interrupted and resumed.
* Batches run in worker processes (``ProcessPoolExecutor`` when ``workers > 1``)
  or on any ``concurrent.futures.Executor`` you pass (a Dask
  ``client.get_executor()``, ``mpi4py.futures.MPIPoolExecutor``, ...); the
  simulator must then be picklable (a module-level function or a partial of one).
  Each batch seeds torch's and numpy's global generators in the process that runs
  it, so the simulator's noise is reproducible in worker processes; threads share
  those generators, so with a thread pool only the parameters are reproducible
  (they are all drawn before the first batch starts, so no simulator thread can
  consume the driver's stream mid-draw). A simulator that a process pool cannot
  pickle is refused before any worker starts: on Python < 3.12 such a work item can
  deadlock the pool's shutdown (CPython gh-116685).
* With ``store=``, each batch is written to a ``SimulationStore`` as it finishes;
  calling ``simulate`` again with the same ``n``, ``batch_size`` and ``seed``
  skips finished batches and draws the same parameters for the rest.
* Simulations that return NaN/inf, or batches whose simulator call raises, are
  counted, reported (``Simulations.summary`` and a ``SimulationWarning``) and left
  out of the returned tensors; the offending parameters are kept in the store.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
import time
import traceback
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._rng import derive_seed, preserved, seeded
from .store import SimulationStore


class SimulationWarning(UserWarning):
    """Some simulations failed or returned NaN/inf and were left out."""


@dataclasses.dataclass
class SimulationSummary:
    """Counts for a campaign (including batches resumed from a store).

    Attributes:
        requested: simulations asked for (``n``).
        valid: finite simulations returned.
        nonfinite: simulations that returned NaN or inf (left out).
        failed: simulations in batches whose simulator call raised (left out).
        batches, batches_run, batches_resumed: batch counts (all / run now / loaded from the store).
        errors: the first error messages, ``"batch k: Type: message"``.
        seconds: wall time of this call.
    """

    requested: int
    valid: int = 0
    nonfinite: int = 0
    failed: int = 0
    batches: int = 0
    batches_run: int = 0
    batches_resumed: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def invalid(self) -> int:
        return self.nonfinite + self.failed

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"invalid": self.invalid}

    def __str__(self) -> str:
        s = (f"{self.valid} of {self.requested} simulations valid; {self.nonfinite} returned NaN/inf, "
             f"{self.failed} in batches that raised ({self.batches_run} batches run, {self.batches_resumed} resumed)")
        if self.errors:
            s += "; first errors: " + " | ".join(self.errors[:3])
        return s


class Simulations(NamedTuple):
    """``theta (N, d)``, ``x (N, ...)`` of the valid simulations, and the ``summary``."""

    theta: Tensor
    x: Tensor
    summary: SimulationSummary


def _run_batch(simulator: Callable, theta: Tensor, sim_seed: int) -> tuple[str, Any]:
    """Run one batch (in a worker or in-process); never raises an ``Exception``."""
    torch.manual_seed(sim_seed)
    np.random.seed(sim_seed % (2**32))
    try:
        x = simulator(theta)
    except Exception as err:  # the simulator's failure is data for the summary, not a crash
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return "error", tb
    return "ok", x


_PICKLE_HINT = ("a process pool needs a picklable simulator (a module-level function or a functools.partial "
                "of one, not a lambda or closure)")


def _require_picklable(simulator) -> None:
    import pickle

    try:
        pickle.dumps(simulator)
    except Exception as err:
        raise TypeError(f"{_PICKLE_HINT}; pickling {simulator!r} failed with {type(err).__name__}: {err}") from err


def _draw(prior, b: int, seed: int, k: int) -> Tensor:
    with seeded(seed, 0, k), torch.no_grad():
        theta = prior.sample((b,))
    return torch.as_tensor(theta, dtype=torch.get_default_dtype())


def _check_output(x: Any, b: int) -> Tensor | str:
    try:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=torch.get_default_dtype())
    except Exception as err:
        return f"simulator output is not numeric: {type(err).__name__}: {err}"
    if x.dim() == 0 or x.shape[0] != b:
        return f"simulator returned shape {tuple(x.shape)} for a batch of {b} parameters (expected ({b}, ...))"
    if x.dim() == 1:
        x = x.unsqueeze(1)
    return x


def _process_pool(workers: int, simulator) -> cf.ProcessPoolExecutor:
    """Worker processes that start clean rather than as forks of this process.

    A fork copies every lock of a multi-threaded parent (torch's thread pools, tqdm's
    monitor, an executor's feeder thread) in whatever state it is in, and a worker that
    then waits on a lock held by a thread it does not have hangs forever (it happened in
    our CI). ``forkserver`` forks workers from a clean single-threaded server process; the
    simulator is pickled by reference, as it is for any executor. A simulator defined in an
    interactive ``__main__`` (a notebook) cannot be imported by such workers, so fork is kept
    for that case only.
    """
    import multiprocessing as mp
    import sys

    methods = mp.get_all_start_methods()
    interactive = getattr(simulator, "__module__", None) == "__main__" and not hasattr(sys.modules["__main__"], "__file__")
    if interactive and "fork" in methods:
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))


def simulate(
    simulator: Callable[[Tensor], Tensor],
    prior,
    n: int,
    *,
    batch_size: int = 1000,
    executor: cf.Executor | None = None,
    workers: int | None = None,
    store: str | os.PathLike | SimulationStore | None = None,
    seed: int = 0,
    retry_failed: bool = False,
    show_progress: bool = False,
) -> Simulations:
    """Simulate ``n`` pairs ``theta ~ prior``, ``x = simulator(theta)``.

    Args:
        simulator: batched, ``theta (b, d) -> x (b, ...)`` (tensor or array).
        prior: anything with ``.sample((b,)) -> (b, d)`` (a prior, or a ``Posterior`` as proposal).
        n: number of simulations.
        batch_size: parameters per simulator call (and per stored chunk).
        executor: run batches on this ``concurrent.futures.Executor`` (not shut down here).
        workers: without ``executor``, ``workers > 1`` runs a ``ProcessPoolExecutor``
            of that size; ``None``/1 runs in this process.
        store: directory (or ``SimulationStore``) to append finished batches to and resume from.
        seed: campaign seed (parameters and simulator noise of batch ``k`` depend only on ``(seed, k)``).
        retry_failed: on resume, re-run stored batches whose simulator call raised.
        show_progress: tqdm bar over batches.

    Returns ``Simulations(theta, x, summary)`` with only the valid rows (batch order).
    """
    t0 = time.perf_counter()
    n, batch_size = int(n), int(batch_size)
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
    n_batches = math.ceil(n / batch_size)
    sizes = [min(batch_size, n - k * batch_size) for k in range(n_batches)]
    summary = SimulationSummary(requested=n, batches=n_batches)
    if store is not None and not isinstance(store, SimulationStore):
        store = SimulationStore(store)
    done: dict[int, dict] = {}
    if store is not None:
        store.open({"n": n, "batch_size": batch_size, "seed": int(seed)})
        done = {k: r for k, r in store.finished().items() if not (retry_failed and r["failed"])}
    todo = [k for k in range(n_batches) if k not in done]
    summary.batches_resumed = len(done)
    for r in done.values():
        summary.nonfinite += r["nonfinite"]
        summary.failed += r["failed"]
        if r.get("error"):
            summary.errors.append(r["error"])
    in_memory: dict[int, tuple[Tensor, Tensor]] = {}

    def finish(k: int, theta: Tensor, status: str, out: Any) -> None:
        b = sizes[k]
        x = _check_output(out, b) if status == "ok" else out
        if isinstance(x, str):  # raised, or returned something unusable: the whole batch failed
            msg = f"batch {k}: {x}"
            rec = {"n": b, "valid": 0, "nonfinite": 0, "failed": b, "error": msg}
            summary.failed += b
            summary.errors.append(msg)
            keep = torch.zeros(b, dtype=torch.bool)
            x = torch.empty(0)
        else:
            keep = torch.isfinite(x.reshape(b, -1)).all(1)
            rec = {"n": b, "valid": int(keep.sum()), "nonfinite": int((~keep).sum()), "failed": 0, "error": None}
            summary.nonfinite += rec["nonfinite"]
            x = x[keep]
        summary.batches_run += 1
        if store is not None:
            store.write_batch(k, theta[keep], x, kept=keep.nonzero().squeeze(1), theta_invalid=theta[~keep], record=rec)
        else:
            in_memory[k] = (theta[keep], x)

    bar = tqdm(total=n_batches, initial=len(done), disable=not show_progress, desc="simulate", unit="batch")
    own_pool = executor is None and workers is not None and int(workers) > 1
    if own_pool or isinstance(executor, cf.ProcessPoolExecutor):
        _require_picklable(simulator)
    own = None
    if own_pool:
        executor = own = _process_pool(int(workers), simulator)
    try:
        if executor is None:
            # in-process batches reseed the global generators; the caller's streams are put back after
            with preserved():
                for k in todo:
                    theta = _draw(prior, sizes[k], seed, k)
                    finish(k, theta, *_run_batch(simulator, theta, derive_seed(seed, 1, k)))
                    bar.update(1)
        else:
            # every batch's parameters are drawn before the first one runs: a thread executor's
            # simulators share (and reseed) the global generator the draws come from. The
            # parameters cost no more memory than the returned ``theta``. Results are written as
            # they arrive, with a bounded number of batches in flight.
            thetas = {k: _draw(prior, sizes[k], seed, k) for k in todo}
            limit = 2 * int(workers or getattr(executor, "_max_workers", 0) or 4)
            queue = iter(todo)
            pending: dict[cf.Future, int] = {}

            def submit_more() -> None:
                for k in queue:
                    pending[executor.submit(_run_batch, simulator, thetas[k], derive_seed(seed, 1, k))] = k
                    if len(pending) >= limit:
                        return

            submit_more()
            while pending:
                ready, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
                for fut in ready:
                    k = pending.pop(fut)
                    try:
                        status, out = fut.result()
                    except Exception as err:
                        for f in pending:
                            f.cancel()
                        raise RuntimeError(
                            f"batch {k} could not run on the executor ({type(err).__name__}: {err}); {_PICKLE_HINT}"
                        ) from err
                    finish(k, thetas.pop(k), status, out)
                    bar.update(1)
                submit_more()
    finally:
        bar.close()
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)

    if store is not None:
        theta, x = store.load()
    else:
        parts = [in_memory[k] for k in sorted(in_memory) if in_memory[k][0].shape[0] > 0]
        if parts:
            theta, x = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            theta, x = torch.empty(0), torch.empty(0)
    summary.valid = int(theta.shape[0]) if theta.dim() > 0 else 0
    summary.seconds = time.perf_counter() - t0
    if summary.invalid:
        warnings.warn(f"simulate: {summary}", SimulationWarning, stacklevel=2)
    return Simulations(theta, x, summary)
