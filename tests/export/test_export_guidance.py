"""Conditioned denoisers and classifier-free guidance in the ONNX samplers (docs/math.md §20).

A tiny conditioned network built with onnx.helper (a float embedding ``cond`` (B, 4) and an
int64 class ``label`` (B,)) is sampled in every mode, without guidance and with batched and
two-pass guidance (with and without rescale), against the float64 reference loop of
refdiff.sampling around the same network (refdiff.guidance.guided_denoiser) under the same
host noise (refdiff.export.noise).  Plus the NumPy guidance formulas themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import guidance as G
from refdiff.errors import InputError, OptionError, ShapeError
from refdiff.sampling import ddim_sample, ddpm_sample
from refdiff.schedule import linear

ex = pytest.importorskip("refdiff.export")

F32_TOL = 2e-5
SCHED = linear(12)


def rel_err(y, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / max(1.0, np.max(np.abs(ref))))


def cond_model():
    """out = tanh(x W1 + cond W2 + E[label] + t w3): x (B, 2), t (B,), cond (B, 4), label (B,)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    W1 = (0.7 * rng.standard_normal((2, 2))).astype(np.float32)
    W2 = (0.5 * rng.standard_normal((4, 2))).astype(np.float32)
    E = rng.standard_normal((3, 2)).astype(np.float32)
    w3 = np.array([[0.01, -0.02]], np.float32)
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (W2, "W2"), (E, "E"), (w3, "w3"))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"]),
        helper.make_node("MatMul", ["cond", "W2"], ["b"]),
        helper.make_node("Gather", ["E", "label"], ["c"], axis=0),
        helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["tf", "ax1"], ["tf2"]),
        helper.make_node("Mul", ["tf2", "w3"], ["d"]),
        helper.make_node("Sum", ["a", "b", "c", "d"], ["h"]),
        helper.make_node("Tanh", ["h"], ["out"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
    vi = helper.make_tensor_value_info
    g = helper.make_graph(
        nodes,
        "cond",
        [
            vi("x", TensorProto.FLOAT, ["B", 2]),
            vi("t", TensorProto.INT64, ["B"]),
            vi("cond", TensorProto.FLOAT, ["B", 4]),
            vi("label", TensorProto.INT64, ["B"]),
        ],
        [vi("out", TensorProto.FLOAT, ["B", 2])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


KW = dict(prediction_type="epsilon", timestep_convention="refdiff", provider="cpu")


def _conds(B):
    rng = np.random.default_rng(1)
    c = {"cond": rng.standard_normal((B, 4)), "label": np.arange(B) % 3}
    u = {"cond": np.zeros((1, 4)), "label": np.zeros(B, np.int64)}  # batch 1 broadcasts
    return c, u


def test_signature_lists_the_conditioning_inputs():
    sig = ex.open_denoiser(cond_model(), prediction_type="epsilon", timestep_convention="refdiff")
    assert (sig.signature.state_input, sig.signature.time_input) == ("x", "t")
    names = [(e.name, e.dtype.name, e.shape) for e in sig.signature.extra_inputs]
    assert names == [("cond", "float32", (None, 4)), ("label", "int64", (None,))]


@pytest.mark.parametrize("mode", ex.MODES)
@pytest.mark.parametrize(
    "guidance", [None, ("batched", 0.0), ("two_pass", 0.0), ("batched", 0.7), ("two_pass", 0.7)]
)
def test_guided_sampling_matches_the_reference(mode, guidance):
    B, seed = 5, 7
    c, u = _conds(B)
    gkw = (
        {}
        if guidance is None
        else dict(guidance_scale=3.5, guidance_mode=guidance[0], guidance_rescale=guidance[1])
    )
    s = ex.OrtSampler(cond_model(), SCHED, mode=mode, **KW, **gkw)
    y = s.sample(shape=(B, 2), seed=seed, cond=c, uncond=u if guidance else None)
    den = ex.OnnxDenoiser(cond_model(), **KW)
    f = den.with_cond(c)
    if guidance is not None:
        f = G.guided_denoiser(den.with_cond(c), den.with_cond(u), 3.5, guidance[1])
    x_T, z = ex_noise(seed, SCHED.T, (B, 2))
    ref = ddpm_sample(f, SCHED, x_T=x_T, step_noise=z)
    assert rel_err(y, ref) < F32_TOL
    # guidance changes the sample (the test can fail)
    if guidance is not None:
        plain = ddpm_sample(den.with_cond(c), SCHED, x_T=x_T, step_noise=z)
        assert rel_err(plain, ref) > 1e-2


def ex_noise(seed, n, shape):
    from refdiff.export.noise import host_noise

    return host_noise(seed, n, shape)


def test_ddim_guided_graph_and_sampler_file_inputs():
    c, u = _conds(3)
    s = ex.OrtSampler(cond_model(), SCHED, sampler="ddim", mode="graph", guidance_scale=2.0, **KW)
    names = [i.name for i in s.graph_model.graph.input]
    assert names == ["x_T", "cond", "uncond/cond", "label", "uncond/label"]
    den = ex.OnnxDenoiser(cond_model(), **KW)
    x_T, _ = ex_noise(2, 0, (3, 2))
    ref = ddim_sample(G.guided_denoiser(den.with_cond(c), den.with_cond(u), 2.0), SCHED, x_T=x_T)
    assert rel_err(s.sample(x_T, cond=c, uncond=u), ref) < F32_TOL


def test_conditioning_errors_are_typed_and_list_what_is_missing():
    s = ex.OrtSampler(cond_model(), SCHED, mode="fused", guidance_scale=2.0, **KW)
    c, u = _conds(2)
    with pytest.raises(InputError, match=r"\['cond', 'label'\]"):
        s.sample(shape=(2, 2), seed=0)
    with pytest.raises(InputError, match="uncond"):
        s.sample(shape=(2, 2), seed=0, cond=c)
    with pytest.raises(OptionError, match="nope"):
        s.sample(shape=(2, 2), seed=0, cond={**c, "nope": 1}, uncond=u)
    with pytest.raises(ShapeError, match="cond"):
        s.sample(shape=(2, 2), seed=0, cond={**c, "cond": np.zeros((3, 4))}, uncond=u)
    # a huge batch is refused before its batch-1 conditioning is broadcast to it
    from refdiff.export.memory import MemoryLimitError

    one = {"cond": np.zeros((1, 4)), "label": np.zeros(1, np.int64)}
    with pytest.raises(MemoryLimitError):
        s.sample(shape=(10**12, 2), seed=0, cond=one, uncond=one)
    with pytest.raises(InputError, match="guidance_rescale"):
        ex.OrtSampler(cond_model(), SCHED, guidance_scale=2.0, guidance_rescale=1.5, **KW)
    with pytest.raises(OptionError, match="guidance"):
        ex.OrtSampler(cond_model(), SCHED, guidance_scale=2.0, guidance_mode="x", **KW)


# -- the NumPy formulas (20.1)–(20.4) -----------------------------------------------------------
def test_guide_formulas_by_hand():
    c = np.array([[1.0, 3.0], [0.0, 2.0]])
    u = np.array([[0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(G.guide(c, u, 1.0), c)
    np.testing.assert_array_equal(G.guide(c, u, 0.0), u)
    g = G.guide(c, u, 2.0)  # u + 2 (c − u)
    np.testing.assert_array_equal(g, [[2.0, 5.0], [-1.0, 3.0]])
    # rescale φ = 1: per-sample std of the result equals std(c): row 0 std(c)=1, std(g)=1.5
    r = G.guide(c, u, 2.0, rescale=1.0)
    np.testing.assert_allclose(r[0], g[0] * (1.0 / 1.5))
    np.testing.assert_allclose(r.std(axis=1), c.std(axis=1))
    half = G.guide(c, u, 2.0, rescale=0.5)
    np.testing.assert_allclose(half, 0.5 * r + 0.5 * g)
    # σ(o_g) = 0: no division by zero, the guided output is kept
    flat = G.guide(np.ones((1, 3)), np.ones((1, 3)), 4.0, rescale=1.0)
    np.testing.assert_array_equal(flat, np.ones((1, 3)))
    with pytest.raises(ShapeError):
        G.guide(c, u[:1], 2.0)
    with pytest.raises(InputError, match="guidance_scale"):
        G.guide(c, u, float("nan"))
