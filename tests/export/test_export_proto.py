"""Graphs built before onnx is imported (export/_proto.py: onnx's protobuf module and C
extension loaded without ``onnx/__init__``, docs/deploy.md "Fast start") are the bytes
``onnx.helper`` writes, are checked by the same checker, and a later ``import onnx`` in
the same process shares their classes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnx") is None:  # found, not imported: the child must not
    pytest.skip("needs onnx", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


def build_all() -> dict[str, str]:
    """SHA-256 of every graph kind refdiff builds at run time, over samplers and noise."""
    import refdiff.export as ex
    from refdiff.export.sampler_graph import sampler_model
    from refdiff.export.steps import fused_step_model, step_model

    from refdiff.mlp import init_mlp
    from refdiff.schedule import linear

    mlp = init_mlp(np.random.default_rng(0), data_dim=2, hidden=8, depth=1, embed_dim=4)
    models = {
        "mixture": ex.mixture_denoiser_model(ex.builtin_mixture("ring8"), linear(20)),
        "mlp": ex.mlp_denoiser_model(mlp, schedule=linear(20)),
    }
    out = {k: m.SerializeToString() for k, m in models.items()}
    for name, m in models.items():
        den = ex.open_denoiser(m)
        for sampler, opts in (("ddpm", {}), ("ddim", {"eta": 0.5})):
            tables = ex.step_tables(linear(20), sampler, prediction_type="epsilon", **opts)
            for noise in ("input", "graph"):
                kw = dict(noise=noise, seed=3)
                out[f"{name}/{sampler}/{noise}/step"] = step_model(den, tables, **kw)
                out[f"{name}/{sampler}/{noise}/fused"] = fused_step_model(den, tables, **kw)
                out[f"{name}/{sampler}/{noise}/graph"] = sampler_model(den, tables, **kw)
    return {
        k: hashlib.sha256(v if isinstance(v, bytes) else v.SerializeToString()).hexdigest()
        for k, v in out.items()
    }


CHILD = """
import json, sys
from tests.export.test_export_proto import build_all
digests = build_all()
from refdiff.export._proto import modules, onnx_imported
shimmed = not onnx_imported() and "ml_dtypes" not in sys.modules
import onnx  # afterwards: one ModelProto class, and onnx's own checker accepts our bytes
import refdiff.export as ex
from refdiff.schedule import linear
m = ex.mixture_denoiser_model(ex.builtin_mixture("two"), linear(5))
onnx.checker.check_model(m, full_check=True)
same = type(m) is onnx.ModelProto and modules()[0].ModelProto is onnx.ModelProto
print(json.dumps({"digests": digests, "shimmed": shimmed, "same": same}))
"""


def test_graphs_built_without_onnx_init_are_onnx_helpers_bytes():
    import onnx  # noqa: F401 - this process builds with onnx.helper

    ours = build_all()
    res = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True
    )
    child = json.loads(res.stdout.strip().splitlines()[-1])
    assert child["shimmed"], "the child imported onnx/__init__ (ml_dtypes) while building"
    assert child["same"]
    assert len(ours) == 26 and child["digests"] == ours


def test_shim_serves_only_until_onnx_is_imported():
    import onnx
    from refdiff.export._lazy import helper
    from refdiff.export._lazy import onnx as lazy_onnx
    from refdiff.export._proto import onnx_imported

    assert onnx_imported()
    assert helper.make_node is onnx.helper.make_node  # the real one once imported
    assert lazy_onnx.ModelProto is onnx.ModelProto
