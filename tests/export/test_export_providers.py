"""Execution providers: the provider that truly runs is asserted, never assumed.

CI installs onnxruntime-gpu on a machine without a GPU: there ``auto`` must fall back to CPU
with a warning that says why, ``cuda`` must raise, and the IO-binding loop runs on CPU.
Tests marked ``cuda`` need a GPU that onnxruntime can really use and are skipped elsewhere
(the lead runs them on an H100); they check parity on CUDA with IO binding and CUDA graphs.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import refdiff.export as ex

from refdiff import exact
from refdiff.errors import InputError
from refdiff.sampling import ddim_sample, ddpm_sample, draw_noise
from refdiff.schedule import linear
from tests.export.test_export_helpers import (
    F16_TOL,
    F32_TOL,
    mixture2,
    rel_err,
    small_mlp,
    torch_style_model,
)

CUDA_OK, WHY = ex.cuda_status()


def cuda_test(f):
    """Marked ``cuda`` and skipped unless onnxruntime really runs CUDA here."""
    return pytest.mark.cuda(
        pytest.mark.skipif(not CUDA_OK, reason=f"CUDA does not run here: {WHY}")(f)
    )


no_cuda = pytest.mark.skipif(CUDA_OK, reason="CUDA runs here: the fallback cannot be observed")
BASE = linear(50)
MLP = small_mlp(seed=6)


def _model(**kw):
    return ex.mlp_denoiser_model(MLP, schedule=BASE, **kw)


def test_cpu_is_cpu_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = ex.make_session(_model(), "cpu")
        sampler = ex.OrtSampler(_model(), provider="cpu")
    assert ex.session_provider(s) == "cpu" and s.get_providers() == ["CPUExecutionProvider"]
    assert sampler.provider == "cpu"


def test_available_providers_is_not_the_truth():
    """The GPU build lists CUDA as available whether or not it can run (docs/deploy.md)."""
    listed = "CUDAExecutionProvider" in ort.get_available_providers()
    if listed and not CUDA_OK:
        assert WHY  # and cuda_status says why it does not run
    assert ex.resolve_provider("cpu") == "cpu"


@no_cuda
def test_auto_falls_back_to_cpu_and_says_why():
    with pytest.warns(ex.ProviderFallbackWarning, match="^running on CPU: .+") as rec:
        s = ex.make_session(_model(), "auto")
    assert ex.session_provider(s) == "cpu"
    assert WHY in str(rec[0].message)
    with pytest.warns(ex.ProviderFallbackWarning):
        sampler = ex.OrtSampler(_model(), mode="fused")
    assert sampler.provider == "cpu"
    x_T, z = draw_noise(np.random.default_rng(0), BASE.T, (4, 2))
    assert rel_err(sampler.sample(x_T, z), ddpm_sample(MLP, BASE, x_T=x_T, step_noise=z)) < F32_TOL


@no_cuda
def test_cuda_raises_when_cuda_is_not_what_runs():
    with pytest.raises(ex.ProviderError, match="'cuda' was asked for") as e:
        ex.make_session(_model(), "cuda")
    assert isinstance(e.value, InputError) and isinstance(e.value, RuntimeError)
    assert e.value.argument == "provider"
    with pytest.raises(ex.ProviderError):
        ex.OrtSampler(_model(), provider="cuda")
    with pytest.raises(ex.ProviderError):
        ex.OnnxDenoiser(_model(), provider="cuda")


# -- CUDA (skipped without a usable GPU) ---------------------------------------------------------
@cuda_test
@pytest.mark.parametrize("mode", ex.MODES)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_cuda_parity_with_io_binding(sampler, mode):
    opts = {"eta": 0.7} if sampler == "ddim" else {}
    x_T, z = draw_noise(np.random.default_rng(1), BASE.T, (64, 2))
    ref = (ddim_sample if sampler == "ddim" else ddpm_sample)(
        MLP, BASE, x_T=x_T, step_noise=z, **opts
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto must not warn where CUDA runs
        s = ex.OrtSampler(_model(), sampler=sampler, mode=mode, provider="auto", **opts)
    assert s.provider == "cuda"
    sess = s.graph_session if mode == "graph" else s.step_session
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    assert rel_err(s.sample(x_T, z), ref) < F32_TOL


@cuda_test
@pytest.mark.parametrize("mode", ["steps", "fused"])
def test_cuda_graph_replay_matches_reference(mode):
    x_T, z = draw_noise(np.random.default_rng(2), BASE.T, (32, 2))
    ref = ddpm_sample(MLP, BASE, x_T=x_T, step_noise=z)
    s = ex.OrtSampler(_model(), mode=mode, provider="cuda", cuda_graph=True, batch=32)
    for seed in range(3):  # capture, then replays with new inputs copied into the same buffers
        xs, zs = draw_noise(np.random.default_rng(10 + seed), BASE.T, (32, 2))
        assert rel_err(s.sample(xs, zs), ddpm_sample(MLP, BASE, x_T=xs, step_noise=zs)) < F32_TOL
    assert rel_err(s.sample(x_T, z), ref) < F32_TOL


@cuda_test
def test_cuda_user_model_float16_and_in_graph_noise():
    x_T, z = draw_noise(np.random.default_rng(3), BASE.T, (16, 2))
    ref = ddpm_sample(MLP, BASE, x_T=x_T, step_noise=z)
    kw = dict(prediction_type="epsilon", timestep_convention="index")
    for mode in ex.MODES:
        y = ex.OrtSampler(torch_style_model(MLP), BASE, mode=mode, provider="cuda", **kw).sample(
            x_T, z
        )
        assert rel_err(y, ref) < F32_TOL
        y16 = ex.OrtSampler(_model(dtype="float16"), mode=mode, provider="cuda").sample(x_T, z)
        assert rel_err(y16, ref) < F16_TOL
    g = exact.Gaussian(np.zeros(2), np.eye(2)).to_mixture()
    s = ex.OrtSampler(
        ex.mixture_denoiser_model(g, BASE), mode="graph", noise="graph", provider="cuda"
    )
    y = s.sample(shape=4096)
    law = exact.ddpm_law(exact.Gaussian(np.zeros(2), np.eye(2)), BASE)
    assert np.all(np.abs(y.mean(0) - law.mean) < 0.1) and np.all(
        np.abs(np.cov(y.T) - law.cov) < 0.1
    )
    assert (
        ex.OrtSampler(ex.mixture_denoiser_model(mixture2(), BASE), provider="cuda").provider
        == "cuda"
    )
