"""The ``flowvi`` command, run in-process through ``flowvi.cli.main`` on tiny budgets:
exit codes, the files each subcommand promises, and that saved models load back and
agree with what the report says."""
import json

import pytest
import torch

from flowvi import cli, io

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_fit_writes_report_figures_and_a_loadable_result(tmp_path):
    out = tmp_path / "fit"
    rc = cli.main(["fit", "--target", "banana", "--family", "realnvp", "--layers", "2", "--steps", "200",
                   "--particles", "32", "--quiet", "--seed", "3", "--out", str(out)])
    assert rc == cli.EXIT_OK
    rep = _report(out)
    assert rep["command"] == "fit" and rep["seed"] == 3 and rep["target"] == "banana"
    for name in ("summary.csv", "flow.pt", "result.pt", "elbo.png", "density.png"):
        assert (out / name).stat().st_size > 0, name
    res = io.load_result(out / "result.pt", log_prob="banana")
    flow = io.load_flow(out / "flow.pt")
    torch.manual_seed(0)
    x = res.sample(64)
    # the flow file and the result file hold the same weights
    torch.testing.assert_close(flow.log_prob(x), res.log_prob(x))
    assert abs(res.diagnostics.k_hat - rep["k_hat"]) < 0.3  # fresh draws: same verdict region, not same number


def test_fit_same_seed_same_report(tmp_path):
    args = ["fit", "--target", "banana", "--layers", "1", "--steps", "60", "--particles", "16", "--quiet"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = _report(tmp_path / "a"), _report(tmp_path / "b")
    assert a["elbo"] == b["elbo"] and a["k_hat"] == b["k_hat"]


def test_strict_fit_exits_1_when_the_fit_is_not_trustworthy(tmp_path):
    # 5 steps on a 10-d funnel cannot be trusted; --strict must say so with exit 1
    out = tmp_path / "bad"
    rc = cli.main(["fit", "--target", "funnel-10", "--layers", "1", "--steps", "5", "--particles", "8",
                   "--quiet", "--strict", "--out", str(out)])
    rep = _report(out)
    assert rep["trustworthy"] is False
    assert rc == cli.EXIT_UNTRUSTWORTHY


@pytest.mark.parametrize("argv", [
    ["fit", "--target", "no-such-target"],
    ["fit", "--family", "no-such-family"],
    ["fit", "--steps", "0"],
    ["npe", "--task", "no-such-task"],
    ["vae", "--data", "mnist", "--data-path", "/no/such/file.npz"],
    ["frobnicate"],
])
def test_bad_usage_exits_2_with_a_message(tmp_path, capsys, argv):
    rc = cli.main(argv + (["--out", str(tmp_path / "o")] if argv[0] in ("fit", "npe", "vae") else []))
    assert rc == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.strip(), "a usage error must print why"


def test_help_and_version_exit_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "fit" in capsys.readouterr().out
    for sub in ("fit", "npe", "vae", "bench"):
        assert cli.main([sub, "--help"]) == 0
        assert "--seed" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0


def test_npe_writes_samples_and_a_loadable_estimator(tmp_path):
    from flowvi.sbi import NPE

    out = tmp_path / "npe"
    rc = cli.main(["npe", "--task", "gaussian_linear", "--simulations", "300", "--max-epochs", "15",
                   "--num-samples", "300", "--num-sbc", "40", "--quiet", "--out", str(out)])
    assert rc == 0
    rep = _report(out)
    assert 0.5 <= rep["c2st"] <= 1.0
    for name in ("posterior_samples.csv", "reference_samples.csv", "npe.pt", "sbc.png"):
        assert (out / name).stat().st_size > 0, name
    npe = NPE.load(out / "npe.pt")
    assert isinstance(io.load(out / "npe.pt"), NPE)
    import pandas as pd

    draws = torch.tensor(pd.read_csv(out / "posterior_samples.csv").to_numpy(), dtype=torch.float32)
    assert draws.shape == (300, npe.theta_dim)
    post = npe.posterior(torch.tensor(rep["x_o"], dtype=torch.float32))
    lp = post.log_prob(draws[:50])
    assert lp.shape == (50,) and torch.isfinite(lp).all()


def test_vae_synthetic_trains_and_saves(tmp_path):
    out = tmp_path / "vae"
    rc = cli.main(["vae", "--epochs", "2", "--train-size", "300", "--iwae-k", "8", "--quiet", "--out", str(out)])
    assert rc == 0
    rep = _report(out)
    assert rep["test_log_likelihood"] < 0
    model = io.load_vae(out / "vae.pt")
    assert model.saved_history is not None and len(model.saved_history) == 2
    assert (out / "samples.png").stat().st_size > 0


def test_bench_writes_tables(tmp_path):
    out = tmp_path / "bench"
    rc = cli.main(["bench", "--families", "planar", "--dims", "2", "--batch", "64", "--repeats", "2",
                   "--min-time", "0.005", "--quiet", "--out", str(out)])
    assert rc in (0, 1)  # 1 only with --strict; timing noise must not fail a test
    assert rc == 0
    for name in ("bench.csv", "bench.md", "report.json"):
        assert (out / name).stat().st_size > 0
