"""``refdiff demo``: from data to a verified ONNX deployment in one command (docs/demo.md).

1. data: an embedded 2-D data set (:mod:`refdiff.data`; default: eight Gaussians on a
   ring, whose law is known exactly);
2. denoisers: the exact mixture denoiser (:func:`refdiff.exact.denoiser`) and an MLP
   trained in NumPy (:mod:`refdiff.train`);
3. export: both denoisers, and the whole DDPM/DDIM samplers around them (one ``Loop``
   graph each), to ONNX (:mod:`refdiff.export`);
4. sampling with onnxruntime on the best provider that truly runs (``auto``: CUDA when a
   CUDA session really runs, else CPU, and the report says why);
5. parity: the same noise through the NumPy reference (:mod:`refdiff.sampling`, float64)
   on a subset, against every onnxruntime path (per-step, fused, whole graph);
6. law tests: the exact denoiser's samples against the exact data law
   (:func:`refdiff.stats.check_mixture`); the trained MLP's distance to the data law
   reported next to them and next to a fresh draw of the data;
7. a report folder: ``summary.json``, ``report.md``, PNG figures, the models.

The report is written into a hidden temporary folder beside the target and renamed into
place at the end, so an interrupted run (Ctrl-C, SIGTERM) leaves the previous report or
none, never a half-written one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import refdiff
from refdiff import exact
from refdiff._io import save_npz, write_bytes, write_json, write_text
from refdiff.data import DATASETS, get_dataset
from refdiff.errors import InputError, RefdiffError
from refdiff.mlp import save_mlp
from refdiff.respacing import spaced_times
from refdiff.sampling import ddim_sample, ddpm_sample
from refdiff.schedule import SCHEDULES, make_schedule, respace
from refdiff.stats import check_mixture, check_two_sample
from refdiff.train import TRAIN_PREDICTION_TYPES, TrainConfig, train

from . import report as R
from .denoisers import mixture_denoiser_model, mlp_denoiser_model
from .model_io import save_model
from .providers import ProviderFallbackWarning, cuda_status, resolve_provider
from .runtime import OrtSampler

__all__ = [
    "main",
    "build_parser",
    "run_demo",
    "DemoOptions",
    "PARITY_TOL",
    "PARITY_MAX_TOL",
    "LAW_ALPHA",
    "MLP_LAW_TOL",
    "LAW_DIRECTIONS",
]

#: Parity: per sample, e = max_d |x_ort − x_ref| / max(1, max|x_ref|); it passes when the 99th
#: percentile of e is ≤ PARITY_TOL and every e is ≤ PARITY_MAX_TOL.  float32 (ORT) against
#: float64 (reference) rounds ~1e-7 per op; over 1000 steps the typical sample ends ~1e-6
#: away (p99 ~1e-5).  A sample that sits between two modes at small t follows unstable
#: dynamics that amplify rounding ~1000-fold (measured: e = 1.6e-4 for one of 1000 exact-DDPM
#: samples), hence the separate, looser bound on the maximum.
PARITY_TOL = 1e-4
PARITY_MAX_TOL = 1e-2
#: False-failure rate of each exact-law check (DKW bound, Bonferroni over the directions).
LAW_ALPHA = 1e-6
#: The trained MLP is called "close" when its projected KS distance exceeds the DKW
#: threshold by at most this much (a quality label, not a correctness check).
MLP_LAW_TOL = 0.02
#: Law tests project the 2-D samples on this many unit directions, equally spaced in [0, π)
#: (every 11.25°: between neighbouring ring modes too, so a ring without modes is seen).
LAW_DIRECTIONS = 16
#: Projection directions of the sliced Wasserstein distance.
SW_DIRECTIONS = 64
#: Base times shown in the trajectory strip, as fractions of T.
TRAJ_FRACTIONS = (1.0, 0.5, 0.25, 0.15, 0.1, 0.05, 0.02, 0.0)

SAMPLER_CHOICES = ("both", "ddpm", "ddim")


@dataclass(frozen=True)
class DemoOptions:
    out: str = "refdiff-demo"
    data: str = "ring"
    sampler: str = "both"
    ddpm_steps: int = 1000
    ddim_steps: int = 50
    schedule: str = "linear"
    T: int = 1000
    provider: str = "auto"
    seed: int = 0
    samples: int = 10_000
    parity_samples: int = 1000
    train_steps: int = 12_000
    batch_size: int = 256
    train_size: int = 50_000
    prediction_type: str = "epsilon"
    threads: int | None = None
    quiet: bool = False


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so that ``finally`` blocks clean up."""


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an int: {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}; got {v}")
        return v

    return parse


