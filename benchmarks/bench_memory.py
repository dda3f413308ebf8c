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
    python -m benchmarks.bench_memory --child model - 0 B,C,H,W     (one bare session.run)

The "model" term of the target (≤ 4 states + model) is measured, not assumed: the peak RSS
growth of one bare ``session.run`` of the same denoiser at the same batch in its own child
process (its output, activations and arena); "−model" columns are sampler − model.
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


def _session_options(spec: str) -> None:
    """Experiment: every session gets these ``SessionOptions`` attributes, e.g.
    ``enable_cpu_mem_arena=0,enable_mem_pattern=1`` (set after refdiff's own choices)."""
    import onnxruntime as ort

    pairs = [kv.split("=") for kv in spec.split(",") if kv]
    base = ort.SessionOptions

    class Options(base):
        def __setattr__(self, name, value):
            if any(name == k for k, _ in pairs):
                return  # the experiment's value wins
            super().__setattr__(name, value)

        def __init__(self):
            super().__init__()
            for k, v in pairs:
                base.__setattr__(self, k, bool(int(v)))

    ort.SessionOptions = Options


def _warm_numpy_random() -> None:
    """Touch NumPy's random machinery once (its code and tables: ~5.6 MiB the first time a
    ``Philox`` is made in a process, whatever the state size), so that fixed one-off cost
    stays out of both children's per-state figures."""
    import numpy as np

    np.random.Generator(np.random.Philox(0)).standard_normal(16, dtype=np.float32)


def model_child(shape: tuple[int, ...]) -> dict:
    """The "model" term: peak RSS growth of ONE bare ``session.run`` of the same denoiser at
    the same batch (default ``SessionOptions``, 1 thread; its input made before, its output
    counted), as a hand-written onnxruntime script would run it."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        tiny_image_denoiser(shape).SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    t = np.full(shape[0], 10, np.int64)
    _warm_numpy_random()
    before = _rss()
    out = sess.run(None, {"x": x, "t": t})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state = 4 * math.prod(shape)
    assert out[0].shape == shape
    return {"mode": "model", "before": before, "peak": peak, "states": (peak - before) / state}


def child(mode: str, noise: str, steps: int, shape: tuple[int, ...]) -> dict:
    """One measurement in this process: peak RSS growth during ``sample`` in bytes."""
    import os

    if mode == "model":
        return model_child(shape)
    if os.environ.get("REFDIFF_BENCH_SESSION_OPTIONS"):
        _session_options(os.environ["REFDIFF_BENCH_SESSION_OPTIONS"])
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
    _warm_numpy_random()
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
        "--session-options",
        default=None,
        help="an experiment: SessionOptions for every session, e.g. enable_cpu_mem_arena=0",
    )
    a = p.parse_args(argv)
    if a.child:
        mode, noise, steps, dims = a.child
        print(json.dumps(child(mode, noise, int(steps), tuple(int(d) for d in dims.split(",")))))
        return 0
    if a.session_options:
        import os

        os.environ["REFDIFF_BENCH_SESSION_OPTIONS"] = a.session_options
    shape = (a.batch, *(int(d) for d in a.shape.split(",")))
    steps = [int(s) for s in a.steps.split(",")]
    state = 4 * math.prod(shape)
    model = measure("model", "-", 0, shape)
    print(
        f"peak RSS growth during sample(), in float32 states of {shape} ({state / 2**20:.1f} MiB);"
        f" model = one bare session.run of the denoiser: {model['states']:.2f} states"
    )
    head = " ".join(f"{f'N={n}':>8}" for n in steps) + " ".join(f"{'−model':>8}" for n in steps)
    print(f"{'mode':6} {'noise':6} {head}   ratio  est.  ≤ 4 + model")
    rows = []
    for mode in ("steps", "fused", "graph"):
        for noise in ("input", "graph"):
            r = [measure(mode, noise, n, shape) for n in steps]
            rows += r
            ratio = (r[-1]["peak"]) / r[0]["peak"]
            cells = " ".join(f"{x['states']:8.2f}" for x in r)
            ours = [x["states"] - model["states"] for x in r]
            cells += " " + " ".join(f"{o:8.2f}" for o in ours)
            ok = "yes" if max(ours) <= 4 else "no"
            est = r[-1]["estimate_states"]
            print(f"{mode:6} {noise:6} {cells}   {ratio:5.3f}  {est:4.1f}  {ok}")
    if a.json:
        from refdiff._io import write_json

        write_json(a.json, [model, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
