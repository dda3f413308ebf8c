"""Reading, checking and writing ONNX files; recognising a denoiser's signature.

Everything that can be wrong with a model file becomes a typed error before onnxruntime sees
it (docs/deploy.md, "Errors"):

- :class:`CorruptModelError`       truncated, corrupted, or not an ONNX model at all
- :class:`UnsupportedVersionError` IR version or opset newer than this onnxruntime loads
- :class:`ExternalDataError`       external-data paths that leave the model's folder, or missing
- :class:`SignatureError`          not a denoiser ``f(state, timestep) -> prediction``

All are :class:`refdiff.errors.FileFormatError` subclasses (``.path`` names the file).

Signature detection (:func:`inspect_denoiser`) accepts refdiff's own ``x``/``t`` and the
PyTorch/diffusers style ``sample``/``timestep``: a float state of rank ≥ 2 with the batch
first, a timestep that is int64/int32/float, either a scalar ``()``, a ``(1,)`` or per sample
``(B,)``, and any further inputs as conditioning (text embeddings ``encoder_hidden_states``,
class labels, time ids, …; :class:`ExtraInput`), supplied as arrays constant across steps.
Names are matched case-insensitively against
:data:`STATE_NAMES` and :data:`TIME_NAMES`; with other names the float rank ≥ 2 input is the
state.  What the output means (ε, x0, v) and which time convention the model uses are read
from the ``refdiff.*`` metadata, or must be given.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refdiff._io import write_bytes
from refdiff.errors import FileFormatError, OptionError
from refdiff.parameterization import PREDICTION_TYPES

from ._graph import END_KEY, numpy_dtype
from ._lazy import onnx
from .metadata import PREFIX, read_metadata

__all__ = [
    "CorruptModelError",
    "UnsupportedVersionError",
    "ExternalDataError",
    "SignatureError",
    "STATE_NAMES",
    "TIME_NAMES",
    "TIMESTEP_CONVENTIONS",
    "DenoiserSignature",
    "ExtraInput",
    "runtime_limits",
    "load_model",
    "save_model",
    "inspect_denoiser",
    "DenoiserModel",
    "open_denoiser",
]

STATE_NAMES = ("x", "x_t", "xt", "sample", "noisy_sample", "latent", "latents", "input", "z_t")
TIME_NAMES = ("t", "timestep", "timesteps", "time", "times", "ts")
TIMESTEP_CONVENTIONS = ("refdiff", "index")


class CorruptModelError(FileFormatError):
    """The file is truncated, corrupted, empty, or not an ONNX model."""


class UnsupportedVersionError(FileFormatError):
    """The model's IR version or opset is newer than the installed onnxruntime loads."""


class ExternalDataError(FileFormatError):
    """An external-data reference is absolute, leaves the model's folder, or is missing."""


class SignatureError(FileFormatError):
    """The model is not a denoiser f(state, timestep) -> prediction of a usable shape/type."""


@functools.lru_cache(maxsize=1)
def runtime_limits() -> tuple[int, int]:
    """(max IR version, max default-domain opset) that both onnx and onnxruntime support.

    Probed once by asking onnxruntime to load a one-node model stamped far too new and
    reading the limits from its refusal (onnxruntime has no API for them).
    """
    import onnxruntime as ort

    from ._lazy import TensorProto, helper

    def probe(ir: int, opset: int) -> str:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        g = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [x],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = ir
        so = ort.SessionOptions()
        so.log_severity_level = 4
        try:
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - we only read the message
            return str(e)
        return ""

    m_ir = re.search(r"max supported IR version: (\d+)", probe(99, 21))
    m_op = re.search(r"ai\.onnx is till opset (\d+)", probe(10, 999))
    max_ir = min(int(m_ir.group(1)) if m_ir else 10, onnx.IR_VERSION)
    max_opset = min(int(m_op.group(1)) if m_op else 21, onnx.defs.onnx_opset_version())
    return max_ir, max_opset


# -- reading --------------------------------------------------------------------------------
def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensors(a.g)
            for g in a.graphs:
                yield from _all_tensors(g)


