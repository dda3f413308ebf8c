"""ONNX protobuf classes, ``onnx.checker`` and shape inference without running
``onnx/__init__`` (whose ``import ml_dtypes`` costs ~0.6 s): a cold ``refdiff sample`` with a
denoiser file builds and checks its step graph with these (docs/deploy.md, "Fast start").

``onnx/onnx_ml_pb2.py`` (protobuf only) and onnx's C extension are loaded from the installed
onnx package under their own names (``onnx.onnx_ml_pb2``, ``onnx.onnx_cpp2py_export``), so a
later ``import onnx`` in the same process reuses them: one ``ModelProto`` class either way.
When onnx is already imported its own modules are used.  :data:`onnx`, :data:`helper` and
:data:`numpy_helper` implement the few functions refdiff's graph building calls, byte for
byte as ``onnx.helper`` / ``onnx.numpy_helper`` write them; ``export/_lazy.py`` serves them
until onnx is imported and falls back to onnx for anything else.
"""

from __future__ import annotations

import collections.abc
import glob
import importlib.machinery
import importlib.util
import numbers
import os
import sys
import threading
import types

import numpy as np

_MODULES: dict[str, types.ModuleType] = {}
_LOCK = threading.Lock()  # one load, even when replicas build graphs in threads


def onnx_imported() -> bool:
    """Whether the real onnx package is imported (its helpers are then used directly)."""
    m = sys.modules.get("onnx")
    return m is not None and hasattr(m, "helper")


def _load(name: str, path: str) -> types.ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def modules() -> tuple[types.ModuleType, types.ModuleType]:
    """(``onnx_ml_pb2``, the C extension), loaded without ``onnx/__init__`` if need be."""
    if "pb" in _MODULES:
        return _MODULES["pb"], _MODULES["c"]
    with _LOCK:
        if "pb" in _MODULES:
            return _MODULES["pb"], _MODULES["c"]
        if "onnx" in sys.modules:
            import onnx.onnx_cpp2py_export as c
            import onnx.onnx_ml_pb2 as pb
        else:
            spec = importlib.util.find_spec("onnx")  # finds the package without running it
            if spec is None or not spec.submodule_search_locations:
                raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
            where = list(spec.submodule_search_locations)[0]
            pb = _load("onnx.onnx_ml_pb2", os.path.join(where, "onnx_ml_pb2.py"))
            ext = [
                f
                for suffix in importlib.machinery.EXTENSION_SUFFIXES
                for f in glob.glob(os.path.join(where, "onnx_cpp2py_export" + suffix))
            ]
            if not ext:
                raise ImportError("onnx's C extension (onnx_cpp2py_export) is missing")
            c = _load("onnx.onnx_cpp2py_export", ext[0])
        _MODULES.update(pb=pb, c=c)
    return _MODULES["pb"], _MODULES["c"]


# -- onnx.helper's subset ---------------------------------------------------------------------
def make_attribute(key: str, value: object):
    pb, _ = modules()
    A = pb.AttributeProto
    attr = A()
    attr.name = key
    if isinstance(value, numbers.Integral):
        attr.i, attr.type = int(value), A.INT
    elif isinstance(value, numbers.Real):
        attr.f, attr.type = float(value), A.FLOAT
    elif isinstance(value, str | bytes):
        attr.s, attr.type = value.encode("utf-8") if isinstance(value, str) else value, A.STRING
    elif isinstance(value, pb.TensorProto):
        attr.t.CopyFrom(value)
        attr.type = A.TENSOR
    elif isinstance(value, pb.GraphProto):
        attr.g.CopyFrom(value)
        attr.type = A.GRAPH
    elif isinstance(value, collections.abc.Iterable):
        items = list(value)
        if items and all(isinstance(v, numbers.Integral) for v in items):
            attr.ints.extend(int(v) for v in items)
            attr.type = A.INTS
        elif items and all(isinstance(v, numbers.Real) for v in items):
            attr.floats.extend(float(v) for v in items)
            attr.type = A.FLOATS
        elif items and all(isinstance(v, str | bytes) for v in items):
            attr.strings.extend(v.encode("utf-8") if isinstance(v, str) else v for v in items)
            attr.type = A.STRINGS
        else:
            return _real("helper").make_attribute(key, value)
    else:
        return _real("helper").make_attribute(key, value)
    return attr


def make_node(op_type, inputs, outputs, name=None, doc_string=None, domain=None, **kwargs):
    pb, _ = modules()
    node = pb.NodeProto()
    node.op_type = op_type
    node.input.extend(inputs)
    node.output.extend(outputs)
    if name:
        node.name = name
    if doc_string:
        node.doc_string = doc_string
    if domain is not None:
        node.domain = domain
    node.attribute.extend(make_attribute(k, v) for k, v in sorted(kwargs.items()) if v is not None)
    return node


def make_tensor_value_info(name: str, elem_type: int, shape, doc_string: str = ""):
    pb, _ = modules()
    vi = pb.ValueInfoProto()
    vi.name = name
    if doc_string:
        vi.doc_string = doc_string
    tt = vi.type.tensor_type
    tt.elem_type = elem_type
    if shape is not None:
        tt.shape.dim.extend([])
        for d in shape:
            dim = tt.shape.dim.add()
            if d is None:
                pass
            elif isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
            else:
                raise ValueError(f"Invalid item in shape: {d}. Needs to be of int or str.")
    return vi


