"""VAE trainer (checkpoint/resume, time budget, warm-up) and the Pyro interface."""
import importlib

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import flowvi.vae as V


def data(n=96, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).float()


def make(family="iaf"):
    torch.manual_seed(0)
    return V.VAE(10, 2, family=family, flow_layers=2, hidden=(16,))


def test_checkpoint_resume_continues_exactly(tmp_path):
    x, xv = data(), data(32, seed=1)
    ref = make()
    h_ref = V.train(ref, x, xv, epochs=4, batch_size=32, seed=5, progress=False)
    ck = tmp_path / "run.pt"
    m = make()
    h1 = V.train(m, x, xv, epochs=2, batch_size=32, seed=5, checkpoint=ck, progress=False)
    assert list(h1.epoch) == [1, 2] and ck.exists() and not (tmp_path / "run.pt.tmp").exists()
    resumed = make()  # a fresh process: new model, state only from the checkpoint
    h2 = V.train(resumed, x, xv, epochs=4, batch_size=32, seed=5, checkpoint=ck, progress=False)
    assert list(h2.epoch) == [1, 2, 3, 4]
    assert list(h2.columns) == ["epoch", "train_neg_elbo", "valid_neg_elbo", "beta", "seconds", "steps", "complete"]
    torch.testing.assert_close(torch.tensor(h2.train_neg_elbo.values), torch.tensor(h_ref.train_neg_elbo.values))
    for (k, a), b in zip(resumed.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    # already done: a further call with the same epochs trains nothing
    h3 = V.train(resumed, x, xv, epochs=4, batch_size=32, seed=5, checkpoint=ck, progress=False)
    assert len(h3) == 4


class FakeClock:
    """A perf_counter that advances a fixed tick per call, so where a budget runs out is deterministic."""

    def __init__(self, tick):
        self.t, self.tick = 0.0, tick

    def perf_counter(self):
        self.t += self.tick
        return self.t


def test_time_budget_cuts_mid_epoch_with_warmup_and_free_bits(monkeypatch):
    T = importlib.import_module("flowvi.vae.train")  # the module; the package re-exports the function

    x = data()  # 96 points, batch 16: 6 steps an epoch, 8 clock reads an epoch (start, 6 checks, end)
    m = make("planar")
    monkeypatch.setattr(T, "time", FakeClock(1.0))
    # reads: 1 = t_start, epoch 1 uses 2..9, epoch 2 starts at 10; the check at read 13 (step 2) is 12 s in
    h = V.train(m, x, epochs=1000, batch_size=16, time_budget=11.5, progress=False, warmup_epochs=2, free_bits=0.5)
    assert list(h.epoch) == [1, 2] and list(h.complete) == [True, False] and list(h.steps) == [6, 2]
    assert h.beta.iloc[0] < h.beta.iloc[1] < 1.0 and h.valid_neg_elbo.isna().all()
    assert V.train(m, x, epochs=0, progress=False).empty


def test_time_budget_spent_at_an_epoch_boundary_keeps_whole_epochs(monkeypatch):
    T = importlib.import_module("flowvi.vae.train")  # the module; the package re-exports the function

    x = data()
    m = make("planar")
    monkeypatch.setattr(T, "time", FakeClock(1.0))
    # epoch 2's first check is read 11, 10 s in: nothing of epoch 2 runs, epoch 1 stays the last (complete) row
    h = V.train(m, x, epochs=1000, batch_size=16, time_budget=9.5, progress=False)
    assert list(h.epoch) == [1] and h.complete.all() and list(h.steps) == [6]


class TwoClocks:
    """Wall time racing ahead (another job on the machine), process time one tick per read."""

    def __init__(self):
        self.wall, self.cpu = FakeClock(100.0), FakeClock(1.0)

    def perf_counter(self):
        return self.wall.perf_counter()

    def process_time(self):
        return self.cpu.perf_counter()


def test_process_clock_budgets_cpu_time_not_wall_time(monkeypatch):
    T = importlib.import_module("flowvi.vae.train")

    x = data()
    monkeypatch.setattr(T, "time", TwoClocks())
    # on the wall clock the budget is gone at the first check: nothing trains
    assert V.train(make("planar"), x, epochs=1000, batch_size=16, time_budget=11.5, progress=False).empty
    monkeypatch.setattr(T, "time", TwoClocks())
    # on the process clock the same budget cuts epoch 2 at step 2, as the wall-clock test above does
    h = V.train(make("planar"), x, epochs=1000, batch_size=16, time_budget=11.5, progress=False, clock="process")
    assert list(h.epoch) == [1, 2] and list(h.steps) == [6, 2] and list(h.seconds) == [7.0, 4.0]
    with pytest.raises(ValueError, match="clock must be"):
        V.train(make("planar"), x, epochs=1, progress=False, clock="cpu")


def test_free_bits_floor_stops_kl_gradient():
    m = make("iaf")
    x = data(8)
    torch.manual_seed(0)
    loss_fb, elbo = m.loss(x, free_bits=100.0)  # floor far above any KL: only reconstruction trains q
    torch.manual_seed(0)
    t = m.elbo_terms(x)
    assert torch.allclose(loss_fb, -t["log_px_z"].mean() + 100.0 * 2)
    assert torch.allclose(elbo, (t["log_px_z"] + t["log_pz"] - t["log_qz"]).mean())


@pytest.mark.parametrize("family", ["iaf", "planar", "sylvester", None])
def test_pyro_trace_elbo_equals_native_elbo(family):
    pyro.clear_param_store()
    m = make(family)
    x = data(16)
    pyro.set_rng_seed(11)
    native = m.elbo(x, n_samples=1).sum().item()
    pyro.set_rng_seed(11)
    loss = Trace_ELBO().loss(m.pyro_model, m.pyro_guide, x)
    assert abs(loss + native) < 1e-3 * max(1.0, abs(native)), (loss, native)
    # in expectation too: many particles against many native samples
    pyro.set_rng_seed(0)
    mc = Trace_ELBO(num_particles=200, vectorize_particles=True).loss(m.pyro_model, m.pyro_guide, x)
    with torch.no_grad():
        ref = m.elbo(x, n_samples=2000).sum().item()
    assert abs(mc + ref) < 0.02 * abs(ref)


def test_pyro_svi_trains_flow_posterior():
    pyro.clear_param_store()
    m = make("planar")
    x = data()
    svi = SVI(m.pyro_model, m.pyro_guide, Adam({"lr": 1e-2}), Trace_ELBO())
    pyro.set_rng_seed(0)
    before = V.evaluate_elbo(m, x, n_samples=20)
    for _ in range(100):
        svi.step(x, beta=1.0)
    after = V.evaluate_elbo(m, x, n_samples=20)
    # the data are iid Bernoulli(0.4) in 10 dims: the best ELBO is about -6.73 (their entropy)
    assert after > before + 0.3 and after > -6.9
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("vae_flow") for n in names) and any(n.startswith("vae_decoder") for n in names)


