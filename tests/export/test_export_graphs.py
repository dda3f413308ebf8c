"""Graph builders: pinned IR/opset, checked, self-describing; denoisers and step tables exact.

The step tables are compared with the reference step functions in float64 (to 1e-12): the
algebra the ONNX graphs run is the reference's, not merely close to it.  The ONNX denoisers
are compared with refdiff.exact.denoiser / refdiff.mlp.MLP and with an independent NumPy
formula (test_export_helpers.np_mixture_denoiser).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import refdiff.export as ex

from refdiff import exact
from refdiff.errors import InputError, OptionError, UndefinedError
from refdiff.exact import GaussianMixture
from refdiff.reverse import ddim_step, ddpm_step
from refdiff.schedule import cosine, linear, make_schedule, respace
from tests.export.test_export_helpers import (
    F16_TOL,
    F32_TOL,
    mixture2,
    np_mixture_denoiser,
    rel_err,
    small_mlp,
)


def _run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _all_models():
    base = linear(20)
    mix = mixture2()
    mlp = small_mlp()
    den_mix = ex.mixture_denoiser_model(mix, base, prediction_type="v")
    den_mlp16 = ex.mlp_denoiser_model(mlp, schedule=base, dtype="float16")
    d = ex.open_denoiser(den_mix)
    tb = ex.step_tables(respace(base, [1, 5, 10, 20]), "ddim", prediction_type="v", eta=0.5)
    return {
        "mixture": den_mix,
        "mlp16": den_mlp16,
        "step": ex.step_model(d, tb),
        "step16": ex.step_model(ex.open_denoiser(den_mlp16), ex.step_tables(base)),
        "fused": ex.fused_step_model(d, tb, noise="graph", seed=3),
        "sampler": ex.sampler_model(d, tb, trajectory=True),
        "sampler_graph_noise": ex.sampler_model(d, tb, noise="graph", seed=5),
    }


MODELS = _all_models()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_are_pinned_checked_and_self_describing(name):
    m = MODELS[name]
    assert m.ir_version == ex.IR_VERSION == 10
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 21)]
    onnx.checker.check_model(m, full_check=True)
    onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    meta = ex.read_metadata(m)
    assert meta["refdiff.format"] == "1" and meta["refdiff.version"]
    assert meta["refdiff.kind"] in ("denoiser", "step", "fused_step", "sampler")
    assert meta["refdiff.prediction_type"] in ("epsilon", "v")
    assert m.metadata_props[-1].key == "refdiff.end"  # truncation sentinel is written last
    ins, outs = json.loads(meta["refdiff.inputs"]), json.loads(meta["refdiff.outputs"])
    assert set(ins) == {i.name for i in m.graph.input}
    assert set(outs) == {o.name for o in m.graph.output}
    sched = ex.schedule_from_json(meta["refdiff.schedule"])
    assert sched.T >= 4 and sched.alpha_bar[0] == 1.0
    if meta["refdiff.kind"] != "denoiser":
        assert json.loads(meta["refdiff.sampler"])["name"] in ("ddpm", "ddim")
        assert meta["refdiff.noise"] in ("input", "graph")
    # the batch axis is symbolic on every batched input
    for i in m.graph.input:
        dims = i.type.tensor_type.shape.dim
        if i.name in ("x", "x_T", "model_output"):
            assert dims[0].dim_param and not dims[0].dim_value


def test_schedule_metadata_round_trips_exactly():
    for s in (
        linear(37),
        cosine(50),
        respace(make_schedule("linear", 100, zero_terminal_snr=True), [3, 50, 100]),
    ):
        r = ex.schedule_from_json(ex.schedule_to_json(s))
        assert np.array_equal(r.alpha_bar, s.alpha_bar) and np.array_equal(r.beta, s.beta)
        assert np.array_equal(r.timesteps, s.timesteps) and r.base_alpha_bar_1 == s.base_alpha_bar_1


def test_batch_axis_is_dynamic():
    m = ex.mlp_denoiser_model(small_mlp(), schedule=linear(20))
    for B in (1, 7, 64):
        (out,) = _run(m, {"x": np.zeros((B, 2), np.float32), "t": np.full(B, 3, np.int64)})
        assert out.shape == (B, 2)
    fixed = ex.mlp_denoiser_model(small_mlp(), schedule=linear(20), batch=4)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


@pytest.mark.parametrize("pt", ["epsilon", "x0", "v", "score"])
@pytest.mark.parametrize("sched", [linear(1000), cosine(200)], ids=["linear1000", "cosine200"])
def test_mixture_denoiser_matches_exact_and_independent_formula(pt, sched):
    rng = np.random.default_rng(7)
    mix = mixture2()
    m = ex.mixture_denoiser_model(mix, sched, prediction_type=pt)
    x = (rng.standard_normal((256, 2)) * 2).astype(np.float32)
    t = rng.integers(1, sched.T + 1, 256)
    t[:4] = [1, 2, sched.T - 1, sched.T]
    (out,) = _run(m, {"x": x, "t": t})
    x64 = x.astype(np.float64)
    ref_exact = exact.denoiser(mix, sched, pt)(x64, t)
    ref_indep = np_mixture_denoiser(mix, sched.alpha_bar, x64, t, pt)
    assert rel_err(ref_exact, ref_indep) < 1e-9  # the two float64 references agree
    # per-row relative error (the score is large at small t)
    scale = np.maximum(1.0, np.abs(ref_indep).max(axis=1, keepdims=True))
    assert np.max(np.abs(out - ref_indep) / scale) < F32_TOL


def test_mixture_denoiser_degenerate_and_higher_dim():
    """A rank-deficient covariance (a line) and K = 3 in D = 3: still exact."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((3, 3, 3))
    covs = A @ np.swapaxes(A, 1, 2) * 0.1
    covs[0] = np.outer([1.0, 2.0, 0.5], [1.0, 2.0, 0.5]) * 0.05  # rank 1
    mix = GaussianMixture(np.array([0.2, 0.3, 0.5]), rng.standard_normal((3, 3)), covs)
    sched = linear(100)
    x = rng.standard_normal((128, 3)).astype(np.float32)
    t = rng.integers(1, 101, 128)
    for pt in ("epsilon", "x0"):
        (out,) = _run(ex.mixture_denoiser_model(mix, sched, prediction_type=pt), {"x": x, "t": t})
        assert (
            rel_err(out, np_mixture_denoiser(mix, sched.alpha_bar, x.astype(np.float64), t, pt))
            < F32_TOL
        )


