"""Simulation campaigns: failure accounting, resumable stores, executors."""
import concurrent.futures as cf
import json
import os

import pytest
import torch

import flowvi.sbi as sbi
from flowvi.sbi.store import StoreMismatchError

PRIOR = sbi.BoxUniform(torch.zeros(2), torch.ones(2))


def doubling(theta):
    """Module level, so process pools can pickle it; adds seeded noise to check reproducibility."""
    return 2 * theta + 0.01 * torch.randn_like(theta)


def flaky(theta):
    """NaN where theta_0 > 0.5; raises for a batch of 7 (the campaign's last, partial batch)."""
    if theta.shape[0] == 7:
        raise RuntimeError("solver diverged")
    x = 2 * theta
    x[theta[:, 0] > 0.5] = float("nan")
    return x


class Interrupt(BaseException):
    """Like Ctrl-C: not an Exception, so the campaign stops instead of counting a failure."""


def interrupt_after(k):
    calls = {"n": 0}

    def sim(theta):
        if calls["n"] == k:
            raise Interrupt
        calls["n"] += 1
        return doubling(theta)

    return sim


def test_failed_and_nonfinite_simulations_are_counted_reported_and_left_out():
    with pytest.warns(sbi.SimulationWarning, match="returned NaN/inf") as rec:
        theta, x, summary = sbi.simulate(flaky, PRIOR, 47, batch_size=10, seed=0)
    assert "solver diverged" in str(rec[0].message)
    all_theta = sbi.simulate(doubling, PRIOR, 47, batch_size=10, seed=0).theta  # same seeds -> same thetas
    expected_nan = int((all_theta[:40, 0] > 0.5).sum())
    assert summary.requested == 47
    assert summary.failed == 7 and summary.nonfinite == expected_nan
    assert summary.valid == 40 - expected_nan == theta.shape[0] == x.shape[0]
    assert summary.errors == ["batch 4: RuntimeError: solver diverged"]
    assert summary.as_dict()["invalid"] == 7 + expected_nan
    assert torch.isfinite(x).all() and (theta[:, 0] <= 0.5).all()
    assert torch.equal(x, 2 * theta)
    assert torch.equal(theta, all_theta[:40][all_theta[:40, 0] <= 0.5])


def test_wrong_output_shape_counts_as_failed_batch():
    with pytest.warns(sbi.SimulationWarning):
        _, _, summary = sbi.simulate(lambda t: t[:-1], PRIOR, 20, batch_size=10)
    assert summary.failed == 20 and summary.valid == 0
    assert "expected (10, ...)" in summary.errors[0]


def test_interrupted_campaign_resumes_without_resimulating(tmp_path):
    store = tmp_path / "sims"
    reference = sbi.simulate(doubling, PRIOR, 55, batch_size=10, seed=3)
    with pytest.raises(Interrupt):
        sbi.simulate(interrupt_after(2), PRIOR, 55, batch_size=10, store=store, seed=3)
    manifest = json.loads((store / "manifest.json").read_text())
    assert sorted(manifest["batches"]) == ["0", "1"]

    calls = []

    def counting(theta):
        calls.append(theta.shape[0])
        return doubling(theta)

    theta, x, summary = sbi.simulate(counting, PRIOR, 55, batch_size=10, store=store, seed=3)
    assert calls == [10, 10, 10, 5]  # only batches 2..5 ran
    assert summary.batches_resumed == 2 and summary.batches_run == 4 and summary.valid == 55
    # every simulation exactly once, identical to the uninterrupted campaign
    assert torch.equal(theta, reference.theta) and torch.equal(x, reference.x)
    assert torch.unique(theta, dim=0).shape[0] == 55
    # a finished store runs nothing more; other settings are refused
    again = sbi.simulate(counting, PRIOR, 55, batch_size=10, store=store, seed=3)
    assert calls == [10, 10, 10, 5] and again.summary.batches_resumed == 6
    with pytest.raises(StoreMismatchError, match="seed"):
        sbi.simulate(doubling, PRIOR, 55, batch_size=10, store=store, seed=4)
    assert not any(name.endswith(".tmp") for name in os.listdir(store))


