"""The whole sampler as one ONNX graph: a ``Scan`` over the steps (host noise), or a ``Loop``
over chunks of steps, each chunk a ``Scan`` (in-graph noise, or no noise).

``noise="input"`` (parity with the reference; the noise layout of :mod:`refdiff.sampling`):

    inputs   x_T (B, *S) float32, [step_noise (K, B, *S) float32 and step_start () int64 —
             only when the sampler adds noise]
    outputs  x_0 (B, *S) float32, [trajectory (N, B, *S) float32: the state after each step]

A run takes the steps step_start … step_start + K − 1 (``step_start`` is an input with the
default 0, so feeding the whole (N, B, *S) noise runs the whole sampler): x_T is the state
before step ``step_start``.  The runtime feeds bounded chunks of host noise this way, so no
(N, B, *S) array exists, and on CPU it writes each run's x_0 over its x_T (docs/deploy.md,
"Memory").  With ``trajectory`` the noise is the whole (N, B, *S) and there is no
``step_start``.  Conditioning inputs (and their ``uncond/`` values with guidance) follow
(:mod:`refdiff.export.conditioning`).  Multistep σ-view samplers (``dpmpp_2m``) carry m, the
previous step's x̂_0, beside x in the Loop and the Scan (:mod:`refdiff.export.sigma_tables`).

``noise="graph"`` (speed; checked statistically): x_T and every step's z are drawn in-graph
by ``RandomNormalLike`` with seed attributes 2·seed and 2·seed + 1:

    inputs   batch_size () int64
    outputs  x_0, [trajectory]

:func:`noise_model` is these two draws on their own: on CPU the runtime draws a chunk of
steps with it and runs the host-noise graph on the chunk (the same draws in the same order;
docs/deploy.md, "Memory").

Layout.  With host noise one ``Scan`` runs the K steps fed, getting step k's row of every
per-step tensor as a scan input: its denoiser times and coefficients (sliced from constant
tables at step_start) and its noise z_k, a view of ``step_noise`` (no copy).  With in-graph
noise (or none) the N steps are cut into chunks of K consecutive steps (K from the batch
size at run time, below); an outer ``Loop`` walks the chunks, per chunk slices the tables,
expands the times to the batch and prepares the K steps' scaled noise S_k z_k in one
(K, B, *S) tensor drawn by one ``RandomNormalLike``; an inner ``Scan`` runs the K steps.
Either way the Scan body is only the embedded denoiser (float32 or float16; the state stays
float32) and the update of :mod:`refdiff.export.tables`,
x_next = A_k x + Sum(B_k o, [C_k clip(a_x,k x + a_o,k o)], S_k z_k), the x-free terms
summed first and A_k x made last, so that the update holds as few full-state temporaries as
it can (a three-input ``Sum`` with A_k x held one more).  Why: onnxruntime charges about a
microsecond per node per iteration at small batch, so the body keeps no ``Gather``,
``Shape`` or ``Expand`` nodes and no noise arithmetic beyond the one scaled, added term (12
nodes after onnxruntime's fusions for the benchmark's MLP, 13–14 with noise, against 18 for
DDIM and 22 for DDPM with a per-step ``Gather`` layout and in-loop ``RandomNormalLike``);
the graph is then 2.2–2.6× faster than the per-step loop of two sessions at batch 1
(benchmarks/RESULTS.md).

Chunk size (in-graph noise, or none): K = clip(⌊CHUNK_BYTES / bytes per step⌋, 1, N), where a
step's prepared tensors take 8 bytes per state element when the sampler adds noise (z and
S_k z, float32) plus the denoiser's time per sample when it takes one per sample.  Small
batches therefore run all N steps as one chunk (one draw of the whole (N, B, *S) noise),
large ones chunk the steps so that the extra memory stays ≤ max(``CHUNK_BYTES`` = 4 MiB, one
step's worth).  With ``trajectory=True`` the steps form one chunk whatever the batch (the
output already holds N states).

In-graph noise: onnxruntime seeds each ``RandomNormalLike`` kernel once per session, so a
fresh session with the same seed repeats its draws bit for bit, while successive runs of one
session continue the stream (different samples).  Within a run, x_T is one draw of seed
2·seed and the step noise is the stream of seed 2·seed + 1 read in step-major order (step
0's B·|S| values first: the ``step_noise`` layout), whatever the chunking (the runtime's
chunks drawn by :func:`noise_model` included), when B·|S| is even; these are also exactly
the draws of the earlier one-``Loop`` layout, which drew each step's z inside the loop body.
With odd B·|S| (onnxruntime's CPU generator makes normals in pairs and drops the partner of
a draw's last value) the chunk boundaries shift the stream, so the draws differ from the
earlier layout's; they are still the same for the same seed, batch size and run history.
CPU and CUDA draw different streams.
"""

