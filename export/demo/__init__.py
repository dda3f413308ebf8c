"""``refdiff demo`` in one place (docs/demo.md): the run in seven stages (:mod:`.run`) and its
figures and report text (:mod:`.report`).  The demo's NumPy parts — the data registry
(:mod:`refdiff.data`), the MLP (:mod:`refdiff.mlp`) and its trainer (:mod:`refdiff.train`) —
stay in ``refdiff`` because they need numpy only (``refdiff export --mixture`` and the tests
use them without onnx); this package adds what needs onnx, onnxruntime and matplotlib."""

from __future__ import annotations

from . import report
from .run import (
    LAW_ALPHA,
    LAW_DIRECTIONS,
    MLP_LAW_TOL,
    PARITY_MAX_TOL,
    PARITY_TOL,
    DataStage,
    DemoOptions,
    ExportStage,
    LawStage,
    ParityStage,
    SampleStage,
    TrainStage,
    build_parser,
    main,
    run_demo,
)

__all__ = [
    "main",
    "build_parser",
    "run_demo",
    "DemoOptions",
    "PARITY_TOL",
    "PARITY_MAX_TOL",
    "LAW_ALPHA",
    "MLP_LAW_TOL",
    "LAW_DIRECTIONS",
    "DataStage",
    "TrainStage",
    "ExportStage",
    "SampleStage",
    "ParityStage",
    "LawStage",
    "report",
]
