"""The whole sampler as one ONNX graph: a ``Loop`` over the N steps, schedule baked in.

``noise="input"`` (parity with the reference; the noise layout of :mod:`refdiff.sampling`):

    inputs   x_T (B, *S) float32, [step_noise (N, B, *S) float32 — only when the sampler adds noise]
    outputs  x_0 (B, *S) float32, [trajectory (N, B, *S) float32: the state after each step]

``noise="graph"`` (speed; checked statistically): x_T and every step's z are drawn in-graph
by ``RandomNormalLike`` with seed attributes 2·seed and 2·seed + 1:

    inputs   batch_size () int64
    outputs  x_0, [trajectory]

The Loop body gathers step k's coefficients and the denoiser's time from constant tables
(outer-scope initializers), runs the embedded denoiser (float32 or float16; the state stays
float32) and applies the update of :mod:`refdiff.export.tables`.

In-graph noise: onnxruntime seeds each ``RandomNormalLike`` kernel once per session, so a
fresh session with the same seed repeats its draws bit for bit, while successive runs of one
session continue the stream (different samples).  CPU and CUDA draw different streams.
"""

from __future__ import annotations

import numpy as np
import onnx

from refdiff.errors import InputError

from ._graph import GraphBuilder, tensor_info
from .model_io import DenoiserModel
from .steps import (
    _finish,
    check_noise,
    check_seed,
    emit_denoiser_call,
    emit_model_time,
    emit_update,
    sampler_metadata,
    state_dims,
)
from .tables import StepTables

__all__ = ["sampler_model"]


def sampler_model(
    den: DenoiserModel,
    tables: StepTables,
    *,
    noise: str = "input",
    seed: int = 0,
    batch: int | None = None,
    state_shape=None,
    trajectory: bool = False,
) -> onnx.ModelProto:
    """The whole DDPM/DDIM sampler over ``tables`` with the denoiser ``den`` embedded.

    Args:
        den: the denoiser (:func:`refdiff.export.open_denoiser`, ours or a user's)
        tables: :func:`refdiff.export.step_tables` of the (respaced) schedule and sampler
        noise: ``"input"`` or ``"graph"`` (see the module docstring)
        seed: seed of the in-graph noise (``noise="graph"``), an int in [0, 2²²)
        batch: None (dynamic batch axis) or a fixed batch size
        state_shape: the full state shape, needed with ``noise="graph"`` when the model leaves
            data dims unspecified
        trajectory: also output every intermediate state
    Returns: ``onnx.ModelProto`` (IR 10, opset 21), checked, with refdiff metadata.
    """
    check_noise(noise)
    seed = check_seed(seed)
    dims = state_dims(den, batch, state_shape)
    if noise == "graph" and any(not isinstance(d, int) for d in dims[1:]):
        raise InputError(
            "state_shape", f"in-graph noise needs every data dim; the model says {dims}"
        )
    b = GraphBuilder()
    body = b.child()
    k, x = "k", "x_k"
    t = emit_model_time(body, den, tables, k, x, dims[0])
    out = emit_denoiser_call(body, den, x, t)
    if not tables.noisy:
        z = None
    elif noise == "input":
        z = body.gather("step_noise", k)
    else:
        z = body.op("RandomNormalLike", x, dtype=onnx.TensorProto.FLOAT, seed=float(2 * seed + 1))
    xn = emit_update(body, tables, x, out, z, k)
    body.op("Identity", "cond_in", outputs=["cond_out"])
    body.op("Identity", xn, outputs=["x_next"])
    body_outs = [tensor_info("cond_out", np.bool_, []), tensor_info("x_next", np.float32, dims)]
    if trajectory:
        body.op("Identity", xn, outputs=["x_scan"])
        body_outs.append(tensor_info("x_scan", np.float32, dims))
    body_graph = body.graph(
        "sampler_step",
        [
            tensor_info(k, np.int64, []),
            tensor_info("cond_in", np.bool_, []),
            tensor_info(x, np.float32, dims),
        ],
        body_outs,
        with_initializers=False,
    )
    inputs, meaning_in = [], {}
    if noise == "input":
        x_T = "x_T"
        inputs.append(tensor_info("x_T", np.float32, dims))
        meaning_in["x_T"] = "initial state x_T ~ N(0, I), (B, *S) float32"
        if z is not None:
            inputs.append(tensor_info("step_noise", np.float32, [tables.N, *dims]))
            meaning_in["step_noise"] = "(N, B, *S) standard normal; step_noise[k] is used by step k"
    else:
        inputs.append(tensor_info("batch_size", np.int64, []))
        meaning_in["batch_size"] = "number of samples B (int64 scalar)"
        bs = b.op("Unsqueeze", "batch_size", b.const(np.array([0], np.int64), hint="axes"))
        shape = b.op("Concat", bs, b.const(np.array(dims[1:], np.int64), hint="data_dims"), axis=0)
        zeros = b.op(
            "ConstantOfShape", shape, value=onnx.numpy_helper.from_array(np.zeros(1, np.float32))
        )
        x_T = b.op("RandomNormalLike", zeros, dtype=onnx.TensorProto.FLOAT, seed=float(2 * seed))
    loop_outs = ["x_0"] + (["trajectory"] if trajectory else [])
    b.op(
        "Loop",
        b.const(np.int64(tables.N), hint="num_steps"),
        "",
        x_T,
        outputs=loop_outs,
        body=body_graph,
    )
    out_dims = dims if noise == "input" else ["B", *dims[1:]]
    outputs = [tensor_info("x_0", np.float32, out_dims)]
    meaning_out = {"x_0": "the sample, (B, *S) float32"}
    if trajectory:
        outputs.append(tensor_info("trajectory", np.float32, [tables.N, *out_dims]))
        meaning_out["trajectory"] = "(N, B, *S): the state after each step"
    meta = sampler_metadata("sampler", den, tables, noise, seed, (meaning_in, meaning_out))
    doc = f"refdiff {tables.sampler.upper()} sampler, {tables.N} steps, one Loop"
    return _finish(b, "refdiff_sampler", inputs, outputs, meta, doc)
