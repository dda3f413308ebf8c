"""A thin layer over ``onnx.helper``: unique names, hoisted constants, pinned IR and opset.

Every graph refdiff writes is built with :class:`GraphBuilder` and finished by
:func:`finish_model`, which stamps IR version 10 and the default-domain opset 21, runs
``onnx.checker`` (full check) and strict shape inference, and fails loudly otherwise.

Why IR 10 / opset 21: ``onnx.helper.make_model`` in onnx 1.23 stamps IR 14, which
onnxruntime ≤ 1.31 refuses ("max supported IR version: 13"); IR 10 / opset 21 is what
slightly older runtimes (Triton's onnxruntime backend images, onnxruntime ≥ 1.18) still load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._lazy import helper, numpy_helper, onnx

__all__ = [
    "IR_VERSION",
    "OPSET",
    "GraphBuilder",
    "tensor_info",
    "onnx_dtype",
    "numpy_dtype",
    "finish_model",
]

IR_VERSION = 10
OPSET = 21

# TensorProto.DataType values (onnx.proto; fixed by the format), written out so that this
# table needs no onnx import
_NP_TO_ONNX = {
    np.dtype(np.float16): 10,  # FLOAT16
    np.dtype(np.float32): 1,  # FLOAT
    np.dtype(np.float64): 11,  # DOUBLE
    np.dtype(np.int32): 6,  # INT32
    np.dtype(np.int64): 7,  # INT64
    np.dtype(np.bool_): 9,  # BOOL
}
_ONNX_TO_NP = {v: k for k, v in _NP_TO_ONNX.items()}


def onnx_dtype(dtype: object) -> int:
    """The ``TensorProto`` element type of a NumPy dtype (float16/32/64, int32/64, bool)."""
    d = np.dtype(dtype)
    if d not in _NP_TO_ONNX:
        raise TypeError(f"dtype {d} has no ONNX mapping here")
    return _NP_TO_ONNX[d]


def numpy_dtype(elem_type: int) -> np.dtype | None:
    """The NumPy dtype of a ``TensorProto`` element type, or None when it is not one we use."""
    return _ONNX_TO_NP.get(int(elem_type))


def tensor_info(name: str, dtype: object, shape: Sequence[int | str | None] | None):
    """A ``ValueInfoProto``; dims are ints, symbolic names or None; ``shape=None``: rank unknown."""
    return helper.make_tensor_value_info(
        name, onnx_dtype(dtype), None if shape is None else list(shape)
    )


class GraphBuilder:
    """Collects nodes; constants become initializers of the *outermost* graph.

    A child builder (:meth:`child`) shares the name counter and the initializer list, so a
    ``Loop`` body refers to the constants of its outer graph instead of re-materialising
    them every iteration (ONNX subgraphs see outer-scope names).
    """

    def __init__(self, prefix: str = "", _shared: dict | None = None):
        self.prefix = prefix
        self._s = (
            _shared
            if _shared is not None
            else {"n": 0, "inits": [], "cache": {}, "opsets": {}, "functions": []}
        )
        self.nodes: list[onnx.NodeProto] = []

    # -- names and constants ---------------------------------------------------------------
    def fresh(self, hint: str = "v") -> str:
        self._s["n"] += 1
        return f"{self.prefix}{hint}_{self._s['n']}"

    def const(self, value: object, dtype: object = None, hint: str = "c") -> str:
        """An initializer holding ``value`` (deduplicated by dtype, shape and bytes)."""
        a = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
        if a.dtype == np.float64 and dtype is None:
            raise TypeError("give an explicit dtype for float constants")
        key = (a.dtype.str, a.shape, a.tobytes())
        cache = self._s["cache"]
        if key in cache:
            return cache[key]
        name = self.fresh(hint)
        self._s["inits"].append(numpy_helper.from_array(a.copy(order="C"), name))
        cache[key] = name
        return name

    @property
    def initializers(self) -> list[onnx.TensorProto]:
        return self._s["inits"]

    @property
    def extra_opsets(self) -> dict[str, int]:
        """Non-default opset domains used by embedded models (domain -> version)."""
        return self._s["opsets"]

    @property
    def functions(self) -> list:
        """Model-local functions of embedded models."""
        return self._s["functions"]

    def child(self) -> GraphBuilder:
        """A builder for a subgraph body (shares names and constants with this one)."""
        return GraphBuilder(self.prefix, self._s)

    # -- nodes ------------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        *inputs: str,
        outputs: int | Sequence[str] = 1,
        hint: str | None = None,
        **attrs,
    ):
        """Append a node; returns its output name (or the list of names when several)."""
        if isinstance(outputs, int):
            outs = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def add_nodes(self, nodes: Sequence[onnx.NodeProto]) -> None:
        self.nodes.extend(nodes)

    def graph(
        self, name: str, inputs: Sequence, outputs: Sequence, *, with_initializers: bool = True
    ):
        return helper.make_graph(
            self.nodes,
            name,
            list(inputs),
            list(outputs),
            self.initializers if with_initializers else [],
        )

    # -- small idioms -----------------------------------------------------------------------
    def cast(self, x: str, dtype: object) -> str:
        return self.op("Cast", x, to=onnx_dtype(dtype))

    def gather(self, table: str, index: str) -> str:
        return self.op("Gather", table, index, axis=0)

    def batch_of(self, x: str) -> str:
        """(1,) int64: the batch size of ``x``."""
        return self.op("Shape", x, start=0, end=1)


END_KEY = "refdiff.end"


def finish_model(
    graph: onnx.GraphProto,
    metadata: Mapping[str, str],
    *,
    doc: str = "",
    builder: GraphBuilder | None = None,
) -> onnx.ModelProto:
    """Stamp IR 10 / opset 21, attach ``metadata_props``, and check the model.

    Runs ``onnx.checker.check_model(full_check=True)`` and strict, type-checking shape
    inference; any failure is a bug in the builder and raises.  The last metadata entry is
    ``refdiff.end`` so that a file cut at a protobuf field boundary is still recognised as
    truncated (protobuf writes ``metadata_props`` last).
    """
    from refdiff import __version__

    opsets = [helper.make_opsetid("", OPSET)]
    if builder is not None:
        opsets += [helper.make_opsetid(d, v) for d, v in sorted(builder.extra_opsets.items())]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="refdiff",
        producer_version=__version__,
        doc_string=doc,
        functions=list(builder.functions) if builder is not None else None,
    )
    model.ir_version = IR_VERSION
    props = {str(k): str(v) for k, v in metadata.items() if k != END_KEY}
    props[END_KEY] = "1"
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    return model


def _reads(node, data: bool = True) -> set[str]:
    """Names ``node`` takes: its inputs and, for control flow, every name its subgraphs
    take (outer-scope values included).  ``data``: leave out ``Shape``/``Size``, which read
    no values."""
    if data and node.op_type in ("Shape", "Size"):
        return set()
    names = set(node.input)
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for n in g.node:
                names |= _reads(n, data)
    return names


def may_alias(graph, source: str, target: str) -> bool:
    """True when ``target`` may be written into the buffer of input ``source``: every node
    that reads ``source``'s data runs before the node producing ``target`` (it is one of that
    node's ancestors), so a sequential executor has read the whole input before the output
    is written.  Used to update the sampler state in place (docs/deploy.md, "Memory")."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    if target not in producer:
        return False
    ancestors, todo = set(), [producer[target]]
    while todo:
        i = todo.pop()
        if i in ancestors:
            continue
        ancestors.add(i)
        todo += [producer[n] for n in _reads(graph.node[i], False) if n in producer]
    readers = {i for i, n in enumerate(graph.node) if source in _reads(n)}
    return readers <= ancestors - {producer[target]}
