"""Self-describing models: what refdiff writes into ``metadata_props`` and how to read it back.

Every model refdiff exports carries these keys (values are strings; JSON where structured):

=============================  =====================================================================
``refdiff.format``             ``"1"``: the version of this key set
``refdiff.version``            the refdiff version that wrote the file
``refdiff.kind``               ``denoiser`` | ``step`` | ``fused_step`` | ``sampler``
``refdiff.prediction_type``    what the denoiser outputs: ``epsilon`` | ``x0`` | ``v`` | ``score``
``refdiff.timestep_convention`` ``refdiff`` (t = 1..T, base time) or ``index`` (0-based, t − 1)
``refdiff.schedule``           JSON: name, T, beta, alpha_bar, timesteps, base_alpha_bar_1 (float64
                               values written with 17 significant digits: round-trips exactly)
``refdiff.sampler``            JSON: ``{"name": "ddpm"|"ddim", "options": {...}}`` (step/sampler)
``refdiff.noise``              ``input`` (noise is an input) or ``graph`` (RandomNormalLike, seeded)
``refdiff.seed``               the seed of the in-graph noise (``noise = graph`` only)
``refdiff.dtype``              ``float32`` | ``float16``: the denoiser's compute and I/O type
``refdiff.inputs``             JSON ``{name: meaning}`` for every graph input
``refdiff.outputs``            JSON ``{name: meaning}`` for every graph output
``refdiff.denoiser``           JSON: what denoiser is inside (``mlp``, ``gaussian_mixture``, …)
=============================  =====================================================================

For a denoiser the schedule is the *base* (training) schedule it was built for; for a step,
fused step or sampler it is the (possibly respaced) schedule the sampler walks, whose
``timesteps`` map each step back to the base time the denoiser is called with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refdiff.schedule import Schedule

__all__ = [
    "PREFIX",
    "KINDS",
    "schedule_to_json",
    "schedule_from_json",
    "read_metadata",
    "peek_metadata",
    "ModelBytes",
    "base_metadata",
]

PREFIX = "refdiff."
KINDS = ("denoiser", "step", "fused_step", "sampler")
FORMAT = "1"


def schedule_to_json(schedule: Schedule) -> str:
    """The schedule as JSON; float64 values round-trip exactly (``repr`` floats)."""
    return json.dumps(
        {
            "name": schedule.name,
            "T": schedule.T,
            "beta": [float(v) for v in schedule.beta],
            "alpha_bar": [float(v) for v in schedule.alpha_bar],
            "timesteps": [int(v) for v in schedule.timesteps],
            "base_alpha_bar_1": float(schedule.base_alpha_bar_1),
        },
        separators=(",", ":"),
    )


def schedule_from_json(text: str) -> Schedule:
    """Inverse of :func:`schedule_to_json` (raises ``ValueError``/``KeyError`` when malformed)."""
    d = json.loads(text)
    return Schedule(
        np.asarray(d["beta"], dtype=np.float64),
        np.asarray(d["alpha_bar"], dtype=np.float64),
        np.asarray(d["timesteps"], dtype=np.int64),
        float(d["base_alpha_bar_1"]),
        str(d.get("name", "custom")),
    )


def read_metadata(model) -> dict[str, str]:
    """``metadata_props`` of an ``onnx.ModelProto`` as a dict (all keys, not only refdiff's)."""
    return {p.key: p.value for p in model.metadata_props}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = data[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message's top-level fields: ints for
    varints and fixed-width fields, ``bytes`` for length-delimited ones."""
    i, n = 0, len(data)
    while i < n:
        tag, i = _varint(data, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > n:
                raise ValueError("truncated")
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if i + width > n:
                raise ValueError("truncated")
            value, i = int.from_bytes(data[i : i + width], "little"), i + width
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


_METADATA_PROPS = (
    14  # ModelProto.metadata_props (onnx.proto); StringStringEntryProto: 1 key, 2 value
)


def peek_metadata(data: bytes) -> dict[str, str] | None:
    """``metadata_props`` read straight from a serialised ONNX model, without onnx: it walks
    the ModelProto's top-level protobuf fields and skips the graph.  None when the bytes do
    not parse that far (the caller then loads the model properly and reports what is wrong).
    """
    out: dict[str, str] = {}
    try:
        for field, wire, value in _fields(data):
            if field == _METADATA_PROPS and wire == 2:
                entry = {f: v for f, w, v in _fields(value) if w == 2}
                out[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"").decode("utf-8")
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return out


@dataclass(frozen=True, eq=False)
class ModelBytes:
    """A model file read once: its bytes, its path and its ``metadata_props``
    (:func:`peek_metadata`).  :class:`~refdiff.export.OrtSampler` runs a refdiff sampler file
    given this way straight from the bytes (onnxruntime parses and checks it; onnx is not
    imported); anything else is loaded and checked from ``path`` as usual."""

    data: bytes
    path: Path | None
    metadata: dict

    @classmethod
    def read(cls, path: str | Path) -> ModelBytes | None:
        """The file's bytes and metadata, or None when its metadata cannot be read this way."""
        data = Path(path).read_bytes()
        meta = peek_metadata(data)
        return None if meta is None else cls(data, Path(path), meta)

    @property
    def is_sampler_file(self) -> bool:
        """A complete, untruncated refdiff sampler file (its closing metadata key present)."""
        from ._graph import END_KEY

        return self.metadata.get(PREFIX + "kind") == "sampler" and END_KEY in self.metadata


def base_metadata(kind: str, **fields: object) -> dict[str, str]:
    """The common keys plus ``fields`` (dicts/lists become JSON, None values are dropped)."""
    from refdiff import __version__

    if kind not in KINDS:
        raise ValueError(kind)
    out = {PREFIX + "format": FORMAT, PREFIX + "version": __version__, PREFIX + "kind": kind}
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, Schedule):
            v = schedule_to_json(v)
        elif isinstance(v, Mapping | list | tuple):
            v = json.dumps(v, separators=(",", ":"), sort_keys=True)
        out[PREFIX + k] = str(v)
    return out
