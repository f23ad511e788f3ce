"""Saving and loading flows, VI results and VAEs: identical densities after a round trip,
clear refusals of foreign files and of other format versions."""
import math

import pytest
import torch

import flowvi
from flowvi import io
from flowvi.flows import ActNorm, StudentTBase
from flowvi.vae import VAE

torch.set_num_threads(1)


def _perturb(module, seed=0, scale=0.1):
    # freshly built layers are near the identity; perturb so a lost weight would show
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("family,context_dim", [("nsf", 3), ("planar", 0), ("iaf", 2), ("triangular", 0)])
def test_flow_round_trip_identical_log_density(tmp_path, family, context_dim):
    torch.manual_seed(0)
    flow = _perturb(flowvi.build(family, 3, layers=2, hidden=(16,), context_dim=context_dim))
    ctx = torch.randn(5, context_dim) if context_dim else None
    x = torch.randn(7, 5, 3) if context_dim else torch.randn(7, 3)
    path = io.save_flow(flow, tmp_path / "f.pt", metadata={"note": "test"})
    loaded = io.load_flow(path)
    assert type(loaded) is type(flow) and loaded is not flow
    assert torch.equal(loaded.log_prob(x, context=ctx), flow.log_prob(x, context=ctx))
    # and the sampling pass: same noise, same draws and densities
    torch.manual_seed(3)
    a = flow.rsample_and_log_prob((4,), context=ctx)
    torch.manual_seed(3)
    b = loaded.rsample_and_log_prob((4,), context=ctx)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # weights are copies: changing the original does not change the loaded flow
    with torch.no_grad():
        next(flow.parameters()).add_(1.0)
    assert not torch.equal(loaded.log_prob(x, context=ctx), flow.log_prob(x, context=ctx))


def test_flow_with_custom_layers_base_and_dtype(tmp_path):
    torch.manual_seed(1)
    flow = flowvi.build([ActNorm(2), "realnvp", "lu"], 2, hidden=(8,), base=StudentTBase(2, df=3.0)).double()
    _perturb(flow)
    x = torch.randn(20, 2, dtype=torch.float64)
    flow.log_prob(3 + 2 * x)  # ActNorm's data-dependent init: its "initialized" buffer must survive saving
    loaded = io.load_flow(io.save_flow(flow, tmp_path / "f.pt"))
    assert loaded.log_prob(x).dtype == torch.float64
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    assert torch.equal(loaded.base.df, flow.base.df)
    assert bool(loaded.layers[0].initialized) and loaded.training == flow.training
    info = io.describe(tmp_path / "f.pt")
    assert info["kind"] == "flow" and info["format_version"] == io.FORMAT_VERSION
    assert info["description"]["layers"] == ["ActNorm", "AffineCoupling", "LULinear"]
    assert info["description"]["parameters"] == sum(p.numel() for p in flow.parameters())


def test_file_is_readable_without_unpickling_code(tmp_path):
    flow = flowvi.build("maf", 2, layers=1, hidden=(8,))
    io.save_flow(flow, tmp_path / "f.pt", metadata={"n": torch.tensor(3), "xs": [1.5, float("nan")]})
    payload = torch.load(tmp_path / "f.pt", weights_only=True)  # no arbitrary objects outside the architecture
    assert payload["metadata"]["n"] == 3
    assert math.isnan(payload["metadata"]["xs"][1])
    # the architecture holds no weights: those live only in the state dict
    assert len(payload["architecture"]) < 0.5 * sum(t.numel() * 4 for t in payload["state_dict"].values()) + 20_000


def test_load_into_a_rebuilt_flow(tmp_path):
    torch.manual_seed(2)
    flow = _perturb(flowvi.build("realnvp", 3, layers=2, hidden=(8,)))
    io.save_flow(flow, tmp_path / "f.pt")
    fresh = flowvi.build("realnvp", 3, layers=2, hidden=(8,))
    loaded = io.load_flow(tmp_path / "f.pt", into=fresh)
    x = torch.randn(6, 3)
    assert loaded is fresh and torch.equal(loaded.log_prob(x), flow.log_prob(x))
    with pytest.raises(io.FormatError, match="do not fit"):
        io.load_flow(tmp_path / "f.pt", into=flowvi.build("realnvp", 3, layers=3, hidden=(8,)))


# -- VI results ----------------------------------------------------------------------------------
def _gauss_log_prob(x):
    # N((1, -1), diag(1, 4)) unnormalised by exactly log Z = log(2 pi * 2)
    return -0.5 * ((x[..., 0] - 1) ** 2 + ((x[..., 1] + 1) / 2) ** 2)


@pytest.fixture(scope="module")
def fitted():
    return flowvi.fit(_gauss_log_prob, 2, family="realnvp", layers=1, hidden=(8,), max_steps=40, particles=32,
                      init_steps=50, progress=False, seed=0)