def test_store_keeps_invalid_parameters_and_retries_failed_batches(tmp_path):
    store = sbi.SimulationStore(tmp_path / "s")
    with pytest.warns(sbi.SimulationWarning):
        _, _, summary = sbi.simulate(flaky, PRIOR, 17, batch_size=10, store=store, seed=1)
    assert store.invalid_theta().shape == (summary.invalid, 2)
    with pytest.warns(sbi.SimulationWarning):  # resumed counts are reported again
        resumed = sbi.simulate(flaky, PRIOR, 17, batch_size=10, store=store, seed=1).summary
    assert (resumed.failed, resumed.nonfinite, resumed.batches_run) == (7, summary.nonfinite, 0)
    with pytest.warns(sbi.SimulationWarning):  # batch 0's NaN rows stay counted
        _, _, retried = sbi.simulate(doubling, PRIOR, 17, batch_size=10, store=store, seed=1, retry_failed=True)
    assert retried.batches_run == 1 and retried.failed == 0


def test_executors_give_the_same_simulations():
    serial = sbi.simulate(doubling, PRIOR, 40, batch_size=10, seed=5)
    pooled = sbi.simulate(doubling, PRIOR, 40, batch_size=10, seed=5, workers=2)
    with cf.ThreadPoolExecutor(2) as ex:  # any concurrent.futures.Executor (Dask, MPI, ...)
        threaded = sbi.simulate(doubling, PRIOR, 40, batch_size=10, seed=5, executor=ex)
    assert torch.equal(serial.theta, pooled.theta) and torch.equal(serial.x, pooled.x)
    # threads share torch's global RNG, so only the parameters (drawn by the driver) are
    # reproducible there; the simulator's own noise is per process
    assert torch.equal(serial.theta, threaded.theta)
    assert torch.allclose(serial.x, threaded.x, atol=0.1)


def test_unpicklable_simulator_is_refused_before_a_process_pool_sees_it(monkeypatch):
    # on Python < 3.12 a work item that fails to pickle can deadlock the pool's shutdown
    # (CPython gh-116685); it hung our CI, so no such item may reach a pool
    import importlib

    simulate_module = importlib.import_module("flowvi.sbi.simulate")

    def no_pool(*args):
        raise AssertionError("a process pool was started for an unpicklable simulator")

    monkeypatch.setattr(simulate_module, "_process_pool", no_pool)
    with pytest.raises(TypeError, match="picklable simulator.*lambda"):
        sbi.simulate(lambda t: t, PRIOR, 20, batch_size=10, workers=2)
    with cf.ProcessPoolExecutor(1) as ex:
        with pytest.raises(TypeError, match="picklable simulator"):
            sbi.simulate(lambda t: t, PRIOR, 20, batch_size=10, executor=ex)
        assert not ex._processes  # nothing was submitted, so no worker ever started
    with cf.ThreadPoolExecutor(2) as ex:  # threads need no pickling
        assert sbi.simulate(lambda t: 2 * t, PRIOR, 20, batch_size=10, executor=ex).summary.valid == 20


def test_parameters_are_drawn_before_any_simulator_thread_runs():
    # a simulator thread that reseeds or consumes the global generator while the driver
    # draws would change the parameters; the draws must not overlap a running batch
    import threading
    import time

    running = {"n": 0, "overlaps": 0}
    lock = threading.Lock()

    class WatchedPrior:
        def sample(self, shape):
            with lock:
                running["overlaps"] += running["n"] > 0
            return PRIOR.sample(shape)

    def slow(theta):
        with lock:
            running["n"] += 1
        torch.randn(1000)
        time.sleep(0.02)
        with lock:
            running["n"] -= 1
        return 2 * theta

    serial = sbi.simulate(slow, WatchedPrior(), 80, batch_size=10, seed=2)
    with cf.ThreadPoolExecutor(2) as ex:
        threaded = sbi.simulate(slow, WatchedPrior(), 80, batch_size=10, seed=2, executor=ex)
    assert running["overlaps"] == 0
    assert torch.equal(serial.theta, threaded.theta) and torch.equal(serial.x, threaded.x)


def test_in_process_campaign_leaves_the_callers_random_streams_alone():
    import numpy as np

    torch.manual_seed(11)
    np.random.seed(11)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(11)
    np.random.seed(11)
    sbi.simulate(doubling, PRIOR, 30, batch_size=10, seed=4)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def test_worker_processes_are_not_forks_of_a_threaded_parent(monkeypatch):
    # a fork copies locks held by the parent's other threads; one such worker hung our CI
    import multiprocessing as mp
    import sys
    import types

    from flowvi.sbi.simulate import _process_pool

    clean = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    pool = _process_pool(2, doubling)
    assert pool._mp_context.get_start_method() == clean
    pool.shutdown()
    # a simulator from an interactive __main__ (no file to import it from) keeps fork
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))

    def interactive(theta):
        return theta

    interactive.__module__ = "__main__"
    if "fork" in mp.get_all_start_methods():
        pool = _process_pool(2, interactive)
        assert pool._mp_context.get_start_method() == "fork"
        pool.shutdown()
