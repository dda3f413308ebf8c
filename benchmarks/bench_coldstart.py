"""Cold start of ``refdiff sample``: a whole process, against a hand-written onnxruntime script.

Each command is a fresh Python process; the commands are run in interleaved rounds (one of
each per round, so a busy machine slows them alike) and the median and minimum wall times
are reported, with the median CPU time (user + system, which a busy machine inflates less
than wall time) and the overhead of ``refdiff sample`` over the hand-written script doing the
same work (docs/benchmarks.md).  Measured:

- ``den``: 10 DDPM steps (leading spacing of T = 1000), batch 1, with a denoiser file (the
  exact ring8 mixture denoiser): ``refdiff sample --model den.onnx --steps 10 --batch 1``
  (default mode ``steps``: refdiff builds a step graph, so onnx is imported) against a script
  that opens the denoiser in onnxruntime and runs the same 10 DDPM updates in NumPy;
- ``sampler``: the same sampler exported whole (``refdiff export --kind sampler``), batch 1:
  ``refdiff sample --model sampler.onnx`` against a script that feeds it x_T and the noise;
- ``--help``: ``refdiff sample --help``;
- floors: ``python -c pass``, ``import numpy, onnxruntime``, ``import refdiff`` (the NumPy
  half, which every ``refdiff`` command imports first) and ``import onnx``.

``--checkout DIR`` (repeatable) measures other source trees too (e.g. an export of ``main``:
``git archive main | tar -x -C /tmp/main``), each run through the same small launcher that
maps DIR/refdiff and DIR/export onto ``refdiff``/``refdiff.export``, so before and after
are measured alike.  Usage::

    python benchmarks/bench_coldstart.py [--rounds 15] [--checkout DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LAUNCHER = r"""
import importlib.util, sys
root = sys.argv[1]
sys.path.insert(0, root)
import refdiff
spec = importlib.util.spec_from_file_location(
    "refdiff.export", root + "/export/__init__.py", submodule_search_locations=[root + "/export"]
)
mod = importlib.util.module_from_spec(spec)
sys.modules["refdiff.export"] = mod
spec.loader.exec_module(mod)
refdiff.export = mod
from refdiff.cli import main
sys.exit(main(sys.argv[2:]))
"""

# A user's own loop: onnxruntime + NumPy, DDPM (Ho et al. eq. 11, σ² = β̃) on 10 leading steps.
HAND_DENOISER = r"""
import sys
import numpy as np
import onnxruntime as ort
model, out = sys.argv[1], sys.argv[2]
T, N = 1000, 10
beta = np.linspace(1e-4, 0.02, T)
ab = np.cumprod(1 - beta)
ts = (np.arange(N) * (T // N))[::-1]           # 0-based indices, leading spacing
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 2))
for i, t in enumerate(ts):
    prev = ts[i + 1] if i + 1 < N else -1
    a_t, a_p = ab[t], (ab[prev] if prev >= 0 else 1.0)
    b = 1 - a_t / a_p
    eps = s.run(None, {"x": x.astype(np.float32), "t": np.array([t + 1], np.int64)})[0]
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    mean = (np.sqrt(a_p) * b * x0 + np.sqrt(1 - b) * (1 - a_p) * x) / (1 - a_t)
    var = b * (1 - a_p) / (1 - a_t)
    x = mean + (np.sqrt(var) * rng.standard_normal(x.shape) if prev >= 0 else 0)
np.save(out, x.astype(np.float32))
"""

HAND_SAMPLER = r"""
import sys
import numpy as np
import onnxruntime as ort
model, out = sys.argv[1], sys.argv[2]
so = ort.SessionOptions()
so.log_severity_level = 3
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feeds = {}
for i in s.get_inputs():
    if i.name == "x_T":
        feeds["x_T"] = rng.standard_normal((1, 2)).astype(np.float32)
    elif i.name == "step_noise":
        feeds["step_noise"] = rng.standard_normal((10, 1, 2)).astype(np.float32)
    elif i.name == "step_start":
        feeds["step_start"] = np.array(0, np.int64)
