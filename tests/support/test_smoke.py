"""Import hygiene: the spec package loads numpy and scipy only (docs/core-tests.md)."""

import importlib
import json
import subprocess
import sys

import pytest

FORBIDDEN = (
    "onnx",
    "onnxruntime",
    "torch",
    "matplotlib",
    "tqdm",
    "diffusers",
    "hypothesis",
    "pytest",
)
CORE = (
    "errors",
    "schedule",
    "respacing",
    "forward",
    "posterior",
    "parameterization",
    "reverse",
    "sampling",
    "losses",
    "mlp",
    "_check",
    "_io",
)


def _loaded_after(code: str) -> list[str]:
    """Top-level packages from FORBIDDEN present in sys.modules after running ``code`` fresh."""
    probe = (
        f"{code}\nimport sys, json\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_refdiff_loads_no_onnx():
    code = (
        "import sys, refdiff, refdiff.cli; print([m for m in sys.modules"
        " if m.split('.')[0] in ('onnx', 'onnxruntime', 'torch')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plain_import_refdiff_loads_nothing_forbidden():
    assert _loaded_after("import refdiff") == []


def test_every_core_module_loads_nothing_forbidden():
    imports = "\n".join(f"import refdiff.{m}" for m in CORE)
    assert _loaded_after(imports) == []


def test_the_probe_can_fail():
    # the probe itself detects a forbidden import (so the tests above are not vacuous)
    assert _loaded_after("import json, pytest") == ["pytest"]


@pytest.mark.parametrize("name", CORE)
def test_core_module_public_names_exist(name):
    mod = importlib.import_module(f"refdiff.{name}")
    for attr in getattr(mod, "__all__", []):
        assert hasattr(mod, attr), f"refdiff.{name}.__all__ lists missing {attr!r}"


def test_package_surface():
    import refdiff

    for attr in refdiff.__all__:
        assert hasattr(refdiff, attr)
    assert isinstance(refdiff.__version__, str)
    s = refdiff.make_schedule("linear", 10)
    assert s.T == 10 and refdiff.respace(s, [5, 10]).T == 2
