"""``refdiff demo`` end to end with small settings: the report folder, its numbers, its figures,
its models, and what an interrupted run leaves behind (nothing half-written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from refdiff.export import demo as D  # noqa: E402

from refdiff import exact  # noqa: E402
from refdiff.data import get_dataset  # noqa: E402
from refdiff.mlp import load_mlp  # noqa: E402
from refdiff.respacing import spaced_times  # noqa: E402
from refdiff.sampling import ddpm_sample  # noqa: E402
from refdiff.schedule import linear, respace  # noqa: E402

SMALL = [
    "--train-steps", "300", "--train-size", "2000", "--samples", "1000",
    "--parity-samples", "200", "--ddpm-steps", "50", "--ddim-steps", "20", "-q",
]  # fmt: skip
FIGURES = (
    "samples.png",
    "parity.png",
    "law.png",
    "trajectory.png",
    "schedule.png",
    "timing.png",
    "training_loss.png",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    t0 = time.perf_counter()
    rc = D.main(["--out", str(out), *SMALL])
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    return rc, out, summary, wall


def test_demo_passes_and_writes_every_file(demo):
    rc, out, s, wall = demo
    assert rc == 0 and s["passed"] is True
    for f in (*FIGURES, "summary.json", "report.md"):
        assert (out / f).is_file(), f
    for name in s["files"]:
        assert (out / name).is_file(), name
    models = {p.name for p in (out / "models").iterdir()}
    assert {"mlp.npz", "exact_denoiser.onnx", "mlp_denoiser.onnx"} <= models
    assert {"exact_ddpm50_sampler.onnx", "mlp_ddim20_sampler.onnx"} <= models
    # nothing temporary is left beside or inside the report
    assert not list(out.parent.glob(".report.*")) and not list(out.rglob("*.tmp"))
    report = (out / "report.md").read_text()
    assert "PASSED" in report and all(f"]({f})" in report for f in FIGURES)
    assert 0 < s["wall_s"] <= wall


def test_summary_values_are_in_range(demo):
    _, _, s, _ = demo
    assert s["checks"] == {
        "parity_passed": True,
        "exact_law_passed": True,
        "mlp_law_ok": s["checks"]["mlp_law_ok"],
    }
    assert s["options"]["samples"] == 1000 and s["options"]["parity_samples"] == 200
    assert s["schedule"]["T"] == 1000 and 0 < s["schedule"]["alpha_bar_T"] < 1e-3
    assert s["samplers"]["ddpm"]["steps"] == 50 and s["samplers"]["ddim"]["steps"] == 20
    assert s["samplers"]["ddim"]["times"][-1] == 1000  # trailing spacing reaches T
    runs = {(r["denoiser"], r["sampler"]): r for r in s["runs"]}
    assert set(runs) == {("exact", "ddpm"), ("mlp", "ddpm"), ("exact", "ddim"), ("mlp", "ddim")}
    for (den, _), r in runs.items():
        p = r["parity"]
        assert p["n"] == 200 and p["passed"] is True
        assert set(p["paths"]) == {"fused (main run)", "steps", "fused", "whole graph (saved file)"}
        assert 0 <= p["p99_rel_err"] <= D.PARITY_TOL and 0 <= p["max_rel_err"] <= D.PARITY_MAX_TOL
        assert r["ort_us_per_step"] > 0 and r["reference_us_per_step"] > 0 and r["n"] == 1000
        law = r["law"]
        assert 0 <= law["ks"] <= 1 and 0 < law["threshold"] < 1 and np.isfinite(law["sw1"])
        assert law["alpha"] == D.LAW_ALPHA
        if den == "exact":
            assert law["passed"] is True and law["ks"] <= law["threshold"]
    assert 0 <= s["baseline"]["ks"] < 0.1 and 0 <= s["baseline"]["sw1"] < 0.2
    tr = s["training"]
    assert tr["steps"] == 300 and tr["loss_last"] < tr["loss_first"] and tr["wall_s"] > 0
    assert s["provider"]["used"] in ("cpu", "cuda") and s["provider"]["reason"]
    from refdiff.export import cuda_status

    if not cuda_status()[0]:
        assert s["provider"]["used"] == "cpu" and "CUDA does not run" in s["provider"]["reason"]
    for times in s["timing_us_per_step_per_sample"].values():
        assert all(v > 0 for v in times.values())
    # the loss is reported with its floor, and no trained denoiser beats the exact one
    assert 0 < tr["bayes_floor"] < tr["loss_last"] + 5 * tr["bayes_floor_se"]
    assert s["samplers"]["ddpm"]["options_text"] == "variance type fixed_small"


def test_figures_decode_as_images(demo):
    import matplotlib.image as mpimg

    _, out, _, _ = demo
    for f in FIGURES:
        img = mpimg.imread(out / f)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (f, img.shape)
        assert img[..., :3].std() > 0.02, f  # not a blank canvas


def test_saved_models_reproduce_the_reference(demo):
    """The weights file, the exported MLP and the saved whole-sampler graph agree with the
    NumPy reference (independently of the demo's own parity check)."""
    from refdiff.export import OnnxDenoiser, OrtSampler

    _, out, _, _ = demo
    mlp = load_mlp(out / "models" / "mlp.npz")
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(16, 2)), rng.integers(1, 1001, 16)
    onnx_mlp = OnnxDenoiser(out / "models" / "mlp_denoiser.onnx", provider="cpu")
    np.testing.assert_allclose(
        onnx_mlp(x, t), mlp(x, t), atol=2e-5 * max(1, np.abs(mlp(x, t)).max())
    )
    base = linear(1000)
    sch = respace(base, spaced_times(1000, 50, "trailing"))
    x_T, z = rng.normal(size=(8, 2)), rng.normal(size=(50, 8, 2))
    ref = ddpm_sample(exact.denoiser(get_dataset("ring").law, base), sch, x_T=x_T, step_noise=z)
    got = OrtSampler(out / "models" / "exact_ddpm50_sampler.onnx", provider="cpu").sample(x_T, z)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_refuses_to_overwrite_a_folder_that_is_not_a_report(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert D.main(["--out", str(tmp_path / "mine"), "-q"]) == 2
    assert "not a refdiff demo report" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bad_requests_fail_fast_and_write_nothing(tmp_path, capsys):
    from refdiff.export import cuda_status

    out = tmp_path / "r"
    assert D.main(["--out", str(out), "--ddpm-steps", "2000", "-q"]) == 2
    assert "ddpm_steps: 2000 exceeds T = 1000" in capsys.readouterr().err
    if not cuda_status()[0]:  # asking for CUDA where it does not run fails loudly
        assert D.main(["--out", str(out), "--provider", "cuda", "-q"]) == 2
        assert "'cuda' was asked for but CUDA does not run here" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        D.main(["--seed", "-1"])


def test_stale_temporary_folders_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".report.tmp-{dead.pid}-abc123"
    live = tmp_path / f".report.tmp-{os.getpid()}-def456"
    for p in (stale, live):
        (p / "models").mkdir(parents=True)
        (p / "models" / "x.onnx").write_bytes(b"partial")
    D.run._stale_tmp_dirs(tmp_path, "report")
    assert not stale.exists() and live.exists()


# -- interruption --------------------------------------------------------------------------------
def _start_long_demo(out: Path) -> subprocess.Popen:
    args = [
        "--out", str(out), "--train-steps", "50", "--train-size", "1000", "--samples", "20000",
        "--parity-samples", "100", "--ddpm-steps", "1000", "--sampler", "ddpm", "-q",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "refdiff.cli", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a suite started as a background job (`cmd &` in a script, some CI runners) inherits
        # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: restore the
        # default in the child, as an interactive terminal would have it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_models(
    parent: Path, name: str, proc: subprocess.Popen, timeout: float = 60.0
) -> None:
    """Until the run has written ONNX files into its temporary folder (it is then sampling)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if list(parent.glob(f".{name}.tmp-*/models/mlp_ddpm1000_sampler.onnx")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the demo ended before it could be interrupted: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the demo did not reach the sampling stage in time")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_leaves_no_half_written_files(tmp_path, sig, code):
    out = tmp_path / "report"
    previous = None
    if sig == signal.SIGINT:  # an earlier report must survive intact
        out.mkdir()
        (out / "summary.json").write_text('{"previous": true}\n')
        previous = sorted(p.name for p in out.iterdir())
    proc = _start_long_demo(out)
    _wait_for_models(tmp_path, "report", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "no report written" in err
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "report"]
    assert leftovers == [], leftovers
    assert not list(tmp_path.rglob("*.tmp"))
    if previous is None:
        assert not out.exists()
    else:
        assert sorted(p.name for p in out.iterdir()) == previous
        assert json.loads((out / "summary.json").read_text()) == {"previous": True}


@pytest.mark.parametrize("hidden", ["matplotlib", "onnx"])
def test_missing_extra_fails_before_any_work(tmp_path, capsys, monkeypatch, hidden):
    """Without an extra, ``refdiff demo`` stops before doing anything, with its own exit
    status (not 1, "a check failed") and the pip line that fixes it."""
    from refdiff import cli

    monkeypatch.setitem(sys.modules, hidden, None)  # find_spec then reports it missing
    out = tmp_path / "report"
    rc = cli.main(["demo", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_MISSING_EXTRA == 3
    assert hidden in err and 'pip install "refdiff[demo]"' in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bayes_floor_matches_the_gaussian_closed_form():
    """For x_0 ~ N(0, I), E[ε | x_t] = √(1−ᾱ_t) x_t and Var(ε | x_t) = ᾱ_t, so the ε-loss
    floor is the mean of ᾱ_t over t = 1..T (docs/math.md (9.1)); x0-loss: mean of 1 − ᾱ_t."""
    from refdiff.train import bayes_floor

    base = linear(1000)
    gauss = exact.GaussianMixture(np.ones(1), np.zeros((1, 2)), np.eye(2)[None])
    for ptype, want in (("epsilon", base.alpha_bar[1:]), ("x0", 1 - base.alpha_bar[1:])):
        f, se = bayes_floor(gauss, base, ptype, n=20_000, seed=1)
        assert abs(f - want.mean()) <= 5 * se and se < 0.01, (ptype, f, want.mean(), se)
