"""Conditioned denoisers and classifier-free guidance in the ONNX samplers (docs/deploy.md,
"Conditioning and guidance"; docs/math.md §20).

A denoiser's inputs besides state and time (:class:`~refdiff.export.model_io.ExtraInput`:
text embeddings, class labels, time ids, …) are supplied as arrays, constant across steps.
With guidance (:class:`Guidance`) each step evaluates the network with the conditional and
the unconditional values and combines the outputs by (20.1)–(20.4):

``"batched"``   one call on a 2B batch: state, time and every batched conditioning input
                stacked as [unconditional; conditional] along axis 0; the output is split.
``"two_pass"``  two calls on B (the embedded network shares its weights between them).

Graph inputs of the fused and whole-sampler graphs: each conditioning input under its own
name (the conditional value) and, with guidance, under ``uncond/<name>`` (the unconditional
value), both with the batch B first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refdiff.errors import DTypeError, InputError, OptionError, ShapeError
from refdiff.guidance import check_guidance

from ._graph import GraphBuilder, tensor_info

__all__ = [
    "GUIDANCE_MODES",
    "UNCOND_PREFIX",
    "Guidance",
    "make_guidance",
    "prepare_conditioning",
    "extra_dims",
    "conditioning_inputs",
    "emit_guide",
]

GUIDANCE_MODES = ("batched", "two_pass")
UNCOND_PREFIX = "uncond/"
RESERVED = ("x", "k", "z", "x_T", "step_start", "step_noise", "batch_size", "model_output")


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: scale s (20.1), rescale φ (20.4), ``mode`` (module doc)."""

    scale: float
    rescale: float = 0.0
    mode: str = "batched"

    @property
    def passes(self) -> int:
        """Network outputs combined per step (2: conditional and unconditional)."""
        return 2


def make_guidance(
    scale: object = None, rescale: object = 0.0, mode: str = "batched"
) -> Guidance | None:
    """A checked :class:`Guidance`, or None when ``scale`` is None (no guidance)."""
    if scale is None:
        if rescale not in (0, 0.0):
            raise InputError("guidance_rescale", "needs guidance_scale")
        return None
    s, r = check_guidance(scale, rescale)
    if mode not in GUIDANCE_MODES:
        raise OptionError("guidance", mode, list(GUIDANCE_MODES))
    return Guidance(s, r, mode)


def cast_input(name: str, value: object, dtype: np.dtype) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - anything array-like may fail its own way
        raise InputError(name, f"is not an array ({e})") from None
    if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and dtype.kind in "iub"):
        raise DTypeError(name, f"dtype {a.dtype} cannot feed the model's {dtype} input")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        from refdiff.errors import NonFiniteError

        raise NonFiniteError(name, "has NaN or Inf")
    return np.ascontiguousarray(a, dtype=dtype)


def _one(extra, value, batch: int, label: str) -> np.ndarray:
    a = cast_input(label, value, extra.dtype)
    shape = extra.shape
    if shape is not None and a.ndim != len(shape):
        raise ShapeError(label, f"has rank {a.ndim}; the model's input is {shape}")
    if extra.batched and a.ndim >= 1:
        if a.shape[0] == 1 and batch != 1:
            a = np.ascontiguousarray(np.broadcast_to(a, (batch, *a.shape[1:])))
        if a.shape[0] != batch:
            raise ShapeError(label, f"batch {a.shape[0]} differs from the sample batch {batch}")
    if shape is not None:
        for i, (d, s) in enumerate(zip(shape, a.shape)):
            if d is not None and d != s and not (i == 0 and extra.batched):
                raise ShapeError(label, f"shape {a.shape} does not fit the model's input {shape}")
    return a


