"""ORT samplers against the NumPy reference sampler, with the same injected noise.

Each ONNX sampler (per-step loop with IO binding, fused step, whole Loop graph) is run on
the same x_T and step_noise as refdiff.sampling.ddpm_sample / ddim_sample with the *same
denoiser* in float64 (refdiff.mlp.MLP, refdiff.exact.denoiser).  Tolerances: see
test_export_helpers (float32 2e-5, float16 5e-3, relative to max(1, max|x_ref|)).
"""

from __future__ import annotations

import numpy as np
import pytest
import refdiff.export as ex

from refdiff import exact
from refdiff.errors import InputError
from refdiff.respacing import space_timesteps
from refdiff.sampling import ddim_sample, ddpm_sample, draw_noise
from refdiff.schedule import linear, make_schedule, respace
from tests.export.test_export_helpers import (
    F16_TOL,
    F32_TOL,
    mixture2,
    rel_err,
    small_mlp,
    torch_style_model,
)

BASE = linear(50)
MLP = small_mlp(seed=4)
REF = {"ddpm": ddpm_sample, "ddim": ddim_sample}
SAMPLER_OPTS = {"ddpm": {}, "ddim": {"eta": 0.5}}


def _noise(N, shape, seed=1):
    return draw_noise(np.random.default_rng(seed), N, shape)