_positive = _int_at_least(1)


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(
        prog="refdiff demo",
        description="Train a denoiser in NumPy, export it and the exact denoiser to ONNX, sample "
        "with onnxruntime on the best provider, check parity with the NumPy reference and the "
        "law of the samples, and write a report folder.",
    )
    p.add_argument("--out", default=d.out, help=f"report folder (default ./{d.out})")
    p.add_argument("--data", default=d.data, choices=list(DATASETS), help="embedded data set")
    p.add_argument(
        "--sampler", default=d.sampler, choices=SAMPLER_CHOICES, help="which samplers to run"
    )
    p.add_argument(
        "--ddpm-steps",
        type=_positive,
        default=d.ddpm_steps,
        help="DDPM steps (≤ T; trailing spacing)",
    )
    p.add_argument(
        "--ddim-steps",
        type=_positive,
        default=d.ddim_steps,
        help="DDIM steps (≤ T; trailing spacing)",
    )
    p.add_argument("--schedule", default=d.schedule, choices=list(SCHEDULES), help="β schedule")
    p.add_argument("--T", type=_positive, default=d.T, help="training steps of the diffusion (T)")
    p.add_argument(
        "--provider",
        default=d.provider,
        choices=("auto", "cuda", "cpu"),
        help="onnxruntime provider",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), default=d.seed, help="the one seed everything derives from"
    )
    p.add_argument("--samples", type=_positive, default=d.samples, help="samples per sampler run")
    p.add_argument(
        "--parity-samples",
        type=_positive,
        default=d.parity_samples,
        help="subset checked against the reference",
    )
    p.add_argument("--train-steps", type=_positive, default=d.train_steps, help="Adam steps")
    p.add_argument("--batch-size", type=_positive, default=d.batch_size, help="training minibatch")
    p.add_argument("--train-size", type=_positive, default=d.train_size, help="training set size")
    p.add_argument(
        "--prediction-type",
        default=d.prediction_type,
        choices=list(TRAIN_PREDICTION_TYPES),
        help="MLP objective",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="onnxruntime intra-op threads (default: its own)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or stage messages")
    return p


# -- small utilities ----------------------------------------------------------------------
@contextlib.contextmanager
def _single_thread_blas():
    """Run NumPy's BLAS on one thread: the trainer's and reference's matrices are small, and
    a 2-thread OpenBLAS on a shared 2-core machine spins and runs up to 10× slower."""
    setter = getter = None
    with contextlib.suppress(Exception):
        libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
        for path in glob.glob(os.path.join(libs, "*openblas*.so*")):
            lib = ctypes.CDLL(path)
            for suffix in ("64_", "_64_", ""):
                s = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                g = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
                if s is not None and g is not None:
                    setter, getter = s, g
                    break
            if setter is None and hasattr(lib, "openblas_set_num_threads"):
                setter, getter = lib.openblas_set_num_threads, lib.openblas_get_num_threads
            if setter is not None:
                break
    old = None
    if setter is not None:
        with contextlib.suppress(Exception):
            old = int(getter())
            setter(ctypes.c_int(1))
    try:
        yield
    finally:
        if setter is not None and old is not None:
            with contextlib.suppress(Exception):
                setter(ctypes.c_int(old))


class _Log:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.stage = 0

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str, unit: str = "step"):
        if self.quiet:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, mininterval=0.25
        )


def _sliced_w1(a: np.ndarray, b: np.ndarray, U: np.ndarray) -> float:
    """Sliced Wasserstein-1 between two equal-size samples (n, d): the mean over the unit
    directions u (rows of U) of W1(uᵀa, uᵀb) = mean |sort(uᵀa) − sort(uᵀb)|."""
    m = min(len(a), len(b))
    pa = np.sort(a[:m] @ U.T, axis=0)
    pb = np.sort(b[:m] @ U.T, axis=0)
    return float(np.mean(np.abs(pa - pb)))