def test_result_round_trip_without_log_prob(tmp_path, fitted):
    fitted.save(tmp_path / "r.pt", metadata={"target": "gauss"})
    loaded = flowvi.vi.VIResult.load(tmp_path / "r.pt")
    x = torch.randn(50, 2)
    assert torch.equal(loaded.log_prob(x), fitted.log_prob(x))
    assert loaded.trace == fitted.trace and loaded.steps == fitted.steps and loaded.seed == fitted.seed
    assert loaded.converged == fitted.converged and loaded.names == fitted.names
    assert loaded.metadata == {"target": "gauss"}
    # the saved diagnostics are served without the target
    assert loaded.k_hat == fitted.k_hat and loaded.log_z == fitted.log_z and loaded.verdict == fitted.verdict
    assert (loaded.summary().values == fitted.summary().values).all()
    with pytest.raises(RuntimeError, match="log_prob="):
        loaded.elbo()


def test_result_round_trip_with_log_prob_recomputes_the_same(tmp_path, fitted):
    io.save_result(fitted, tmp_path / "r.pt")
    loaded = io.load_result(tmp_path / "r.pt", log_prob=_gauss_log_prob)
    assert "diagnostics" not in loaded.__dict__  # recomputed from the target, not read from the file
    assert loaded.elbo() == fitted.elbo()
    assert loaded.log_z == fitted.log_z and loaded.k_hat == fitted.k_hat
    # independent check that the loaded result is the fit: log Z of the target is log(4 pi)
    assert abs(loaded.log_z - math.log(4 * math.pi)) < 5 * loaded.log_z_se + 0.05


def test_result_log_prob_by_target_name(tmp_path):
    target = flowvi.targets.get("gaussian-cond100-2")
    r = flowvi.fit(target.log_prob, 2, layers=1, hidden=(8,), max_steps=20, particles=16, init_steps=20,
                   progress=False)
    io.save_result(r, tmp_path / "r.pt")
    loaded = io.load_result(tmp_path / "r.pt", log_prob="gaussian-cond100-2")
    assert loaded.elbo() == r.elbo()


# -- VAEs ----------------------------------------------------------------------------------------
def test_vae_round_trip_identical_log_likelihood(tmp_path):
    import pandas as pd

    torch.manual_seed(0)
    model = _perturb(VAE(12, 2, family="householder", flow_layers=2, hidden=(10,)), scale=0.05)
    x = (torch.rand(6, 12) > 0.5).float()
    hist = pd.DataFrame({"epoch": [1, 2], "train_neg_elbo": [9.0, 8.5], "complete": [True, False]})
    io.save_vae(model, tmp_path / "v.pt", metadata={"data": "toy"}, history=hist)
    loaded = io.load_vae(tmp_path / "v.pt")
    assert (loaded.x_dim, loaded.z_dim, loaded.family, loaded.flow_layers) == (12, 2, "householder", 2)
    assert torch.equal(loaded.log_likelihood(x, k=20, seed=1), model.log_likelihood(x, k=20, seed=1))
    assert loaded.saved_metadata == {"data": "toy"}
    assert loaded.saved_history.equals(hist)


def test_gated_vae_with_qr_sylvester_round_trips(tmp_path):
    model = _perturb(VAE(12, 3, family="sylvester", flow_layers=2, hidden=(10,), gated=True, m=2, ortho="qr"), scale=0.05)
    x = (torch.rand(6, 12) > 0.5).float()
    io.save_vae(model, tmp_path / "g.pt")
    loaded = io.load_vae(tmp_path / "g.pt")
    assert [layer.ortho for layer in loaded.flow.layers[1:]] == ["qr", "qr"]
    assert torch.equal(loaded.log_likelihood(x, k=20, seed=1), model.log_likelihood(x, k=20, seed=1))


# -- refusals ------------------------------------------------------------------------------------
def test_other_format_version_is_refused_naming_both(tmp_path):
    path = io.save_flow(flowvi.build("maf", 2, layers=1, hidden=(4,)), tmp_path / "f.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    payload["flowvi_version"] = "9.9.9"
    torch.save(payload, path)
    with pytest.raises(io.FormatError) as err:
        io.load_flow(path)
    msg = str(err.value)
    assert "format version 99" in msg and f"reads format version {io.FORMAT_VERSION}" in msg and "9.9.9" in msg


def test_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(io.FormatError, match="not a flowvi file"):
        io.load_flow(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(io.FormatError, match="not a flowvi file"):
        io.load(plain)
    with pytest.raises(FileNotFoundError):
        io.load_flow(tmp_path / "missing.pt")


def test_wrong_kind_names_the_right_loader(tmp_path):
    path = io.save_flow(flowvi.build("maf", 2, layers=1, hidden=(4,)), tmp_path / "f.pt")
    with pytest.raises(io.FormatError, match="load_flow"):
        io.load_vae(path)


def test_load_dispatches_including_npe(tmp_path):
    from flowvi.sbi import NPE, BoxUniform

    flow = flowvi.build("maf", 2, layers=1, hidden=(4,))
    assert isinstance(io.load(io.save_flow(flow, tmp_path / "f.pt")), flowvi.flows.Flow)
    npe = NPE(BoxUniform(-torch.ones(2), torch.ones(2)), family="maf", layers=1, hidden=(8,))
    npe.save(tmp_path / "npe.pt")
    assert isinstance(io.load(tmp_path / "npe.pt"), NPE)
    with pytest.raises(io.FormatError, match="NPE"):
        io.load_flow(tmp_path / "npe.pt")
