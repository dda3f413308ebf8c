"""Sampling on onnxruntime: DDPM/DDIM with any denoiser ONNX file, ours or a user's.

:class:`OrtSampler` runs the sampler of :mod:`refdiff.export.tables` in one of three modes:

``"steps"``  two sessions per step: the user's denoiser as it is, then refdiff's step graph
             (:func:`refdiff.export.step_model`), which also computes the denoiser's next
             inputs (state cast to its type, its timestep).  Works with any denoiser file.
``"fused"``  one session per step: the denoiser embedded in the step graph.
``"graph"``  one session run for the whole sampler (``Loop``; :func:`refdiff.export.sampler_model`).

The per-step modes bind every tensor once with IO binding (``OrtValue`` buffers on the
device, ping-pong between two bindings) and loop over ``run_with_iobinding``: the state and
the step counter never return to the host between steps.  The code path is the same on CPU
and CUDA (CI runs it on CPU).  On CUDA, ``cuda_graph=True`` captures each of the two
bindings as a CUDA graph (``gpu_graph_id`` 0 and 1) and replays them (fixed batch).

Noise (docs/deploy.md, "Noise layout"): ``noise="input"`` takes x_T and the step noise from
the host — given as arrays, or drawn from ``seed`` in the layout of
:mod:`refdiff.export.noise` (per step and per block of rows, so one step's noise is drawn at
a time and memory does not grow with the number of steps).  The per-step modes upload step
k's noise into one bound buffer before step k; ``"graph"`` mode runs the sampler graph on
chunks of steps (``step_start``) with a bounded noise chunk each.  ``noise="graph"`` draws
the step noise in-graph (``RandomNormalLike``); in ``"graph"`` mode x_T too, otherwise x_T
comes from the host.

Conditioning and guidance (:mod:`refdiff.export.conditioning`): the denoiser's extra inputs
are given to :meth:`OrtSampler.sample` as ``cond=`` (and ``uncond=`` with
``guidance_scale=``), constant across steps.

Memory: before allocating, the estimated peak (:meth:`OrtSampler.memory_estimate`) is
checked against the available memory (:mod:`refdiff.export.memory`).  Ctrl-C stops within
one step (the whole-graph run is cancelled through ``RunOptions.terminate``).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from refdiff._check import as_float_array
from refdiff.errors import InputError, NonFiniteError, OptionError, ShapeError
from refdiff.schedule import Schedule

from ._graph import may_alias, tensor_info
from .conditioning import (
    UNCOND_PREFIX,
    cast_input,
    make_guidance,
    prepare_conditioning,
    stack_conditioning,
)
from .memory import check_memory
from .metadata import PREFIX, ModelBytes, schedule_from_json
from .model_io import DenoiserModel, SignatureError, load_model, open_denoiser
from .noise import NoiseStream, fill_noise, new_seed
from .providers import make_session, resolve_provider, session_provider
from .sampler_graph import noise_model, sampler_model
from .steps import (
    PARTIAL,
    check_noise,
    check_seed,
    fused_step_model,
    model_time_table,
    state_dims,
    step_model,
)
from .tables import step_tables

__all__ = ["MODES", "OnnxDenoiser", "OrtSampler", "sample", "HOST_CHUNK_BYTES"]

MODES = ("steps", "fused", "graph")
# onnxruntime's input type names -> NumPy dtypes (the conditioning inputs of sampler files)
_ORT_TYPES = {
    f"tensor({k})": np.dtype(v)
    for k, v in (("float", "float32"), ("float16", "float16"), ("double", "float64"))
    + (("int64", "int64"), ("int32", "int32"), ("bool", "bool"))
}

#: Bytes of host noise one ``"graph"``-mode run takes at most (at least one step's worth).
#: Small enough that states of a few MiB run one step per run: the chunk and its scaled copy
#: in the graph are then two states, not four (the per-run cost is small beside such a step).
HOST_CHUNK_BYTES = 4 * 2**20

#: CPU ``"graph"`` mode with in-graph noise draws it a chunk at a time and runs the sampler
#: graph in place (one state less) for samples of at least this many bytes (image-like
#: states); smaller samples keep the one-run graph, ~20 % faster at batch 1 for the MLP.
CHUNKED_NOISE_SAMPLE_BYTES = 16 * 2**10


def _schedule_of(den_or_meta: dict, label: str) -> Schedule:
    text = den_or_meta.get(PREFIX + "schedule")
    if text is None:
        raise InputError(
            "schedule", f"{label} does not record a schedule in its metadata; pass schedule="
        )
    try:
        return schedule_from_json(text)
    except Exception as e:  # noqa: BLE001
        raise SignatureError(label, f"refdiff.schedule metadata is malformed ({e})") from None


def _source(den: DenoiserModel):
    """What onnxruntime should load: the checked file itself when there is one (it resolves
    external data next to it), else the in-memory model."""
    return den.path if den.path is not None else den.model


class OnnxDenoiser:
    """A denoiser ONNX model as a NumPy callable ``f(x, t) -> float64`` (refdiff's convention).

    ``x``: (B, *S) float; ``t``: (B,) int, base times 1-based.  Converts t to the model's
    convention, dtype and shape, so it plugs into :func:`refdiff.sampling.ddpm_sample` and
    :func:`~refdiff.sampling.ddim_sample` (the reference loop around the exported network).
    ``provider`` as in :func:`refdiff.export.make_session`; the one used is ``.provider``.
    ``cond``: values of the model's conditioning inputs (name → array, batch 1 or B),
    constant across calls; :meth:`with_cond` gives the same network with other values
    (for :func:`refdiff.guidance.guided_denoiser`).
    """

    def __init__(
        self,
        model: object,
        *,
        provider: str = "auto",
        prediction_type: str | None = None,
        timestep_convention: str | None = None,
        state_input: str | None = None,
        time_input: str | None = None,
        output: str | None = None,
        device_id: int = 0,
        use_tf32: bool = False,
        cond: Mapping | None = None,
    ):
        self.denoiser = open_denoiser(
            model,
            prediction_type=prediction_type,
            timestep_convention=timestep_convention,
            state_input=state_input,
            time_input=time_input,
            output=output,
        )
        self.session = make_session(
            _source(self.denoiser), provider, device_id=device_id, use_tf32=use_tf32
        )
        self.provider = session_provider(self.session)
        self.cond = dict(cond or {})

    @property
    def prediction_type(self) -> str:
        return self.denoiser.prediction_type

    def with_cond(self, cond: Mapping) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``f(x, t)`` on this session with the conditioning inputs ``cond``."""
        return lambda x, t: self._call(x, t, cond)

    def __call__(self, x, t) -> np.ndarray:
        return self._call(x, t, self.cond)

    def _call(self, x, t, cond) -> np.ndarray:
        sig = self.denoiser.signature
        xa = as_float_array(x, "x")
        ta = np.asarray(t)
        ta = np.broadcast_to(ta if ta.dtype.kind == "f" else ta.astype(np.int64), (xa.shape[0],))
        tm = self.denoiser.model_time(ta)
        if sig.time_shape != "batch":
            if np.any(ta != ta[0]):
                raise InputError(
                    "t",
                    f"the model takes one timestep for the batch ({sig.time_shape}); got several",
                )
            tm = tm[:1] if sig.time_shape == "one" else tm[0]
        feeds = {sig.state_input: xa.astype(sig.state_dtype), sig.time_input: np.asarray(tm)}
        c, _ = prepare_conditioning(sig.extra_inputs, cond, None, None, xa.shape[0])
        feeds.update(c)
        out = self.session.run([sig.output], feeds)[0]
        return np.asarray(out, dtype=np.float64)


@dataclass
class _Buffers:
    """Device buffers of the per-step loop (ping-pong pairs are [p, 1 − p])."""

    x: list
    k: list
    z: object  # OrtValue of step k's noise, or None
    z_host: np.ndarray | None  # its host side (aliased on CPU, uploaded on CUDA)
    xm: list  # the denoiser's state input (x itself when float32 and no batched guidance)
    tm: list  # the denoiser's time input
    outs: list  # the denoiser's outputs: [conditional] or [conditional, unconditional]
    extras: dict  # conditioning OrtValues: {"cond": {...}, "uncond": {...}}
    m: list | None = None  # the previous step's x̂_0 (multistep σ-view samplers)
    x_host: list | None = None  # CPU: the host arrays x aliases (the result without a copy)


class OrtSampler:
    """DDPM/DDIM on onnxruntime (module docstring); build once, call :meth:`sample` often.

    Args:
        model: a denoiser (path, bytes, ``onnx.ModelProto`` or :class:`DenoiserModel`), or a
            refdiff sampler model (``refdiff.kind = sampler``), which is run as it is
        schedule: the (respaced) schedule to walk, as for :func:`refdiff.sampling.ddpm_sample`;
            None: the schedule in the model's metadata
        sampler: ``"ddpm"`` or ``"ddim"``
        mode: ``"steps"`` | ``"fused"`` | ``"graph"``
        noise: ``"input"`` | ``"graph"``
        seed: seed of the in-graph noise (``noise="graph"``)
        provider: ``"auto"`` | ``"cuda"`` | ``"cpu"``; the one used is ``.provider``
        cuda_graph: capture CUDA graphs in the per-step modes (needs ``batch``)
        batch: fix the batch size in the graphs (None: dynamic)
        state_shape: full state shape, for models with unspecified data dims
        prediction_type, timestep_convention, state_input, time_input, output: see
            :func:`refdiff.export.open_denoiser`
        guidance_scale: classifier-free guidance scale s (20.1); None: no guidance
        guidance_rescale: φ of the guidance rescale (20.4), in [0, 1]
        guidance_mode: ``"batched"`` (one 2B call per step) or ``"two_pass"``
        memory_limit: bytes a run may take (default: the memory available; refusals are
            :class:`~refdiff.export.memory.MemoryLimitError`)
        num_inference_steps: walk only this many steps of ``schedule`` (or of the metadata's
            schedule), respaced as diffusers' ``set_timesteps`` does (docs/math.md eq. 2.9)
        spacing: with ``num_inference_steps``: ``leading`` (default) | ``trailing`` |
            ``linspace`` | an improved-diffusion section string (``ddim50``, ``10,15``)
        steps_offset: with ``num_inference_steps`` and ``leading``: diffusers' steps_offset
        options: sampler options (``eta``, ``clip``, ``variance_type``, …; tables module)

    ``model`` may also be a :class:`~refdiff.export.metadata.ModelBytes` (a file read once by
    the caller): a refdiff sampler file is then run from those bytes without importing onnx.
    """

    _in_place = False  # the per-step loop updates one state buffer (set in __init__)
    _partial_in_output = False  # A_k x + B_k o goes into the denoiser's output buffer
    _graph_in_place = False  # a host-noise graph run writes x_0 over its x_T (CPU)
    _noise_session = None  # CPU graph mode, in-graph noise: draws it a chunk at a time

    def __init__(
        self,
        model: object,
        schedule: Schedule | None = None,
        *,
        sampler: str = "ddpm",
        mode: str = "steps",
        noise: str = "input",
        seed: int = 0,
        provider: str = "auto",
        device_id: int = 0,
        use_tf32: bool = False,
        cuda_graph: bool = False,
        batch: int | None = None,
        state_shape=None,
        threads: int | None = None,
        prediction_type: str | None = None,
        timestep_convention: str | None = None,
        state_input: str | None = None,
        time_input: str | None = None,
        output: str | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        guidance_mode: str = "batched",
        memory_limit: int | None = None,
        num_inference_steps: int | None = None,
        spacing: str | None = None,
        steps_offset: int = 0,
        **options,
    ):
        if mode not in MODES:
            raise OptionError("mode", mode, list(MODES))
        check_noise(noise)
        self.seed = check_seed(seed)
        self.mode, self.noise = mode, noise
        self.cuda_graph = bool(cuda_graph)
        self.batch = batch
        self.device_id = device_id
        self.memory_limit = memory_limit
        self.guidance = make_guidance(guidance_scale, guidance_rescale, guidance_mode)
        sess_kw = dict(device_id=device_id, use_tf32=use_tf32, threads=threads)
        walk = (num_inference_steps, spacing, steps_offset)
        sampler_file = None  # (model, path, metadata) of a complete refdiff sampler file
        if isinstance(model, ModelBytes):  # a file read once by the caller (refdiff sample)
            if model.is_sampler_file:
                sampler_file = (model.data, model.path, model.metadata)
            else:
                model = model.path if model.path is not None else model.data
        if sampler_file is None and not isinstance(model, DenoiserModel):
            proto, path = load_model(model)
            meta = {p.key: p.value for p in proto.metadata_props}
            if meta.get(PREFIX + "kind") == "sampler":
                sampler_file = (proto, path, meta)
            else:
                model = proto if path is None else path
        if sampler_file is not None:
            if self.guidance is not None:
                raise InputError("guidance_scale", "a sampler file has its guidance baked in")
            opts = {**options, **_walk_options(*walk)}
            self._init_sampler_model(
                *sampler_file, schedule, sampler, mode, opts, provider, sess_kw
            )
            return
        self.denoiser = open_denoiser(
            model,
            prediction_type=prediction_type,
            timestep_convention=timestep_convention,
            state_input=state_input,
            time_input=time_input,
            output=output,
        )
        self.extras = self.denoiser.signature.extra_inputs
        meta = self.denoiser.signature.metadata
        if schedule is None and (sampler != "flow_euler" or PREFIX + "schedule" in meta):
            schedule = _schedule_of(meta, self.denoiser.label)
        if any(v not in (None, 0) for v in walk) and sampler not in ("ddpm", "ddim"):
            raise InputError(
                "num_inference_steps",
                f"{sampler} takes its steps from sigmas= (refdiff.sigma, refdiff.flow), "
                "not from a respaced schedule",
            )
        if schedule is not None:
            schedule = _walked(schedule, *walk)
        self.schedule = schedule
        self.tables = step_tables(
            schedule, sampler, prediction_type=self.denoiser.prediction_type, **options
        )
        self._check_cuda_graph(mode, batch, noise)
        self.state_shape = None if state_shape is None else tuple(int(s) for s in state_shape)
        self.dims = state_dims(self.denoiser, batch, self.state_shape)
        cg = dict(cuda_graph=self.cuda_graph)
        build = dict(
            noise=noise,
            seed=self.seed,
            batch=batch,
            state_shape=self.state_shape,
            guidance=self.guidance,
        )
        if mode == "steps":
            self.den_session = make_session(
                _source(self.denoiser), provider, **sess_kw, **cg, shared_arena=True
            )
            self.provider = session_provider(self.den_session)
            step = step_model(self.denoiser, self.tables, **build)
            self._partial_in_output = self._partial_fits(step)
            if self._partial_in_output:
                step.graph.output.append(tensor_info(PARTIAL, np.float32, self.dims))
            self.step_session = make_session(
                step, self.provider, **sess_kw, **cg, shared_arena=True
            )
        elif mode == "fused":
            step = fused_step_model(self.denoiser, self.tables, **build)
            self.step_session = make_session(step, provider, **sess_kw, **cg)
            self.provider = session_provider(self.step_session)
        else:
            self.graph_model = sampler_model(self.denoiser, self.tables, **build)
            run_model = self.graph_model
            cpu = resolve_provider(provider, device_id, warn=False) == "cpu"
            sample_dims = self.dims[1:]
            large = not all(isinstance(d, int) for d in sample_dims) or (
                4 * math.prod(sample_dims) >= CHUNKED_NOISE_SAMPLE_BYTES
            )
            if noise == "graph" and self.tables.noisy and cpu and large:
                # CPU: the in-graph noise is drawn a chunk of steps at a time (noise_model, the
                # same seeds and order) and the host-noise graph runs on it in place, so no
                # Loop holds x_T beside its carried state (docs/deploy.md, "Memory")
                run_model = sampler_model(self.denoiser, self.tables, **{**build, "noise": "input"})
                self._noise_session = make_session(noise_model(self.dims, self.seed), "cpu")
            self.graph_session = make_session(run_model, provider, **sess_kw)
            self.provider = session_provider(self.graph_session)
            self._graph_inputs = {i.name: i for i in self.graph_session.get_inputs()}
            self._graph_in_place = self.provider == "cpu" and _scan_updates_in_place(
                run_model.graph
            )
        # CPU: one state buffer, updated in place, when the step graph has read all of x
        # before it writes x_next (one state less than ping-pong; docs/deploy.md, "Memory").
        # CUDA keeps the ping-pong pair (unmeasured there; CUDA graphs capture both).
        self._in_place = (
            mode != "graph" and self.provider == "cpu" and may_alias(step.graph, "x", "x_next")
        )

    def _partial_fits(self, step) -> bool:
        """CPU, per-step loop: A_k x + B_k o can go into the denoiser's output buffer (same
        shape and type, and the graph reads all of o before writing it): one state less."""
        return (
            self.provider == "cpu"
            and self.guidance is None
            and self.denoiser.signature.output_dtype == np.float32
            and may_alias(step.graph, "model_output", PARTIAL)  # False when it is not made
        )

    def _check_cuda_graph(self, mode: str, batch, noise: str) -> None:
        if not self.cuda_graph:
            return
        if mode == "graph":
            raise InputError(
                "cuda_graph", "CUDA graphs cannot hold a Loop; use mode='steps' or 'fused'"
            )
        if batch is None:
            raise InputError("batch", "cuda_graph=True needs a fixed batch size")
        if noise == "graph" and self.tables.noisy:
            raise InputError(
                "noise",
                "in-graph noise would replay the same draws under a CUDA graph; use noise='input'",
            )

    def _init_sampler_model(
        self, proto, path, meta, schedule, sampler, mode, options, provider, sess_kw
    ):
        label = str(path) if path is not None else "<model>"
        if schedule is not None or options or mode == "fused":
            raise InputError(
                "model",
                f"{label} is a complete sampler (schedule, sampler and options are baked in)",
            )
        if self.cuda_graph:
            raise InputError("cuda_graph", "CUDA graphs cannot hold a Loop")
        self.mode = "graph"
        self.noise = meta.get(PREFIX + "noise", "input")
        self.denoiser = None
        self.extras = ()
        self._label = label
        if PREFIX + "schedule" not in meta:
            raise SignatureError(
                label, "a refdiff sampler model without its refdiff.schedule metadata"
            )
        self.schedule = _schedule_of(meta, label)
        try:
            info = json.loads(meta.get(PREFIX + "sampler", "{}"))
        except (ValueError, RecursionError) as e:  # corrupted metadata: a typed file error
            raise SignatureError(label, f"refdiff.sampler metadata is malformed ({e})") from None
        self.tables = None
        self.sampler_info = info
        # a σ-view sampler file: its steps and x_T scale come from its σ grid
        sig = (info.get("options") or {}).get("sigmas") if isinstance(info, dict) else None
        self._file_steps = None if sig is None else len(sig) - 1
        flow = isinstance(info, dict) and info.get("name") == "flow_euler"
        self._file_x_T_scale = 1.0 if sig is None or flow else float(sig[0])
        self.graph_model = proto
        self.graph_session = make_session(proto, provider, **sess_kw)
        self.provider = session_provider(self.graph_session)
        ins = {i.name: i for i in self.graph_session.get_inputs()}
        self._graph_inputs = ins
        self.dims = list(
            ins["x_T"].shape if "x_T" in ins else self.graph_session.get_outputs()[0].shape
        )

    @property
    def num_steps(self) -> int:
        if self.tables is not None:
            return self.tables.N
        return self._file_steps if self._file_steps is not None else self.schedule.T

    @property
    def noisy(self) -> bool:
        if self.tables is not None:
            return self.tables.noisy
        return "step_noise" in self._graph_inputs

    # -- shapes and memory ------------------------------------------------------------------
    def _shape(self, shape, x_T) -> tuple[int, ...]:
        if x_T is not None:
            return tuple(np.shape(x_T))
        if shape is None:
            raise InputError("shape", "give shape= (B, *S), a batch size, or x_T=")
        if isinstance(shape, int | np.integer) and not isinstance(shape, bool):
            if not all(isinstance(d, int) for d in self.dims[1:]):
                raise InputError(
                    "shape",
                    f"the model's state {tuple(self.dims)} has open dims; give the full shape",
                )
            shape = (int(shape), *self.dims[1:])
        try:
            return tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise InputError(
                "shape", f"must be a batch size or a tuple of ints; got {shape!r}"
            ) from None

    def _check_state_shape(self, shape: tuple[int, ...], name: str) -> None:
        if (
            len(shape) != len(self.dims)
            or any(isinstance(d, int) and d != s for d, s in zip(self.dims, shape))
            or min(shape, default=0) < 1
        ):
            raise ShapeError(
                name, f"shape {shape} does not fit the model's state {tuple(self.dims)}"
            )

    def _host_chunk(self, shape: tuple[int, ...]) -> int:
        """Steps of host noise per ``"graph"``-mode run (≥ 1, ≤ N)."""
        per_step = 4 * math.prod(shape)
        return int(min(self.num_steps, max(1, HOST_CHUNK_BYTES // per_step)))

    @functools.cached_property
    def _model_size(self) -> int:
        """Bytes of the model (once: ``ByteSize`` of a protobuf costs ~0.6 ms for the small
        MLP, every ``sample`` call paid it)."""
        model = self.graph_model if self.denoiser is None else self.denoiser.model
        return len(model) if isinstance(model, bytes) else model.ByteSize()

    def memory_estimate(self, shape: tuple[int, ...]) -> int:
        """Estimated peak bytes of a run on ``shape``: the model's weights (held by onnx and by
        onnxruntime) plus the sampler's float32 states (docs/deploy.md, "Memory"); the
        denoiser's activations are not counted."""
        state = 4 * math.prod(shape)
        g = self.guidance
        wide = 2 if g is not None and g.mode == "batched" else 1  # a 2B denoiser call
        outs = 2 if g is not None else 1
        host_noise = self.noisy and (self.noise == "input" or self._noise_session is not None)
        if self.mode == "graph":
            if host_noise:  # the noise chunk; the state in place, or the run's input state,
                # the Scan's output and the result
                noise = self._host_chunk(shape)
                x = 1 if self._graph_in_place else 3
            else:  # in-graph: one step's S·z (a large state makes one-step chunks), and x_T,
                noise = (1 if self.noisy else 0) + (self.noise == "graph")  # held by the Loop
                x = 3
            # the update's temporaries (B·o, S·z, their sum; A·x)
            states = x + noise + (2 * wide + outs if g is not None else 3)
        else:  # the state (one buffer in place on CPU, else two), the noise, the model's
            # outputs, the 2B model input of batched guidance, the update's 2 temporaries
            x = 1 if self._in_place else 2
            states = x + (1 if host_noise else 0) + (2 * wide if wide > 1 else 0) + outs * wide
            states += 2
        if self.tables is not None and self.tables.multistep:
            states += 2  # m, ping-pong
        size = self._model_size
        extra = 0  # conditioning arrays: cond, uncond and their 2B stack (batched guidance)
        for e in self.extras:
            if e.batched and e.shape is not None:
                per = math.prod(d for d in e.shape[1:] if d is not None)
                extra += e.dtype.itemsize * per * shape[0] * (1 if g is None else 4)
        return int(states * state + extra + 2 * size)

    # -- sampling ---------------------------------------------------------------------------
    def sample(
        self,
        x_T=None,
        step_noise=None,
        *,
        shape=None,
        seed: int | None = None,
        cond: Mapping | None = None,
        uncond: Mapping | None = None,
        progress: bool = False,
        callback: Callable[[int, int, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Run the sampler; returns x_0 as float32 (B, *S).

        Give ``x_T`` (and ``step_noise`` (N, B, *S) when the sampler adds noise and
        ``noise="input"``), or ``shape`` (or just the batch size B) and ``seed`` to draw them on
        the host in the layout of :mod:`refdiff.export.noise` (one step at a time; ``seed``
        None: fresh entropy).  With in-graph noise in ``"graph"`` mode only the batch size is
        used.  ``cond`` / ``uncond``: the conditioning inputs (name → array, batch 1 or B; see
        :func:`refdiff.export.conditioning.prepare_conditioning`).  ``progress`` shows a tqdm
        bar (per-step modes); ``callback(k, t, x)`` gets each state (copied to the host: slow).
        """
        shape = self._shape(shape, x_T)
        self._check_state_shape(shape, "x_T" if x_T is not None else "shape")
        check_memory(self.memory_estimate(shape), f"sampling {shape}", limit=self.memory_limit)
        conds = self._conditioning(cond, uncond, shape[0])
        if self.mode == "graph" and self.noise == "graph":
            if x_T is not None or step_noise is not None:
                raise InputError(
                    "x_T", "this sampler draws its noise in-graph; pass shape= or a batch size"
                )
            if self._noise_session is None:
                return self._run_graph({"batch_size": np.array(shape[0], np.int64), **conds})
            return self._run_graph_chunks(*self._graph_noise_plan(shape), conds)
        x_T, fill = self._noise_plan(shape, x_T, step_noise, seed)
        if self.mode == "graph":
            state = [x_T]  # handed over: the chunk runs drop x_T after the first one
            del x_T

            def fill_chunk(start: int, out: np.ndarray) -> None:
                for j in range(out.shape[0]):
                    fill(start + j, out[j])

            return self._run_graph_chunks(state, None if fill is None else fill_chunk, conds)
        return self._run_loop(x_T, fill, conds, progress, callback)

    __call__ = sample

    def _conditioning(self, cond, uncond, batch: int) -> dict:
        """Graph feeds of the conditioning inputs (names as the fused/sampler graphs take them)."""
        if self.denoiser is None:  # a sampler file: its extra inputs by name
            known = ("x_T", "step_noise", "step_start", "batch_size")
            feeds = {}
            for name in self._graph_inputs:
                if name in known:
                    continue
                src = uncond if name.startswith(UNCOND_PREFIX) else cond
                key = name[len(UNCOND_PREFIX) :] if name.startswith(UNCOND_PREFIX) else name
                if not src or key not in src:
                    raise InputError("cond", f"this sampler file needs the input {name!r}")
                feeds[name] = cast_input(  # to the graph input's type, with the typed errors
                    f"{'uncond' if src is uncond else 'cond'}[{key!r}]",
                    src[key],
                    _ORT_TYPES.get(self._graph_inputs[name].type, np.dtype(np.float32)),
                )
            return feeds
        c, u = prepare_conditioning(self.extras, cond, uncond, self.guidance, batch)
        feeds = dict(c)
        if u is not None:
            feeds.update({UNCOND_PREFIX + k: v for k, v in u.items()})
        return feeds

    def _noise_plan(self, shape, x_T, step_noise, seed):
        """(x_T float32, fill(k, out) writing step k's float32 noise into out, or None)."""
        needs = self.noisy and self.noise == "input"
        if x_T is None:
            if step_noise is not None:
                raise InputError("x_T", "step_noise was given without x_T")
            if seed is None:
                seed = new_seed()
            stream = NoiseStream(seed, (1, *shape[1:]))  # checks the seed
            x_T = fill_noise(np.empty(shape, np.float32), stream.seed, 0)
            scale = self._file_x_T_scale if self.tables is None else self.tables.x_T_scale
            if scale != 1.0:  # σ-view samplers: x_T = σ_0 z
                x_T = (x_T.astype(np.float64) * scale).astype(np.float32)
            if not needs:
                return x_T, None
            return x_T, lambda k, out: fill_noise(out, stream.seed, k + 1)
        x_T = as_float_array(x_T, "x_T").astype(np.float32)
        if not needs:
            return x_T, None
        if step_noise is None:
            raise InputError(
                "step_noise", "this sampler adds noise: pass step_noise (N, B, *S) with x_T"
            )
        z = np.asarray(step_noise)
        if z.dtype.kind != "f":
            as_float_array(z[:1], "step_noise")  # the typed dtype error
        if z.shape != (self.num_steps, *shape):
            raise ShapeError("step_noise", f"shape {z.shape} is not (N={self.num_steps}, *{shape})")
        for k in range(z.shape[0]):  # a slice at a time: no float64 copy of (N, B, *S)
            if not np.isfinite(z[k]).all():
                raise NonFiniteError("step_noise", f"has NaN or Inf (step {k})")

        def fill(k, out):
            out[...] = z[k]
            return out

        return x_T, fill

    # -- the whole-sampler graph ------------------------------------------------------------
    def _graph_noise_plan(self, shape: tuple[int, ...]):
        """([x_T], fill_chunk) drawing the in-graph noise (CPU graph mode): x_T is drawn with
        the first chunk's step noise, in one run of the noise session, before the first run
        of the sampler graph reads it."""
        x_T = np.empty(shape, np.float32)
        pending = [x_T]

        def fill_chunk(start: int, out: np.ndarray) -> None:
            x = pending.pop() if pending else np.empty((0, *shape[1:]), np.float32)
            self._draw(x, out)
            if x.shape[0] and self.tables.x_T_scale != 1.0:  # σ-view: x_T = σ_0 z, in float32
                np.multiply(x, np.float32(self.tables.x_T_scale), out=x)  # as the graph does

        return [x_T], fill_chunk

    def _draw(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import onnxruntime as ort

        io = self._noise_session.io_binding()  # the outputs overwrite their shape sources
        for name, a in (("x_T", x), ("step_noise", z)):
            v = ort.OrtValue.ortvalue_from_numpy(a)
            io.bind_ortvalue_input("like_" + name, v)
            io.bind_ortvalue_output(name, v)
        self._noise_session.run_with_iobinding(io)
        return x, z

    def _run_graph_chunks(self, state: list, fill_chunk, conds: dict) -> np.ndarray:
        """Run the sampler graph on chunks of steps with a bounded noise chunk each.

        ``state``: [x_T], emptied here, so that only the current chunk's input state stays
        alive (each run's result is the next run's input; the caller keeps no reference).
        ``fill_chunk(start, out)`` writes the noise of steps start … start + len(out) − 1."""
        sess = self.graph_session  # step_start has a default: an overridable initializer
        ins = {i.name for i in (*sess.get_inputs(), *sess.get_overridable_initializers())}
        x = state.pop()
        if fill_chunk is None:
            return self._run_graph({"x_T": x, **conds})
        N = self.num_steps
        if "step_start" not in ins:  # a sampler file written before step_start: all at once
            z = np.empty((N, *x.shape), np.float32)
            fill_chunk(0, z)
            return self._run_graph({"x_T": x, "step_noise": z, **conds})
        K = self._host_chunk(x.shape)
        buf = np.empty((K, *x.shape), np.float32)
        for start in range(0, N, K):
            n = min(K, N - start)
            fill_chunk(start, buf[:n])
            feeds = {"x_T": x, "step_noise": buf[:n], "step_start": np.array(start, np.int64)}
            if self._graph_in_place:  # x_0 written over x_T: one state buffer for all runs
                x = self._run_graph(feeds | conds, out=x)
                continue
            del x  # the feeds hold it; released as soon as the run has its result
            x = self._run_graph(feeds | conds)
            del feeds
        return x

    def _run_graph(self, feeds: dict, out: np.ndarray | None = None) -> np.ndarray:
        """One run of the sampler graph; ``out``: a float32 array (CPU) that x_0 is written
        into (IO binding), e.g. the x_T of this very run."""
        from .model_io import CorruptModelError

        label = getattr(self, "_label", "<model>")
        try:
            if out is None:
                out = _interruptible_run(self.graph_session, ["x_0"], feeds)
            else:
                _interruptible_run(self.graph_session, None, _bound(self.graph_session, feeds, out))
        except KeyboardInterrupt:
            raise
        except ValueError as e:  # onnxruntime: the graph's inputs are not what its metadata says
            raise CorruptModelError(label, f"inputs do not match the metadata: {e}") from None
        except Exception as e:  # onnxruntime's own errors: feeds are checked, so the file is bad
            _raise_ort_failure(e, label, "onnxruntime failed running it")
        return _finite(out, label)

    # -- the per-step loop ------------------------------------------------------------------
    def _run_loop(self, x_T: np.ndarray, fill, conds: dict, progress: bool, callback):
        if self.cuda_graph and x_T.shape[0] != self.batch:
            raise ShapeError(
                "x_T", f"batch {x_T.shape[0]} differs from the captured batch {self.batch}"
            )
        buf = self._allocate(x_T, fill is not None, conds)
        binds = self._bindings(buf)
        return self._drive(binds, buf, fill, x_T.shape, progress, callback)

    def _allocate(self, x_T: np.ndarray, noisy: bool, conds: dict) -> _Buffers:
        """Stage 1: every device buffer the loop binds (states, counter, noise, model I/O)."""
        import onnxruntime as ort

        dev, did = self.provider, self.device_id

        def value(a):
            return ort.OrtValue.ortvalue_from_numpy(np.array(a, order="C", copy=True), dev, did)

        def empty(shape, dtype):
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, dev, did)

        x0 = ort.OrtValue.ortvalue_from_numpy(x_T, dev, did)  # x_T is ours: no copy on CPU
        x_host = None
        if dev == "cpu":  # both ping-pong states are arrays we own: the result is one of them
            x_host = [x_T, x_T if self._in_place else np.empty_like(x_T)]
            x = [x0, ort.OrtValue.ortvalue_from_numpy(x_host[1], dev, did)]
            if any(v.data_ptr() != h.ctypes.data for v, h in zip(x, x_host)):
                x_host = None  # not aliased after all: copy the result out below
        else:
            x = [x0, empty(x_T.shape, np.float32)]
        k = [value(np.array(0, np.int64)), empty((), np.int64)]
        m = None
        if self.tables.multistep:
            m = [value(np.zeros_like(x_T)), empty(x_T.shape, np.float32)]
        z = z_host = None
        if noisy:
            z_host = np.zeros(x_T.shape, np.float32)
            z = ort.OrtValue.ortvalue_from_numpy(z_host, dev, did)
            if dev != "cpu" or z.data_ptr() != z_host.ctypes.data:
                z_host = _Upload(z, z_host)  # a host buffer copied to the device each step
        if self.mode == "fused":
            extras = {"step": {n: value(a) for n, a in conds.items()}}
            return _Buffers(x, k, z, z_host, [], [], [], extras, m, x_host)
        den, g = self.denoiser, self.guidance
        sig = den.signature
        B = x_T.shape[0]
        batched = g is not None and g.mode == "batched"
        mB = 2 * B if batched else B
        mshape = (mB, *x_T.shape[1:])
        t0 = model_time_table(den, self.tables)[0]
        t0 = {"scalar": np.asarray(t0), "one": np.asarray([t0]), "batch": np.full(mB, t0)}[
            sig.time_shape
        ]
        tm = [value(t0.astype(sig.time_dtype)), empty(t0.shape, sig.time_dtype)]
        if sig.state_dtype != np.float32 or batched or self.tables.c_in is not None:
            xm0 = x_T
            if self.tables.c_in is not None:  # σ-view: the model sees c_in,0 · x_T
                xm0 = (np.float32(self.tables.c_in[0]) * x_T).astype(np.float32)
            xm0 = np.concatenate([xm0, xm0]) if batched else xm0
            xm = [value(xm0.astype(sig.state_dtype)), empty(mshape, sig.state_dtype)]
        else:
            xm = x
        outs = [empty(mshape, sig.output_dtype)]
        c = {e.name: conds[e.name] for e in self.extras}
        u = {e.name: conds.get(UNCOND_PREFIX + e.name) for e in self.extras}
        if g is None:
            extras = {"cond": {n: value(a) for n, a in c.items()}}
        elif batched:
            extras = {
                "cond": {n: value(a) for n, a in stack_conditioning(self.extras, c, u).items()}
            }
        else:
            outs.append(empty(mshape, sig.output_dtype))
            extras = {
                "cond": {n: value(a) for n, a in c.items()},
                "uncond": {n: value(a) for n, a in u.items()},
            }
        return _Buffers(x, k, z, z_host, xm, tm, outs, extras, m, x_host)

    def _bindings(self, buf: _Buffers) -> list:
        """Stage 2: per parity p, the (session, io_binding) runs of one step."""
        step = self.step_session
        binds = []
        for p in (0, 1):
            sio = step.io_binding()
            sio.bind_ortvalue_input("x", buf.x[p])
            if buf.z is not None:
                sio.bind_ortvalue_input("z", buf.z)
            sio.bind_ortvalue_input("k", buf.k[p])
            sio.bind_ortvalue_output("x_next", buf.x[1 - p])
            sio.bind_ortvalue_output("k_next", buf.k[1 - p])
            if buf.m is not None:
                sio.bind_ortvalue_input("m", buf.m[p])
                sio.bind_ortvalue_output("m_next", buf.m[1 - p])
            if self.mode == "fused":
                for n, v in buf.extras["step"].items():
                    sio.bind_ortvalue_input(n, v)
                binds.append(((step, sio),))
                continue
            sig = self.denoiser.signature
            runs = []
            for j, out in enumerate(buf.outs):
                dio = self.den_session.io_binding()
                dio.bind_ortvalue_input(sig.state_input, buf.xm[p])
                dio.bind_ortvalue_input(sig.time_input, buf.tm[p])
                for n, v in buf.extras["cond" if j == 0 else "uncond"].items():
                    dio.bind_ortvalue_input(n, v)
                dio.bind_ortvalue_output(sig.output, out)
                runs.append((self.den_session, dio))
            sio.bind_ortvalue_input("model_output", buf.outs[0])
            if self._partial_in_output:
                sio.bind_ortvalue_output(PARTIAL, buf.outs[0])
            if len(buf.outs) == 2:
                sio.bind_ortvalue_input("model_output_uncond", buf.outs[1])
            if buf.xm is not buf.x:
                sio.bind_ortvalue_output("x_model", buf.xm[1 - p])
            sio.bind_ortvalue_output("t_model", buf.tm[1 - p])
            binds.append((*runs, (step, sio)))
        return binds

    def _run_options(self) -> list:
        if not self.cuda_graph:
            return [None, None]
        import onnxruntime as ort

        opts = []
        for p in (0, 1):  # one captured graph per binding (ping and pong)
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", str(p + 1))
            opts.append(ro)
        return opts

    def _drive(self, binds, buf: _Buffers, fill, shape, progress: bool, callback) -> np.ndarray:
        """Stage 3: N steps: upload step k's noise, run the bindings, report progress."""
        N = self.num_steps
        label = self.denoiser.label
        run_opts = self._run_options()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            desc = f"{self.tables.sampler} on {self.provider}"
            bar = tqdm(total=N, unit="step", desc=desc, leave=False)
        try:
            for i in range(N):
                p = i % 2
                if fill is not None:
                    _fill_step(buf.z_host, fill, i)
                for j, (sess, io) in enumerate(binds[p]):
                    try:
                        sess.run_with_iobinding(io, run_opts[p])
                    except Exception as e:  # noqa: BLE001 - mapped to typed errors
                        if i == 0 and j == 0 and self.mode == "steps":  # the user's model failed
                            raise SignatureError(
                                label,
                                f"the denoiser failed on a state of shape {shape}: "
                                f"{str(e).splitlines()[0]}",
                            ) from None
                        _raise_ort_failure(e, label, f"onnxruntime failed at step {i + 1} of {N}")
                if bar is not None:
                    bar.update(1)
                if callback is not None:
                    callback(i, N - i - 1, np.array(buf.x[1 - p].numpy(), copy=True))
        finally:
            if bar is not None:
                bar.close()
        if buf.x_host is not None:  # CPU: the final state already lies in an array we own
            return _finite(buf.x_host[N % 2], label)
        out = buf.x[N % 2].numpy()
        if not out.flags.owndata:  # a view of onnxruntime's buffer: copy it out once
            out = out.copy()
        return _finite(out, label)


class _Upload:
    """A host buffer whose contents go to a device OrtValue after each fill (CUDA)."""

    def __init__(self, value, host: np.ndarray):
        self.value, self.host = value, host


def _fill_step(target, fill, k: int) -> None:
    if isinstance(target, _Upload):
        fill(k, target.host)
        target.value.update_inplace(target.host)
    else:  # the OrtValue aliases this host array (CPU)
        fill(k, target)


_WORKER = None  # one long-lived thread for whole-graph runs (module doc, Ctrl-C)


def _scan_updates_in_place(graph) -> bool:
    """True for refdiff's host-noise sampler graph (one ``Scan`` making x_0 from x_T) when its
    step body reads all of x_k before it writes x_next: a run may then write x_0 over x_T.
    onnxruntime's Scan feeds step j the previous step's output (x_T first) and writes the
    last step's into x_0, so at no step is a state read after the body has written over it
    (a multistep body, whose m_next reads x_k after, fails the check)."""
    scans = [n for n in graph.node if n.op_type == "Scan" and n.output[0] == "x_0"]
    if len(scans) != 1 or scans[0].input[0] != "x_T":
        return False
    (body,) = [a.g for a in scans[0].attribute if a.name == "body"]
    return may_alias(body, body.input[0].name, body.output[0].name)


def _bound(session, feeds: dict, out: np.ndarray):
    """An IO binding of ``feeds`` (host arrays, not copied) with x_0 bound to ``out``."""
    import onnxruntime as ort

    io = session.io_binding()
    for name, value in feeds.items():
        io.bind_ortvalue_input(
            name, ort.OrtValue.ortvalue_from_numpy(np.require(value, requirements="C"))
        )
    target = ort.OrtValue.ortvalue_from_numpy(out)
    if target.data_ptr() != out.ctypes.data:  # not aliased: the result would not land in out
        raise RuntimeError("onnxruntime copied the output buffer")
    io.bind_ortvalue_output("x_0", target)
    return io


def _interruptible_run(session, outputs: list | None, feeds):
    """``session.run`` (``outputs`` None: ``run_with_iobinding`` of the binding ``feeds``) in
    a worker thread, so Ctrl-C in the main thread cancels it (``RunOptions.terminate``)
    instead of waiting for the whole sampler.

    The thread is reused: a fresh thread per run would get a fresh malloc arena each time,
    and the memory freed in it is not returned (measured: RSS grew with every run)."""
    global _WORKER
    import concurrent.futures

    import onnxruntime as ort

    if _WORKER is None:
        _WORKER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="refdiff-ort")
    ro = ort.RunOptions()
    ro.log_severity_level = 4  # a cancelled run is not an error worth onnxruntime's log line
    if outputs is None:
        fut = _WORKER.submit(session.run_with_iobinding, feeds, ro)
    else:
        fut = _WORKER.submit(session.run, outputs, feeds, ro)
    try:  # a blocking wait (a lock acquire): Ctrl-C interrupts it; polling would add ~10 ms
        result = fut.result()
        return None if outputs is None else result[0]
    except KeyboardInterrupt:
        ro.terminate = True
        concurrent.futures.wait([fut])
        raise


def _walk_options(num_inference_steps, spacing, steps_offset) -> dict:
    """The respacing arguments that were given (a sampler file refuses them)."""
    given = dict(
        num_inference_steps=num_inference_steps, spacing=spacing, steps_offset=steps_offset
    )
    return {k: v for k, v in given.items() if v not in (None, 0)}


def _walked(schedule: Schedule, num_inference_steps, spacing, steps_offset) -> Schedule:
    """``schedule`` respaced to ``num_inference_steps`` (docs/math.md eq. 2.9), as diffusers'
    ``set_timesteps``: ``spacing`` leading (default) | trailing | linspace | sections."""
    if num_inference_steps is None:
        if spacing is not None or steps_offset:
            arg = "spacing" if spacing is not None else "steps_offset"
            raise InputError(arg, "has no effect without num_inference_steps")
        return schedule
    from .schedules import respaced

    names = {"steps": "num_inference_steps"}
    return respaced(schedule, num_inference_steps, spacing or "leading", steps_offset, names=names)


def _raise_ort_failure(e: Exception, label: str, what: str):
    """Re-raise an onnxruntime error as a typed CorruptModelError naming the model.

    Inputs are checked before a run, so an onnxruntime failure is the model's: its own error
    types, or the RuntimeError that ``run_with_iobinding`` wraps them in.  Anything else
    propagates unchanged.
    """
    from .model_io import CorruptModelError

    if not (type(e).__module__.startswith("onnxruntime") or isinstance(e, RuntimeError)):
        raise e
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise CorruptModelError(label, f"{what}: {first}") from None


def _finite(out: np.ndarray, label: str) -> np.ndarray:
    """The sample, or NonFiniteError when the model produced NaN/Inf (every mode alike)."""
    with np.errstate(over="ignore", invalid="ignore"):  # a finite sum proves every value
        finite = math.isfinite(float(np.add.reduce(out, axis=None, dtype=np.float64)))
    if not finite and not np.isfinite(out).all():  # no boolean temporary unless needed
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        raise NonFiniteError("model", f"{label} returned NaN or Inf ({bad} of {out.size} values)")
    return out


def sample(model: object, schedule: Schedule | None = None, shape=None, **kwargs) -> np.ndarray:
    """One-shot :class:`OrtSampler` (``kwargs``: its arguments plus ``x_T``, ``step_noise``,
    ``seed``, ``cond``, ``uncond``, ``progress``, ``callback`` of :meth:`OrtSampler.sample`);
    float32 x_0."""
    run_keys = ("x_T", "step_noise", "progress", "callback", "cond", "uncond")
    run_kw = {k: kwargs.pop(k) for k in run_keys if k in kwargs}
    seed = kwargs.pop("seed", None)
    if kwargs.get("noise") == "graph" and seed is not None:
        kwargs["seed"] = seed
    s = OrtSampler(model, schedule, **kwargs)
    return s.sample(shape=shape, seed=seed, **run_kw)