def test_mixture_denoiser_float16_io():
    sched = linear(100)
    mix = mixture2()
    m = ex.mixture_denoiser_model(mix, sched, prediction_type="x0", dtype="float16")
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float16)
    t = rng.integers(1, 101, 64)
    (out,) = _run(m, {"x": x, "t": t})
    assert out.dtype == np.float16
    assert rel_err(out, exact.denoiser(mix, sched, "x0")(x.astype(np.float64), t)) < F16_TOL


@pytest.mark.parametrize("max_time", ["auto", None], ids=["table", "sincos"])
def test_mlp_denoiser_matches_numpy(max_time):
    mlp = small_mlp(seed=2)
    m = ex.mlp_denoiser_model(mlp, schedule=linear(100), max_time=max_time)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 2)).astype(np.float32)
    t = rng.integers(0, 101, 50)
    (out,) = _run(m, {"x": x, "t": t})
    ref = mlp(x.astype(np.float64), t)
    assert rel_err(out, ref) < F32_TOL
    (out16,) = _run(
        ex.mlp_denoiser_model(mlp, schedule=linear(100), dtype="float16", max_time=max_time),
        {"x": x.astype(np.float16), "t": t},
    )
    assert rel_err(out16, ref) < F16_TOL


def test_mlp_max_time_out_of_range_is_an_error_not_garbage():
    m = ex.mlp_denoiser_model(small_mlp(), max_time=10)
    with pytest.raises(Exception, match="(?i)out of bounds|indices"):
        _run(m, {"x": np.zeros((1, 2), np.float32), "t": np.array([11])})


# -- step tables against the reference step functions, float64 -------------------------------
def _ref_step(sampler, sched, x, t, out, z, pt, opts):
    fn = ddpm_step if sampler == "ddpm" else ddim_step
    return fn(sched, x, t, out, noise=z, prediction_type=pt, **opts)


DDPM_OPTS = [
    dict(variance_type=v, **c)
    for v, c in itertools.product(
        ["fixed_small", "fixed_large", "fixed_large_iddpm"], [{}, {"clip": 1.0}]
    )
]
DDIM_OPTS = [
    dict(eta=e, rederive_eps=r, final_alpha_bar=f, final_step_noise=n, **c)
    for e, r, f, n, c in itertools.product(
        [0.0, 0.5, 1.0], [True, False], ["one", "first", 0.9], [False, True], [{}, {"clip": 0.8}]
    )
    if not (e == 0.0 and n)
]