def _law_directions(k: int = LAW_DIRECTIONS) -> np.ndarray:
    """(k, 2) unit vectors at angles jπ/k, j = 0..k−1."""
    phi = np.arange(k) * np.pi / k
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


def _projected_two_sample(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, ...]:
    """(worst two-sample KS distance over the law directions, its threshold at α split over
    the directions (Bonferroni), the KS distance detected with probability 0.99)."""
    dirs = _law_directions()
    results = [
        check_two_sample(x @ u, y @ u, false_fail_rate=alpha / len(dirs), name="projection")
        for u in dirs
    ]
    worst = max(results, key=lambda r: r.statistic)
    return float(worst.statistic), float(worst.threshold), float(worst.discrepancy)


def _parity(y: np.ndarray, ref: np.ndarray) -> dict:
    """Per-sample errors e_i = max_d |y − ref| / max(1, max|ref|): p50, p99, max, max |Δ|."""
    ref = np.asarray(ref, dtype=np.float64)
    d = np.abs(np.asarray(y, dtype=np.float64) - ref).reshape(ref.shape[0], -1).max(axis=1)
    e = d / max(1.0, float(np.max(np.abs(ref))))
    return {
        "p50": float(np.median(e)),
        "p99": float(np.quantile(e, 0.99)),
        "max": float(e.max()),
        "max_abs": float(d.max()),
    }


def _provider(requested: str) -> tuple[str, str]:
    """(provider that truly runs, why) — CUDA only when a CUDA session really runs."""
    used = resolve_provider(requested, warn=False)  # raises ProviderError for a failing 'cuda'
    if used == "cuda":
        return used, "a CUDA session was created and CUDAExecutionProvider is what runs it"
    if requested == "cpu":
        return used, "CPU was asked for"
    ok, why = cuda_status()
    return used, f"CUDA does not run here ({why}); fell back to CPU"


# -- the demo -----------------------------------------------------------------------------
def _samplers(opts: DemoOptions, base) -> dict:
    out = {}
    names = ("ddpm", "ddim") if opts.sampler == "both" else (opts.sampler,)
    for name in names:
        n = opts.ddpm_steps if name == "ddpm" else opts.ddim_steps
        if n > base.T:
            raise InputError(f"{name}_steps", f"{n} exceeds T = {base.T}")
        sch = base if n == base.T else respace(base, spaced_times(base.T, n, "trailing"))
        options = {} if name == "ddpm" else {"eta": 0.0}
        info = {
            "steps": n,
            "spacing": "all steps" if n == base.T else "trailing",
            "options": {"variance_type": "fixed_small"} if name == "ddpm" else {"eta": 0.0},
            "times": [int(v) for v in sch.timesteps[1:]],
        }
        out[name] = (sch, options, info)
    return out