def _check_external(model: onnx.ModelProto, base: Path | None, path: object) -> None:
    for t in _all_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if base is None:
            raise ExternalDataError(
                path,
                f"tensor {t.name!r} keeps its data in {loc!r}: load the model from its file path",
            )
        if not loc or os.path.isabs(loc) or Path(loc).drive:
            raise ExternalDataError(
                path, f"tensor {t.name!r}: external data path {loc!r} is absolute or empty"
            )
        root = os.path.realpath(base)
        target = os.path.realpath(os.path.join(root, loc))
        if os.path.commonpath([root, target]) != root:
            raise ExternalDataError(
                path, f"tensor {t.name!r}: external data path {loc!r} leaves the model's folder"
            )
        if not os.path.isfile(target):
            raise ExternalDataError(
                path, f"tensor {t.name!r}: external data file {loc!r} is missing"
            )
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > os.path.getsize(target):
            raise CorruptModelError(
                path, f"tensor {t.name!r}: external data file {loc!r} is truncated"
            )


def _check_versions(model: onnx.ModelProto, path: object) -> None:
    max_ir, max_opset = runtime_limits()
    if model.ir_version > max_ir:
        raise UnsupportedVersionError(
            path,
            f"IR version {model.ir_version} is newer than this onnxruntime loads "
            f"(max {max_ir}); re-export with IR <= {max_ir}",
        )
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > max_opset:
            raise UnsupportedVersionError(
                path,
                f"opset {op.version} is newer than this onnxruntime supports "
                f"(max {max_opset}); re-export with opset <= {max_opset}",
            )


def load_model(
    source: object, *, load_external_data: bool = True
) -> tuple[onnx.ModelProto, Path | None]:
    """Read and check an ONNX model: (``ModelProto``, its file path or None).

    ``source``: a path, the serialised bytes, or an ``onnx.ModelProto``.  Checks, in order:
    the file parses (:class:`CorruptModelError`), IR and opset are loadable
    (:class:`UnsupportedVersionError`), external data stays inside the model's folder
    (:class:`ExternalDataError`), ``onnx.checker`` passes, and a refdiff-written model still
    has its closing metadata entry (truncation at a field boundary).
    """
    path: Path | None = None
    if isinstance(source, onnx.ModelProto):
        model, label = source, "<ModelProto>"
    elif isinstance(source, bytes | bytearray | memoryview):
        model, label = _parse(bytes(source), "<bytes>"), "<bytes>"
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise FileFormatError(label, "no such file")
        data = path.read_bytes()
        model = _parse(data, label)
    else:
        raise OptionError("model", type(source).__name__, ["path", "bytes", "onnx.ModelProto"])
    if not model.HasField("graph") or model.ir_version <= 0:
        raise CorruptModelError(label, "no graph or no IR version: truncated, or not an ONNX model")
    _check_versions(model, label)
    _check_external(model, None if path is None else path.parent, label)
    meta = read_metadata(model)
    if PREFIX + "format" in meta and END_KEY not in meta:
        raise CorruptModelError(label, "refdiff metadata is incomplete: the file is truncated")
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model.graph))
    if external and load_external_data and path is not None:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as e:
            raise ExternalDataError(label, f"external data cannot be read ({e})") from None
    try:
        if external and not load_external_data and path is not None:
            onnx.checker.check_model(str(path))  # resolves external data next to the file
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, UnicodeDecodeError) as e:  # bad UTF-8 in a name
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptModelError(
            label, f"not a valid ONNX model (truncated or corrupted?): {first}"
        ) from None
    return model, path