@pytest.mark.parametrize("pt", ["epsilon", "x0", "v", "score"])
def test_step_tables_equal_reference_steps(pt):
    base = linear(50)
    sched = respace(base, [2, 9, 17, 30, 41, 50])
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 3)) * 1.5
    out = rng.standard_normal((5, 3)) * 1.5
    z = rng.standard_normal((5, 3))
    checked = 0
    for sampler, grid in (("ddpm", DDPM_OPTS), ("ddim", DDIM_OPTS)):
        for opts in grid:
            tb = ex.step_tables(sched, sampler, prediction_type=pt, **opts)
            assert tb.N == sched.T and np.array_equal(
                tb.base_t, sched.timesteps[sched.T :: -1][:-1]
            )
            for k in range(tb.N):
                t = sched.T - k
                ref = _ref_step(sampler, sched, x, t, out, z, pt, opts)
                got = tb.x_next(k, x, out, z)
                np.testing.assert_allclose(
                    got, ref, rtol=1e-11, atol=1e-11, err_msg=f"{sampler} {opts} k={k}"
                )
                checked += 1
    assert checked == 6 * (len(DDPM_OPTS) + len(DDIM_OPTS))


def test_step_tables_refuse_what_onnx_does_not_support():
    s = linear(10)
    with pytest.raises(OptionError):
        ex.step_tables(s, "ddpm", variance_type="learned_range")
    with pytest.raises(InputError, match="threshold"):
        ex.step_tables(s, "ddpm", threshold_ratio=0.99)
    with pytest.raises(OptionError):
        ex.step_tables(s, "ddim", variance_type="fixed_small")  # a DDPM option
    with pytest.raises(OptionError):
        ex.step_tables(s, "heun")  # a σ-view sampler the ONNX samplers do not compile
    with pytest.raises(InputError, match="sigmas"):
        ex.step_tables(s, "euler")  # euler needs its σ grid
    with pytest.raises(InputError, match="eta"):
        ex.step_tables(s, "ddim", eta=1.5)
    with pytest.raises(UndefinedError):
        ex.step_tables(
            make_schedule("linear", 10, zero_terminal_snr=True), "ddpm", prediction_type="epsilon"
        )
    # v-prediction is defined at zero terminal SNR
    assert np.isfinite(
        ex.step_tables(make_schedule("linear", 10, zero_terminal_snr=True), prediction_type="v").A
    ).all()


@pytest.mark.parametrize("convention,time_shape", [("refdiff", "batch"), ("index", "scalar")])
def test_step_graph_runs_the_tables(convention, time_shape):
    """One step graph call equals StepTables.x_next; it also emits the next model time."""
    from tests.export.test_export_helpers import torch_style_model

    mlp = small_mlp()
    if convention == "refdiff":
        den = ex.open_denoiser(ex.mlp_denoiser_model(mlp, schedule=linear(30)))
    else:
        den = ex.open_denoiser(
            torch_style_model(mlp, time_shape=time_shape),
            prediction_type="epsilon",
            timestep_convention="index",
        )
    sched = respace(linear(30), [4, 12, 20, 30])
    tb = ex.step_tables(sched, "ddpm", clip=1.0)
    m = ex.step_model(den, tb)
    rng = np.random.default_rng(0)
    B = 6
    x = rng.standard_normal((B, 2)).astype(np.float32)
    o = rng.standard_normal((B, 2)).astype(np.float32)
    zz = rng.standard_normal((tb.N, B, 2)).astype(np.float32)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for k in range(tb.N):
        xn, tm, kn = s.run(
            ["x_next", "t_model", "k_next"],
            {"x": x, "model_output": o, "z": zz[k], "k": np.array(k)},
        )
        np.testing.assert_allclose(xn, tb.x_next(k, x, o, zz[k]), rtol=2e-6, atol=2e-6)
        assert kn == k + 1
        nxt = sched.timesteps[sched.T - k - 1] if k + 1 < tb.N else sched.timesteps[1]
        want = nxt - (1 if convention == "index" else 0)
        assert np.all(tm == want) and tm.shape == ((B,) if time_shape == "batch" else ())
