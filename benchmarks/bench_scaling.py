"""Part 3: how the samplers scale with the number of steps and the batch, and their peak memory.

Reference samplers (:func:`refdiff.sampling.ddpm_sample` / ``ddim_sample``, noise from a
Generator, a denoiser that returns a fixed ε̂ so the sampler itself is measured): time per
step and per element-step, and the peak of NumPy's allocations during one sample
(``tracemalloc``, which sees NumPy's buffers) relative to one state's bytes.

onnxruntime samplers (when :mod:`refdiff.export` provides them; see ``bench_ort``): the same
grid for the per-step loop and the whole-sampler graph, with the peak resident memory of a
fresh process that builds the session and samples once (``ru_maxrss`` after − before).
"""

from __future__ import annotations

import numpy as np

from refdiff import sampling
from refdiff.respacing import spaced_times
from refdiff.schedule import linear, respace

from ._timing import peak_python_bytes, race

T = 1000
D = 2


# size → (steps at batch 64, batches at 20 steps, rounds, ORT points with peak-RSS children)
PLANS = {
    "smoke": ((2,), (1,), 1, 1),
    "quick": ((10, 100), (1, 64, 4096, 65536), 3, 3),
    "full": ((10, 100, 1000), (1, 64, 4096, 65536, 2**20), 5, 100),
}


def _grid(size: str) -> list[tuple[int, int]]:
    """(batch, steps) pairs: steps at batch 64, then batch at 20 steps (smoke: 2 steps)."""
    steps, batches = PLANS[size][:2]
    n_b = 2 if size == "smoke" else 20
    grid = [(64 if size != "smoke" else 1, n) for n in steps] + [(b, n_b) for b in batches]
    return sorted(set(grid), key=lambda bn: (bn[0], bn[1]))


def _ref_sampler(kind: str, batch: int, steps: int, seed: int = 0):
    shape = (batch, D)
    e = np.random.default_rng(seed).standard_normal(shape)
    sch = respace(linear(T), spaced_times(T, steps, "leading"))
    fn = sampling.ddpm_sample if kind == "ddpm" else sampling.ddim_sample

    def den(x, t):
        return e

    return lambda: fn(den, sch, shape, rng=np.random.default_rng(seed))


def run(*, size: str, provider: str = "cpu", threads: int | None = 1, log=print) -> dict:
    rows = []
    base_rounds, rss = PLANS[size][2], PLANS[size][3]
    for batch, steps in _grid(size):
        for kind in ("ddpm", "ddim"):
            fn = _ref_sampler(kind, batch, steps)
            rounds = min(base_rounds, 3) if batch * steps >= 2**22 else base_rounds
            t = race(
                {kind: fn},
                rounds=rounds,
                block_s=0.05 if size != "smoke" else 0.002,
                max_calls=1000,
            )[kind]
            peak = peak_python_bytes(fn)
            state = batch * D * 8
            row = {
                "sampler": f"ref {kind}",
                "batch": batch,
                "steps": steps,
                "ms": 1e3 * t.median,
                "us_per_step": 1e6 * t.median / steps,
                "ns_per_elem_step": 1e9 * t.median / (steps * batch * D),
                "peak_mib": peak / 2**20,
                "peak_over_state": peak / state,
            }
            rows.append(row)
            log(
                f"  ref {kind} batch {batch:>8} steps {steps:>5}: "
                f"{row['us_per_step']:9.1f} µs/step, "
                f"peak {row['peak_mib']:.2f} MiB = {row['peak_over_state']:.1f} states"
            )
    notes = [
        "ref peak: tracemalloc peak during one sample (NumPy buffers included), over one state's "
        "bytes; the sampler keeps x, one step's noise and the step's temporaries alive",
    ]
    out = {"rows": rows, "notes": notes, "targets": []}
    try:
        from . import bench_ort
    except ImportError as e:  # pragma: no cover - bench_ort is part of this package
        notes.append(f"onnxruntime scaling skipped: {e}")
        return out
    # The MLP costs ~37k multiply-adds per point and step: on a CPU, 2^20 points would take
    # minutes per sample, so the ORT grid stops at 65536 there.
    grid = [(b, n) for b, n in _grid(size) if provider != "cpu" or b <= 65536]
    ort_rows, ort_notes = bench_ort.scaling_rows(
        grid, rounds=base_rounds, rss=rss, provider=provider, threads=threads, log=log
    )
    rows.extend(ort_rows)
    notes.extend(ort_notes)
    return out


def per_step_is_flat(rows: list[dict], sampler: str, batch: int = 64) -> float | None:
    """max/min µs per step over the steps grid at ``batch`` (1 = perfectly linear in steps)."""
    v = [r["us_per_step"] for r in rows if r["sampler"] == sampler and r["batch"] == batch]
    return max(v) / min(v) if len(v) >= 2 and min(v) > 0 else None
