"""Graphs of one sampler step: the update alone, and the denoiser fused with the update.

All step graphs keep the sampler state in float32 whatever the denoiser's type (a float16
denoiser sees a cast copy; its output is cast back before the update), and carry the step
counter ``k`` as an int64 scalar tensor so that a loop of ``run_with_iobinding`` calls never
touches the host (docs/deploy.md, "Per-step loop").  Coefficients come from
:mod:`refdiff.export.tables` (float64 on the host, one rounding to float32).

:func:`step_model` — the update step (runtime mode ``"steps"``), for any denoiser signature:

    inputs   x (B, *S) float32, model_output (B, *S) denoiser's output type,
             [model_output_uncond (B, *S): two-pass guidance], [z (B, *S) float32], k () int64
    outputs  x_next (B, *S) float32, [x_model (B, *S) denoiser's state type],
             t_model (the denoiser's time for step k + 1, its dtype and shape), k_next () int64

    With batched guidance model_output, x_model and t_model have 2B rows.  Multistep
    σ-view samplers add the input m and the output m_next (the previous / this step's x̂_0);
    σ-view samplers output x_model = c_in,k+1 · x_next (the model's input scaling).

:func:`fused_step_model` — denoiser + update in one graph (runtime mode ``"fused"``):

    inputs   x (B, *S) float32, [z (B, *S) float32], [m (B, *S)], k () int64,
             [each conditioning input, and uncond/<name> with guidance]
    outputs  x_next (B, *S) float32, k_next () int64, [m_next (B, *S)]

``z`` (the standard-normal noise of step k, one step at a time: memory does not grow with
the number of steps) is present when the sampler adds noise and ``noise="input"``; with
``noise="graph"`` it is drawn in-graph by ``RandomNormalLike`` with a fixed seed attribute.
"""

from __future__ import annotations

import copy
import json

import numpy as np

from refdiff.errors import InputError, OptionError

from ._graph import OPSET, GraphBuilder, finish_model, onnx_dtype, tensor_info
from ._lazy import onnx
from .conditioning import Guidance, conditioning_inputs, emit_guide
from .metadata import base_metadata
from .model_io import DenoiserModel, SignatureError
from .tables import StepTables

__all__ = [
    "NOISE_SOURCES",
    "MAX_SEED",
    "step_model",
    "fused_step_model",
    "embed_model",
    "emit_update",
    "emit_denoiser_call",
    "emit_guided_call",
    "emit_stacked",
    "state_dims",
]

NOISE_SOURCES = ("input", "graph")
#: The step graph's name for A_k x + B_k o: the runtime may write it into the denoiser's
#: output buffer, which holds nothing else by then (docs/deploy.md, "Memory").
PARTIAL = "x_partial"
MAX_SEED = 2**22  # seeds are float attributes: 2·seed + 1 must be exact in float32


def check_seed(seed: object) -> int:
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= int(seed) < MAX_SEED
    ):
        raise InputError("seed", f"must be an int in [0, {MAX_SEED}); got {seed!r}")
    return int(seed)


def check_noise(noise: str) -> str:
    if noise not in NOISE_SOURCES:
        raise OptionError("noise", noise, list(NOISE_SOURCES))
    return noise


def state_dims(den: DenoiserModel, batch: int | None = None, state_shape=None) -> list:
    """Dims of the state (B, *S) for graph inputs: ints where known, symbolic names elsewhere.

    ``state_shape`` (full shape with batch) fixes unknown dims; it must agree with the model.
    """
    sig = den.signature.state_shape
    if state_shape is not None:
        state_shape = tuple(int(s) for s in state_shape)
        if len(state_shape) != len(sig) or any(
            a is not None and a != b for a, b in zip(sig[1:], state_shape[1:])
        ):
            raise InputError("shape", f"{state_shape} does not fit the model's state shape {sig}")
        dims = [batch if batch is not None else "B", *state_shape[1:]]
    else:
        dims = [batch if batch is not None else "B"]
        dims += [d if d is not None else f"d{i}" for i, d in enumerate(sig[1:], start=1)]
    if sig[0] is not None and batch is not None and sig[0] != batch:
        raise InputError("batch", f"the model's batch axis is fixed at {sig[0]}; got {batch}")
    if sig[0] is not None and batch is None:
        dims[0] = sig[0]
    return dims


