"""Peak memory of the ONNX samplers against the number of steps (docs/deploy.md, "Memory").

Each configuration runs in a child process (peak RSS is per process): build an
:class:`refdiff.export.OrtSampler` for a tiny image denoiser (elementwise
out = 0.1·x + 1e-4·t, so the network itself holds almost nothing), read the resident set
(VmRSS) just before sampling, sample once, and read the peak (``ru_maxrss``).  The printed
figure is (peak − before) / (bytes of one float32 state), for N = 50 and N = 1000 steps of
DDPM (which adds noise at every step), in every mode, with host noise (``noise="input"``,
seeded: the per-step layout of refdiff.export.noise) and in-graph noise.  Independent of
N means bounded; the old all-at-once host noise grew by 3 states per step.

    python -m benchmarks.bench_memory [--batch 64] [--shape 3,64,64] [--steps 50,1000]
    python -m benchmarks.bench_memory --child MODE NOISE STEPS B,C,H,W     (one measurement)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tiny_image_denoiser(shape: tuple[int, ...]):
    """out = 0.1·x + 1e-4·t: inputs ``x`` (B, C, H, W) float32, ``t`` (B,) int64."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    C, H, W = shape[1:]
    vi = helper.make_tensor_value_info
    inits = [
        numpy_helper.from_array(np.float32(0.1), "a"),
        numpy_helper.from_array(np.float32(1e-4), "c"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["ax"]),
        helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["tf", "axes"], ["t4"]),
        helper.make_node("Mul", ["t4", "c"], ["ct"]),
        helper.make_node("Add", ["ax", "ct"], ["out"]),
    ]
    g = helper.make_graph(
        nodes,
        "tiny_image",
        [vi("x", TensorProto.FLOAT, ["B", C, H, W]), vi("t", TensorProto.INT64, ["B"])],
        [vi("out", TensorProto.FLOAT, ["B", C, H, W])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def _no_mem_pattern() -> None:
    """Experiment: sessions with ``enable_mem_pattern = False`` (onnxruntime's per-shape
    pre-planned block; see benchmarks/RESULTS.md, "Memory")."""
    import onnxruntime as ort

    base = ort.SessionOptions

    class Options(base):
        def __init__(self):
            super().__init__()
            self.enable_mem_pattern = False

    ort.SessionOptions = Options


def child(mode: str, noise: str, steps: int, shape: tuple[int, ...]) -> dict:
    """One measurement in this process: peak RSS growth during ``sample`` in bytes."""
    import os

    if os.environ.get("REFDIFF_BENCH_NO_MEM_PATTERN"):
        _no_mem_pattern()
    import refdiff.export as ex

    from refdiff.schedule import linear

    s = ex.OrtSampler(
        tiny_image_denoiser(shape),
        linear(steps),
        mode=mode,
        noise=noise,
        provider="cpu",
        threads=1,
        prediction_type="epsilon",
        timestep_convention="refdiff",
    )
    before = _rss()
    s.sample(shape=shape, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state = 4 * math.prod(shape)
    return {
        "mode": mode,
        "noise": noise,
        "steps": steps,
        "before": before,
        "peak": peak,
        "states": (peak - before) / state,
        "state_bytes": state,
        "estimate_states": s.memory_estimate(shape) / state,
    }


def measure(mode: str, noise: str, steps: int, shape: tuple[int, ...]) -> dict:
    """:func:`child` in a fresh interpreter (its own peak RSS)."""
    dims = ",".join(map(str, shape))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--child", mode, noise, str(steps), dims],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=4, metavar=("MODE", "NOISE", "STEPS", "SHAPE"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--shape", default="3,64,64")
    p.add_argument("--steps", default="50,1000")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument(
        "--no-mem-pattern",
        action="store_true",
        help="sessions without onnxruntime's memory pattern (an experiment)",
    )
    a = p.parse_args(argv)
    if a.child:
        mode, noise, steps, dims = a.child
        print(json.dumps(child(mode, noise, int(steps), tuple(int(d) for d in dims.split(",")))))
        return 0
    if a.no_mem_pattern:
        import os

        os.environ["REFDIFF_BENCH_NO_MEM_PATTERN"] = "1"
    shape = (a.batch, *(int(d) for d in a.shape.split(",")))
    steps = [int(s) for s in a.steps.split(",")]
    state = 4 * math.prod(shape)
    print(
        f"peak RSS growth during sample(), in float32 states of {shape} ({state / 2**20:.1f} MiB)"
    )
    print(f"{'mode':6} {'noise':6} " + " ".join(f"{f'N={n}':>8}" for n in steps) + "   ratio  est.")
    rows = []
    for mode in ("steps", "fused", "graph"):
        for noise in ("input", "graph"):
            r = [measure(mode, noise, n, shape) for n in steps]
            rows += r
            ratio = (r[-1]["peak"]) / r[0]["peak"]
            cells = " ".join(f"{x['states']:8.2f}" for x in r)
            print(f"{mode:6} {noise:6} {cells}   {ratio:5.3f}  {r[-1]['estimate_states']:4.1f}")
    if a.json:
        from refdiff._io import write_json

        write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