@pytest.mark.parametrize("mode", ex.MODES)
@pytest.mark.parametrize("pt", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_mlp_sampler_matches_reference(sampler, pt, mode):
    model = ex.mlp_denoiser_model(MLP, prediction_type=pt, schedule=BASE)
    opts = SAMPLER_OPTS[sampler]
    x_T, z = _noise(BASE.T, (16, 2))
    ref = REF[sampler](MLP, BASE, x_T=x_T, step_noise=z, prediction_type=pt, **opts)
    s = ex.OrtSampler(
        model, sampler=sampler, mode=mode, provider="cpu", **opts
    )  # schedule from metadata
    assert s.provider == "cpu" and s.schedule.T == BASE.T
    y = s.sample(x_T, z)
    assert y.dtype == np.float32 and y.shape == (16, 2)
    assert rel_err(y, ref) < F32_TOL


@pytest.mark.parametrize("mode", ex.MODES)
def test_respaced_clipped_exact_mixture_matches_reference(mode):
    """The exported exact denoiser, a respaced schedule (ddim10), clipping, DDIM η = 1."""
    mix = mixture2()
    base = linear(100)
    sched = respace(base, space_timesteps(100, "ddim10"))
    model = ex.mixture_denoiser_model(mix, base, prediction_type="v")
    opts = dict(eta=1.0, clip=2.0, final_alpha_bar="first")
    x_T, z = _noise(sched.T, (32, 2), seed=2)
    ref = ddim_sample(
        exact.denoiser(mix, base, "v"), sched, x_T=x_T, step_noise=z, prediction_type="v", **opts
    )
    y = ex.OrtSampler(model, sched, sampler="ddim", mode=mode, provider="cpu", **opts).sample(
        x_T, z
    )
    assert rel_err(y, ref) < F32_TOL


@pytest.mark.parametrize("mode", ex.MODES)
@pytest.mark.parametrize("kind", ["mlp", "mixture"])
def test_float16_denoisers_match_reference(kind, mode):
    if kind == "mlp":
        model = ex.mlp_denoiser_model(MLP, schedule=BASE, dtype="float16")
        den = MLP
    else:
        model = ex.mixture_denoiser_model(mixture2(), BASE, dtype="float16")
        den = exact.denoiser(mixture2(), BASE)
    x_T, z = _noise(BASE.T, (16, 2), seed=3)
    ref = ddpm_sample(den, BASE, x_T=x_T, step_noise=z)
    s = ex.OrtSampler(model, mode=mode, provider="cpu")
    assert s.denoiser.signature.state_dtype == np.float16
    assert rel_err(s.sample(x_T, z), ref) < F16_TOL


def test_ddim_eta0_needs_no_step_noise_and_v_works_at_zero_terminal_snr():
    base = make_schedule("linear", 50, zero_terminal_snr=True)
    model = ex.mlp_denoiser_model(MLP, prediction_type="v", schedule=base)
    x_T, _ = _noise(base.T, (8, 2))
    ref = ddim_sample(MLP, base, x_T=x_T, prediction_type="v")
    for mode in ex.MODES:
        s = ex.OrtSampler(model, sampler="ddim", mode=mode, provider="cpu")
        assert not s.noisy
        assert rel_err(s.sample(x_T), ref) < F32_TOL
    g = ex.OrtSampler(model, sampler="ddim", mode="graph", provider="cpu").graph_model
    assert [i.name for i in g.graph.input] == ["x_T"]


@pytest.mark.parametrize("mode", ex.MODES)
def test_seeded_host_noise_is_the_layout_noise_and_repeats_bit_for_bit(mode):
    """Seeded host noise follows the per-step, per-row-block layout of refdiff.export.noise
    (it changed from the one-stream layout of refdiff.sampling's rng=): the reference fed
    host_noise(seed, …) gives the same samples, in every mode."""
    from refdiff.export.noise import host_noise

    model = ex.mlp_denoiser_model(MLP, schedule=BASE)
    s = ex.OrtSampler(model, mode=mode, provider="cpu")
    a = s.sample(shape=(8, 2), seed=123)
    b = s.sample(shape=8, seed=123)
    assert np.array_equal(a, b)
    x_T, z = host_noise(123, BASE.T, (8, 2))
    ref = ddpm_sample(MLP, BASE, x_T=x_T, step_noise=z)
    assert rel_err(a, ref) < F32_TOL
    assert not np.array_equal(a, s.sample(shape=8, seed=124))
    # the layout sent as arrays gives the same bits as the seed
    assert np.array_equal(a, s.sample(x_T, z))


@pytest.mark.parametrize("time_shape", ["batch", "scalar"])
def test_pytorch_style_denoiser_works_unchanged(tmp_path, time_shape):
    """`sample`/`timestep` (0-based index, int64, per-batch or scalar), opset 17, no metadata."""
    path = tmp_path / "unet.onnx"
    path.write_bytes(torch_style_model(MLP, time_shape=time_shape).SerializeToString())
    sched = respace(BASE, space_timesteps(50, "10"))
    x_T, z = _noise(sched.T, (16, 2), seed=5)
    kw = dict(prediction_type="epsilon", timestep_convention="index")
    sig = ex.open_denoiser(path, **kw).signature
    assert (sig.state_input, sig.time_input, sig.output) == ("sample", "timestep", "out_sample")
    assert sig.time_shape == time_shape and sig.time_dtype == np.int64
    # the reference loop around the ONNX network, and the float64 network itself
    onnx_den = ex.OnnxDenoiser(path, provider="cpu", **kw)
    assert rel_err(onnx_den(x_T, np.full(16, 7)), MLP(x_T, np.full(16, 7))) < F32_TOL
    for sampler in ("ddpm", "ddim"):
        opts = SAMPLER_OPTS[sampler]
        ref = REF[sampler](MLP, sched, x_T=x_T, step_noise=z, **opts)
        for mode in ex.MODES:  # fused and graph embed it (converted from opset 17 to 21)
            y = ex.OrtSampler(
                path, sched, sampler=sampler, mode=mode, provider="cpu", **kw, **opts
            ).sample(x_T, z)
            assert rel_err(y, ref) < F32_TOL, (sampler, mode)
    with pytest.raises(InputError, match="timestep_convention"):
        ex.OrtSampler(path, sched, prediction_type="epsilon", provider="cpu")
    with pytest.raises(InputError, match="prediction_type"):
        ex.OrtSampler(path, sched, timestep_convention="index", provider="cpu")


def test_trajectory_output_and_callback_agree_with_reference():
    model = ex.mlp_denoiser_model(MLP, schedule=BASE)
    x_T, z = _noise(BASE.T, (4, 2))
    _, traj = ddpm_sample(MLP, BASE, x_T=x_T, step_noise=z, return_trajectory=True)
    d = ex.open_denoiser(model)
    g = ex.sampler_model(d, ex.step_tables(BASE), trajectory=True)
    sess = ex.make_session(g, "cpu")
    x0, tr = sess.run(None, {"x_T": x_T.astype(np.float32), "step_noise": z.astype(np.float32)})
    assert tr.shape == (BASE.T, 4, 2) and np.array_equal(tr[-1], x0)
    assert rel_err(tr, traj[1:]) < F32_TOL
    seen = []
    ex.OrtSampler(model, provider="cpu").sample(
        x_T, z, callback=lambda k, t, x: seen.append((k, t, x))
    )
    assert [(k, t) for k, t, _ in seen] == [(k, BASE.T - k - 1) for k in range(BASE.T)]
    assert rel_err(np.stack([x for _, _, x in seen]), traj[1:]) < F32_TOL


def test_exported_sampler_file_runs_as_is(tmp_path):
    model = ex.mlp_denoiser_model(MLP, prediction_type="x0", schedule=BASE)
    tb = ex.step_tables(BASE, "ddim", prediction_type="x0", eta=0.3)
    path = ex.save_model(ex.sampler_model(ex.open_denoiser(model), tb), tmp_path / "s.onnx")
    x_T, z = _noise(BASE.T, (8, 2))
    s = ex.OrtSampler(path, provider="cpu")
    assert s.mode == "graph" and s.num_steps == BASE.T
    ref = ddim_sample(MLP, BASE, x_T=x_T, step_noise=z, prediction_type="x0", eta=0.3)
    assert rel_err(s.sample(x_T, z), ref) < F32_TOL
    with pytest.raises(InputError):
        ex.OrtSampler(path, BASE, provider="cpu")  # a complete sampler takes no schedule


def _image_model():
    """A rank-4 `sample` (B, 3, H, W) with open H, W and a float32 scalar `timestep`:
    out = 0.5·tanh(sample) + 0.001·timestep (an analytic stand-in for a UNet)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Tanh", ["sample"], ["th"]),
        helper.make_node("Mul", ["th", "half"], ["a"]),
        helper.make_node("Mul", ["timestep", "milli"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["noise_pred"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(0.001, np.float32), "milli"),
    ]
    g = helper.make_graph(
        nodes,
        "unet_like",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 3, "h", "w"]),
            helper.make_tensor_value_info("timestep", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


@pytest.mark.parametrize("mode", ex.MODES)
def test_image_shaped_state_float_timestep_open_dims(mode):
    def den(x, t):  # the same function in float64, 0-based float time
        return 0.5 * np.tanh(x) + 0.001 * (np.asarray(t, np.float64)[:, None, None, None] - 1)

    sched = respace(BASE, [5, 20, 35, 50])
    x_T, z = _noise(sched.T, (2, 3, 4, 5), seed=6)
    ref = ddpm_sample(den, sched, x_T=x_T, step_noise=z, variance_type="fixed_large")
    kw = dict(prediction_type="epsilon", timestep_convention="index", variance_type="fixed_large")
    s = ex.OrtSampler(
        _image_model(), sched, mode=mode, provider="cpu", state_shape=(2, 3, 4, 5), **kw
    )
    assert s.denoiser.signature.time_shape == "scalar"
    assert rel_err(s.sample(x_T, z), ref) < F32_TOL
    with pytest.raises(InputError, match="open dims"):
        ex.OrtSampler(_image_model(), sched, mode=mode, provider="cpu", **kw).sample(shape=2)
