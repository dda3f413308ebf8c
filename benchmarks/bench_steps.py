"""Part 1: the reference DDPM and DDIM step and loop against diffusers, and the floor.

For each state shape the following are raced in one interleaved run (see ``_timing``):

- ``ref_ddpm``   the reference DDPM step as the sampling loops run it:
  :func:`refdiff.affine.affine_step` at t = 500 of linear(1000), ε-prediction, fixed_small,
  its coefficients computed once beforehand (as diffusers' ``set_timesteps`` does), its noise
  drawn inside from a ``numpy.random.Generator`` (as diffusers does);
- ``ref_ddim``   the same for DDIM, η = 0, on the 50-step "leading" respacing;
- ``spec_ddpm`` / ``spec_ddim``: the general, fully validated :func:`refdiff.reverse.ddpm_step`
  / :func:`refdiff.reverse.ddim_step` (every option, per-sample t, NaN checks) on the same
  input — the step the affine one is read off and tested against;
- ``diffusers_ddpm`` / ``diffusers_ddim``: ``DDPMScheduler.step`` / ``DDIMScheduler.step`` on
  float64 CPU tensors of the same values (``clip_sample=False``, ``return_dict=False``, the
  generator given to the DDPM step), same schedule and timestep;
- ``noise``      ``rng.standard_normal(shape)``: drawing one step's noise;
- ``pass4`` / ``pass3``: one ``numpy.copyto`` moving as many bytes as the step must move at
  least (DDPM reads x_t, ε̂, z and writes x_{t−1}: 4 arrays; DDIM η = 0: 3 arrays).

Floors: DDPM = noise + pass4, DDIM = pass3, measured at the same size in the same run.  For
large states also the model floor: step bytes / the machine's measured copy bandwidth.

Loops (``--loops``): ``ddpm_sample`` / ``ddim_sample`` over a ``loop_steps``-step respacing
against the diffusers loop ``for t in scheduler.timesteps: x = scheduler.step(...)``, with a
denoiser that returns a fixed ε̂ (the scheduler is what is raced, not the network); both
loops draw x_T and every step's noise from their own generator.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from refdiff import affine, reverse, sampling
from refdiff.respacing import spaced_times
from refdiff.schedule import linear, respace

from ._timing import clock, race, ratio

T = 1000
T_STEP = 500  # refdiff time (diffusers index 499)
DDIM_STEPS = 50

SHAPES: dict[str, tuple[int, ...]] = {
    "1x2": (1, 2),
    "64x2": (64, 2),
    "4096x2": (4096, 2),
    "2^20x2": (2**20, 2),
    "16x3x64x64": (16, 3, 64, 64),
}
LARGE = ("4096x2", "2^20x2", "16x3x64x64")


def load_diffusers():
    """(torch, DDPMScheduler, DDIMScheduler) or a note saying why the peer is skipped."""
    try:
        import torch
        from diffusers import DDIMScheduler, DDPMScheduler
    except Exception as e:  # ImportError, or a broken install raising anything else
        return None, f"diffusers peer skipped: {type(e).__name__}: {e}"
    return (torch, DDPMScheduler, DDIMScheduler), None


def _ddim_schedule():
    base = linear(T)
    return respace(base, spaced_times(T, DDIM_STEPS, "leading"))


def _pass(n_elems: int):
    """A copy that moves ``n_elems`` float64 in total (half read, half written)."""
    half = max(1, n_elems // 2)
    src = np.random.default_rng(1).standard_normal(half)
    # Place dst half a page away from src modulo 4 KiB: two page-aligned buffers (mmap'ed
    # blocks) make every load alias the store just before it ("4K aliasing"), which made
    # this copy ~10x slower at some sizes on the reference machine — not a floor.
    buf = np.empty(half + 1024)
    off = ((src.ctypes.data + 2048 - buf.ctypes.data) % 4096) // 8
    dst = buf[off : off + half]
    return lambda: np.copyto(dst, src)


def parity(peer, seed: int = 0) -> dict[str, float]:
    """Max |ref − diffusers| for one DDPM and one DDIM step (diffusers' ᾱ is float32)."""
    torch, DDPMScheduler, DDIMScheduler = peer
    rng = np.random.default_rng(seed)
    x, e = rng.standard_normal((8, 2)), rng.standard_normal((8, 2))
    xt, et = torch.from_numpy(x), torch.from_numpy(e)
    dp = DDPMScheduler(num_train_timesteps=T, clip_sample=False)
    dp.set_timesteps(T)
    tp = dp.timesteps[T - T_STEP]
    assert int(tp) == T_STEP - 1, tp
    out = dp.step(et, tp, xt, generator=torch.Generator().manual_seed(seed), return_dict=False)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = reverse.ddpm_step(linear(T), x, T_STEP, e, noise=z.numpy())
    di = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True)
    di.set_timesteps(DDIM_STEPS)
    sch = _ddim_schedule()
    tk = int(di.timesteps[DDIM_STEPS // 2])
    k = int(np.searchsorted(sch.timesteps, tk + 1))
    out2 = di.step(et, tk, xt, eta=0.0, return_dict=False)
    ref2 = reverse.ddim_step(sch, x, k, e)
    return {
        "ddpm_max_abs_diff": float(np.max(np.abs(out[0].numpy() - ref))),
        "ddim_max_abs_diff": float(np.max(np.abs(out2[0].numpy() - ref2))),
    }


def step_variants(shape, peer, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x, e = rng.standard_normal(shape), rng.standard_normal(shape)
    n = x.size
    sch, sch50 = linear(T), _ddim_schedule()
    k50 = DDIM_STEPS // 2
    noise_rng = np.random.default_rng(seed + 1)
    cp, cd = affine.affine_coefficients(sch, "ddpm"), affine.affine_coefficients(sch50, "ddim")
    v = {
        "ref_ddpm": lambda: affine.affine_step(cp, x, T_STEP, e, rng=noise_rng),
        "ref_ddim": lambda: affine.affine_step(cd, x, k50, e),
        "spec_ddpm": lambda: reverse.ddpm_step(sch, x, T_STEP, e, rng=noise_rng),
        "spec_ddim": lambda: reverse.ddim_step(sch50, x, k50, e),
        "noise": lambda: noise_rng.standard_normal(shape),
        "pass4": _pass(4 * n),
        "pass3": _pass(3 * n),
    }
    if peer is not None:
        torch, DDPMScheduler, DDIMScheduler = peer
        xt, et = torch.from_numpy(x.copy()), torch.from_numpy(e.copy())
        # As pipelines call them: after set_timesteps, with a 0-d tensor timestep taken
        # from scheduler.timesteps, return_dict=False.
        dp = DDPMScheduler(num_train_timesteps=T, clip_sample=False)
        dp.set_timesteps(T)
        tp = dp.timesteps[T - T_STEP]  # diffusers index T_STEP - 1
        di = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True)
        di.set_timesteps(DDIM_STEPS)
        tk = di.timesteps[DDIM_STEPS // 2]
        g = torch.Generator().manual_seed(seed)
        v["diffusers_ddpm"] = lambda: dp.step(et, tp, xt, generator=g, return_dict=False)
        v["diffusers_ddim"] = lambda: di.step(et, tk, xt, eta=0.0, return_dict=False)
    return v


# glibc returns freed blocks above its trim threshold to the OS, so a step whose temporaries
# exceed it page-faults them back in on every call; these settings keep them in the heap.
NO_TRIM = "glibc.malloc.trim_threshold=17179869184:glibc.malloc.mmap_threshold=4294967295"

_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from benchmarks import bench_steps as S
from benchmarks._timing import race, set_clock
set_clock(json.loads(sys.argv[1])["clock"])
shape, rounds = tuple(json.loads(sys.argv[1])["shape"]), json.loads(sys.argv[1])["rounds"]
v = {k: f for k, f in S.step_variants(shape, None).items() if k != "pass3"}
t = race(v, rounds=rounds, block_s=0.03)
print("PROBE_JSON:" + json.dumps({k: x.per_call for k, x in t.items()}))
"""


def malloc_probe(shape, rounds: int) -> dict | None:
    """The DDPM/DDIM steps and the floor in a child with glibc's trimming off (``NO_TRIM``).

    Shows how much of a large step's cost is the page faults of its temporaries on this
    machine.  None where the child fails (e.g. not glibc: the variable is then ignored).
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, GLIBC_TUNABLES=NO_TRIM)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cfg = json.dumps({"shape": list(shape), "rounds": rounds, "clock": clock()})
    try:
        p = subprocess.run(
            [sys.executable, "-c", _PROBE, cfg, root],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return None
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("PROBE_JSON:")), None)
    if line is None:
        return None
    pc = {k: np.asarray(v) for k, v in json.loads(line.split(":", 1)[1]).items()}
    floor = pc["noise"] + pc["pass4"]
    return {
        "glibc_tunables": NO_TRIM,
        "us": {k: 1e6 * float(np.median(v)) for k, v in pc.items()},
        "ref_ddpm_over_floor": float(np.median(pc["ref_ddpm"] / floor)),
    }


def loop_variants(shape, peer, steps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(shape)
    sch = respace(linear(T), spaced_times(T, steps, "leading"))

    def den(x, t):
        return e

    v = {
        "ref_ddpm_loop": lambda: sampling.ddpm_sample(
            den, sch, shape, rng=np.random.default_rng(seed)
        ),
        "ref_ddim_loop": lambda: sampling.ddim_sample(
            den, sch, shape, rng=np.random.default_rng(seed)
        ),
    }
    if peer is not None:
        torch, DDPMScheduler, DDIMScheduler = peer
        et = torch.from_numpy(e.copy())
        dp = DDPMScheduler(num_train_timesteps=T, clip_sample=False)
        dp.set_timesteps(steps)
        di = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True)
        di.set_timesteps(steps)

        def tden(x, t):
            return et

        def d_loop(s, **kw):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(shape, generator=g, dtype=torch.float64)
            for t in s.timesteps:
                x = s.step(tden(x, t), t, x, return_dict=False, **kw)[0]
            return x

        v["diffusers_ddpm_loop"] = lambda: d_loop(dp, generator=torch.Generator().manual_seed(seed))
        v["diffusers_ddim_loop"] = lambda: d_loop(di, eta=0.0)
    return v


# size → (shapes, rounds, rounds for 2^20, block seconds, loop steps, loop rounds, loops at 2^20)
PLANS = {
    "smoke": (("1x2", "64x2"), 1, 1, 0.002, 2, 1, False),
    "quick": (tuple(SHAPES), 3, 3, 0.01, 10, 3, False),
    "full": (tuple(SHAPES), 9, 5, 0.03, 20, 7, True),
}


def run(
    *, size: str, bandwidth: float, peers: bool = True, threads: int | None = 1, log=print
) -> dict:
    """Race every variant at every shape of ``size``'s plan; returns the JSON section."""
    labels, rounds, rounds_big, block_s, loop_steps, loop_rounds, loops_big = PLANS[size]
    peer, note = load_diffusers() if peers else (None, "diffusers peer skipped: --no-peers")
    notes = [note] if note else []
    if peer is not None:
        if threads is not None:
            peer[0].set_num_threads(threads)
        notes.append(f"torch threads: {peer[0].get_num_threads()}; NumPy's ufuncs run on one core")
    rows = []
    for label in labels:
        shape = SHAPES[label]
        n = math.prod(shape)
        big = n >= 2**20
        r = rounds_big if big else rounds
        t = race(step_variants(shape, peer), rounds=r, block_s=block_s)
        med = {k: v.median for k, v in t.items()}
        nbytes = 8 * n
        # per-round floor ratio: each ref round against the same round's floor parts
        floor_rounds = np.asarray(t["noise"].per_call) + np.asarray(t["pass4"].per_call)
        row = {
            "shape": label,
            "elements": n,
            "rounds": r,
            "us": {k: 1e6 * v for k, v in med.items()},
            "us_best": {k: 1e6 * v.best for k, v in t.items()},
            "us_wall": {k: 1e6 * v.median_wall for k, v in t.items()},
            "us_cpu": {k: 1e6 * v.median_cpu for k, v in t.items()},
            "spread": {k: v.spread for k, v in t.items()},
            "floor_ddpm_us": 1e6 * float(np.median(floor_rounds)),
            "floor_ddim_us": 1e6 * med["pass3"],
            "ref_ddpm_over_floor": float(
                np.median(np.asarray(t["ref_ddpm"].per_call) / floor_rounds)
            ),
            "ref_ddim_over_floor": ratio(t["ref_ddim"], t["pass3"]),
            "spec_ddpm_over_floor": float(
                np.median(np.asarray(t["spec_ddpm"].per_call) / floor_rounds)
            ),
            "spec_over_ref_ddpm": ratio(t["spec_ddpm"], t["ref_ddpm"]),
            "spec_over_ref_ddim": ratio(t["spec_ddim"], t["ref_ddim"]),
            "bw_floor_ddpm_us": 1e6 * 4 * nbytes / bandwidth,
            "bw_floor_ddim_us": 1e6 * 3 * nbytes / bandwidth,
        }
        if peer is not None:
            row["diffusers_over_ref_ddpm"] = ratio(t["diffusers_ddpm"], t["ref_ddpm"])
            row["diffusers_over_ref_ddim"] = ratio(t["diffusers_ddim"], t["ref_ddim"])
            row["diffusers_over_spec_ddpm"] = ratio(t["diffusers_ddpm"], t["spec_ddpm"])
            row["diffusers_over_spec_ddim"] = ratio(t["diffusers_ddim"], t["spec_ddim"])
        if size != "smoke" and n >= 2**17:
            probe = malloc_probe(shape, r)
            if probe is not None:
                row["no_trim"] = probe
        if loops_big or not big:
            lt = race(
                loop_variants(shape, peer, loop_steps),
                rounds=min(loop_rounds, 3) if big else loop_rounds,
                block_s=max(block_s, 0.05) if size != "smoke" else block_s,
                max_calls=1000,
            )
            row["loop_steps"] = loop_steps
            row["loop_us_per_step"] = {k: 1e6 * v.median / loop_steps for k, v in lt.items()}
            if peer is not None:
                row["diffusers_over_ref_ddpm_loop"] = ratio(
                    lt["diffusers_ddpm_loop"], lt["ref_ddpm_loop"]
                )
                row["diffusers_over_ref_ddim_loop"] = ratio(
                    lt["diffusers_ddim_loop"], lt["ref_ddim_loop"]
                )
        rows.append(row)
        log(_line(row))
    out = {"rows": rows, "notes": notes}
    if peer is not None:
        out["parity"] = parity(peer)
    out["targets"] = targets(rows)
    return out


def targets(rows: list[dict]) -> list[dict]:
    """Issue 7's step targets, checked against the rows."""
    res = []
    for row in rows:
        res.append(
            {
                "target": f"ref DDPM step within 1.5x of floor (noise + pass) at {row['shape']}",
                "value": row["ref_ddpm_over_floor"],
                "goal": "<= 1.5",
                "met": row["ref_ddpm_over_floor"] <= 1.5,
            }
        )
        if "diffusers_over_ref_ddpm" in row and row["elements"] <= 64 * 2:
            for kind in ("ddpm", "ddim"):
                val = row[f"diffusers_over_ref_{kind}"]
                res.append(
                    {
                        "target": f"ref {kind.upper()} step >= 10x faster than diffusers "
                        f"at {row['shape']}",
                        "value": val,
                        "goal": ">= 10",
                        "met": val >= 10.0,
                    }
                )
    return res


def _line(row: dict) -> str:
    us = row["us"]
    s = (
        f"  steps {row['shape']:>11}: ref DDPM {us['ref_ddpm']:9.1f} µs "
        f"(floor {row['floor_ddpm_us']:8.1f}, x{row['ref_ddpm_over_floor']:.2f})"
        f"  ref DDIM {us['ref_ddim']:9.1f} µs (floor {row['floor_ddim_us']:8.1f})"
        f"  spec DDPM {us['spec_ddpm']:9.1f} DDIM {us['spec_ddim']:9.1f}"
    )
    if "diffusers_ddpm" in us:
        s += (
            f"  diffusers DDPM {us['diffusers_ddpm']:9.1f} (x{row['diffusers_over_ref_ddpm']:.1f})"
            f" DDIM {us['diffusers_ddim']:9.1f} (x{row['diffusers_over_ref_ddim']:.1f})"
        )
    return s