def run_demo(opts: DemoOptions, folder: Path, log: _Log) -> dict:
    """Do everything, writing into ``folder`` (which the caller renames into place)."""
    import onnxruntime as ort

    start = time.perf_counter()
    used, reason = _provider(opts.provider)
    log(f"refdiff demo: provider {used} ({reason})")
    ds = get_dataset(opts.data)
    base = make_schedule(opts.schedule, opts.T)
    samplers = _samplers(opts, base)
    n, m = opts.samples, min(opts.parity_samples, opts.samples)
    models = folder / "models"
    files: dict[str, str] = {}
    sess_kw = {"provider": used, "threads": opts.threads}

    # 1. train the MLP ------------------------------------------------------------------------
    X = ds.sample(np.random.default_rng([opts.seed, 1]), opts.train_size)
    cfg = TrainConfig(
        steps=opts.train_steps,
        batch_size=min(opts.batch_size, opts.train_size),
        prediction_type=opts.prediction_type,
        seed=opts.seed,
    )
    log(
        f"[1/5] training the MLP denoiser in NumPy ({cfg.steps} Adam steps, batch {cfg.batch_size})"
    )
    bar = log.bar(cfg.steps, "train MLP")
    every = max(1, cfg.steps // 200)

    def progress(k: int, total: int, loss: float) -> None:
        if bar is not None and (k % every == 0 or k == total):
            bar.update(k - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    with _single_thread_blas():
        result = train(X, base, cfg, progress=progress)
    if bar is not None:
        bar.close()
    mlp = result.mlp
    save_mlp(models / "mlp.npz", mlp)
    files["models/mlp.npz"] = "trained MLP weights (refdiff.mlp.load_mlp; no pickle)"
    save_npz(models / "training_loss.npz", losses=result.losses)
    files["models/training_loss.npz"] = "minibatch loss per Adam step"

    # 2. export ---------------------------------------------------------------------------------
    log("[2/5] exporting denoisers and whole-sampler graphs to ONNX")
    denoisers: dict[str, tuple[Path, object, str]] = {}
    if ds.law is not None:
        p = save_model(
            mixture_denoiser_model(ds.law, base, prediction_type="epsilon"),
            models / "exact_denoiser.onnx",
        )
        denoisers["exact"] = (p, exact.denoiser(ds.law, base, "epsilon"), "epsilon")
        files["models/exact_denoiser.onnx"] = (
            "exact Gaussian-mixture denoiser (ε), x (B,2), t (B,) int64"
        )
    p = save_model(
        mlp_denoiser_model(mlp, prediction_type=cfg.prediction_type, schedule=base),
        models / "mlp_denoiser.onnx",
    )
    denoisers["mlp"] = (p, mlp, cfg.prediction_type)
    files["models/mlp_denoiser.onnx"] = (
        f"trained MLP denoiser ({cfg.prediction_type}), x (B,2), t (B,) int64"
    )
    sampler_files = {}
    for dname, (dpath, _, _) in denoisers.items():
        for sname, (sch, sopts, info) in samplers.items():
            g = OrtSampler(dpath, sch, sampler=sname, mode="graph", **sess_kw, **sopts)
            fname = f"{dname}_{sname}{info['steps']}_sampler.onnx"
            sampler_files[dname, sname] = save_model(g.graph_model, models / fname)
            files[f"models/{fname}"] = (
                f"whole {sname.upper()} sampler ({info['steps']} steps, Loop) "
                f"around the {dname} denoiser; "
                "inputs x_T (B,2)" + (", step_noise (N,B,2)" if sname == "ddpm" else "")
            )

    # 3. sample with onnxruntime, 4. parity ---------------------------------------------------
    log(
        f"[3/5] sampling {n} points per run with onnxruntime on {used}; parity on {m} against NumPy"
    )
    runs: list[dict] = []
    timing: dict[str, dict[str, float]] = {}
    trajectory = None
    traj_key = ("mlp", "ddpm" if "ddpm" in samplers else next(iter(samplers)))
    samples_out: dict[tuple[str, str], np.ndarray] = {}
    for sname, (sch, sopts, _) in samplers.items():
        N = sch.T
        # the noise of each sampler depends on the seed and the sampler only
        nrng = np.random.default_rng([opts.seed, 2, {"ddpm": 0, "ddim": 1}[sname]])
        x_T = nrng.standard_normal((n, 2), dtype=np.float32)
        z = nrng.standard_normal((N, n, 2), dtype=np.float32) if sname == "ddpm" else None
        for dname, (dpath, ref_den, ptype) in denoisers.items():
            label = f"{dname} {sname}"
            # the main run: fused step graph, IO-binding loop, n samples
            smp = OrtSampler(dpath, sch, sampler=sname, mode="fused", **sess_kw, **sopts)
            want_traj = (dname, sname) == traj_key
            snaps: list[tuple[int, np.ndarray]] = []
            marks = _traj_marks(sch)
            cb = None
            if want_traj:
                snaps.append((int(sch.timesteps[N]), x_T[:3000].astype(np.float64)))

                def cb(k, t, x, marks=marks, snaps=snaps, sch=sch):
                    if t in marks:
                        snaps.append(
                            (int(sch.timesteps[t]), np.asarray(x[:3000], dtype=np.float64))
                        )

            if not log.quiet:
                log(f"      {label}: {N} steps × {n} samples")
            t0 = time.perf_counter()
            x = smp.sample(x_T, z, progress=not log.quiet, callback=cb)
            main_s = time.perf_counter() - t0
            samples_out[dname, sname] = x.astype(np.float64)
            if want_traj:
                trajectory = (label, snaps)
            times = timing.setdefault(label, {})
            times[f"ORT fused, B={n} (main run)"] = main_s / N * 1e6
            # the NumPy reference on the subset, same noise
            xs, zs = x_T[:m].astype(np.float64), None if z is None else z[:, :m].astype(np.float64)
            fn = ddpm_sample if sname == "ddpm" else ddim_sample
            rbar = log.bar(N, f"NumPy reference {label}")
            t0 = time.perf_counter()
            with _single_thread_blas():
                ref = fn(
                    ref_den,
                    sch,
                    x_T=xs,
                    step_noise=zs,
                    prediction_type=ptype,
                    callback=(lambda k, t, x, b=rbar: b.update(1)) if rbar is not None else None,
                    **sopts,
                )
            ref_s = time.perf_counter() - t0
            if rbar is not None:
                rbar.close()
            times[f"NumPy reference, B={m}"] = ref_s / N * 1e6
            # every onnxruntime path on the subset
            errs = {"fused (main run)": _parity(x[:m], ref)}
            sub_noise = None if z is None else np.ascontiguousarray(z[:, :m])
            for mode in ("steps", "fused", "graph"):
                if mode == "graph":
                    s2 = OrtSampler(sampler_files[dname, sname], **sess_kw)
                else:
                    s2 = OrtSampler(dpath, sch, sampler=sname, mode=mode, **sess_kw, **sopts)
                if N < 200:  # warm-up (first-run allocations), amortised anyway for long runs
                    s2.sample(x_T[:m], sub_noise)
                t0 = time.perf_counter()
                y = s2.sample(x_T[:m], sub_noise)
                dt = time.perf_counter() - t0
                name = {"steps": "steps", "fused": "fused", "graph": "whole graph (saved file)"}[
                    mode
                ]
                times[f"ORT {name}, B={m}"] = dt / N * 1e6
                errs[name] = _parity(y, ref)
            p99 = max(e["p99"] for e in errs.values())
            worst = max(e["max"] for e in errs.values())
            runs.append(
                {
                    "denoiser": dname,
                    "sampler": sname,
                    "steps": N,
                    "n": n,
                    "ort_wall_s": main_s,
                    "ort_us_per_step": main_s / N * 1e6,
                    "reference_us_per_step": ref_s / N * 1e6,
                    "parity": {
                        "n": m,
                        "paths": errs,
                        "p99_rel_err": p99,
                        "max_rel_err": worst,
                        "max_abs_err": max(e["max_abs"] for e in errs.values()),
                        "tolerance_p99": PARITY_TOL,
                        "tolerance_max": PARITY_MAX_TOL,
                        "passed": bool(p99 <= PARITY_TOL and worst <= PARITY_MAX_TOL),
                    },
                }
            )

    # 5. law tests -------------------------------------------------------------------------------
    log("[4/5] law tests")
    lrng = np.random.default_rng([opts.seed, 3])
    fresh = ds.sample(lrng, n)
    phi = np.random.default_rng([opts.seed, 4]).uniform(0.0, np.pi, SW_DIRECTIONS)
    sw_dirs = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    n_exact = sum(1 for r in runs if r["denoiser"] == "exact")
    for r in runs:
        x = samples_out[r["denoiser"], r["sampler"]]
        sw = _sliced_w1(x, fresh, sw_dirs)
        if ds.law is not None:
            alpha = LAW_ALPHA
            res = check_mixture(
                x, ds.law, false_fail_rate=alpha, directions=_law_directions(), name="law"
            )
            ks, thr, disc = res.statistic, res.threshold, res.discrepancy
            kind = f"KS of {LAW_DIRECTIONS} projections against the exact projected mixture CDFs"
        else:
            alpha = LAW_ALPHA
            ks, thr, disc = _projected_two_sample(x, fresh, alpha)
            kind = f"two-sample KS of {LAW_DIRECTIONS} projections against a fresh data draw"
        law = {
            "ks": ks,
            "threshold": thr,
            "alpha": alpha,
            "detectable": disc,
            "sw1": sw,
            "test": kind,
        }
        if r["denoiser"] == "exact":
            law["passed"] = bool(ks <= thr)
            law["verdict"] = "passed" if law["passed"] else "FAILED"
        else:
            law["tolerance"] = MLP_LAW_TOL
            law["close"] = bool(ks <= thr + MLP_LAW_TOL)
            law["verdict"] = "close" if law["close"] else "far"
        r["law"] = law
    if ds.law is not None:
        base_ks = check_mixture(
            fresh, ds.law, false_fail_rate=LAW_ALPHA, directions=_law_directions()
        ).statistic
    else:
        base_ks = _projected_two_sample(
            ds.sample(np.random.default_rng([opts.seed, 5]), n), fresh, LAW_ALPHA
        )[0]
    base_sw = _sliced_w1(ds.sample(np.random.default_rng([opts.seed, 6]), n), fresh, sw_dirs)
    baseline = {"ks": float(base_ks), "sw1": base_sw}

    # 6. figures and report ------------------------------------------------------------------------
    log("[5/5] writing figures and the report")
    figures: dict[str, str] = {}

    def fig(name: str, caption: str, png: bytes) -> None:
        write_bytes(folder / name, png)
        figures[name] = caption
        files[name] = caption

    panels = [
        (
            f"{d} denoiser · {s.upper()} {samplers[s][2]['steps']} steps (ORT {used})",
            samples_out[d, s],
        )
        for (d, s) in samples_out
    ]
    fig(
        "samples.png",
        "Samples against data",
        R.samples_figure(
            fresh,
            panels,
            title=f"Samples against data ({opts.data}): "
            "onnxruntime samples (blue) over the data (grey)",
        ),
    )
    if trajectory is not None:
        tl, snaps = trajectory
        fig(
            "trajectory.png",
            "Denoising trajectory",
            R.trajectory_figure(
                snaps, title=f"Denoising trajectory ({tl}, ORT): x_t from t = T to t = 0"
            ),
        )
    marks = [
        (f"{s.upper()} {info['steps']} steps", np.array(info["times"]))
        for s, (_, _, info) in samplers.items()
    ]
    fig(
        "schedule.png",
        "ᾱ and SNR curves",
        R.schedule_figure(
            base.alpha_bar, marks, title=f"Schedule {base.name}, T = {base.T}: ᾱ_t and log SNR(t)"
        ),
    )
    fig(
        "timing.png",
        "Time per step",
        R.timing_figure(
            timing, title=f"Time per sampler step on {used} (onnxruntime) and NumPy (float64)"
        ),
    )
    fig(
        "training_loss.png",
        "Training loss",
        R.loss_figure(
            result.losses, title=f"Training loss of the MLP ({cfg.prediction_type} objective)"
        ),
    )

    exact_runs = [r for r in runs if r["denoiser"] == "exact"]
    mlp_runs = [r for r in runs if r["denoiser"] == "mlp"]
    checks = {
        "parity_passed": all(r["parity"]["passed"] for r in runs),
        "exact_law_passed": all(r["law"]["passed"] for r in exact_runs) if exact_runs else None,
        "mlp_law_ok": all(r["law"]["close"] for r in mlp_runs),
    }
    passed = checks["parity_passed"] and checks["exact_law_passed"] is not False
    parity_text = (
        "the same noise (x_T and every step's z, float32) through the NumPy float64 reference "
        "and through onnxruntime (per-step `steps`, `fused` step, and the whole-graph sampler "
        f"file) on the first {m} samples of every run. Per sample e = max|Δ| / max(1, max|x_ref|);"
        f" passes when the 99th percentile of e is ≤ {PARITY_TOL:g} and every e ≤ "
        f"{PARITY_MAX_TOL:g} (float32 over up to {max(r['steps'] for r in runs)} steps; samples "
        "between two modes at small t amplify rounding, hence the looser bound on the maximum)."
    )
    if n_exact:
        exact_text = (
            f"each exact-denoiser run ({n} ORT samples) is KS-tested along {LAW_DIRECTIONS} "
            "directions against the exact projected mixture CDFs (refdiff.stats.check_mixture: "
            f"DKW bound, Bonferroni), false-failure rate α = {LAW_ALPHA:g} per run "
            f"({n_exact} runs)."
        )
    else:
        exact_text = "no exact law for this data set (not a Gaussian mixture): skipped."
    kind = "the exact law" if ds.law is not None else f"a fresh draw of {n} data points"
    mlp_text = (
        f"the same KS statistic (against {kind}) for the trained MLP's samples; 'close' when it "
        f"is within {MLP_LAW_TOL} of the α-threshold (a quality label: training is approximate)."
        f" SW1 = sliced Wasserstein-1 ({SW_DIRECTIONS} random directions) to a fresh draw of {n}"
        " data points; the baseline row compares two fresh draws of the data (the noise floor)."
    )
    summary = {
        "refdiff_version": refdiff.__version__,
        "passed": bool(passed),
        "wall_s": 0.0,
        "options": asdict(opts),
        "data": {
            "name": ds.name,
            "description": ds.description,
            "exact_law": ds.law is not None,
            "train_size": opts.train_size,
        },
        "schedule": {"name": base.name, "T": base.T, "alpha_bar_T": float(base.alpha_bar[-1])},
        "samplers": {s: info for s, (_, _, info) in samplers.items()},
        "training": {**result.summary(), "steps": cfg.steps},
        "provider": {
            "requested": opts.provider,
            "used": used,
            "reason": reason,
            "onnxruntime_version": ort.__version__,
            "threads": opts.threads,
        },
        "runs": runs,
        "baseline": baseline,
        "timing_us_per_step": timing,
        "checks": checks,
        "parity": {
            "tolerance_p99": PARITY_TOL,
            "tolerance_max": PARITY_MAX_TOL,
            "description": parity_text,
        },
        "law_tests": {
            "alpha": LAW_ALPHA,
            "exact_description": exact_text,
            "mlp_description": mlp_text,
        },
        "files": files,
    }
    summary["wall_s"] = time.perf_counter() - start
    files["summary.json"] = "this summary (machine-readable)"
    files["report.md"] = "this report"
    write_json(folder / "summary.json", summary)
    write_text(folder / "report.md", R.markdown_report(summary, figures))
    return summary


def _traj_marks(sch) -> set[int]:
    """Respaced times whose base time is nearest to each fraction of T in TRAJ_FRACTIONS."""
    base_times = sch.timesteps
    T = int(base_times[-1])
    out = set()
    for f in TRAJ_FRACTIONS[1:]:
        out.add(int(np.argmin(np.abs(base_times - f * T))))
    out.discard(sch.T)
    return out


# -- atomic publication -------------------------------------------------------------------
def _stale_tmp_dirs(parent: Path, name: str) -> None:
    """Remove temporary folders of earlier demo runs whose process is gone."""
    for p in parent.glob(f".{name}.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an earlier report there is replaced."""
    old = None
    mask = {signal.SIGINT, signal.SIGTERM}
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_out(out: Path) -> str | None:
    """Why ``out`` cannot be (re)written, or None."""
    if out.exists() and not out.is_dir():
        return f"{out} exists and is not a folder"
    if out.is_dir() and any(out.iterdir()) and not (out / "summary.json").is_file():
        return f"{out} is a non-empty folder that is not a refdiff demo report; not overwriting it"
    return None


def main(argv: list[str] | None = None) -> int:
    """``refdiff demo [options]``; returns 0 when parity and the exact law checks pass."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    opts = DemoOptions(**{k: v for k, v in vars(args).items()})
    log = _Log(opts.quiet)
    out = Path(opts.out).resolve()
    why = _check_out(out)
    if why:
        print(f"refdiff demo: {why}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    _stale_tmp_dirs(out.parent, out.name)

    def on_term(signum, frame):
        raise _Terminated()

    old_handler = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        old_handler = signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    code = 0
    try:
        with warnings.catch_warnings():
            # the fallback is resolved once and its reason reported in the summary
            warnings.simplefilter("ignore", category=ProviderFallbackWarning)
            summary = run_demo(opts, tmp, log)
        _publish(tmp, out)
        print(R.summary_table(summary))
        print(f"report: {out}/report.md ({'PASSED' if summary['passed'] else 'FAILED'})")
        code = 0 if summary["passed"] else 1
    except KeyboardInterrupt:
        print("\nrefdiff demo: interrupted; no report written", file=sys.stderr)
        code = 130
    except _Terminated:
        print("\nrefdiff demo: terminated; no report written", file=sys.stderr)
        code = 143
    except RefdiffError as e:
        print(f"refdiff demo: {e}", file=sys.stderr)
        code = 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    return code
