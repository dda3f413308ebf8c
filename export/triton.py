"""A Triton Inference Server model repository of a whole-sampler ONNX graph (docs/scale.md).

Triton's onnxruntime backend serves one ONNX file per model version from a folder::

    DIR/NAME/config.pbtxt        platform "onnxruntime_onnx", inputs, outputs, batching
    DIR/NAME/VERSION/model.onnx  the sampler graph (:func:`refdiff.export.sampler_model`)

The whole sampler is one graph (a ``Loop`` over ``Scan`` chunks; noise as inputs or drawn
in-graph), so one Triton model is the whole sampler.  Triton batches requests (and its
``dynamic_batching`` concatenates them) along the *first* dimension of every input and
output; :func:`triton_model` makes the sampler fit that rule where it can:

- ``x_T`` (B, *S) → ``x_0`` (B, *S), and conditioning inputs (B, …): batch-first already;
- ``step_noise`` (N, B, *S) is batch-second: the repository's model takes
  ``step_noise_bmajor`` (B, N, *S) and transposes it in-graph (one ``Transpose``), so
  samplers that add noise batch too;
- ``step_start`` (the first step of a chunk; an input with a default) becomes a constant:
  Triton runs all steps in one request;
- ``trajectory`` (N, B, *S) output, or in-graph noise (a scalar ``batch_size`` input): no
  batching (``max_batch_size: 0``; the full shapes are declared, -1 for dynamic dims, and a
  scalar input is declared ``dims: [1]`` with ``reshape: { shape: [] }``).

Rows are independent in the sampler graph (each sample's noise comes in with it), so
dynamic batching returns each request the samples it would get alone (onnxruntime's CPU
kernels: two rows or more, see :func:`refdiff.export.cluster.sample_rows`).

The ``config.pbtxt`` is written by hand (no ``tritonclient`` needed); tests/export/
test_triton_repository.py parses it with Triton's own ``model_config.proto``
(``tritonclient.grpc.model_config_pb2``) and runs the repository's model as Triton would.
Triton itself does not run on these machines (its onnxruntime backend is not installable
here); the repository targets the ``tritonserver`` images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from refdiff._io import write_text
from refdiff.errors import InputError

from .model_io import load_model, save_model

__all__ = [
    "TRITON_DTYPES",
    "TritonIO",
    "triton_model",
    "triton_config",
    "write_triton_repository",
    "triton_main",
]

#: ONNX element type → Triton ``DataType`` name.
TRITON_DTYPES = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.BOOL: "TYPE_BOOL",
}
BMAJOR = "step_noise_bmajor"


@dataclass(frozen=True)
class TritonIO:
    """One input or output as Triton sees it: ``dims`` without the batch dim when batching
    (``-1`` for dynamic dims); ``reshape`` ``()`` for a scalar declared as ``[1]``."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in vi.type.tensor_type.shape.dim
    ]


def triton_model(model: object) -> tuple[onnx.ModelProto, bool]:
    """(the repository's model, batchable): the sampler, with ``step_noise`` taken batch-major.

    ``model``: a refdiff sampler ONNX file (path, bytes or ``ModelProto``;
    ``refdiff.kind = sampler``).  Batchable when every input and output then has the
    sampler's batch dim first (module docstring).
    """
    proto, _ = load_model(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("refdiff.kind") != "sampler":
        raise InputError(
            "model", "Triton serves the whole sampler: export it with --kind sampler first"
        )
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {t.name for t in g.initializer}
    for v in list(g.input):  # overridable initializers (step_start: where a chunk starts)
        if v.name in inits:  # are constants here: Triton runs the whole sampler at once
            g.input.remove(v)
    for v in g.input:  # so step_noise holds all N steps
        if v.name == "step_noise" and "refdiff.schedule" in meta:
            from .metadata import schedule_from_json

            first = v.type.tensor_type.shape.dim[0]
            first.Clear()
            first.dim_value = int(schedule_from_json(meta["refdiff.schedule"]).T)
    names = [i.name for i in g.input]
    batch = _dims(g.input[names.index("x_T")])[0] if "x_T" in names else None

    def batch_first(v: onnx.ValueInfoProto) -> bool:
        d = _dims(v)
        if v.name == "step_noise" and len(d) >= 2:
            d = [d[1], d[0], *d[2:]]  # taken batch-major below
        return (
            len(d) >= 1
            and d[0] == batch
            and batch not in d[1:]
            and v.type.tensor_type.elem_type in TRITON_DTYPES
        )

    batchable = isinstance(batch, str) and all(batch_first(v) for v in [*g.input, *g.output])
    if batchable and "step_noise" in names:
        i = names.index("step_noise")
        old = g.input[i]
        dims = _dims(old)
        perm = [1, 0, *range(2, len(dims))]
        new = helper.make_tensor_value_info(
            BMAJOR, old.type.tensor_type.elem_type, [dims[p] for p in perm]
        )
        g.input.remove(old)
        g.input.insert(i, new)
        g.node.insert(0, helper.make_node("Transpose", [BMAJOR], ["step_noise"], perm=perm))
        m.metadata_props.append(
            onnx.StringStringEntryProto(
                key="refdiff.triton",
                value=f"input {BMAJOR} (B, N, *S) is step_noise (N, B, *S) transposed",
            )
        )
    onnx.checker.check_model(m)
    return m, batchable


def _io(vi: onnx.ValueInfoProto, batched: bool) -> TritonIO:
    et = vi.type.tensor_type.elem_type
    if et not in TRITON_DTYPES:
        raise InputError("model", f"{vi.name}: element type {et} has no Triton data type")
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in _dims(vi)]
    if batched:
        dims = dims[1:]
    if not dims:  # a scalar: Triton wants at least one dim
        return TritonIO(vi.name, TRITON_DTYPES[et], (1,), ())
    return TritonIO(vi.name, TRITON_DTYPES[et], tuple(dims))