# -- embedding a model's graph --------------------------------------------------------------
def _rename_graph(g: onnx.GraphProto, fn) -> None:
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = fn(vi.name)
    for t in g.initializer:
        t.name = fn(t.name)
    for node in g.node:
        node.input[:] = [fn(n) if n else n for n in node.input]
        node.output[:] = [fn(n) if n else n for n in node.output]
        if node.name:
            node.name = fn(node.name)
        for a in node.attribute:
            if a.HasField("g"):
                _rename_graph(a.g, fn)
            for sub in a.graphs:
                _rename_graph(sub, fn)


def _at_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version == OPSET:
        return model
    try:
        from onnx import version_converter

        return version_converter.convert_version(model, OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises many kinds
        raise SignatureError(
            label,
            f"cannot convert the model from opset {version} to {OPSET} to embed it ({e}); "
            "use mode='steps'",
        ) from None


def embed_model(
    b: GraphBuilder,
    den: DenoiserModel,
    x: str,
    t: str,
    prefix: str,
    extra: dict | None = None,
    weights_prefix: str | None = None,
) -> str:
    """Copy the denoiser's nodes into ``b`` reading ``x``, ``t`` (and the conditioning inputs
    ``extra``: model input name → tensor name); returns its output's name.

    Every name of the embedded graph (subgraphs included) gets ``prefix``, its weights
    (initializers) ``weights_prefix`` (default ``prefix``); they become initializers of
    ``b``'s outermost graph, so a Loop body can use them, and a second copy embedded with the
    same ``weights_prefix`` shares them.
    """
    sig = den.signature
    model = _at_opset(den.model, den.label)
    g = copy.deepcopy(model.graph)
    if len(g.sparse_initializer):
        raise SignatureError(
            den.label, "models with sparse initializers cannot be embedded; use mode='steps'"
        )
    mapping = {sig.state_input: x, sig.time_input: t, **(extra or {})}
    wp = prefix if weights_prefix is None else weights_prefix
    weights = {w.name for w in g.initializer}

    def fn(name: str) -> str:
        if name in mapping:
            return mapping[name]
        return (wp if name in weights else prefix) + name

    out_name = fn(sig.output)
    _rename_graph(g, fn)
    b.add_nodes(list(g.node))
    have = {w.name for w in b.initializers}
    b.initializers.extend(w for w in g.initializer if w.name not in have)
    for o in model.opset_import:
        if o.domain not in ("", "ai.onnx"):
            b.extra_opsets[o.domain] = max(o.version, b.extra_opsets.get(o.domain, 0))
    known = {(f.domain, f.name) for f in b.functions}
    b.functions.extend(f for f in model.functions if (f.domain, f.name) not in known)
    return out_name


# -- pieces -------------------------------------------------------------------------------------
def _table(b: GraphBuilder, values: np.ndarray, k: str, hint: str) -> str:
    return b.gather(b.const(np.asarray(values, dtype=np.float64), np.float32, hint), k)


def emit_update(
    b: GraphBuilder,
    tables: StepTables,
    x: str,
    out: str,
    z: str | None,
    k: str,
    m: str | None = None,
    partial: str | None = None,
) -> str:
    """x_next = A_k x + B_k o + C_k clip(a_x,k x + a_o,k o) + H_k m + S_k z (float32; tables
    module).  ``partial``: a name for A_k x + B_k o (when B is not all zero)."""
    y = b.op("Mul", _table(b, tables.A, k, "coef_A"), x)
    if np.any(tables.B != 0):
        named = {"outputs": [partial]} if partial else {}
        y = b.op("Add", y, b.op("Mul", _table(b, tables.B, k, "coef_B"), out), **named)
    if m is not None:
        y = b.op("Add", y, b.op("Mul", _table(b, tables.H, k, "coef_H"), m))
    if tables.clip is not None:
        x0 = b.op(
            "Add",
            b.op("Mul", _table(b, tables.ax, k, "coef_ax"), x),
            b.op("Mul", _table(b, tables.ao, k, "coef_ao"), out),
        )
        c = tables.clip
        x0 = b.op("Clip", x0, b.const(np.float32(-c)), b.const(np.float32(c)))
        y = b.op("Add", y, b.op("Mul", _table(b, tables.C, k, "coef_C"), x0))
    if z is not None:
        y = b.op("Add", y, b.op("Mul", _table(b, tables.S, k, "coef_S"), z))
    return y


def model_time_table(den: DenoiserModel, tables: StepTables) -> np.ndarray:
    """(N + 1,) the denoiser's time argument at step k; entry N repeats N − 1 (never used)."""
    if tables.model_t is None:
        return den.model_time(np.concatenate([tables.base_t, tables.base_t[-1:]]))
    t = np.concatenate([tables.model_t, tables.model_t[-1:]])
    if tables.time_in_model_units:
        return t.astype(den.signature.time_dtype)
    return den.model_time(t)


def _padded(values: np.ndarray) -> np.ndarray:
    """(N + 1,): a per-step table with entry N repeating N − 1 (read at k + 1 = N, unused)."""
    return np.concatenate([values, values[-1:]])


def emit_model_input(b: GraphBuilder, tables: StepTables, x: str, k: str) -> str:
    """The state the model sees at step k: c_in,k · x for the σ-view samplers, else x."""
    if tables.c_in is None:
        return x
    return b.op("Mul", _table(b, _padded(tables.c_in), k, "coef_c_in"), x)


def emit_history(b: GraphBuilder, tables: StepTables, x: str, out: str, k: str) -> str:
    """m_next = Dx_k x + Do_k o: this step's x̂_0, the next step's m (multistep samplers)."""
    return b.op(
        "Add",
        b.op("Mul", _table(b, tables.Dx, k, "coef_Dx"), x),
        b.op("Mul", _table(b, tables.Do, k, "coef_Do"), out),
    )


def emit_model_time(
    b: GraphBuilder, den: DenoiserModel, tables: StepTables, k: str, x: str, batch
) -> str:
    """The denoiser's time input for step ``k``, shaped as its signature wants."""
    table = b.const(model_time_table(den, tables), hint="model_time")
    t = b.gather(table, k)  # ()
    kind = den.signature.time_shape
    if kind == "scalar":
        return t
    if kind == "one":
        return b.op("Unsqueeze", t, b.const(np.array([0], np.int64), hint="axes"))
    shape = b.const(np.array([batch], np.int64)) if isinstance(batch, int) else b.batch_of(x)
    return b.op("Expand", t, shape)


def emit_denoiser_call(
    b: GraphBuilder,
    den: DenoiserModel,
    x: str,
    t: str,
    prefix: str = "den/",
    extra: dict | None = None,
    weights_prefix: str | None = None,
) -> str:
    """Call the embedded denoiser on float32 ``x``; returns its output as float32."""
    sig = den.signature
    xm = x if sig.state_dtype == np.float32 else b.cast(x, sig.state_dtype)
    out = embed_model(b, den, xm, t, prefix, extra, weights_prefix)
    return out if sig.output_dtype == np.float32 else b.cast(out, np.float32)


def emit_stacked(b: GraphBuilder, den: DenoiserModel, cnames: dict, unames: dict) -> dict:
    """Conditioning tensors of a batched guidance call: [uncond; cond] on axis 0 (2B)."""
    return {
        e.name: b.op("Concat", unames[e.name], cnames[e.name], axis=0)
        if e.batched
        else cnames[e.name]
        for e in den.signature.extra_inputs
    }


def emit_guided_call(
    b: GraphBuilder,
    den: DenoiserModel,
    x: str,
    t: str,
    guidance: Guidance | None,
    cnames: dict,
    unames: dict,
    stacked: dict | None,
    rank: int,
    prefix: str = "den/",
) -> str:
    """The (guided) model output for float32 ``x`` (B, *S) at time ``t`` (B-shaped when the
    model takes one time per sample); float32 (B, *S).

    Without guidance one call with the conditional inputs ``cnames``.  ``"batched"``: one
    call on [x; x] with ``stacked`` conditioning (:func:`emit_stacked`), split into the
    unconditional and conditional halves; ``"two_pass"``: two calls sharing the weights.
    Then (20.1)–(20.4) (:func:`refdiff.export.conditioning.emit_guide`).
    """
    if guidance is None:
        return emit_denoiser_call(b, den, x, t, prefix, cnames)
    if guidance.mode == "batched":
        x2 = b.op("Concat", x, x, axis=0)
        t2 = b.op("Concat", t, t, axis=0) if den.signature.time_shape == "batch" else t
        o2 = emit_denoiser_call(b, den, x2, t2, prefix, stacked)
        u, c = b.op("Split", o2, axis=0, num_outputs=2, outputs=2)
    else:
        c = emit_denoiser_call(b, den, x, t, prefix + "c/", cnames, weights_prefix=prefix)
        u = emit_denoiser_call(b, den, x, t, prefix + "u/", unames, weights_prefix=prefix)
    return emit_guide(b, c, u, guidance, rank)


def emit_noise(b: GraphBuilder, tables: StepTables, noise: str, x: str, k: str, seed: int | None):
    """The standard-normal z of step k: the ``z`` input (host noise), or drawn in-graph."""
    if not tables.noisy:
        return None
    if noise == "input":
        return "z"
    return b.op(
        "RandomNormalLike", x, dtype=onnx.TensorProto.FLOAT, mean=0.0, scale=1.0, seed=float(seed)
    )


NOISE_LAYOUT = (
    "host noise: stream 0 is x_T, stream k+1 the z of step k; rows in blocks of 16, block r of "
    "stream s is Generator(Philox(key=[seed, s*2**32 + r])).standard_normal("
    "(rows, *S), dtype=float32) (docs/deploy.md, Noise layout)"
)


def sampler_metadata(
    kind: str,
    den: DenoiserModel,
    tables: StepTables,
    noise: str,
    seed,
    io: tuple,
    guidance: Guidance | None = None,
) -> dict:
    den_meta = den.signature.metadata
    described = den_meta.get("refdiff.denoiser")
    try:
        described = json.loads(described) if described else None
    except (ValueError, RecursionError):  # malformed metadata of a user's file: describe anew
        described = None
    extra = {}
    if guidance is not None:
        extra["guidance"] = {
            "scale": guidance.scale,
            "rescale": guidance.rescale,
            "mode": guidance.mode,
        }
    if den.signature.extra_inputs:
        extra["conditioning"] = [e.name for e in den.signature.extra_inputs]
    return base_metadata(
        kind,
        prediction_type=tables.prediction_type,
        timestep_convention=den.timestep_convention,
        schedule=tables.schedule,
        sampler={"name": tables.sampler, "options": tables.options},
        noise=noise,
        seed=seed if noise == "graph" else None,
        dtype=np.dtype(den.signature.state_dtype).name,
        inputs=io[0],
        outputs=io[1],
        denoiser=described
        if described
        else {
            "type": "external",
            "producer": f"{den.model.producer_name} {den.model.producer_version}".strip(),
            "state_input": den.signature.state_input,
            "time_input": den.signature.time_input,
            "output": den.signature.output,
        },
        noise_layout=NOISE_LAYOUT,
        **extra,
    )


def finish_sampler_model(b, name, ins, outs, meta, doc):
    try:
        return finish_model(b.graph(name, ins, outs), meta, doc=doc, builder=b)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise SignatureError(
            "<model>", f"the composed graph does not check ({str(e).splitlines()[0]})"
        ) from None


def _double(dim):
    return 2 * dim if isinstance(dim, int) else f"2*{dim}"


def _history_input(m, dims, inputs, meaning):
    if m is not None:
        inputs.append(tensor_info("m", np.float32, dims))
        meaning["m"] = "x̂_0 of the previous step (multistep samplers; zeros at k = 0)"


def _noise_input(z, noise, dims, inputs, meaning):
    if z is not None and noise == "input":
        inputs.append(tensor_info("z", np.float32, dims))
        meaning["z"] = "(B, *S) standard normal noise of step k (host noise layout)"


# -- models -------------------------------------------------------------------------------------
def step_model(
    den: DenoiserModel,
    tables: StepTables,
    *,
    noise: str = "input",
    seed: int = 0,
    batch: int | None = None,
    state_shape=None,
    guidance: Guidance | None = None,
) -> onnx.ModelProto:
    """The update step for the denoiser ``den`` (signature, dtypes, time convention).

    See the module docstring for inputs and outputs.  ``batch``: None (dynamic) or fixed
    (CUDA graphs need fixed shapes).  ``seed``: of ``RandomNormalLike`` when ``noise="graph"``.
    ``guidance``: the model outputs are combined here by (20.1)–(20.4); ``"batched"`` takes
    ``model_output`` (2B, *S) [unconditional; conditional] and gives the next 2B model
    inputs, ``"two_pass"`` takes ``model_output`` and ``model_output_uncond`` (B, *S).
    """
    check_noise(noise)
    seed = check_seed(seed)
    sig = den.signature
    dims = state_dims(den, batch, state_shape)
    batched = guidance is not None and guidance.mode == "batched"
    mdims = [_double(dims[0]), *dims[1:]] if batched else dims
    b = GraphBuilder()
    k = "k"
    z = emit_noise(b, tables, noise, "x", k, seed)
    f32 = sig.output_dtype == np.float32
    out = "model_output" if f32 else b.cast("model_output", np.float32)
    inputs = [
        tensor_info("x", np.float32, dims),
        tensor_info("model_output", sig.output_dtype, mdims),
    ]
    meaning_in = {
        "x": "state at step k (time N-k), float32",
        "model_output": "denoiser output at (x, step k)"
        + (", [unconditional; conditional] (2B)" if batched else ""),
    }
    if guidance is not None:
        if batched:
            u, c = b.op("Split", out, axis=0, num_outputs=2, outputs=2)
        else:
            c = out
            u = "model_output_uncond" if f32 else b.cast("model_output_uncond", np.float32)
            inputs.append(tensor_info("model_output_uncond", sig.output_dtype, dims))
            meaning_in["model_output_uncond"] = "unconditional denoiser output"
        out = emit_guide(b, c, u, guidance, len(dims))
    m = "m" if tables.multistep else None
    xn = emit_update(b, tables, "x", out, z, k, m, partial=PARTIAL)
    b.op("Identity", xn, outputs=["x_next"])
    kn = b.op("Add", k, b.const(np.int64(1)), outputs=["k_next"])
    outputs = [tensor_info("x_next", np.float32, dims)]
    meaning_out = {"x_next": "state after step k, float32"}
    if m is not None:
        b.op("Identity", emit_history(b, tables, "x", out, k), outputs=["m_next"])
        outputs.append(tensor_info("m_next", np.float32, dims))
        meaning_out["m_next"] = "x̂_0 of step k (the next step's m)"
    if sig.state_dtype != np.float32 or batched or tables.c_in is not None:
        xm = emit_model_input(b, tables, "x_next", kn)
        xm = b.op("Concat", xm, xm, axis=0) if batched else xm
        b.op("Cast", xm, outputs=["x_model"], to=onnx_dtype(sig.state_dtype))
        outputs.append(tensor_info("x_model", sig.state_dtype, mdims))
        meaning_out["x_model"] = "x_next as the denoiser's state input"
    tm = emit_model_time(b, den, tables, kn, "x_model" if batched else "x", mdims[0])
    b.op("Identity", tm, outputs=["t_model"])
    t_dims = {"scalar": [], "one": [1], "batch": [mdims[0]]}[sig.time_shape]
    outputs += [tensor_info("t_model", sig.time_dtype, t_dims), tensor_info("k_next", np.int64, [])]
    meaning_out.update(t_model="the denoiser's time argument for step k + 1", k_next="k + 1")
    _noise_input(z, noise, dims, inputs, meaning_in)
    _history_input(m, dims, inputs, meaning_in)
    inputs.append(tensor_info("k", np.int64, []))
    meaning_in["k"] = "step index, 0-based (int64 scalar)"
    meta = sampler_metadata("step", den, tables, noise, seed, (meaning_in, meaning_out), guidance)
    return finish_sampler_model(
        b, "refdiff_step", inputs, outputs, meta, "refdiff sampler update step"
    )


def fused_step_model(
    den: DenoiserModel,
    tables: StepTables,
    *,
    noise: str = "input",
    seed: int = 0,
    batch: int | None = None,
    state_shape=None,
    guidance: Guidance | None = None,
) -> onnx.ModelProto:
    """Denoiser and update in one graph (one ``run`` per step); see the module docstring.

    Conditioning inputs (and with ``guidance`` their ``uncond/`` values) are graph inputs
    (:mod:`refdiff.export.conditioning`)."""
    check_noise(noise)
    seed = check_seed(seed)
    dims = state_dims(den, batch, state_shape)
    b = GraphBuilder()
    k = "k"
    cinfo, cmeaning, cnames, unames = conditioning_inputs(den, guidance, dims[0])
    stacked = None
    if guidance is not None and guidance.mode == "batched":
        stacked = emit_stacked(b, den, cnames, unames)
    t = emit_model_time(b, den, tables, k, "x", dims[0])
    x_in = emit_model_input(b, tables, "x", k)
    out = emit_guided_call(b, den, x_in, t, guidance, cnames, unames, stacked, len(dims))
    z = emit_noise(b, tables, noise, "x", k, seed)
    m = "m" if tables.multistep else None
    xn = emit_update(b, tables, "x", out, z, k, m)
    b.op("Identity", xn, outputs=["x_next"])
    b.op("Add", k, b.const(np.int64(1)), outputs=["k_next"])
    outputs = [tensor_info("x_next", np.float32, dims), tensor_info("k_next", np.int64, [])]
    meaning_out = {"x_next": "state after step k, float32", "k_next": "k + 1"}
    if m is not None:
        b.op("Identity", emit_history(b, tables, "x", out, k), outputs=["m_next"])
        outputs.append(tensor_info("m_next", np.float32, dims))
        meaning_out["m_next"] = "x̂_0 of step k (the next step's m)"
    inputs = [tensor_info("x", np.float32, dims)]
    meaning_in = {"x": "state at step k (time N-k), float32"}
    _noise_input(z, noise, dims, inputs, meaning_in)
    _history_input(m, dims, inputs, meaning_in)
    inputs.append(tensor_info("k", np.int64, []))
    meaning_in["k"] = "step index, 0-based (int64 scalar)"
    inputs += cinfo
    meaning_in.update(cmeaning)
    meta = sampler_metadata(
        "fused_step", den, tables, noise, seed, (meaning_in, meaning_out), guidance
    )
    return finish_sampler_model(
        b, "refdiff_fused_step", inputs, outputs, meta, "refdiff denoiser + sampler step"
    )
