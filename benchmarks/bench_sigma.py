"""Part 7: each σ-view sampler's step against diffusers' step for the same sampler, and the floor.

For each sampler and state shape, one interleaved race (see ``_timing``):

- ``ref``   the step :func:`refdiff.sigma_affine.sample` runs — its state update (and, for
  Heun, the model input of the second call) as one blocked combination with coefficients
  read off :mod:`refdiff.solvers` beforehand (as diffusers' ``set_timesteps`` prepares its
  tables), the noise drawn inside from a ``numpy.random.Generator`` for the stochastic ones;
  taken at step n/2 of a 20-step grid, where the multistep samplers use their full history;
- ``diffusers``  ``scheduler.step(model_output, t, sample, return_dict=False)`` of the same
  sampler (float64 CPU tensors; Heun: its two calls of one step) at the same step index,
  after running the first n/2 steps so that the multistep history is populated;
- ``noise`` / ``pass``: the floor — drawing one step's noise (stochastic samplers) plus one
  ``numpy.copyto`` moving as many bytes as the step must move (its inputs read, the new
  state written).

diffusers classes: EulerDiscrete, EulerAncestralDiscrete, HeunDiscrete, LMSDiscrete,
DPMSolverMultistep (dpmsolver++ order 2; sde-dpmsolver++ orders 2 and 3), UniPCMultistep,
FlowMatchEulerDiscrete.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from refdiff import flow, sigma
from refdiff import sigma_affine as SA

from ._timing import race, ratio
from .bench_steps import _pass

STEPS = 20
SHAPES: dict[str, tuple[int, ...]] = {
    "1x2": (1, 2),
    "64x2": (64, 2),
    "4096x2": (4096, 2),
    "2^20x2": (2**20, 2),
}
# sampler → (refdiff options, diffusers class name, diffusers constructor options)
SAMPLERS: dict[str, tuple[dict, str, dict]] = {
    "euler": ({}, "EulerDiscreteScheduler", {}),
    "euler_ancestral": ({}, "EulerAncestralDiscreteScheduler", {}),
    "heun": ({}, "HeunDiscreteScheduler", {}),
    "lms": ({}, "LMSDiscreteScheduler", {}),
    "dpmpp_2m": ({}, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_sde": (
        {},
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_3m_sde": (
        {},
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    ),
    "unipc": ({}, "UniPCMultistepScheduler", {}),
    "flow_euler": ({}, "FlowMatchEulerDiscreteScheduler", {}),
}
PLANS = {
    "smoke": (("1x2",), 1, 0.002),
    "quick": (("1x2", "64x2", "4096x2", "2^20x2"), 3, 0.01),
    "full": (("1x2", "64x2", "4096x2", "2^20x2"), 7, 0.03),
}


def _grid(name: str) -> np.ndarray:
    if name == "flow_euler":
        return flow.flow_sigmas(STEPS, shift_factor=3.0)
    return sigma.karras(STEPS, 0.03, 14.6)


def ref_step(name: str, shape, seed: int = 0):
    """(thunk running the middle step's combinations, arrays moved, whether noise is drawn)."""
    opts = SAMPLERS[name][0]
    prog = SA.program(name, _grid(name), **opts)
    k = STEPS // 2
    st = prog.steps[k]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    hist = [rng.standard_normal(shape) for _ in range(max(prog.history, 2))]
    past = [rng.standard_normal(shape) for _ in range(prog.states)]
    g = np.random.default_rng(seed + 1)
    arrays = 1 + len(st.b) + len(st.p) + (1 if st.s else 0) + 1  # read, then the write

    def step():
        z = g.standard_normal(shape) if prog.noisy else None
        for c in st.calls[1:]:  # Heun: the second call's input
            SA.model_input(c, x, z, hist[:1])
        return SA.update(st, x, hist, z, past)

    heun_extra = sum(2 + (1 if c.gamma else 0) for c in st.calls[1:])
    return step, arrays + heun_extra, prog.noisy


def load_diffusers():
    try:
        import diffusers
        import torch
    except Exception as e:  # ImportError, or a broken install raising anything else
        return None, f"diffusers peer skipped: {type(e).__name__}: {e}"
    return (torch, diffusers), None


def diffusers_step(peer, name: str, shape, seed: int = 0):
    torch, diffusers = peer
    _, cls_name, kw = SAMPLERS[name]
    diffusers.utils.logging.set_verbosity_error()  # the scale_model_input reminder …
    sch_warn = "The `scale_model_input` function should be called"
    warnings.filterwarnings("ignore", message=sch_warn)  # … and LMS's own
    sch = getattr(diffusers, cls_name)(num_train_timesteps=1000, **kw)
    sch.set_timesteps(STEPS)
    gen_kw = {"generator": None} if "generator" in _params(sch.step) else {}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    out = torch.randn(shape, generator=g, dtype=torch.float64)
    if gen_kw:
        gen_kw["generator"] = g
    heun = cls_name == "HeunDiscreteScheduler"
    calls = 2 if heun else 1
    ts = sch.timesteps
    j = 0
    for _ in range(STEPS // 2):  # populate the history as a real run would
        for _ in range(calls):
            x = sch.step(out, ts[j], x, return_dict=False, **gen_kw)[0]
            j += 1
    x = x.clone()

    def step():
        sch._step_index = j
        if heun:
            sch.dt = None
            y = sch.step(out, ts[j], x, return_dict=False)[0]
            return sch.step(out, ts[j + 1], y, return_dict=False)[0]
        return sch.step(out, ts[j], x, return_dict=False, **gen_kw)[0]

    return step


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def run(*, size: str, peers: bool = True, threads: int | None = 1, log=print) -> dict:
    labels, rounds, block_s = PLANS[size]
    peer, note = load_diffusers() if peers else (None, "diffusers peer skipped: --no-peers")
    notes = [note] if note else []
    if peer is not None and threads is not None:
        peer[0].set_num_threads(threads)
    rows = []
    for name in SAMPLERS:
        for label in labels:
            shape = SHAPES[label]
            n = math.prod(shape)
            step, arrays, noisy = ref_step(name, shape)
            v = {"ref": step, "pass": _pass(arrays * n)}
            g = np.random.default_rng(7)
            if noisy:
                v["noise"] = lambda g=g, shape=shape: g.standard_normal(shape)
            if peer is not None:
                v["diffusers"] = diffusers_step(peer, name, shape)
            t = race(v, rounds=rounds, block_s=block_s)
            floor = np.asarray(t["pass"].per_call)
            if noisy:
                floor = floor + np.asarray(t["noise"].per_call)
            row = {
                "sampler": name,
                "shape": label,
                "elements": n,
                "arrays_moved": arrays,
                "stochastic": noisy,
                "us": {k: 1e6 * x.median for k, x in t.items()},
                "floor_us": 1e6 * float(np.median(floor)),
                "ref_over_floor": float(np.median(np.asarray(t["ref"].per_call) / floor)),
            }
            if peer is not None:
                row["diffusers_over_ref"] = ratio(t["diffusers"], t["ref"])
            rows.append(row)
            log(
                f"  {name:>15} {label:>7}: ref {row['us']['ref']:9.1f} µs, floor "
                f"{row['floor_us']:9.1f} (x{row['ref_over_floor']:.2f})"
                + (
                    f", diffusers {row['us']['diffusers']:9.1f} (x{row['diffusers_over_ref']:.1f})"
                    if peer is not None
                    else ""
                )
            )
    return {"rows": rows, "notes": notes, "targets": targets(rows)}


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if "diffusers_over_ref" in r and r["elements"] <= 64 * 2:
            out.append(
                {
                    "target": f"{r['sampler']} step >= 10x faster than diffusers at {r['shape']}",
                    "value": r["diffusers_over_ref"],
                    "goal": ">= 10",
                    "met": r["diffusers_over_ref"] >= 10.0,
                }
            )
        if r["elements"] >= 4096 * 2:
            out.append(
                {
                    "target": f"{r['sampler']} step within 1.5x of its floor at {r['shape']}",
                    "value": r["ref_over_floor"],
                    "goal": "<= 1.5",
                    "met": r["ref_over_floor"] <= 1.5,
                }
            )
    return out
