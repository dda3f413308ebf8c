"""``refdiff demo`` in one place (docs/demo.md): the run in seven stages (:mod:`.run`) and its
figures and report text (:mod:`.report`).  The demo's NumPy parts — the data registry
(:mod:`refdiff.data`), the MLP (:mod:`refdiff.mlp`) and its trainer (:mod:`refdiff.train`) —
stay in ``refdiff`` because they need numpy only (``refdiff export --mixture`` and the tests
use them without onnx); this package adds what needs onnx, onnxruntime and matplotlib."""

from __future__ import annotations

from . import report, run
from .run import *  # noqa: F403  (the run's public names are the package's)

__all__ = [*run.__all__, "report", "run"]