from __future__ import annotations

import numpy as np

from refdiff.errors import InputError

from ._graph import GraphBuilder, tensor_info
from ._lazy import onnx
from .conditioning import Guidance, conditioning_inputs
from .model_io import DenoiserModel
from .steps import (
    check_noise,
    check_seed,
    emit_guided_call,
    emit_stacked,
    finish_sampler_model,
    model_time_table,
    sampler_metadata,
    state_dims,
)
from .tables import StepTables

__all__ = ["sampler_model", "noise_model", "CHUNK_BYTES"]

#: Bytes of prepared per-step tensors (scaled noise, expanded times) one chunk may hold.
CHUNK_BYTES = 4 * 2**20


def sampler_model(
    den: DenoiserModel,
    tables: StepTables,
    *,
    noise: str = "input",
    seed: int = 0,
    batch: int | None = None,
    state_shape=None,
    trajectory: bool = False,
    guidance: Guidance | None = None,
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
        guidance: classifier-free guidance (:mod:`refdiff.export.conditioning`); the model's
            conditioning inputs are graph inputs either way
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
    inputs, meaning_in = [], {}
    chunked = noise == "input" and tables.noisy and not trajectory
    if noise == "input":
        x_T = "x_T"
        inputs.append(tensor_info("x_T", np.float32, dims))
        meaning_in["x_T"] = "the state before step step_start (x_T when 0), (B, *S) float32"
        if tables.noisy:
            n_dim = "K" if chunked else tables.N
            inputs.append(tensor_info("step_noise", np.float32, [n_dim, *dims]))
            meaning_in["step_noise"] = (
                "(K, B, *S) standard normal; step_noise[j] is used by step step_start + j"
                if chunked
                else "(N, B, *S) standard normal; step_noise[k] is used by step k"
            )
        if chunked:  # an input with a default: runs the steps [step_start, step_start + K)
            inputs.append(tensor_info("step_start", np.int64, []))
            b.initializers.append(onnx.numpy_helper.from_array(np.array(0, np.int64), "step_start"))
            meaning_in["step_start"] = "first step to run (int64 scalar, default 0)"
        shape = b.op("Shape", x_T)
    else:
        inputs.append(tensor_info("batch_size", np.int64, []))
        meaning_in["batch_size"] = "number of samples B (int64 scalar)"
        bs = b.op("Unsqueeze", "batch_size", _i64(b, [0], "axes"))
        shape = b.op("Concat", bs, _i64(b, dims[1:], "data_dims"), axis=0)
        x_T = b.op("RandomNormalLike", _zeros(b, shape), dtype=_F32, seed=float(2 * seed))
        if tables.x_T_scale != 1.0:  # σ-view samplers start at x_T = σ_0 z
            x_T = b.op("Mul", x_T, b.const(np.float32(tables.x_T_scale), hint="x_T_scale"))
    cinfo, cmeaning, cnames, unames = conditioning_inputs(den, guidance, dims[0])
    inputs += cinfo
    meaning_in.update(cmeaning)
    stacked = None
    if guidance is not None and guidance.mode == "batched":
        stacked = emit_stacked(b, den, cnames, unames)
    plan = _Plan(b, den, tables, noise, seed, dims, shape, chunked)
    plan.call = (guidance, cnames, unames, stacked)
    if trajectory or chunked:  # one Scan: all N steps (its scan output is the trajectory),
        # or the host-noise steps fed (reading step_noise in place)
        scan_inputs = plan.chunk_inputs(b, x_T) if trajectory else plan.run_inputs(b, x_T)
        if tables.multistep:
            scan_inputs.insert(1, b.op("Mul", x_T, b.const(np.float32(0.0))))
        outs = ["x_0", "m_0"] if tables.multistep else ["x_0"]
        outs += ["trajectory"] if trajectory else []
        b.op("Scan", *scan_inputs, outputs=outs, **plan.scan_attrs(trajectory))
        b.initializers.extend(plan.den_inits)
    else:
        count = plan.trip_count()  # sets the chunk size the Loop body reads
        if tables.multistep:  # the loop also carries m, the previous step's x̂_0 (zeros first)
            m0 = b.op("Mul", x_T, b.const(np.float32(0.0)))
            b.op("Loop", count, "", x_T, m0, outputs=["x_0", "m_0"], body=plan.chunk_loop_body())
        else:
            b.op("Loop", count, "", x_T, outputs=["x_0"], body=plan.chunk_loop_body())
    out_dims = dims if noise == "input" else ["B", *dims[1:]]
    outputs = [tensor_info("x_0", np.float32, out_dims)]
    meaning_out = {"x_0": "the sample, (B, *S) float32"}
    if trajectory:
        outputs.append(tensor_info("trajectory", np.float32, [tables.N, *out_dims]))
        meaning_out["trajectory"] = "(N, B, *S): the state after each step"
    meta = sampler_metadata(
        "sampler", den, tables, noise, seed, (meaning_in, meaning_out), guidance
    )
    doc = f"refdiff {tables.sampler.upper()} sampler, {tables.N} steps, Loop over chunks of a Scan"
    return finish_sampler_model(b, "refdiff_sampler", inputs, outputs, meta, doc)


def noise_model(dims: list, seed: int = 0) -> onnx.ModelProto:
    """The in-graph noise of :func:`sampler_model` on its own: ``x_T`` from the seed-2·seed
    stream and ``step_noise`` from the seed-2·seed + 1 stream (``RandomNormalLike``, float32,
    not scaled), shaped like the inputs ``like_x_T`` (``dims``: the state's) and
    ``like_step_noise`` (K, *dims); only their shapes are read.  On CPU the runtime draws a
    chunk of steps with it and runs the host-noise sampler graph on the chunk in place
    (docs/deploy.md, "Memory"): one session draws what one :func:`sampler_model` session
    draws, in the same order (module docstring)."""
    seed = check_seed(seed)
    b = GraphBuilder()
    b.op("RandomNormalLike", "like_x_T", dtype=_F32, seed=float(2 * seed), outputs=["x_T"])
    b.op(
        "RandomNormalLike",
        "like_step_noise",
        dtype=_F32,
        seed=float(2 * seed + 1),
        outputs=["step_noise"],
    )
    dims = ["B", *dims[1:]]
    ins = [tensor_info("like_x_T", np.float32, dims)]
    ins.append(tensor_info("like_step_noise", np.float32, ["K", *dims]))
    outs = [
        tensor_info("x_T", np.float32, dims),
        tensor_info("step_noise", np.float32, ["K", *dims]),
    ]
    meta = {"refdiff.kind": "noise", "refdiff.seed": str(seed)}
    return finish_sampler_model(b, "refdiff_noise", ins, outs, meta, "refdiff in-graph noise")


_F32 = 1  # onnx.TensorProto.FLOAT (onnx.proto's DataType)
_DEN = "den/"  # prefix of every name of the embedded denoiser


def _i64(b: GraphBuilder, values, hint: str) -> str:
    return b.const(np.array(values, np.int64), hint=hint)


def _zeros(b: GraphBuilder, shape: str) -> str:
    """float32 zeros of the 1-D int64 ``shape`` (the shape source of ``RandomNormalLike``)."""
    zero = onnx.numpy_helper.from_array(np.zeros(1, np.float32))
    return b.op("ConstantOfShape", shape, value=zero)


class _Plan:
    """Tables, chunk size and the two subgraphs (chunk ``Loop`` body, step ``Scan`` body).

    ``cols`` lists the per-step coefficient scan inputs: (name in the step body, (N,) float32
    table).  Coefficients that are zero at every step are left out (as
    :func:`refdiff.export.steps.emit_update` does).

    The denoiser's weights are initializers of the graph right above the Scan (the chunk
    Loop's body; the main graph with ``trajectory``).  onnxruntime 1.31 pre-packs the Gemm
    weights a subgraph reads from its parent graph, but not from two levels up (measured:
    ≈6 % slower at batch 64), and with the weights inside the Scan body itself its first run
    reserves about twice the peak memory at large batch (arena; measured at batch 65536).
    """

    def __init__(self, b, den, tables, noise, seed, dims, shape, chunked=False):
        self._b_root = b
        self.chunked = chunked
        self.den, self.tables, self.noise, self.seed = den, tables, noise, seed
        self.dims, self.shape, self.N = dims, shape, tables.N
        N = tables.N
        sig = den.signature
        mt = model_time_table(den, tables)[:N]
        self.time_kind = sig.time_shape
        self.time_table = b.const(
            mt.reshape(N, 1) if self.time_kind != "scalar" else mt, hint="model_time"
        )
        t_shape = {"scalar": [], "one": [1], "batch": [dims[0]]}[self.time_kind]
        self.time_info = tensor_info("t_k", sig.time_dtype, t_shape)
        self.cols = [("A_k", b.const(tables.A, np.float32, hint="coef_A"))]
        if np.any(tables.B != 0):
            self.cols.append(("B_k", b.const(tables.B, np.float32, hint="coef_B")))
        if tables.clip is not None:
            for name, col in (("ax_k", tables.ax), ("ao_k", tables.ao), ("C_k", tables.C)):
                self.cols.append((name, b.const(col, np.float32, hint="coef_" + name[:-2])))
        if tables.multistep:
            for name, col in (("H_k", tables.H), ("Dx_k", tables.Dx), ("Do_k", tables.Do)):
                self.cols.append((name, b.const(col, np.float32, hint="coef_" + name[:-2])))
        if tables.c_in is not None:
            self.cols.append(("cin_k", b.const(tables.c_in, np.float32, hint="coef_c_in")))
        self.S, self.noise_in = None, None  # the step body's noise input
        if tables.noisy and noise == "input":  # S_k z_k in the step body, z_k a view of the input
            self.cols.append(("S_k", b.const(tables.S, np.float32, hint="coef_S")))
            self.noise_in = "z_k"
        elif tables.noisy:  # (N, 1, …, 1): broadcasts over a (K, B, *S) chunk of z
            self.S = b.const(tables.S.reshape(N, *[1] * len(dims)), np.float32, hint="coef_S")
            self.noise_in = "zs_k"
        # bytes per step of the tensors a chunk prepares (see the module docstring)
        per_elem = 8 if self.S is not None else 0
        per_sample = np.dtype(sig.time_dtype).itemsize if self.time_kind == "batch" else 0
        self.per_elem, self.per_sample = per_elem, per_sample
        self.batch1 = b.op("Slice", shape, _i64(b, [0], "zero1"), _i64(b, [1], "one1"))
        if chunked:  # the steps run: [step_start, step_start + K), K = len(step_noise)
            self.n_run = b.op("Shape", "step_noise", start=0, end=1)
            self.start = b.op("Unsqueeze", "step_start", _i64(b, [0], "axes"))
        else:
            self.n_run, self.start = _i64(b, [N], "n_steps"), None

    # -- the chunk Loop ----------------------------------------------------------------------
    def trip_count(self):
        """() int64 number of chunks ⌈N / K⌉; K (1,) int64 is kept in ``self.K``."""
        b, N = self._b_root, self.N
        if self.per_elem == 0 and self.per_sample == 0 and not self.chunked:
            self.K = _i64(b, [N], "chunk_all")
            return b.const(np.int64(1), hint="one_chunk")
        cost = None
        if self.per_elem:
            elems = b.op("ReduceProd", self.shape, keepdims=1)
            cost = b.op("Mul", elems, _i64(b, [self.per_elem], "bytes_per_elem"))
        if self.per_sample:
            c2 = b.op("Mul", self.batch1, _i64(b, [self.per_sample], "bytes_per_sample"))
            cost = c2 if cost is None else b.op("Add", cost, c2)
        k = b.op("Div", _i64(b, [CHUNK_BYTES], "chunk_bytes"), cost)
        self.K = b.op("Max", b.op("Min", k, self.n_run), _i64(b, [1], "one1"))
        last = b.op("Sub", b.op("Add", self.n_run, self.K), _i64(b, [1], "one1"))
        count = b.op("Div", last, self.K)
        return b.op("Squeeze", count, _i64(b, [0], "axes"))

    def chunk_loop_body(self) -> onnx.GraphProto:
        g = self._b_root.child()
        lo = g.op("Mul", g.op("Unsqueeze", "chunk", _i64(g, [0], "axes")), self.K)
        hi = g.op("Min", g.op("Add", lo, self.K), self.n_run)
        ms = self.tables.multistep
        ins = self.chunk_inputs(g, "x_c", lo, hi)
        if ms:
            ins.insert(1, "m_c")
        outs = ["x_c_next", "m_c_next"] if ms else ["x_c_next"]
        g.op("Scan", *ins, outputs=outs, **self.scan_attrs(False))
        carried_in = [tensor_info("x_c", np.float32, self.dims)]
        carried_out = [tensor_info("x_c_next", np.float32, self.dims)]
        if ms:
            carried_in.append(tensor_info("m_c", np.float32, self.dims))
            carried_out.append(tensor_info("m_c_next", np.float32, self.dims))
        body = g.graph(
            "sampler_chunk",
            [
                tensor_info("chunk", np.int64, []),
                tensor_info("cond_c", np.bool_, []),
                *carried_in,
            ],
            [tensor_info("cond_c", np.bool_, []), *carried_out],
            with_initializers=False,
        )
        body.initializer.extend(self.den_inits)  # see _Plan: weights one level above the Scan
        return body

    def chunk_inputs(self, g: GraphBuilder, x: str, lo: str | None = None, hi: str | None = None):
        """Scan inputs for steps [lo, hi) (None: all N): state, times, coefficients, noise."""

        shift = (lambda i: i) if self.start is None else (lambda i: g.op("Add", i, self.start))

        def rows(table):  # the tables' rows of steps [lo, hi) (+ step_start)
            return table if lo is None else g.op("Slice", table, shift(lo), shift(hi))

        n = _i64(g, [self.N], "n_steps") if lo is None else g.op("Sub", hi, lo)
        t = rows(self.time_table)
        if self.time_kind == "batch":
            t = g.op("Expand", t, g.op("Concat", n, self.batch1, axis=0))
        ins = [x, t] + [rows(table) for _, table in self.cols]
        if self.noise_in == "z_k":  # the whole sampler (trajectory): the input as it is
            ins.append("step_noise")
        elif self.S is not None:  # in-graph noise: the chunk's S_k z_k, drawn at once
            z_shape = g.op("Concat", n, self.shape, axis=0)
            z = g.op(
                "RandomNormalLike", _zeros(g, z_shape), dtype=_F32, seed=float(2 * self.seed + 1)
            )
            ins.append(g.op("Mul", z, rows(self.S)))
        return ins

    def run_inputs(self, g: GraphBuilder, x: str):
        """Scan inputs of a host-noise run: steps [step_start, step_start + K), K the length of
        ``step_noise``, which the Scan reads a step at a time (a view: no copy, no scaled
        copy, so no chunking is needed for memory)."""
        end = g.op("Add", self.start, self.n_run)

        def rows(table):
            return g.op("Slice", table, self.start, end)

        t = rows(self.time_table)
        if self.time_kind == "batch":
            t = g.op("Expand", t, g.op("Concat", self.n_run, self.batch1, axis=0))
        return [x, t] + [rows(table) for _, table in self.cols] + ["step_noise"]

    # -- the step Scan -----------------------------------------------------------------------
    def scan_attrs(self, trajectory: bool) -> dict:
        n_scan = 1 + len(self.cols) + (self.noise_in is not None)
        return dict(body=self.step_body(trajectory), num_scan_inputs=n_scan)

    def step_body(self, trajectory: bool) -> onnx.GraphProto:
        """The Scan body: state x_k and step k's rows in, x_next (and a copy for the trajectory)
        out.  The embedded denoiser's initializers are taken out of the shared list into
        ``self.den_inits``: the caller puts them in the graph right above this body."""
        g = self._b_root.child()
        x = "x_k"
        guidance, cnames, unames, stacked = self.call
        names = [c for c, _ in self.cols]
        x_in = g.op("Mul", "cin_k", x) if "cin_k" in names else x
        out = emit_guided_call(
            g, self.den, x_in, "t_k", guidance, cnames, unames, stacked, len(self.dims), _DEN
        )
        shared = g.initializers
        self.den_inits = [t for t in shared if t.name.startswith(_DEN)]
        shared[:] = [t for t in shared if not t.name.startswith(_DEN)]
        terms = []
        if "B_k" in names:
            terms.append(g.op("Mul", "B_k", out))
        if self.tables.clip is not None:
            c = self.tables.clip
            x0 = g.op("Add", g.op("Mul", "ax_k", x), g.op("Mul", "ao_k", out))
            x0 = g.op("Clip", x0, g.const(np.float32(-c)), g.const(np.float32(c)))
            terms.append(g.op("Mul", "C_k", x0))
        ms = self.tables.multistep
        if ms:
            terms.append(g.op("Mul", "H_k", "m_k"))
            m_next = g.op("Add", g.op("Mul", "Dx_k", x), g.op("Mul", "Do_k", out))
            g.op("Identity", m_next, outputs=["m_next"])
        if self.noise_in == "z_k":
            terms.append(g.op("Mul", "S_k", "z_k"))
        elif self.noise_in == "zs_k":
            terms.append("zs_k")
        if len(terms) > 1:  # the x-free terms first, then A x + their sum: two full-state
            # temporaries at a time, as the denoiser's own (a Sum with A x holds three)
            terms = [g.op("Sum", *terms) if len(terms) > 2 else g.op("Add", *terms)]
        # A x last in node order: CPU sessions run nodes in priority order (the lowest index
        # first, export/providers.make_session), so it is made after o is freed
        ax = g.op("Mul", "A_k", x)
        if terms:
            g.op("Add", ax, terms[0], outputs=["x_next"])
        else:
            g.op("Identity", ax, outputs=["x_next"])
        outs = [tensor_info("x_next", np.float32, self.dims)]
        ins = [tensor_info(x, np.float32, self.dims)]
        if ms:
            outs.append(tensor_info("m_next", np.float32, self.dims))
            ins.append(tensor_info("m_k", np.float32, self.dims))
        if trajectory:
            g.op("Identity", "x_next", outputs=["x_step"])
            outs.append(tensor_info("x_step", np.float32, self.dims))
        ins.append(self.time_info)
        ins += [tensor_info(name, np.float32, []) for name in names]
        if self.noise_in is not None:
            ins.append(tensor_info(self.noise_in, np.float32, self.dims))
        return g.graph("sampler_step", ins, outs, with_initializers=False)
