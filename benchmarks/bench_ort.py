"""Part 2: the onnxruntime samplers against the bare denoiser and the diffusers-style loop.

One denoiser for everything: the MLP of :mod:`refdiff.mlp` (data dim 2, 3 hidden layers of
128, 32-dim time embedding) exported by :func:`refdiff.export.mlp_denoiser_model` in
float32, ε-prediction.  Schedule: linear(1000) respaced to ``steps`` "leading" steps.
Samplers: DDIM (η = 0, no noise) and DDPM (fixed_small; noise drawn in-graph by the ONNX
samplers, by ``torch.Generator`` in the diffusers-style loop).  For each batch size these
variants are raced in one interleaved run:

- ``bare``       the denoiser's own ``session.run`` on one step's input (x float32 (B, 2),
  t int64 (B,)), on the session the per-step loop uses: the floor of a per-step loop;
- ``bare_bound`` the same session through IO binding with device-resident inputs (the
  floor without host copies; differs from ``bare`` on CUDA);
- ``steps``      :class:`refdiff.export.OrtSampler` ``mode="steps"``: per step the denoiser
  session then refdiff's step graph, everything bound once (IO binding, no host copies);
- ``fused``      ``mode="fused"``: one session per step (denoiser + update in one graph);
- ``graph``      ``mode="graph"``: the whole sampler as one ``Loop`` graph, one run;
- ``dstyle``     the diffusers/optimum-style loop: a torch scheduler (``DDIMScheduler`` /
  ``DDPMScheduler``, float32, the same schedule) calls the same ORT denoiser session with
  host NumPy arrays each step, converting torch ⇄ NumPy around every call.

Per-step times are whole-sample times over ``steps``.  The loop's overhead is
``steps`` per step / ``bare`` − 1 (median of per-round ratios).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from ._timing import race, ratio

T = 1000
HIDDEN, DEPTH, EMBED = 128, 3, 32
ROOT = Path(__file__).resolve().parent.parent


def load_ort():
    """The refdiff.export module, or a note why the section is skipped."""
    try:
        import onnxruntime  # noqa: F401
        import refdiff.export as E
    except Exception as e:
        return None, f"onnxruntime section skipped: {type(e).__name__}: {e}"
    return E, None


def denoiser_model(E, seed: int = 0):
    from refdiff.mlp import init_mlp

    mlp = init_mlp(
        np.random.default_rng(seed), data_dim=2, hidden=HIDDEN, depth=DEPTH, embed_dim=EMBED
    )
    return E.mlp_denoiser_model(mlp, prediction_type="epsilon", dtype="float32")


def schedule(steps: int):
    from refdiff.respacing import spaced_times
    from refdiff.schedule import linear, respace

    return respace(linear(T), spaced_times(T, steps, "leading"))


def _options(sampler: str) -> dict:
    return {"eta": 0.0} if sampler == "ddim" else {"variance_type": "fixed_small"}


def make_sampler(E, model, sampler: str, mode: str, steps: int, provider: str, threads, **kw):
    noise = "graph" if sampler == "ddpm" else "input"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # provider="auto" fallback warnings: reported below
        return E.OrtSampler(
            model,
            schedule(steps),
            sampler=sampler,
            mode=mode,
            noise=noise,
            provider=provider,
            threads=threads,
            **kw,
            **_options(sampler),
        )


def _sample_fn(s, B: int, noise_in_graph: bool):
    """A zero-argument call that draws one sample of batch B."""
    if s.mode == "graph" and noise_in_graph:
        return lambda: s.sample(shape=(B, 2))
    x_T = np.random.default_rng(1).standard_normal((B, 2)).astype(np.float32)
    return lambda: s.sample(x_T=x_T)


def _bare_fns(E, s, B: int):
    """(session.run, IO-bound run) of the loop's own denoiser session on one step's input."""
    import onnxruntime as ort

    sess, sig = s.den_session, s.denoiser.signature
    x = np.random.default_rng(2).standard_normal((B, 2)).astype(sig.state_dtype)
    t = np.full(B, T // 2, dtype=sig.time_dtype)
    feeds = {sig.state_input: x, sig.time_input: t}
    dev, did = s.provider, s.device_id
    io = sess.io_binding()
    io.bind_ortvalue_input(sig.state_input, ort.OrtValue.ortvalue_from_numpy(x, dev, did))
    io.bind_ortvalue_input(sig.time_input, ort.OrtValue.ortvalue_from_numpy(t, dev, did))
    io.bind_ortvalue_output(
        sig.output, ort.OrtValue.ortvalue_from_shape_and_type([B, 2], sig.output_dtype, dev, did)
    )

    def bound():
        sess.run_with_iobinding(io)
        if dev == "cuda":
            io.synchronize_outputs()

    return (lambda: sess.run([sig.output], feeds)), bound


def dstyle_fn(peer, s, sampler: str, B: int, steps: int):
    """The diffusers/optimum-style loop around the same ORT denoiser session."""
    torch, DDPMScheduler, DDIMScheduler = peer
    sess, sig = s.den_session, s.denoiser.signature
    if sampler == "ddim":
        sch = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True)
    else:
        sch = DDPMScheduler(num_train_timesteps=T, clip_sample=False, variance_type="fixed_small")
    x_T = np.random.default_rng(1).standard_normal((B, 2)).astype(np.float32)

    def run():
        sch.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        kw = {"eta": 0.0} if sampler == "ddim" else {"generator": g}
        latents = torch.from_numpy(x_T.copy())
        for t in sch.timesteps:
            tt = np.full(B, int(t) + 1, dtype=np.int64)  # refdiff's 1-based base time
            eps = sess.run([sig.output], {sig.state_input: latents.numpy(), sig.time_input: tt})[0]
            latents = sch.step(torch.from_numpy(eps), t, latents, return_dict=False, **kw)[0]
        return latents.numpy()

    return run


# size → (samplers, batches on CPU, batches on CUDA, steps, rounds, block seconds)
PLANS = {
    "smoke": (("ddim", "ddpm"), (1,), (1,), 2, 1, 0.002),
    "quick": (("ddim", "ddpm"), (1, 64, 4096), (1, 64, 4096, 65536), 10, 3, 0.02),
    "full": (("ddim", "ddpm"), (1, 64, 4096), (1, 64, 4096, 65536, 2**20), 50, 7, 0.05),
}


def run(
    *, size: str, provider: str = "cpu", peers: bool = True, threads: int | None = 1, log=print
) -> dict:
    """Race the ORT samplers; returns the JSON section."""
    E, note = load_ort()
    sec: dict = {"rows": [], "notes": [], "targets": [], "provider": provider}
    if E is None:
        sec["notes"].append(note)
        return sec
    peer = None
    if peers:
        from .bench_steps import load_diffusers

        peer, pnote = load_diffusers()
        if pnote:
            sec["notes"].append(pnote.replace("diffusers peer", "diffusers-style loop"))
        elif threads is not None:
            peer[0].set_num_threads(threads)
    else:
        sec["notes"].append("diffusers-style loop skipped: --no-peers")
    model = denoiser_model(E)
    samplers, cpu_batches, gpu_batches, steps, rounds, block_s = PLANS[size]
    batches = cpu_batches if provider == "cpu" else gpu_batches
    sec["threads"] = threads
    sec["denoiser"] = f"MLP 2→{HIDDEN}x{DEPTH}→2, time embedding {EMBED}, float32, ε-prediction"
    for sampler in samplers:
        for B in batches:
            big = B >= 65536
            ss = {
                m: make_sampler(E, model, sampler, m, steps, provider, threads)
                for m in ("steps", "fused", "graph")
            }
            used = ss["steps"].provider
            v = {m: _sample_fn(s, B, sampler == "ddpm") for m, s in ss.items()}
            v["bare"], v["bare_bound"] = _bare_fns(E, ss["steps"], B)
            if used == "cuda" and sampler == "ddim":
                cg = make_sampler(
                    E, model, sampler, "fused", steps, provider, threads, cuda_graph=True, batch=B
                )
                v["fused_cudagraph"] = _sample_fn(cg, B, False)
            if peer is not None:
                v["dstyle"] = dstyle_fn(peer, ss["steps"], sampler, B, steps)
            tm = race(
                v, rounds=min(rounds, 3) if big else rounds, block_s=block_s, max_calls=10_000
            )
            per_step = {
                k: (t.median if k.startswith("bare") else t.median / steps) for k, t in tm.items()
            }

            def r(a, b, da=1.0, tm=tm):
                return ratio(tm[a], tm[b]) / da

            row = {
                "sampler": sampler,
                "batch": B,
                "steps": steps,
                "provider": used,
                "us": {k: 1e6 * val for k, val in per_step.items()},
                "bare_us": 1e6 * per_step["bare"],
                "bare_bound_us": 1e6 * per_step["bare_bound"],
                "loop_us_per_step": 1e6 * per_step["steps"],
                "fused_us_per_step": 1e6 * per_step["fused"],
                "graph_us_per_step": 1e6 * per_step["graph"],
                # per-round ratios; whole samples are divided by `steps`
                "loop_overhead": r("steps", "bare", da=steps) - 1.0,
                "fused_overhead": r("fused", "bare", da=steps) - 1.0,
                "loop_overhead_vs_bound": r("steps", "bare_bound", da=steps) - 1.0,
                "fused_overhead_vs_bound": r("fused", "bare_bound", da=steps) - 1.0,
                "loop_over_graph": r("steps", "graph"),
                "fused_over_graph": r("fused", "graph"),
                "graph_over_bare": r("graph", "bare", da=steps),
            }
            if "fused_cudagraph" in tm:
                row["fused_cudagraph_us_per_step"] = 1e6 * per_step["fused_cudagraph"]
            if "dstyle" in tm:
                row["dstyle_us_per_step"] = 1e6 * per_step["dstyle"]
                row["dstyle_over_loop"] = r("dstyle", "steps")
                row["dstyle_over_fused"] = r("dstyle", "fused")
                row["dstyle_over_graph"] = r("dstyle", "graph")
                if sampler == "ddim":
                    a = np.asarray(v["dstyle"](), dtype=np.float64)
                    b = np.asarray(v["steps"](), dtype=np.float64)
                    row["dstyle_vs_loop_max_abs_diff"] = float(np.max(np.abs(a - b)))
            sec["rows"].append(row)
            log(
                f"  ort {sampler} B={B:>7} ({used}): bare {row['bare_us']:9.1f} µs, loop "
                f"{row['loop_us_per_step']:9.1f} µs/step ({100 * row['loop_overhead']:+.0f}%), "
                f"fused "
                f"{row['fused_us_per_step']:9.1f}, graph {row['graph_us_per_step']:9.1f}"
                + (
                    f", diffusers-style {row['dstyle_us_per_step']:9.1f}"
                    if "dstyle_us_per_step" in row
                    else ""
                )
            )
    sec["targets"] = targets(sec["rows"])
    return sec


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        where = f"{row['sampler'].upper()} B={row['batch']} ({row['provider']})"
        if row["batch"] == 4096:
            # CPU: against the denoiser's session.run; CUDA: against its IO-bound run (inputs
            # already on the device), since session.run would charge the host copies to the floor
            gpu = row["provider"] == "cuda"
            goal, sfx, ref = (
                (0.05, "_vs_bound", "IO-bound run") if gpu else (0.10, "", "session.run")
            )
            for k, name in (("loop_overhead", "per-step loop"), ("fused_overhead", "fused loop")):
                k = k + sfx
                out.append(
                    {
                        "target": f"ORT {name} overhead vs bare {ref}, {where}",
                        "value": row[k],
                        "goal": f"<= {goal:.2f}",
                        "met": row[k] <= goal,
                    }
                )
        if row["batch"] == 1:
            out.append(
                {
                    "target": f"whole-sampler graph >= 2x faster than per-step loop, {where}",
                    "value": row["loop_over_graph"],
                    "goal": ">= 2",
                    "met": row["loop_over_graph"] >= 2.0,
                }
            )
        for k, name in (("dstyle_over_loop", "per-step loop"), ("dstyle_over_graph", "graph")):
            if k in row:
                out.append(
                    {
                        "target": f"ORT {name} faster than diffusers-style loop, {where}",
                        "value": row[k],
                        "goal": "> 1",
                        "met": row[k] > 1.0,
                    }
                )
    return out


# -- scaling (used by bench_scaling) -------------------------------------------------------------
_CHILD = r"""
import json, sys, time, warnings
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["root"])
from benchmarks import bench_ort as B
from benchmarks._timing import max_rss_bytes, reset_peak_rss, rss_bytes
import refdiff.export as E
warnings.simplefilter("ignore")
model = B.denoiser_model(E)
s = B.make_sampler(
    E, model, cfg["sampler"], cfg["mode"], cfg["steps"], cfg["provider"], cfg["threads"]
)
fn = B._sample_fn(s, cfg["batch"], cfg["sampler"] == "ddpm")
reset_peak_rss()
before = rss_bytes() or max_rss_bytes()
t0 = time.perf_counter()
fn()
first = time.perf_counter() - t0
after = max_rss_bytes()
res = {"rss_before_kib": before // 1024, "rss_after_kib": after // 1024, "first_s": first}
print("ORT_PEAK_JSON:" + json.dumps(res))
"""


def peak_rss(
    sampler: str, mode: str, batch: int, steps: int, provider: str, threads
) -> dict | None:
    """Peak-RSS growth of one first sample in a fresh process (session built before)."""
    cfg = dict(
        root=str(ROOT),
        sampler=sampler,
        mode=mode,
        batch=batch,
        steps=steps,
        provider=provider,
        threads=threads,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        p = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("ORT_PEAK_JSON:")), None)
    return None if line is None else json.loads(line.split(":", 1)[1])


def scaling_rows(
    grid,
    *,
    rounds: int = 3,
    rss: int = 100,
    provider: str = "cpu",
    threads: int | None = 1,
    log=print,
):
    """Time per step and peak memory of the ORT DDIM samplers over (batch, steps) ``grid``.

    The peak resident memory is measured in a child process for the first ``rss`` points.
    """
    E, note = load_ort()
    if E is None:
        return [], [note]
    model = denoiser_model(E)
    rows = []
    for i, (batch, steps) in enumerate(grid):
        samplers = {
            m: make_sampler(E, model, "ddim", m, steps, provider, threads)
            for m in ("steps", "graph")
        }
        fns = {m: _sample_fn(s, batch, False) for m, s in samplers.items()}
        tm = race(fns, rounds=rounds, block_s=0.05 if rounds > 1 else 0.002, max_calls=1000)
        for m, t in tm.items():
            peak = peak_rss("ddim", m, batch, steps, provider, threads) if i < rss else None
            state = batch * 2 * 4
            grow = None if peak is None else 1024 * (peak["rss_after_kib"] - peak["rss_before_kib"])
            row = {
                "sampler": f"ort ddim {m}",
                "batch": batch,
                "steps": steps,
                "ms": 1e3 * t.median,
                "us_per_step": 1e6 * t.median / steps,
                "ns_per_elem_step": 1e9 * t.median / (steps * batch * 2),
                "peak_mib": None if grow is None else grow / 2**20,
                "peak_over_state": None if grow is None else grow / state,
            }
            rows.append(row)
            log(
                f"  ort ddim {m:>5} batch {batch:>8} steps {steps:>5}: "
                f"{row['us_per_step']:9.1f} µs/step"
            )
    notes = [
        "ORT peak: growth of the peak resident set of a fresh process during its first sample "
        "(session already built; VmHWM reset before it); host memory only, float32 states; "
        "at small batches it is onnxruntime's first-run allocations, not the state",
    ]
    return rows, notes
