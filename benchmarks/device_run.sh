#!/usr/bin/env bash
# Runs refdiff's CUDA path on a lent GPU machine (see benchmarks/RESULTS.md, "GPU").
# Usage (on the GPU machine, repo root): bash benchmarks/device_run.sh PARTS_DIR OUT_DIR
# PARTS_DIR holds part00.. of onnxruntime-gpu (cp312) split as: rest.tar.xz ++ cuda.so.xz.
set -uo pipefail
parts=$1; out=$2; rest_bytes=${REST_BYTES:-17442972}
site=/tmp/ortgpu
if [ ! -f $site/onnxruntime/capi/libonnxruntime_providers_cuda.so ]; then
  mkdir -p $site && cat "$parts"/part* > /tmp/all.bin
  sha256sum /tmp/all.bin
  head -c "$rest_bytes" /tmp/all.bin | tar -xJf - -C $site
  tail -c +$((rest_bytes + 1)) /tmp/all.bin | xz -d > $site/onnxruntime/capi/libonnxruntime_providers_cuda.so
fi
# CUDA 13 / cuDNN 9 libraries from the machine's PyTorch install.
libs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for p in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(p))
    for p in glob.glob(os.path.join(sp, "torch", "lib", "*.so*")):
        dirs.add(os.path.dirname(p))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$site:$PWD/.gpu/src"
mkdir -p .gpu/src/refdiff && cp -r refdiff/. .gpu/src/refdiff/ && rm -rf .gpu/src/refdiff/export && cp -r export .gpu/src/refdiff/export
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import onnxruntime as o, refdiff.export as e; print(o.__version__, o.__file__); print(e.cuda_status())" 2>&1 | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m "cuda" tests/ -rs 2>&1 | tee "$out/pytest_cuda.txt" | tail -25
python3 -m pytest -q -p no:cacheprovider tests/export/test_export_*.py -x 2>&1 | tail -5 | tee -a "$out/pytest_cuda.txt"
python3 -m refdiff.cli bench --provider cuda --quick --out "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.txt" | tail -40