def prepare_conditioning(
    extras: tuple, cond: Mapping | None, uncond: Mapping | None, guidance, batch: int
) -> tuple[dict, dict | None]:
    """Checked arrays (cond, uncond or None) for the model's conditioning inputs, batch B.

    Every conditioning input needs a value in ``cond`` (missing ones are listed together);
    with guidance ``uncond`` is required, and inputs it leaves out take the conditional value.
    A batched input given with batch 1 is broadcast to B.  Typed errors name ``cond[name]``.
    """
    cond = dict(cond or {})
    uncond = None if uncond is None else dict(uncond)
    names = [e.name for e in extras]
    for given, arg in ((cond, "cond"), (uncond or {}, "uncond")):
        for k in given:
            if k not in names:
                raise OptionError(arg, k, names)
    missing = [n for n in names if n not in cond]
    if missing:
        raise InputError(
            "cond", f"the model needs its conditioning inputs {missing}; pass cond={{name: array}}"
        )
    if guidance is None:
        if uncond:
            raise InputError("uncond", "is used only with guidance_scale=")
        return {e.name: _one(e, cond[e.name], batch, f"cond[{e.name!r}]") for e in extras}, None
    if uncond is None:
        raise InputError("uncond", "guidance needs the unconditional inputs: pass uncond=")
    c, u = {}, {}
    for e in extras:
        c[e.name] = _one(e, cond[e.name], batch, f"cond[{e.name!r}]")
        u[e.name] = (
            _one(e, uncond[e.name], batch, f"uncond[{e.name!r}]") if e.name in uncond else c[e.name]
        )
        if (
            guidance.mode == "batched"
            and not e.batched
            and not np.array_equal(c[e.name], u[e.name])
        ):
            raise InputError(
                f"uncond[{e.name!r}]",
                "an input without a batch axis cannot differ in a batched guidance call; "
                "use guidance_mode='two_pass'",
            )
    return c, u


def stack_conditioning(extras: tuple, cond: dict, uncond: dict) -> dict:
    """The 2B inputs of a batched guidance call: [unconditional; conditional] on axis 0."""
    return {
        e.name: np.concatenate([uncond[e.name], cond[e.name]]) if e.batched else cond[e.name]
        for e in extras
    }


def extra_dims(extra, batch_dim) -> list | None:
    """Graph dims of a conditioning input with the batch axis ``batch_dim`` (B or an int)."""
    if extra.shape is None:
        return None
    dims = [d if d is not None else f"{extra.name}_d{i}" for i, d in enumerate(extra.shape)]
    if extra.batched and dims:
        dims[0] = batch_dim
    return dims


def conditioning_inputs(den, guidance, batch_dim) -> tuple[list, dict, dict, dict]:
    """(value infos, meanings, cond names, uncond names) of a graph's conditioning inputs."""
    extras = den.signature.extra_inputs
    infos, meaning, cnames, unames = [], {}, {}, {}
    for e in extras:
        if e.name in RESERVED or e.name.startswith(UNCOND_PREFIX):
            raise InputError(
                "model", f"the conditioning input name {e.name!r} clashes with refdiff's own"
            )
        dims = extra_dims(e, batch_dim)
        infos.append(tensor_info(e.name, e.dtype, dims))
        meaning[e.name] = "conditioning input (conditional value), constant across steps"
        cnames[e.name] = e.name
        if guidance is not None:
            u = UNCOND_PREFIX + e.name
            infos.append(tensor_info(u, e.dtype, dims))
            meaning[u] = f"unconditional value of {e.name}"
            unames[e.name] = u
    return infos, meaning, cnames, unames


def emit_guide(b: GraphBuilder, cond: str, uncond: str, guidance: Guidance, rank: int) -> str:
    """Nodes of (20.1)–(20.4) on float32 outputs of rank ``rank`` (batch first)."""
    s = b.const(np.float32(guidance.scale), hint="guidance_scale")
    g = b.op("Add", uncond, b.op("Mul", s, b.op("Sub", cond, uncond)))
    if guidance.rescale == 0.0:
        return g
    axes = b.const(np.arange(1, rank, dtype=np.int64), hint="data_axes")

    def std(a):
        d = b.op("Sub", a, b.op("ReduceMean", a, axes, keepdims=1))
        return b.op("Sqrt", b.op("ReduceMean", b.op("Mul", d, d), axes, keepdims=1))

    sc, sg = std(cond), std(g)
    zero, one = b.const(np.float32(0.0)), b.const(np.float32(1.0))
    is0 = b.op("Equal", sg, zero)
    ratio = b.op("Where", is0, one, b.op("Div", sc, b.op("Where", is0, one, sg)))
    phi = b.const(np.float32(guidance.rescale), hint="guidance_rescale")
    rest = b.const(np.float32(1.0 - guidance.rescale), hint="guidance_keep")
    return b.op("Add", b.op("Mul", phi, b.op("Mul", g, ratio)), b.op("Mul", rest, g))