def _decode_error() -> type:
    from google.protobuf.message import DecodeError

    return DecodeError


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise CorruptModelError(label, "the file is empty")
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except (_decode_error(), RuntimeError, ValueError) as e:
        raise CorruptModelError(
            label, f"cannot be parsed as ONNX (truncated or corrupted): {e}"
        ) from None
    return m


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (temporary file + rename; refdiff._io); returns the path.

    Models above protobuf's 2 GB limit are refused (refdiff's graphs are far smaller).
    """
    data = model.SerializeToString()
    write_bytes(path, data)
    return Path(path)


# -- signatures -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtraInput:
    """A conditioning input of a denoiser besides state and time (text embeddings, class
    labels, time ids, …): its name, dtype and dims (int, or None where symbolic).  It is
    supplied as an array, constant across steps; ``batched`` when its first axis is the
    batch (rank ≥ 1), so classifier-free guidance can stack conditional and unconditional
    values along it."""

    name: str
    dtype: np.dtype
    shape: tuple | None

    @property
    def batched(self) -> bool:
        return self.shape is None or len(self.shape) >= 1


@dataclass(frozen=True)
class DenoiserSignature:
    """How to call a denoiser model.

    state_shape: dims of the state input (int, or None where symbolic/unknown), batch first.
    time_shape: ``"scalar"`` (shape ()), ``"one"`` (shape (1,)) or ``"batch"`` (shape (B,)).
    extra_inputs: the conditioning inputs (:class:`ExtraInput`), in graph order.
    prediction_type / timestep_convention: from the metadata, None when it does not say.
    """

    state_input: str
    time_input: str
    output: str
    state_dtype: np.dtype
    time_dtype: np.dtype
    output_dtype: np.dtype
    state_shape: tuple
    time_shape: str
    prediction_type: str | None = None
    timestep_convention: str | None = None
    metadata: dict = field(default_factory=dict, repr=False)
    extra_inputs: tuple = ()


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)


def _elem(vi: onnx.ValueInfoProto) -> np.dtype | None:
    if vi.type.WhichOneof("value") != "tensor_type":
        return None
    return numpy_dtype(vi.type.tensor_type.elem_type)


def _is_float_state(vi: onnx.ValueInfoProto) -> bool:
    dt, dims = _elem(vi), _dims(vi)
    return dt is not None and dt.kind == "f" and dims is not None and len(dims) >= 2


def _pick_names(inputs: list, state_input, time_input, path) -> tuple[str, str]:
    """Stage 1: which graph inputs are the state and the time (by argument, name, or type)."""
    names = [vi.name for vi in inputs]
    for given, what in ((state_input, "state_input"), (time_input, "time_input")):
        if given is not None and given not in names:
            raise SignatureError(
                path, f"{what}={given!r} is not an input of the model; inputs: {names}"
            )
    if len(inputs) < 2:
        raise SignatureError(
            path,
            "a denoiser has at least 2 inputs (state, timestep, then any conditioning); "
            f"this model has {len(inputs)}: {names}",
        )
    low = {n.lower(): n for n in names}

    def pick(given, candidates):
        if given is not None:
            return given
        return next((low[c] for c in candidates if c in low), None)

    s_name, t_name = pick(state_input, STATE_NAMES), pick(time_input, TIME_NAMES)
    if s_name is None:
        floats = [vi.name for vi in inputs if vi.name != t_name and _is_float_state(vi)]
        if len(floats) != 1:
            raise SignatureError(
                path,
                f"cannot tell the state input from the timestep among {names}; pass state_input=",
            )
        s_name = floats[0]
    if t_name is None:
        rest = [n for n in names if n != s_name]
        if len(rest) != 1:
            raise SignatureError(path, f"cannot tell the timestep among {rest}; pass time_input=")
        t_name = rest[0]
    if s_name == t_name:
        raise SignatureError(path, f"state and timestep are the same input {s_name!r}")
    return s_name, t_name


@dataclass(frozen=True)
class _StateTime:
    s_dtype: np.dtype
    s_shape: tuple
    t_dtype: np.dtype
    t_kind: str


def _state_time(s_vi, t_vi, path) -> _StateTime:
    """Stage 2: the state's and the time's types and shapes (the time's kind)."""
    s_name, t_name = s_vi.name, t_vi.name
    s_dt, t_dt = _elem(s_vi), _elem(t_vi)
    if s_dt is None or s_dt.kind != "f":
        raise SignatureError(
            path, f"state input {s_name!r} must be a float tensor; got {_type_str(s_vi)}"
        )
    s_shape = _dims(s_vi)
    if s_shape is None or len(s_shape) < 2:
        raise SignatureError(
            path,
            f"state input {s_name!r} must have a batch axis and data axes (rank >= 2); "
            f"got shape {s_shape}",
        )
    if t_dt is None or t_dt.kind not in "if" or t_dt == np.bool_:
        raise SignatureError(
            path, f"timestep input {t_name!r} must be an int or float tensor; got {_type_str(t_vi)}"
        )
    t_shape = _dims(t_vi)
    if (
        t_shape is None
        or len(t_shape) == 1
        and (t_shape[0] is None or t_shape[0] == s_shape[0] and t_shape[0] != 1)
    ):
        t_kind = "batch"
    elif len(t_shape) == 0:
        t_kind = "scalar"
    elif t_shape == (1,):
        t_kind = "one"
    else:
        raise SignatureError(
            path, f"timestep input {t_name!r} must be a scalar, (1,) or (B,); got shape {t_shape}"
        )
    return _StateTime(s_dt, s_shape, t_dt, t_kind)


def _output(g: onnx.GraphProto, output, s_shape: tuple, path) -> tuple[str, np.dtype]:
    """Stage 3: the prediction output: (name, dtype); it must have the state's shape."""
    outs = [o.name for o in g.output]
    if output is not None and output not in outs:
        raise SignatureError(
            path, f"output={output!r} is not an output of the model; outputs: {outs}"
        )
    o_name = output if output is not None else (outs[0] if outs else None)
    if o_name is None:
        raise SignatureError(path, "the model has no outputs")
    o_vi = next(o for o in g.output if o.name == o_name)
    o_dt = _elem(o_vi)
    if o_dt is None or o_dt.kind != "f":
        raise SignatureError(
            path, f"output {o_name!r} must be a float tensor; got {_type_str(o_vi)}"
        )
    o_shape = _dims(o_vi)
    if o_shape is not None:
        bad = len(o_shape) != len(s_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(o_shape[1:], s_shape[1:])
        )
        if bad:
            raise SignatureError(
                path,
                f"output {o_name!r} has shape {o_shape}, the state {s_shape}: "
                "the prediction must have the "
                "state's shape (learned-variance outputs with 2C channels are not supported)",
            )
    return o_name, o_dt


def _extras(inputs: list, s_name: str, t_name: str, path) -> tuple[ExtraInput, ...]:
    """Stage 4: every other input is a conditioning input of a known tensor type."""
    out = []
    for vi in inputs:
        if vi.name in (s_name, t_name):
            continue
        dt = _elem(vi)
        if dt is None:
            raise SignatureError(
                path, f"conditioning input {vi.name!r} has an unsupported type {_type_str(vi)}"
            )
        out.append(ExtraInput(vi.name, dt, _dims(vi)))
    return tuple(out)


def _conventions(model: onnx.ModelProto, path) -> tuple[str | None, str | None, dict]:
    """Stage 5: prediction type and time convention the metadata states (None: unsaid)."""
    meta = read_metadata(model)
    pt = meta.get(PREFIX + "prediction_type", meta.get("prediction_type"))
    tc = meta.get(PREFIX + "timestep_convention", meta.get("timestep_convention"))
    if pt is not None and pt not in PREDICTION_TYPES:
        raise SignatureError(
            path, f"metadata prediction_type={pt!r} is not one of {PREDICTION_TYPES}"
        )
    if tc is not None and tc not in TIMESTEP_CONVENTIONS:
        raise SignatureError(
            path, f"metadata timestep_convention={tc!r} is not one of {TIMESTEP_CONVENTIONS}"
        )
    return pt, tc, meta


def inspect_denoiser(
    model: onnx.ModelProto,
    *,
    state_input: str | None = None,
    time_input: str | None = None,
    output: str | None = None,
    path: object = "<model>",
) -> DenoiserSignature:
    """Recognise ``model`` as a denoiser and say how to call it (see the module docstring).

    Raises :class:`SignatureError` naming what does not fit: fewer than two inputs, a name
    that is not there, a non-float state, a timestep of another rank or type, an output
    whose shape differs from the state's (e.g. 2C channels of a learned variance).  Inputs
    besides state and time are conditioning inputs (``extra_inputs``).
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [vi for vi in g.input if vi.name not in inits]
    by_name = {vi.name: vi for vi in inputs}
    s_name, t_name = _pick_names(inputs, state_input, time_input, path)
    st = _state_time(by_name[s_name], by_name[t_name], path)
    o_name, o_dt = _output(g, output, st.s_shape, path)
    extras = _extras(inputs, s_name, t_name, path)
    pt, tc, meta = _conventions(model, path)
    return DenoiserSignature(
        state_input=s_name,
        time_input=t_name,
        output=o_name,
        state_dtype=st.s_dtype,
        time_dtype=st.t_dtype,
        output_dtype=o_dt,
        state_shape=st.s_shape,
        time_shape=st.t_kind,
        prediction_type=pt,
        timestep_convention=tc,
        metadata=meta,
        extra_inputs=extras,
    )


def _type_str(vi: onnx.ValueInfoProto) -> str:
    dt = _elem(vi)
    return f"{dt if dt is not None else vi.type.WhichOneof('value')}, shape {_dims(vi)}"


@dataclass(frozen=True, eq=False)
class DenoiserModel:
    """A checked denoiser model with everything needed to call it.

    ``model``: the ``onnx.ModelProto`` (external data loaded); ``path``: its file or None;
    ``signature``: see :class:`DenoiserSignature`; ``prediction_type`` and
    ``timestep_convention`` resolved from the arguments and the metadata.
    """

    model: onnx.ModelProto
    signature: DenoiserSignature
    prediction_type: str
    timestep_convention: str
    path: Path | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "<model>"

    def model_time(self, base_t: np.ndarray) -> np.ndarray:
        """Base times (refdiff, 1-based; int, or float for the σ-view samplers' fractional
        times) → the values fed to the model, in its time dtype."""
        t = np.asarray(base_t)
        if t.dtype.kind != "f":
            t = t.astype(np.int64)
        if self.timestep_convention == "index":
            t = t - 1
        if self.signature.time_dtype.kind in "iu" and t.dtype.kind == "f":
            if not np.all(t == np.round(t)):
                from refdiff.errors import InputError

                raise InputError(
                    "timestep",
                    "the model takes integer times; use timestep='round' or 'nearest'",
                )
        return t.astype(self.signature.time_dtype)


def open_denoiser(
    source: object,
    *,
    prediction_type: str | None = None,
    timestep_convention: str | None = None,
    state_input: str | None = None,
    time_input: str | None = None,
    output: str | None = None,
) -> DenoiserModel:
    """Load, check and recognise a denoiser model; resolve what its output and time mean.

    ``prediction_type`` (ε/x0/v/score) and ``timestep_convention`` (``"refdiff"``: 1-based
    base time t; ``"index"``: 0-based index t − 1 as diffusers and PyTorch exports use) come
    from the arguments or the model's metadata; when both give one they must agree, and when
    neither does an :class:`~refdiff.errors.InputError` says which argument to pass.
    """
    from refdiff.errors import InputError

    if isinstance(source, DenoiserModel):
        return source
    model, path = load_model(source)
    label = str(path) if path is not None else "<model>"
    sig = inspect_denoiser(
        model, state_input=state_input, time_input=time_input, output=output, path=label
    )
    kind = sig.metadata.get(PREFIX + "kind")
    if kind is not None and kind != "denoiser":
        raise SignatureError(label, f"is a refdiff {kind!r} model, not a denoiser")
    resolved = []
    for arg, value, meta, valid in (
        ("prediction_type", prediction_type, sig.prediction_type, PREDICTION_TYPES),
        ("timestep_convention", timestep_convention, sig.timestep_convention, TIMESTEP_CONVENTIONS),
    ):
        if value is not None and value not in valid:
            raise OptionError(arg, value, list(valid))
        if value is not None and meta is not None and value != meta:
            raise InputError(arg, f"{value!r} contradicts the model's metadata ({meta!r})")
        if value is None and meta is None:
            raise InputError(
                arg, f"the model's metadata does not say; pass {arg}= (one of {', '.join(valid)})"
            )
        resolved.append(value if value is not None else meta)
    return DenoiserModel(model, sig, resolved[0], resolved[1], path)