def make_graph(nodes, name, inputs, outputs, initializer=None, doc_string=None, value_info=None):
    pb, _ = modules()
    g = pb.GraphProto()
    g.node.extend(nodes)
    g.name = name
    g.input.extend(inputs)
    g.output.extend(outputs)
    g.initializer.extend(initializer or [])
    g.sparse_initializer.extend([])
    g.value_info.extend(value_info or [])
    if doc_string:
        g.doc_string = doc_string
    return g


def make_opsetid(domain: str, version: int):
    pb, _ = modules()
    o = pb.OperatorSetIdProto()
    o.domain = domain
    o.version = version
    return o


def make_model(graph, **kwargs):
    pb, c = modules()
    m = pb.ModelProto()
    m.ir_version = pb.IR_VERSION
    m.graph.CopyFrom(graph)
    opsets = kwargs.pop("opset_imports", None)
    if opsets is not None:
        m.opset_import.extend(opsets)
    else:
        m.opset_import.add().version = onnx_opset_version()
    functions = kwargs.pop("functions", None)
    if functions is not None:
        m.functions.extend(functions)
    for k, v in kwargs.items():
        setattr(m, k, v)
    return m


def set_model_props(model, props: dict) -> None:
    del model.metadata_props[:]
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v


# -- onnx.numpy_helper's subset ---------------------------------------------------------------
_ELEM = {
    np.dtype(np.float16): 10,
    np.dtype(np.float32): 1,
    np.dtype(np.float64): 11,
    np.dtype(np.int8): 3,
    np.dtype(np.uint8): 2,
    np.dtype(np.int16): 5,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
    np.dtype(np.bool_): 9,
}


def from_array(array: np.ndarray, name: str | None = None):
    if np.dtype(array.dtype).newbyteorder("=") not in _ELEM:
        return _real("numpy_helper").from_array(array, name)
    pb, _ = modules()
    t = pb.TensorProto()
    t.dims.extend(array.shape)
    if name:
        t.name = name
    t.data_type = _ELEM[np.dtype(array.dtype).newbyteorder("=")]
    a = np.asarray(array)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    t.raw_data = a.tobytes()
    return t


# -- onnx's subset: checker, shape inference, opset version, parsing ---------------------------
def check_model(model, full_check: bool = False, skip_opset_compatibility_check: bool = False,
                check_custom_domain: bool = False) -> None:  # fmt: skip
    if not isinstance(model, bytes | bytearray):
        if isinstance(model, str | os.PathLike):
            return _real("checker").check_model(model, full_check)
        model = model.SerializeToString()
    _, c = modules()
    c.checker.check_model(
        bytes(model), full_check, skip_opset_compatibility_check, check_custom_domain
    )


def infer_shapes(model, check_type: bool = False, strict_mode: bool = False,
                 data_prop: bool = False):  # fmt: skip
    pb, c = modules()
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return pb.ModelProto.FromString(
        c.shape_inference.infer_shapes(data, check_type, strict_mode, data_prop)
    )


def load_from_string(data: bytes):
    pb, _ = modules()
    return pb.ModelProto.FromString(data)


def onnx_opset_version() -> int:
    _, c = modules()
    return c.defs.schema_version_map()[""][1]


def _real(name: str):
    import importlib

    return importlib.import_module(f"onnx.{name}")


class _Shim(types.ModuleType):
    """Serves ``names`` from this module (protobuf classes from ``onnx_ml_pb2``) until onnx is
    imported; anything else imports ``target`` (``onnx``, ``onnx.helper``, …)."""

    def __init__(self, target: str, names: dict):
        super().__init__(f"refdiff-shim:{target}")
        self.__dict__["_target"], self.__dict__["_names"] = target, names

    def __getattr__(self, attr: str):
        names = self.__dict__["_names"]
        if attr in names:
            v = names[attr]
            return v() if isinstance(v, _Deferred) else v
        import importlib

        return getattr(importlib.import_module(self.__dict__["_target"]), attr)


class _Deferred:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self):
        return self.fn()


def _pb(attr: str) -> _Deferred:
    return _Deferred(lambda: getattr(modules()[0], attr))


def _sub(**names) -> types.SimpleNamespace:
    return types.SimpleNamespace(**names)


_PROTOS = (
    "ModelProto", "GraphProto", "NodeProto", "TensorProto", "ValueInfoProto", "AttributeProto",
    "StringStringEntryProto", "OperatorSetIdProto", "FunctionProto", "TypeProto", "IR_VERSION",
)  # fmt: skip

onnx = _Shim(
    "onnx",
    {
        **{p: _pb(p) for p in _PROTOS},
        "checker": _Deferred(
            lambda: _sub(
                check_model=check_model, ValidationError=modules()[1].checker.ValidationError
            )
        ),
        "shape_inference": _Deferred(
            lambda: _sub(
                infer_shapes=infer_shapes,
                InferenceError=modules()[1].shape_inference.InferenceError,
            )
        ),
        "defs": _sub(onnx_opset_version=onnx_opset_version),
        "load_from_string": load_from_string,
        "load_model_from_string": load_from_string,
        "helper": _Deferred(lambda: helper),
        "numpy_helper": _Deferred(lambda: numpy_helper),
    },
)
helper = _Shim(
    "onnx.helper",
    {
        "make_attribute": make_attribute,
        "make_node": make_node,
        "make_tensor_value_info": make_tensor_value_info,
        "make_graph": make_graph,
        "make_opsetid": make_opsetid,
        "make_model": make_model,
        "set_model_props": set_model_props,
    },
)
numpy_helper = _Shim("onnx.numpy_helper", {"from_array": from_array})

SHIMS = {"onnx": onnx, "onnx.helper": helper, "onnx.numpy_helper": numpy_helper}
