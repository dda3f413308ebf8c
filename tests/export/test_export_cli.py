"""``refdiff export`` and ``refdiff sample``: round trips, atomic output, exit codes."""

from __future__ import annotations

import numpy as np
import pytest
import refdiff.export as ex
from refdiff.export.cli import build_schedule, builtin_mixture
from refdiff.export.noise import host_noise

from refdiff import exact
from refdiff.cli import main
from refdiff.mlp import save_mlp
from refdiff.sampling import ddim_sample, ddpm_sample
from tests.export.test_export_helpers import F32_TOL, rel_err, small_mlp


@pytest.fixture(autouse=True)
def _quiet_fallback(recwarn):
    """``provider=auto`` may warn on machines without CUDA; these tests do not care."""


def test_export_mlp_then_sample_equals_the_reference(tmp_path, capsys):
    mlp = small_mlp(seed=9)
    save_mlp(tmp_path / "w.npz", mlp)
    onnx_path, out = tmp_path / "den.onnx", tmp_path / "x.npy"
    assert (
        main(
            [
                "export",
                "--mlp",
                str(tmp_path / "w.npz"),
                "--T",
                "40",
                "--prediction-type",
                "v",
                "-o",
                str(onnx_path),
            ]
        )
        == 0
    )
    meta = ex.read_metadata(ex.load_model(onnx_path)[0])
    assert (
        meta["refdiff.prediction_type"] == "v"
        and ex.schedule_from_json(meta["refdiff.schedule"]).T == 40
    )
    rc = main(
        [
            "sample",
            "--model",
            str(onnx_path),
            "--batch",
            "8",
            "--steps",
            "10",
            "--spacing",
            "trailing",
            "--sampler",
            "ddim",
            "--eta",
            "0.5",
            "--seed",
            "3",
            "--provider",
            "cpu",
            "--mode",
            "fused",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    assert "on cpu" in capsys.readouterr().out
    x = np.load(out, allow_pickle=False)
    _, sched = build_schedule("linear", 40, steps=10, spacing="trailing")
    x_T, z = host_noise(3, sched.T, (8, 2))  # the samplers' seeded host-noise layout
    ref = ddim_sample(mlp, sched, x_T=x_T, step_noise=z, prediction_type="v", eta=0.5)
    assert x.shape == (8, 2) and rel_err(x, ref) < F32_TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "den.onnx",
        "w.npz",
        "x.npy",
    ]  # no temp files left


def test_export_sampler_with_in_graph_noise_then_sample(tmp_path):
    path = tmp_path / "ring.onnx"
    assert (
        main(
            [
                "export",
                "--mixture",
                "gaussian",
                "--kind",
                "sampler",
                "--T",
                "50",
                "--noise",
                "graph",
                "--seed",
                "4",
                "--quiet",
                "-o",
                str(path),
            ]
        )
        == 0
    )
    assert ex.read_metadata(ex.load_model(path)[0])["refdiff.kind"] == "sampler"
    out = tmp_path / "s.npy"
    assert (
        main(
            [
                "sample",
                "--model",
                str(path),
                "--batch",
                "2000",
                "--quiet",
                "--provider",
                "cpu",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    x = np.load(out)
    g = builtin_mixture("gaussian")
    _, sched = build_schedule("linear", 50)
    law = exact.ddpm_law(exact.Gaussian(g.means[0], g.covs[0]), sched)
    # a coarse sanity bound (the calibrated law test is in test_export_stats.py)
    assert x.shape == (2000, 2) and np.all(np.abs(x.mean(0) - law.mean) < 0.1)


def test_export_step_fused_and_wrapping_an_existing_denoiser(tmp_path):
    save_mlp(tmp_path / "w.npz", small_mlp())
    den = tmp_path / "den.onnx"
    assert (
        main(
            [
                "export",
                "--mlp",
                str(tmp_path / "w.npz"),
                "--T",
                "20",
                "--dtype",
                "float16",
                "--quiet",
                "-o",
                str(den),
            ]
        )
        == 0
    )
    for kind in ("step", "fused", "sampler"):
        out = tmp_path / f"{kind}.onnx"
        assert (
            main(
                [
                    "export",
                    "--denoiser",
                    str(den),
                    "--kind",
                    kind,
                    "--sampler",
                    "ddim",
                    "--steps",
                    "5",
                    "--quiet",
                    "-o",
                    str(out),
                ]
            )
            == 0
        )
        meta = ex.read_metadata(ex.load_model(out)[0])
        assert (
            meta["refdiff.kind"] == {"fused": "fused_step"}.get(kind, kind)
            and meta["refdiff.dtype"] == "float16"
        )


def test_mixture_file_and_seeded_ddpm(tmp_path):
    mix = builtin_mixture("two")
    np.savez(tmp_path / "mix.npz", weights=mix.weights, means=mix.means, covs=mix.covs)
    den = tmp_path / "mix.onnx"
    assert (
        main(
            [
                "export",
                "--mixture",
                str(tmp_path / "mix.npz"),
                "--T",
                "30",
                "--quiet",
                "-o",
                str(den),
            ]
        )
        == 0
    )
    out = tmp_path / "x.npy"
    assert (
        main(
            [
                "sample",
                "--model",
                str(den),
                "--batch",
                "5",
                "--seed",
                "11",
                "--quiet",
                "--provider",
                "cpu",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    _, sched = build_schedule("linear", 30)
    x_T, z = host_noise(11, sched.T, (5, 2))
    ref = ddpm_sample(exact.denoiser(mix, sched), sched, x_T=x_T, step_noise=z)
    assert rel_err(np.load(out), ref) < F32_TOL


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["export", "--mixture", "nope", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "mixture: unknown option 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["sample", "--model", str(bad), "--quiet"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                "--mixture",
                "ring8",
                "--sampler",
                "ddpm",
                "--eta",
                "0.5",
                "--kind",
                "sampler",
                "-o",
                str(tmp_path / "x.onnx"),
            ]
        )
        == 2
    )
    assert "--eta: applies to --sampler ddim" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "x.onnx").exists()
