"""Shared pieces of the refdiff.export tests (no tests here).

Tolerances (docs/deploy.md, "Accuracy"): an ONNX sampler's x_0 is compared with the float64
reference by the largest absolute difference relative to max(1, max|x_ref|):

- float32 graphs: 2e-5 (measured ≤ 5e-7 on these T ≤ 100 chains: 40× margin);
- float16 denoisers (state and update stay float32): 5e-3 (measured ≤ 2e-4).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from scipy.special import logsumexp

from refdiff.exact import GaussianMixture
from refdiff.mlp import MLP, init_mlp

F32_TOL = 2e-5
F16_TOL = 5e-3


def rel_err(y, ref) -> float:
    """max |y − ref| / max(1, max |ref|)."""
    ref = np.asarray(ref, dtype=np.float64)
    return float(
        np.max(np.abs(np.asarray(y, dtype=np.float64) - ref)) / max(1.0, np.max(np.abs(ref)))
    )


def small_mlp(seed: int = 0, data_dim: int = 2) -> MLP:
    return init_mlp(
        np.random.default_rng(seed), data_dim=data_dim, hidden=32, depth=2, embed_dim=16
    )


def mixture2() -> GaussianMixture:
    """Two anisotropic, correlated components in 2-D."""
    return GaussianMixture(
        np.array([0.35, 0.65]),
        np.array([[1.5, 0.5], [-1.0, -0.5]]),
        np.array([[[0.10, 0.05], [0.05, 0.10]], [[0.20, -0.08], [-0.08, 0.08]]]),
    )


def np_mixture_denoiser(
    mix, alpha_bar: np.ndarray, x: np.ndarray, t: np.ndarray, pt: str
) -> np.ndarray:
    """Independent float64 reference: Γ_k = ᾱΣ_k + (1−ᾱ)I solved directly (no eigenbasis)."""
    ab = alpha_bar[t][:, None]
    sa, s1 = np.sqrt(ab), np.sqrt(1.0 - ab)
    D = x.shape[1]
    logs, x0s, epss = [], [], []
    for w, mu, S in zip(mix.weights, mix.means, mix.covs):
        G = ab[:, :, None] * S + (1.0 - ab)[:, :, None] * np.eye(D)
        d = x - sa * mu
        sol = np.linalg.solve(G, d[..., None])[..., 0]
        logs.append(np.log(w) - 0.5 * np.linalg.slogdet(G)[1] - 0.5 * np.sum(d * sol, axis=1))
        x0s.append(mu + sa * (sol @ S.T))
        epss.append(s1 * sol)
    L = np.stack(logs)
    r = np.exp(L - logsumexp(L, axis=0))[..., None]
    x0 = np.sum(r * np.stack(x0s), axis=0)
    eps = np.sum(r * np.stack(epss), axis=0)
    return {"epsilon": eps, "x0": x0, "v": sa * eps - s1 * x0, "score": -eps / s1}[pt]


def torch_style_model(
    mlp: MLP, *, time_shape: str = "batch", opset: int = 17, ir: int = 8
) -> onnx.ModelProto:
    """The MLP as a PyTorch exporter would write it, built with onnx.helper only.

    Inputs ``sample`` (B, D) float32 and ``timestep`` int64 — per sample (B,) or a scalar —
    holding the 0-based index i = t − 1; output ``out_sample``; the sinusoidal embedding is
    computed in-graph (Cast, Mul, Cos, Sin) of (i + 1); Gemm layers and x·Sigmoid(x); no
    metadata; opset 17, IR 8 (what torch.onnx emitted for years).
    """
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    half = mlp.embed_dim // 2
    freqs = np.exp(-np.log(mlp.max_period) * np.arange(half) / half).astype(np.float32)
    const("one", np.array(1, np.int64))
    const("freqs", freqs[None, :])
    const("ax1", np.array([1], np.int64))
    nodes.append(helper.make_node("Add", ["timestep", "one"], ["t1"]))
    nodes.append(helper.make_node("Cast", ["t1"], ["tf"], to=TensorProto.FLOAT))
    if time_shape == "scalar":
        nodes.append(helper.make_node("Shape", ["sample"], ["bshape"], start=0, end=1))
        nodes.append(helper.make_node("Expand", ["tf", "bshape"], ["tb"]))
    else:
        nodes.append(helper.make_node("Identity", ["tf"], ["tb"]))
    nodes.append(helper.make_node("Unsqueeze", ["tb", "ax1"], ["tcol"]))
    nodes.append(helper.make_node("Mul", ["tcol", "freqs"], ["args"]))
    nodes.append(helper.make_node("Cos", ["args"], ["cos"]))
    nodes.append(helper.make_node("Sin", ["args"], ["sin"]))
    nodes.append(helper.make_node("Concat", ["sample", "cos", "sin"], ["h0"], axis=1))
    h = "h0"
    for i, (W, b) in enumerate(mlp.layers):
        const(f"W{i}", W.astype(np.float32))
        const(f"b{i}", b.astype(np.float32))
        last = i == len(mlp.layers) - 1
        out = "out_sample" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [h, f"W{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Sigmoid", [out], [f"s{i}"]))
            nodes.append(helper.make_node("Mul", [out, f"s{i}"], [f"h{i + 1}"]))
            h = f"h{i + 1}"
    D = mlp.data_dim
    t_info = helper.make_tensor_value_info(
        "timestep", TensorProto.INT64, [] if time_shape == "scalar" else ["batch"]
    )
    g = helper.make_graph(
        nodes,
        "torch_jit",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", D]), t_info],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["batch", D])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch"
    )
    m.ir_version = ir
    onnx.checker.check_model(m)
    return m