np.save(out, s.run(["x_0"], feeds)[0])
"""


def _prepare(tmp: Path) -> tuple[Path, Path]:
    """The denoiser file and the 10-step sampler file, written with this checkout."""
    from refdiff.export import (
        build_schedule,
        builtin_mixture,
        mixture_denoiser_model,
        open_denoiser,
        sampler_model,
        save_model,
        step_tables,
    )

    base, walk = build_schedule("linear", 1000, steps=10)  # as `refdiff sample --steps 10`
    den = save_model(mixture_denoiser_model(builtin_mixture("ring8"), base), tmp / "den.onnx")
    tables = step_tables(walk, "ddpm", prediction_type="epsilon")
    samp = save_model(sampler_model(open_denoiser(den), tables), tmp / "sampler.onnx")
    from refdiff._io import write_text

    for name, text in (
        ("launch.py", LAUNCHER),
        ("hand_denoiser.py", HAND_DENOISER),
        ("hand_sampler.py", HAND_SAMPLER),
    ):
        write_text(tmp / name, text)
    return den, samp


def _commands(tmp: Path, den: Path, samp: Path, checkouts: list[Path]) -> dict[str, list[str]]:
    py = sys.executable
    out = str(tmp / "out.npy")
    cmds = {
        "python -c pass": [py, "-c", "pass"],
        "import numpy, onnxruntime": [py, "-c", "import numpy, onnxruntime"],
        "import refdiff": [py, "-c", "import refdiff"],
        "import onnx": [py, "-c", "import onnx"],
        "hand-written ORT, denoiser": [py, str(tmp / "hand_denoiser.py"), str(den), out],
        "hand-written ORT, sampler file": [py, str(tmp / "hand_sampler.py"), str(samp), out],
    }
    for co in checkouts:
        tag = "this checkout" if co == ROOT else co.name
        run = [py, str(tmp / "launch.py"), str(co), "sample"]
        common = ["--batch", "1", "--quiet", "--seed", "0", "-o", out]
        cmds[f"refdiff sample --help [{tag}]"] = [*run, "--help"]
        cmds[f"refdiff sample, denoiser [{tag}]"] = [*run, "--model", str(den), "--steps", "10"]
        cmds[f"refdiff sample, denoiser [{tag}]"] += common
        cmds[f"refdiff sample, sampler file [{tag}]"] = [*run, "--model", str(samp), *common]
    return cmds


def run(rounds: int, checkouts: list[Path]) -> dict:
    with tempfile.TemporaryDirectory(prefix="refdiff-coldstart-") as d:
        tmp = Path(d)
        den, samp = _prepare(tmp)
        cmds = _commands(tmp, den, samp, checkouts)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        for name, argv in cmds.items():  # warm the page cache and .pyc files; check they run
            p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp)
            if p.returncode != 0:
                raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        for _ in range(rounds):
            for name, argv in cmds.items():
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(argv, capture_output=True, env=env, cwd=tmp, check=True)
                times[name].append(time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return {
        "rounds": rounds,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "results": {
            k: {
                "median_s": statistics.median(v),
                "min_s": min(v),
                "cpu_median_s": statistics.median(cpu[k]),
                "all_s": v,
            }
            for k, v in times.items()
        },
    }


def table(res: dict) -> str:
    r = res["results"]
    lines = [
        f"{'command':<48} {'median':>9} {'min':>9} {'CPU':>9}   "
        "overhead vs hand-written: wall median, CPU median"
    ]
    for name, v in r.items():
        extra = ""
        if name.startswith("refdiff sample, denoiser"):
            extra = _over(v, r["hand-written ORT, denoiser"])
        elif name.startswith("refdiff sample, sampler file"):
            extra = _over(v, r["hand-written ORT, sampler file"])
        med, lo, c = v["median_s"] * 1e3, v["min_s"] * 1e3, v["cpu_median_s"] * 1e3
        lines.append(f"{name:<48} {med:>7.0f}ms {lo:>7.0f}ms {c:>7.0f}ms   {extra}")
    return "\n".join(lines)


def _over(v: dict, base: dict) -> str:
    d = v["median_s"] - base["median_s"]
    c = v["cpu_median_s"] - base["cpu_median_s"]
    return f"{d * 1e3:+.0f} ms ({v['median_s'] / base['median_s']:.2f}×), CPU {c * 1e3:+.0f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--checkout", action="append", default=[], type=Path)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    res = run(a.rounds, [ROOT, *[c.resolve() for c in a.checkout]])
    print(table(res))
    if a.json is not None:
        sys.path.insert(0, str(ROOT))
        from refdiff._io import write_json

        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
