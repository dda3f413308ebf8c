"""Sampling on onnxruntime: DDPM/DDIM with any denoiser ONNX file, ours or a user's.

:class:`OrtSampler` runs the sampler of :mod:`refdiff.export.tables` in one of three modes:

``"steps"``  two sessions per step: the user's denoiser as it is, then refdiff's step graph
             (:func:`refdiff.export.step_model`), which also computes the denoiser's next
             inputs (state cast to its type, its timestep).  Works with any denoiser file.
``"fused"``  one session per step: the denoiser embedded in the step graph.
``"graph"``  one session run for the whole sampler (``Loop``; :func:`refdiff.export.sampler_model`).

The per-step modes bind every tensor once with IO binding (``OrtValue`` buffers on the
device, ping-pong between two bindings) and loop over ``run_with_iobinding``: the state,
the step counter and the noise never return to the host between steps.  The code path is the
same on CPU and CUDA (CI runs it on CPU).  On CUDA, ``cuda_graph=True`` captures each of the
two bindings as a CUDA graph (``gpu_graph_id`` 0 and 1) and replays them (fixed batch).

Noise: ``noise="input"`` feeds ``x_T`` and ``step_noise`` (N, B, *S) — given, or drawn on
the host from ``numpy.random.default_rng(seed)`` in the order of :mod:`refdiff.sampling`
(x_T first, then one slice per step, and no step noise for DDIM with η = 0), so the same seed
gives the reference sampler's noise.  ``noise="graph"`` draws the step noise in-graph
(``RandomNormalLike``); in ``"graph"`` mode x_T too, otherwise x_T comes from the host.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from refdiff._check import as_float_array
from refdiff.errors import InputError, NonFiniteError, OptionError, ShapeError
from refdiff.schedule import Schedule

from .metadata import PREFIX, schedule_from_json
from .model_io import DenoiserModel, SignatureError, load_model, open_denoiser
from .providers import make_session, session_provider
from .sampler_graph import sampler_model
from .steps import (
    check_noise,
    check_seed,
    fused_step_model,
    model_time_table,
    state_dims,
    step_model,
)
from .tables import step_tables

__all__ = ["MODES", "OnnxDenoiser", "OrtSampler", "sample"]

MODES = ("steps", "fused", "graph")


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

    @property
    def prediction_type(self) -> str:
        return self.denoiser.prediction_type

    def __call__(self, x, t) -> np.ndarray:
        sig = self.denoiser.signature
        xa = as_float_array(x, "x")
        ta = np.broadcast_to(np.asarray(t, dtype=np.int64), (xa.shape[0],))
        tm = self.denoiser.model_time(ta)
        if sig.time_shape != "batch":
            if np.any(ta != ta[0]):
                raise InputError(
                    "t",
                    f"the model takes one timestep for the batch ({sig.time_shape}); got several",
                )
            tm = tm[:1] if sig.time_shape == "one" else tm[0]
        feeds = {sig.state_input: xa.astype(sig.state_dtype), sig.time_input: np.asarray(tm)}
        out = self.session.run([sig.output], feeds)[0]
        return np.asarray(out, dtype=np.float64)


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
        options: sampler options (``eta``, ``clip``, ``variance_type``, …; tables module)
    """

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
        sess_kw = dict(device_id=device_id, use_tf32=use_tf32, threads=threads)
        if not isinstance(model, DenoiserModel):
            proto, path = load_model(model)
            meta = {p.key: p.value for p in proto.metadata_props}
            if meta.get(PREFIX + "kind") == "sampler":
                self._init_sampler_model(
                    proto, path, meta, schedule, sampler, mode, options, provider, sess_kw
                )
                return
            model = proto if path is None else path
        self.denoiser = open_denoiser(
            model,
            prediction_type=prediction_type,
            timestep_convention=timestep_convention,
            state_input=state_input,
            time_input=time_input,
            output=output,
        )
        if schedule is None:
            schedule = _schedule_of(self.denoiser.signature.metadata, self.denoiser.label)
        self.schedule = schedule
        self.tables = step_tables(
            schedule, sampler, prediction_type=self.denoiser.prediction_type, **options
        )
        if self.cuda_graph:
            if mode == "graph":
                raise InputError(
                    "cuda_graph", "CUDA graphs cannot hold a Loop; use mode='steps' or 'fused'"
                )
            if batch is None:
                raise InputError("batch", "cuda_graph=True needs a fixed batch size")
            if noise == "graph" and self.tables.noisy:
                raise InputError(
                    "noise",
                    "in-graph noise would replay the same draws under a CUDA graph; "
                    "use noise='input'",
                )
        self.state_shape = None if state_shape is None else tuple(int(s) for s in state_shape)
        self.dims = state_dims(self.denoiser, batch, self.state_shape)
        cg = dict(cuda_graph=self.cuda_graph)
        build = dict(noise=noise, seed=self.seed, batch=batch, state_shape=self.state_shape)
        if mode == "steps":
            self.den_session = make_session(_source(self.denoiser), provider, **sess_kw, **cg)
            self.provider = session_provider(self.den_session)
            self.step_session = make_session(
                step_model(self.denoiser, self.tables, **build), self.provider, **sess_kw, **cg
            )
        elif mode == "fused":
            self.step_session = make_session(
                fused_step_model(self.denoiser, self.tables, **build), provider, **sess_kw, **cg
            )
            self.provider = session_provider(self.step_session)
        else:
            self.graph_model = sampler_model(self.denoiser, self.tables, **build)
            self.graph_session = make_session(self.graph_model, provider, **sess_kw)
            self.provider = session_provider(self.graph_session)

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
        return self.schedule.T

    @property
    def noisy(self) -> bool:
        if self.tables is not None:
            return self.tables.noisy
        return "step_noise" in self._graph_inputs

    # -- noise ------------------------------------------------------------------------------
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

    def host_noise(self, shape: tuple[int, ...], seed: int | None):
        """(x_T, step_noise or None) drawn as :mod:`refdiff.sampling` draws them, float32."""
        rng = np.random.default_rng(seed)
        x_T = rng.standard_normal(shape)
        z = (
            rng.standard_normal((self.num_steps, *shape))
            if self.noisy and self.noise == "input"
            else None
        )
        return x_T.astype(np.float32), None if z is None else z.astype(np.float32)

    # -- sampling ---------------------------------------------------------------------------
    def sample(
        self,
        x_T=None,
        step_noise=None,
        *,
        shape=None,
        seed: int | None = None,
        progress: bool = False,
        callback: Callable[[int, int, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Run the sampler; returns x_0 as float32 (B, *S).

        Give ``x_T`` (and ``step_noise`` (N, B, *S) when the sampler adds noise and
        ``noise="input"``), or ``shape`` (or just the batch size B) and ``seed`` to draw them on
        the host as :mod:`refdiff.sampling` would.  With in-graph noise in ``"graph"`` mode only
        the batch size is used.  ``progress`` shows a tqdm bar (per-step modes);
        ``callback(k, t, x)`` gets each state (copied to the host: slow).
        """
        shape = self._shape(shape, x_T)
        self._check_state_shape(shape, "x_T" if x_T is not None else "shape")
        if self.mode == "graph" and self.noise == "graph":
            if x_T is not None or step_noise is not None:
                raise InputError(
                    "x_T", "this sampler draws its noise in-graph; pass shape= or a batch size"
                )
            return self._run_graph({"batch_size": np.array(shape[0], np.int64)})
        if x_T is None:
            if step_noise is not None:
                raise InputError("x_T", "step_noise was given without x_T")
            x_T, step_noise = self.host_noise(shape, seed)
        else:
            x_T = as_float_array(x_T, "x_T").astype(np.float32)
            if self.noisy and self.noise == "input":
                if step_noise is None:
                    raise InputError(
                        "step_noise", "this sampler adds noise: pass step_noise (N, B, *S) with x_T"
                    )
                step_noise = as_float_array(step_noise, "step_noise")
                if step_noise.shape != (self.num_steps, *shape):
                    raise ShapeError(
                        "step_noise",
                        f"shape {step_noise.shape} is not (N={self.num_steps}, *{shape})",
                    )
                step_noise = step_noise.astype(np.float32)
            else:
                step_noise = None
        if self.mode == "graph":
            feeds = {"x_T": x_T}
            if step_noise is not None:
                feeds["step_noise"] = step_noise
            return self._run_graph(feeds)
        return self._run_loop(x_T, step_noise, progress, callback)

    __call__ = sample

    def _run_graph(self, feeds: dict) -> np.ndarray:
        from .model_io import CorruptModelError

        label = getattr(self, "_label", "<model>")
        try:
            out = self.graph_session.run(["x_0"], feeds)[0]
        except ValueError as e:  # onnxruntime: the graph's inputs are not what its metadata says
            raise CorruptModelError(label, f"inputs do not match the metadata: {e}") from None
        except Exception as e:  # onnxruntime's own errors: feeds are checked, so the file is bad
            _raise_ort_failure(e, label, "onnxruntime failed running it")
        return _finite(out, label)

    def _run_loop(self, x_T: np.ndarray, step_noise, progress: bool, callback) -> np.ndarray:
        import onnxruntime as ort

        if self.cuda_graph and x_T.shape[0] != self.batch:
            raise ShapeError(
                "x_T", f"batch {x_T.shape[0]} differs from the captured batch {self.batch}"
            )
        dev, did = self.provider, self.device_id
        N, B = self.num_steps, x_T.shape[0]
        den = self.denoiser
        sig = den.signature

        def value(a):
            return ort.OrtValue.ortvalue_from_numpy(np.array(a, order="C", copy=True), dev, did)

        def empty(shape, dtype):
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, dev, did)

        x = [value(x_T), empty(x_T.shape, np.float32)]
        k = [value(np.array(0, np.int64)), empty((), np.int64)]
        noise = value(step_noise) if step_noise is not None else None
        run_opts = [None, None]
        if self.cuda_graph:  # one captured graph per binding (ping and pong)
            run_opts = []
            for p in (0, 1):
                ro = ort.RunOptions()
                ro.add_run_config_entry("gpu_graph_id", str(p + 1))
                run_opts.append(ro)
        step = self.step_session
        binds = []
        if self.mode == "fused":
            for p in (0, 1):
                io = step.io_binding()
                io.bind_ortvalue_input("x", x[p])
                if noise is not None:
                    io.bind_ortvalue_input("step_noise", noise)
                io.bind_ortvalue_input("k", k[p])
                io.bind_ortvalue_output("x_next", x[1 - p])
                io.bind_ortvalue_output("k_next", k[1 - p])
                binds.append(((step, io),))
        else:
            t0 = model_time_table(den, self.tables)[0]
            t0 = {"scalar": np.asarray(t0), "one": np.asarray([t0]), "batch": np.full(B, t0)}[
                sig.time_shape
            ]
            tshape = t0.shape
            tm = [value(t0.astype(sig.time_dtype)), empty(tshape, sig.time_dtype)]
            if sig.state_dtype != np.float32:
                xm = [value(x_T.astype(sig.state_dtype)), empty(x_T.shape, sig.state_dtype)]
            else:
                xm = x
            out = empty(x_T.shape, sig.output_dtype)
            dsess = self.den_session
            for p in (0, 1):
                dio = dsess.io_binding()
                dio.bind_ortvalue_input(sig.state_input, xm[p])
                dio.bind_ortvalue_input(sig.time_input, tm[p])
                dio.bind_ortvalue_output(sig.output, out)
                sio = step.io_binding()
                sio.bind_ortvalue_input("x", x[p])
                sio.bind_ortvalue_input("model_output", out)
                if noise is not None:
                    sio.bind_ortvalue_input("step_noise", noise)
                sio.bind_ortvalue_input("k", k[p])
                sio.bind_ortvalue_output("x_next", x[1 - p])
                if sig.state_dtype != np.float32:
                    sio.bind_ortvalue_output("x_model", xm[1 - p])
                sio.bind_ortvalue_output("t_model", tm[1 - p])
                sio.bind_ortvalue_output("k_next", k[1 - p])
                binds.append(((dsess, dio), (step, sio)))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=N, unit="step", desc=f"{self.tables.sampler} on {dev}", leave=False)
        try:
            for i in range(N):
                p = i % 2
                for j, (sess, io) in enumerate(binds[p]):
                    if i == 0 and j == 0 and self.mode == "steps":
                        try:
                            sess.run_with_iobinding(io, run_opts[p])
                        except Exception as e:  # noqa: BLE001 - the user's model failed on our inputs
                            raise SignatureError(
                                den.label,
                                f"the denoiser failed on a state of shape {x_T.shape}: "
                                f"{str(e).splitlines()[0]}",
                            ) from None
                    else:
                        try:
                            sess.run_with_iobinding(io, run_opts[p])
                        except Exception as e:  # noqa: BLE001 - mapped below when onnxruntime's
                            _raise_ort_failure(
                                e, den.label, f"onnxruntime failed at step {i + 1} of {N}"
                            )
                if bar is not None:
                    bar.update(1)
                if callback is not None:
                    callback(i, N - i - 1, np.array(x[1 - p].numpy(), copy=True))
        finally:
            if bar is not None:
                bar.close()
        return _finite(np.array(x[N % 2].numpy(), copy=True), den.label)  # .numpy() may alias


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
    if not np.isfinite(out).all():
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        raise NonFiniteError("model", f"{label} returned NaN or Inf ({bad} of {out.size} values)")
    return out


def sample(model: object, schedule: Schedule | None = None, shape=None, **kwargs) -> np.ndarray:
    """One-shot :class:`OrtSampler` (``kwargs``: its arguments plus ``x_T``, ``step_noise``,
    ``seed``, ``progress``, ``callback`` of :meth:`OrtSampler.sample`); float32 x_0."""
    run_kw = {
        k: kwargs.pop(k) for k in ("x_T", "step_noise", "progress", "callback") if k in kwargs
    }
    seed = kwargs.pop("seed", None)
    if kwargs.get("noise") == "graph" and seed is not None:
        kwargs["seed"] = seed
    s = OrtSampler(model, schedule, **kwargs)
    return s.sample(shape=shape, seed=seed, **run_kw)
