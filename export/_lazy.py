"""Modules imported on first attribute access, so that importing refdiff.export's modules
does not import onnx (about half a second, most of it ml_dtypes).  Until onnx is imported,
``onnx``, ``onnx.helper`` and ``onnx.numpy_helper`` are served by export/_proto.py (onnx's
protobuf module and C extension without ``onnx/__init__``), so building, checking and
parsing the graphs refdiff makes at run time does not import it either.
``from ._lazy import onnx, helper`` replaces ``import onnx`` and ``from onnx import helper``
in modules whose module-level code does not touch onnx.
"""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """A stand-in for the module ``target``: the first attribute access imports it."""

    def __init__(self, target: str):
        super().__init__(target)
        self.__dict__["_target"] = target

    def __getattr__(self, attr: str):
        target = self.__dict__["_target"]
        from ._proto import SHIMS, onnx_imported  # protobuf + checker without onnx/__init__

        if not onnx_imported() and target in SHIMS:
            return getattr(SHIMS[target], attr)
        return getattr(importlib.import_module(target), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_target']!r}>"


class LazyAttribute:
    """A stand-in for ``module.name`` (a class used only through its attributes, such as
    ``onnx.TensorProto.FLOAT``)."""

    def __init__(self, module: str, name: str):
        self._where = (module, name)

    def __getattr__(self, attr: str):
        module, name = self._where
        from ._proto import SHIMS, onnx_imported

        if not onnx_imported() and module in SHIMS:
            return getattr(getattr(SHIMS[module], name), attr)
        return getattr(getattr(importlib.import_module(module), name), attr)


onnx = LazyModule("onnx")
helper = LazyModule("onnx.helper")
numpy_helper = LazyModule("onnx.numpy_helper")
TensorProto = LazyAttribute("onnx", "TensorProto")