def test_flow_lr_scale_sets_the_flow_layers_learning_rate():
    from flowvi.vae.train import param_groups

    m = V.VAE(6, 2, family="iaf", flow_layers=2, hidden=(8,))
    groups = param_groups(m, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    head = {id(p) for p in m.flow.layers[0].parameters()}
    flow = {id(p) for layer in list(m.flow.layers)[1:] for p in layer.parameters()}
    assert head <= {id(p) for p in groups[0]["params"]} and flow == {id(p) for p in groups[1]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    assert len(param_groups(V.VAE(6, 2, family=None, hidden=(8,)), 1e-3, 0.1)) == 1
    with pytest.raises(ValueError, match="flow_lr_scale"):
        param_groups(m, 1e-3, 0.0)


def test_mnist_case_study_runs_end_to_end_on_generated_data(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    import numpy as np

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "case_studies"))
    import vae_mnist

    g = np.random.default_rng(0)
    arrays = {k: (g.random((n, 784)) < 0.2).astype(np.uint8) for k, n in (("train", 60), ("valid", 20), ("test", 30))}
    np.savez(tmp_path / "mnist.npz", **arrays)
    argv = ["--data", str(tmp_path / "mnist.npz"), "--out", str(tmp_path / "out"), "--families", "diagonal,planar",
            "--hidden", "16", "--z-dim", "3", "--flow-layers", "2", "--max-epochs", "2", "--batch-size", "20",
            "--k", "5", "--test-size", "10", "--valid-size", "10", "--shared-flow", "--budget-clock", "process",
            "--flow-hidden", "", "--clip-grad", "0", "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"),
            "--gated"]
    table = vae_mnist.main(argv)
    assert list(table.family) == ["diagonal", "planar"] and (table.epochs == 2).all()
    assert np.isfinite(table.test_neg_elbo).all() and (tmp_path / "out" / "vae_mnist.csv").exists()
    assert (tmp_path / "ck" / "vae_planar.pt").exists()
    # scoring the checkpoints again without training reproduces the rows (same weights, same seeds)
    again = vae_mnist.main(argv + ["--eval-only", "--out", str(tmp_path / "out2")])
    cols = ["family", "epochs", "valid_neg_elbo", "best_valid_neg_elbo", "test_neg_elbo", "test_nll_iwae_k5"]
    assert again[cols].equals(table[cols])
    with pytest.raises(SystemExit, match="--checkpoint-dir"):  # nothing to score: says what is missing
        vae_mnist.main(argv[:-3] + ["--eval-only"])
    sys.modules.pop("vae_mnist", None)


