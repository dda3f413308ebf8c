"""σ-view samplers in the ONNX samplers (docs/math.md §19, docs/samplers.md): Euler, Euler
ancestral, DPM-Solver++(2M) and flow-matching Euler in every mode against the float64
reference samplers of refdiff.solvers under the same noise (float32 2e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import flow, sigma, solvers
from refdiff.errors import InputError
from refdiff.mlp import init_mlp
from refdiff.schedule import linear

ex = pytest.importorskip("refdiff.export")
from refdiff.export.noise import host_noise  # noqa: E402

F32_TOL = 2e-5
BASE = linear(100)
MLP = init_mlp(np.random.default_rng(0), data_dim=2, hidden=32, depth=2, embed_dim=16)


def rel_err(y, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / max(1.0, np.max(np.abs(ref))))


GRIDS = {
    "karras": sigma.karras(7, float(BASE.sigma[1]), float(BASE.sigma[-1])),
    "linspace": sigma.from_schedule(BASE, 6),
}
CASES = [
    ("euler", {}),
    ("euler_ancestral", {"eta": 1.0}),
    ("dpmpp_2m", {}),
    ("dpmpp_2m", {"lower_order_final": False}),
]


@pytest.mark.parametrize("mode", ex.MODES)
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_sigma_samplers_match_the_reference(mode, grid, case):
    sampler, opts = case
    sig = GRIDS[grid]
    pt = "v" if sampler == "dpmpp_2m" else "epsilon"
    model = ex.mlp_denoiser_model(MLP, prediction_type=pt, schedule=BASE)
    s = ex.OrtSampler(model, BASE, sampler=sampler, mode=mode, provider="cpu", sigmas=sig, **opts)
    B, seed = 6, 3
    y = s.sample(shape=(B, 2), seed=seed)
    z0, z = host_noise(seed, len(sig) - 1, (B, 2))
    D = sigma.denoiser_from_model(MLP, BASE, pt, timestep="round")
    noisy = solvers.needs_noise(sampler, **opts)
    ref = solvers.sample(
        D,
        sig,
        x_T=sig[0] * z0.astype(np.float64),
        step_noise=z if noisy else None,
        sampler=sampler,
        **opts,
    )
    assert rel_err(y, ref) < F32_TOL
    # the arrays path: the reference's own x_T and noise give the same
    y2 = s.sample(sig[0] * z0.astype(np.float64), z if noisy else None)
    assert rel_err(y2, ref) < F32_TOL


def velocity_model():
    """u = tanh(x W + (t/1000) w): x (B, 2) float32, t (B,) float32 (σ · 1000)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    W = rng.standard_normal((2, 2)).astype(np.float32)
    w = np.array([[0.5, -1.0]], np.float32)
    vi = helper.make_tensor_value_info
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"]),
            helper.make_node("Div", ["t", "k"], ["ts"]),
            helper.make_node("Unsqueeze", ["ts", "ax"], ["t2"]),
            helper.make_node("Mul", ["t2", "w"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["h"]),
            helper.make_node("Tanh", ["h"], ["out"]),
        ],
        "velocity",
        [vi("x", TensorProto.FLOAT, ["B", 2]), vi("t", TensorProto.FLOAT, ["B"])],
        [vi("out", TensorProto.FLOAT, ["B", 2])],
        [
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.float32(1000.0), "k"),
            numpy_helper.from_array(np.array([1], np.int64), "ax"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("mode", ex.MODES)
@pytest.mark.parametrize("stochastic", [False, True])
def test_flow_euler_matches_the_reference(mode, stochastic):
    import onnxruntime as ort

    m = velocity_model()
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    def u(x, s):  # the reference velocity: the same network, time σ · 1000
        feeds = {"x": x.astype(np.float32), "t": (np.asarray(s) * 1000.0).astype(np.float32)}
        return sess.run(None, feeds)[0].astype(np.float64)

    sig = flow.flow_sigmas(8, shift_factor=3.0)
    s = ex.OrtSampler(
        m,
        sampler="flow_euler",
        mode=mode,
        provider="cpu",
        sigmas=sig,
        stochastic=stochastic,
        prediction_type="epsilon",
        timestep_convention="refdiff",
    )
    x_T, z = host_noise(1, 8, (5, 2))
    ref = solvers.flow_euler(
        u, sig, x_T=x_T, step_noise=z if stochastic else None, stochastic=stochastic
    )
    assert rel_err(s.sample(shape=(5, 2), seed=1), ref) < F32_TOL


def test_sigma_sampler_refusals():
    model = ex.mlp_denoiser_model(MLP, schedule=BASE)
    with pytest.raises(InputError, match="sigmas"):
        ex.OrtSampler(model, BASE, sampler="euler", provider="cpu")
    with pytest.raises(InputError, match="s_churn"):
        ex.OrtSampler(
            model, BASE, sampler="euler", provider="cpu", sigmas=GRIDS["karras"], s_churn=1.0
        )
    with pytest.raises(InputError, match="timestep"):  # an int-time model, fractional times
        ex.OrtSampler(
            model,
            BASE,
            sampler="euler",
            provider="cpu",
            sigmas=GRIDS["karras"],
            timestep="continuous",
        )


def test_a_sigma_sampler_file_runs_as_it_is(tmp_path):
    """A saved dpmpp_2m sampler graph: its steps and x_T = σ_0 z come from its metadata."""
    model = ex.mlp_denoiser_model(MLP, prediction_type="v", schedule=BASE)
    sig = GRIDS["karras"]
    s = ex.OrtSampler(model, BASE, sampler="dpmpp_2m", mode="graph", provider="cpu", sigmas=sig)
    path = ex.save_model(s.graph_model, tmp_path / "dpm.onnx")
    f = ex.OrtSampler(path, provider="cpu")
    assert f.num_steps == len(sig) - 1
    assert np.array_equal(f.sample(shape=(4, 2), seed=2), s.sample(shape=(4, 2), seed=2))


@pytest.mark.parametrize("mode", ex.MODES)
@pytest.mark.parametrize("gm", ["batched", "two_pass"])
def test_guided_dpmpp_2m_matches_the_reference(mode, gm):
    """Guidance composes with the σ view: the guided model output is converted to x̂_0."""
    from refdiff.guidance import guided_denoiser
    from tests.export.test_export_guidance import _conds, cond_model

    sig = GRIDS["karras"]
    kw = dict(prediction_type="epsilon", timestep_convention="refdiff", provider="cpu")
    c, u = _conds(4)
    s = ex.OrtSampler(
        cond_model(),
        BASE,
        sampler="dpmpp_2m",
        mode=mode,
        sigmas=sig,
        guidance_scale=3.0,
        guidance_rescale=0.5,
        guidance_mode=gm,
        **kw,
    )
    y = s.sample(shape=(4, 2), seed=6, cond=c, uncond=u)
    den = ex.OnnxDenoiser(cond_model(), **kw)
    f = guided_denoiser(den.with_cond(c), den.with_cond(u), 3.0, 0.5)
    D = sigma.denoiser_from_model(f, BASE, "epsilon", timestep="round")
    z0, _ = host_noise(6, 0, (4, 2))
    ref = solvers.dpmpp_2m(D, sig, x_T=sig[0] * z0.astype(np.float64))
    assert rel_err(y, ref) < F32_TOL
