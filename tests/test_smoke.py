import subprocess
import sys


def test_import_refdiff_loads_no_onnx():
    code = "import sys, refdiff, refdiff.cli; print([m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'torch')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