def test_patience_stops_and_keep_best_restores_the_best_validation_epoch(tmp_path):
    # a tiny training set with a separate validation set: the model overfits, the validation
    # -ELBO turns up, and early stopping must see it
    x, xv = data(24, seed=0), data(48, seed=1)
    m = make("planar")
    h = V.train(m, x, xv, epochs=400, batch_size=8, lr=1e-2, seed=0, progress=False, patience=5, keep_best=True,
                checkpoint=tmp_path / "es.pt")
    best = int(h.valid_neg_elbo.idxmin())
    assert len(h) < 400 and len(h) - 1 - best == 5  # stopped exactly 5 epochs after the best one
    assert h.valid_neg_elbo.iloc[-1] > h.valid_neg_elbo.iloc[best]
    # the weights are the best epoch's: re-evaluating gives its validation -ELBO (same seeded noise)
    assert abs(-V.evaluate_elbo(m, xv, batch_size=500) - h.valid_neg_elbo.iloc[best]) < 1e-4
    # a resume of the stopped run trains nothing more
    again = V.train(make("planar"), x, xv, epochs=400, batch_size=8, lr=1e-2, seed=0, progress=False, patience=5,
                    checkpoint=tmp_path / "es.pt")
    assert len(again) == len(h)
    with pytest.raises(ValueError, match="valid_data"):
        V.train(make("planar"), x, epochs=2, progress=False, patience=3)


def test_patience_on_a_checkpoint_written_before_early_stopping_existed(tmp_path):
    x, xv = data(), data(32, seed=1)
    ck = tmp_path / "old.pt"
    V.train(make(), x, xv, epochs=3, batch_size=32, seed=0, checkpoint=ck, progress=False)
    state = torch.load(ck, weights_only=False)
    del state["best_state"]  # what older flowvi versions wrote
    torch.save(state, ck)
    valid = [r["valid_neg_elbo"] for r in state["history"]]
    assert valid[2] == min(valid)  # still improving at epoch 3
    # the best epoch (3) comes from the history, so patience 2 keeps training instead of stopping at once
    h = V.train(make(), x, xv, epochs=5, batch_size=32, seed=0, checkpoint=ck, progress=False, patience=2)
    assert list(h.epoch) == [1, 2, 3, 4, 5]