def _block(io: TritonIO) -> str:
    lines = [
        f'    name: "{io.name}"',
        f"    data_type: {io.data_type}",
        f"    dims: [ {', '.join(str(d) for d in io.dims)} ]",
    ]
    if io.reshape is not None:
        lines.append(f"    reshape: {{ shape: [ {', '.join(str(d) for d in io.reshape)} ] }}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(
    model: onnx.ModelProto,
    batchable: bool,
    *,
    name: str = "refdiff_sampler",
    max_batch_size: int = 4096,
    dynamic_batching: bool = True,
    preferred_batch_sizes: tuple[int, ...] = (),
    max_queue_delay_us: int = 500,
    instances: int = 1,
    kind: str = "KIND_GPU",
) -> str:
    """The ``config.pbtxt`` text of a repository model (as :func:`triton_model` returns it).

    ``max_batch_size``/``dynamic_batching``/``preferred_batch_sizes``/
    ``max_queue_delay_us``: Triton's batching (ignored, ``max_batch_size: 0``, when the
    model cannot batch); ``instances`` copies of kind ``KIND_GPU`` | ``KIND_CPU`` |
    ``KIND_AUTO``.
    """
    if kind not in ("KIND_GPU", "KIND_CPU", "KIND_AUTO"):
        raise InputError("kind", f"must be KIND_GPU, KIND_CPU or KIND_AUTO; got {kind!r}")
    for arg, v in (("max_batch_size", max_batch_size), ("instances", instances)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(arg, f"must be an int ≥ 1; got {v!r}")
    if any(not 1 <= p <= max_batch_size for p in preferred_batch_sizes):
        raise InputError("preferred_batch_sizes", f"must lie in 1..{max_batch_size}")
    if not name or any(c in name for c in '/\\"') or name.startswith("."):
        raise InputError("name", f"is not a usable model folder name: {name!r}")
    mbs = max_batch_size if batchable else 0
    ins = [_io(v, batchable) for v in model.graph.input]
    outs = [_io(v, batchable) for v in model.graph.output]
    parts = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        'default_model_filename: "model.onnx"',
        f"max_batch_size: {mbs}",
        "input [\n" + ",\n".join(_block(i) for i in ins) + "\n]",
        "output [\n" + ",\n".join(_block(o) for o in outs) + "\n]",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]",
    ]
    if batchable and dynamic_batching:
        pref = ""
        if preferred_batch_sizes:
            pref = f"  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes))} ]\n"
        parts.append(
            f"dynamic_batching {{\n{pref}  max_queue_delay_microseconds: {max_queue_delay_us}\n}}"
        )
    return "\n".join(parts) + "\n"


def write_triton_repository(
    model: object,
    out_dir: str | os.PathLike,
    *,
    name: str = "refdiff_sampler",
    version: int = 1,
    **config,
) -> Path:
    """Write ``out_dir/name/config.pbtxt`` and ``out_dir/name/version/model.onnx``
    (atomically, each); ``config``: :func:`triton_config` options.  Returns the model folder.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError("version", f"must be an int ≥ 1; got {version!r}")
    m, batchable = triton_model(model)
    text = triton_config(m, batchable, name=name, **config)
    folder = Path(out_dir) / name
    save_model(m, folder / str(version) / "model.onnx")
    write_text(folder / "config.pbtxt", text)
    return folder


def triton_main(argv: list[str]) -> int:
    """``python -m refdiff.export.triton SAMPLER.onnx DIR [options]``; exit code."""
    import argparse
    import sys

    from refdiff.errors import RefdiffError

    p = argparse.ArgumentParser(
        prog="refdiff-triton", description="Write a Triton model repository of a sampler file."
    )
    p.add_argument("model", help="a refdiff sampler .onnx (refdiff export --kind sampler)")
    p.add_argument("out_dir", help="model repository folder")
    p.add_argument("--name", default="refdiff_sampler")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=4096)
    p.add_argument("--no-dynamic-batching", action="store_true")
    p.add_argument("--max-queue-delay-us", type=int, default=500)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--kind", default="KIND_GPU", choices=("KIND_GPU", "KIND_CPU", "KIND_AUTO"))
    a = p.parse_args(argv)
    try:
        folder = write_triton_repository(
            a.model,
            a.out_dir,
            name=a.name,
            version=a.version,
            max_batch_size=a.max_batch_size,
            dynamic_batching=not a.no_dynamic_batching,
            max_queue_delay_us=a.max_queue_delay_us,
            instances=a.instances,
            kind=a.kind,
        )
    except RefdiffError as e:
        print(f"refdiff-triton: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder}/config.pbtxt and {folder}/{a.version}/model.onnx")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(triton_main(sys.argv[1:]))
