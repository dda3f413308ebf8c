"""``refdiff demo``: from data to a verified ONNX deployment in one command (docs/demo.md).

The run is seven stages, each a function returning a small dataclass; the log numbers them
[1/7] … [7/7] the same way:

1. data (:func:`stage_data`): an embedded 2-D data set from the one registry
   (:mod:`refdiff.data`; default: eight Gaussians on a ring, whose law is known exactly),
   the schedule and the samplers;
2. training (:func:`stage_train`): an MLP denoiser fitted in NumPy (:mod:`refdiff.train`),
   and the Bayes-optimal loss floor of the exact denoiser (:func:`refdiff.train.bayes_floor`);
3. export (:func:`stage_export`): the exact mixture denoiser and the MLP, and the whole
   DDPM/DDIM samplers around them (one ``Scan`` graph each), to ONNX;
4. sampling (:func:`stage_sample`) with onnxruntime on the best provider that truly runs
   (``auto``: CUDA when a CUDA session really runs, else CPU, and the report says why);
5. parity (:func:`stage_parity`): the same noise through the NumPy reference
   (:mod:`refdiff.sampling`, float64) on a subset, against every onnxruntime path
   (per-step, fused, whole graph);
6. law tests (:func:`stage_law`): the exact denoiser's samples against the exact data law
   (:func:`refdiff.stats.check_mixture`); the trained MLP's distance to the data law
   reported next to them and next to a fresh draw of the data;
7. report (:func:`stage_report`): ``summary.json``, ``report.md``, PNG figures, the models.

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
from scipy.special import ndtr

import refdiff
from refdiff import exact
from refdiff._io import save_npz, write_bytes, write_json, write_text
from refdiff.data import DATASETS, Dataset, get_dataset
from refdiff.errors import InputError, RefdiffError
from refdiff.mlp import save_mlp
from refdiff.respacing import spaced_times
from refdiff.sampling import ddim_sample, ddpm_sample
from refdiff.schedule import SCHEDULES, Schedule, make_schedule, respace
from refdiff.stats import check_mixture, check_two_sample
from refdiff.train import (
    TRAIN_PREDICTION_TYPES,
    TrainConfig,
    TrainResult,
    bayes_floor,
    train,
)

from ..denoisers import mixture_denoiser_model, mlp_denoiser_model
from ..model_io import save_model
from ..providers import ProviderFallbackWarning, cuda_status, resolve_provider
from ..runtime import OrtSampler
from . import report as R

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
    "DataStage",
    "TrainStage",
    "ExportStage",
    "SampleRun",
    "SampleStage",
    "ParityStage",
    "LawStage",
    "stage_data",
    "stage_train",
    "stage_export",
    "stage_sample",
    "stage_parity",
    "stage_law",
    "stage_report",
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


def _per_sample_err(y: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(e, d): per sample d_i = max_d |y − ref| and e_i = d_i / max(1, max|ref|), (n,) each."""
    ref = np.asarray(ref, dtype=np.float64)
    d = np.abs(np.asarray(y, dtype=np.float64) - ref).reshape(ref.shape[0], -1).max(axis=1)
    return d / max(1.0, float(np.max(np.abs(ref)))), d


def _parity_stats(e: np.ndarray, d: np.ndarray) -> dict:
    """p50, p99 and max of the per-sample relative errors e, and max |Δ| (d)."""
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


def _options_text(options: dict) -> str:
    """{'variance_type': 'fixed_small'} -> 'variance type fixed_small' (report text)."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in options.items()) or "defaults"


# -- the stages ---------------------------------------------------------------------------
@dataclass
class DataStage:
    """Stage 1: the data set, a fresh draw of it (n, 2) for the law tests and the figures,
    the training set (train_size, 2), the base schedule and the samplers
    ({name: (respaced schedule, sampler options, info)})."""

    ds: Dataset
    base: Schedule
    samplers: dict
    train_x: np.ndarray
    fresh: np.ndarray


@dataclass
class TrainStage:
    """Stage 2: the trainer's result, its config, and the Bayes-optimal loss floor (mean,
    standard error; ``None`` without an exact law)."""

    result: TrainResult
    config: TrainConfig
    floor: tuple[float, float] | None


@dataclass
class ExportStage:
    """Stage 3: {denoiser: (onnx path, reference callable, prediction type)} and
    {(denoiser, sampler): whole-sampler onnx path}."""

    denoisers: dict
    sampler_files: dict


@dataclass
class SampleRun:
    """One onnxruntime run of stage 4: n samples (n, 2) float64, the noise it used (x_T
    (n, 2) float32, z (N, n, 2) float32 or None for DDIM), wall seconds."""

    denoiser: str
    sampler: str
    steps: int
    x: np.ndarray
    x_T: np.ndarray
    z: np.ndarray | None
    wall_s: float


@dataclass
class SampleStage:
    """Stage 4: the runs, keyed (denoiser, sampler), and the trajectory snapshots of one run
    (label, [(base time, states (≤3000, 2))])."""

    runs: dict
    trajectory: tuple | None


@dataclass
class ParityStage:
    """Stage 5: per run, {path: per-sample relative error e (m,)} and the summary stats; the
    reference's time per step and each path's time per step, per sample (µs)."""

    errors: dict
    stats: dict
    timing: dict


@dataclass
class LawStage:
    """Stage 6: per run the law-test dict of the summary, and for the law figure the worst
    projection (direction (2,), projected samples (n,), exact CDF callable or reference draw)."""

    law: dict
    worst: dict
    baseline: dict


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


def stage_data(opts: DemoOptions, log: _Log) -> DataStage:
    """1. data, schedule, samplers."""
    ds = get_dataset(opts.data)
    log(f"[1/7] data: {ds.description}")
    base = make_schedule(opts.schedule, opts.T)
    samplers = _samplers(opts, base)
    train_x = ds.sample(np.random.default_rng([opts.seed, 1]), opts.train_size)
    fresh = ds.sample(np.random.default_rng([opts.seed, 3]), opts.samples)
    return DataStage(ds, base, samplers, train_x, fresh)


def stage_train(opts: DemoOptions, d: DataStage, folder: Path, log: _Log, files) -> TrainStage:
    """2. the MLP, trained in NumPy; the Bayes floor of its loss."""
    cfg = TrainConfig(
        steps=opts.train_steps,
        batch_size=min(opts.batch_size, opts.train_size),
        prediction_type=opts.prediction_type,
        seed=opts.seed,
    )
    log(
        f"[2/7] training the MLP denoiser in NumPy ({cfg.steps} Adam steps, batch {cfg.batch_size})"
    )
    bar = log.bar(cfg.steps, "train MLP")
    every = max(1, cfg.steps // 200)

    def progress(k: int, total: int, loss: float) -> None:
        if bar is not None and (k % every == 0 or k == total):
            bar.update(k - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    with _single_thread_blas():
        result = train(d.train_x, d.base, cfg, progress=progress)
        floor = None
        if d.ds.law is not None:
            floor = bayes_floor(d.ds.law, d.base, cfg.prediction_type, seed=opts.seed)
    if bar is not None:
        bar.close()
    models = folder / "models"
    save_mlp(models / "mlp.npz", result.mlp)
    files["models/mlp.npz"] = "trained MLP weights (refdiff.mlp.load_mlp; no pickle)"
    save_npz(models / "training_loss.npz", losses=result.losses)
    files["models/training_loss.npz"] = "minibatch loss per Adam step"
    return TrainStage(result, cfg, floor)


def stage_export(d: DataStage, tr: TrainStage, folder: Path, sess_kw, log, files) -> ExportStage:
    """3. both denoisers and the whole-sampler graphs to ONNX."""
    log("[3/7] exporting denoisers and whole-sampler graphs to ONNX")
    models = folder / "models"
    base, mlp, ptype = d.base, tr.result.mlp, tr.config.prediction_type
    denoisers: dict[str, tuple[Path, object, str]] = {}
    if d.ds.law is not None:
        p = save_model(
            mixture_denoiser_model(d.ds.law, base, prediction_type="epsilon"),
            models / "exact_denoiser.onnx",
        )
        denoisers["exact"] = (p, exact.denoiser(d.ds.law, base, "epsilon"), "epsilon")
        files["models/exact_denoiser.onnx"] = (
            "exact Gaussian-mixture denoiser (ε), x (B,2), t (B,) int64"
        )
    p = save_model(
        mlp_denoiser_model(mlp, prediction_type=ptype, schedule=base),
        models / "mlp_denoiser.onnx",
    )
    denoisers["mlp"] = (p, mlp, ptype)
    files["models/mlp_denoiser.onnx"] = f"trained MLP denoiser ({ptype}), x (B,2), t (B,) int64"
    sampler_files = {}
    for dname, (dpath, _, _) in denoisers.items():
        for sname, (sch, sopts, info) in d.samplers.items():
            g = OrtSampler(dpath, sch, sampler=sname, mode="graph", **sess_kw, **sopts)
            fname = f"{dname}_{sname}{info['steps']}_sampler.onnx"
            sampler_files[dname, sname] = save_model(g.graph_model, models / fname)
            files[f"models/{fname}"] = (
                f"whole {sname.upper()} sampler ({info['steps']} steps, Scan) "
                f"around the {dname} denoiser; "
                "inputs x_T (B,2)" + (", step_noise (N,B,2)" if sname == "ddpm" else "")
            )
    return ExportStage(denoisers, sampler_files)


def stage_sample(opts: DemoOptions, d: DataStage, ex: ExportStage, sess_kw, used, log):
    """4. n samples per (denoiser, sampler) with onnxruntime (fused step, IO binding)."""
    n = opts.samples
    log(f"[4/7] sampling {n} points per run with onnxruntime on {used}")
    runs: dict[tuple[str, str], SampleRun] = {}
    trajectory = None
    traj_key = ("mlp", "ddpm" if "ddpm" in d.samplers else next(iter(d.samplers)))
    for sname, (sch, sopts, _) in d.samplers.items():
        N = sch.T
        # the noise of each sampler depends on the seed and the sampler only
        nrng = np.random.default_rng([opts.seed, 2, {"ddpm": 0, "ddim": 1}[sname]])
        x_T = nrng.standard_normal((n, 2), dtype=np.float32)
        z = nrng.standard_normal((N, n, 2), dtype=np.float32) if sname == "ddpm" else None
        for dname, (dpath, _, _) in ex.denoisers.items():
            label = f"{dname} {sname}"
            smp = OrtSampler(dpath, sch, sampler=sname, mode="fused", **sess_kw, **sopts)
            snaps: list[tuple[int, np.ndarray]] = []
            cb = None
            if (dname, sname) == traj_key:
                marks = _traj_marks(sch)
                snaps.append((int(sch.timesteps[N]), x_T[:3000].astype(np.float64)))

                def cb(k, t, x, marks=marks, snaps=snaps, sch=sch):
                    if t in marks:
                        snaps.append(
                            (int(sch.timesteps[t]), np.asarray(x[:3000], dtype=np.float64))
                        )

            log(f"      {label}: {N} steps × {n} samples")
            t0 = time.perf_counter()
            x = smp.sample(x_T, z, progress=not log.quiet, callback=cb)
            wall = time.perf_counter() - t0
            runs[dname, sname] = SampleRun(dname, sname, N, x.astype(np.float64), x_T, z, wall)
            if snaps:
                trajectory = (label, snaps)
    return SampleStage(runs, trajectory)


def stage_parity(opts: DemoOptions, d: DataStage, ex: ExportStage, sm: SampleStage, sess_kw,
                 log) -> ParityStage:  # fmt: skip
    """5. the NumPy reference on the first m samples with the same noise, against the main
    run and every other onnxruntime path (per-step, fused, whole graph)."""
    m = min(opts.parity_samples, opts.samples)
    log(f"[5/7] parity on {m} samples per run: NumPy float64 reference vs every ORT path")
    errors, stats, timing = {}, {}, {}
    for (dname, sname), run in sm.runs.items():
        sch, sopts, _ = d.samplers[sname]
        dpath, ref_den, ptype = ex.denoisers[dname]
        N, label = run.steps, f"{dname} {sname}"
        xs = run.x_T[:m].astype(np.float64)
        zs = None if run.z is None else run.z[:, :m].astype(np.float64)
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
        # µs per step per sample, so that runs with different batch sizes compare
        times = {
            f"ORT fused (main run, B={run.x.shape[0]})": run.wall_s / N / run.x.shape[0] * 1e6,
            f"NumPy reference (B={m})": ref_s / N / m * 1e6,
        }
        errs = {"fused (main run)": _per_sample_err(run.x[:m], ref)}
        sub_noise = None if run.z is None else np.ascontiguousarray(run.z[:, :m])
        for mode in ("steps", "fused", "graph"):
            if mode == "graph":
                s2 = OrtSampler(ex.sampler_files[dname, sname], **sess_kw)
            else:
                s2 = OrtSampler(dpath, sch, sampler=sname, mode=mode, **sess_kw, **sopts)
            if N < 200:  # warm-up (first-run allocations), amortised anyway for long runs
                s2.sample(run.x_T[:m], sub_noise)
            t0 = time.perf_counter()
            y = s2.sample(run.x_T[:m], sub_noise)
            dt = time.perf_counter() - t0
            name = {"steps": "steps", "fused": "fused", "graph": "whole graph (saved file)"}[mode]
            times[f"ORT {name} (B={m})"] = dt / N / m * 1e6
            errs[name] = _per_sample_err(y, ref)
        paths = {k: _parity_stats(e, dd) for k, (e, dd) in errs.items()}
        p99 = max(p["p99"] for p in paths.values())
        worst = max(p["max"] for p in paths.values())
        errors[dname, sname] = {k: e for k, (e, _) in errs.items()}
        timing[label] = times
        stats[dname, sname] = {
            "n": m,
            "paths": paths,
            "p99_rel_err": p99,
            "max_rel_err": worst,
            "max_abs_err": max(p["max_abs"] for p in paths.values()),
            "tolerance_p99": PARITY_TOL,
            "tolerance_max": PARITY_MAX_TOL,
            "passed": bool(p99 <= PARITY_TOL and worst <= PARITY_MAX_TOL),
            "reference_us_per_step_per_sample": ref_s / N / m * 1e6,
        }
    return ParityStage(errors, stats, timing)


def _mixture_cdf(law, u: np.ndarray):
    """The exact CDF of uᵀx for x ~ ``law`` (a Gaussian mixture): Σ_k w_k Φ((s − uᵀm_k)/σ_k),
    σ_k² = uᵀS_k u."""
    mu = law.means @ u
    sd = np.sqrt(np.einsum("i,kij,j->k", u, law.covs, u))
    w = law.weights

    def cdf(s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)[..., None]
        return np.sum(w * ndtr((s - mu) / sd), axis=-1)

    return cdf


def _worst_projection(x: np.ndarray, law, fresh: np.ndarray) -> dict:
    """The law direction with the largest KS distance: {u, proj, cdf or reference}."""
    best = None
    for u in _law_directions():
        p = np.sort(x @ u)
        n = p.size
        if law is not None:
            f = _mixture_cdf(law, u)(p)
            ks = float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))
        else:
            q = np.sort(fresh @ u)
            grid = np.concatenate([p, q])
            ks = float(np.max(np.abs(np.searchsorted(p, grid, "right") / n
                                     - np.searchsorted(q, grid, "right") / q.size)))  # fmt: skip
        if best is None or ks > best["ks_dir"]:
            best = {"u": u, "proj": p, "ks_dir": ks}
            best["cdf" if law is not None else "reference"] = (
                _mixture_cdf(law, u) if law is not None else np.sort(fresh @ u)
            )
    return best


def stage_law(opts: DemoOptions, d: DataStage, sm: SampleStage, log: _Log) -> LawStage:
    """6. the law of every run's samples: KS along the law directions against the exact law
    (or a fresh data draw), and the sliced Wasserstein-1 distance to a fresh draw."""
    log("[6/7] law tests")
    n, ds, fresh = opts.samples, d.ds, d.fresh
    phi = np.random.default_rng([opts.seed, 4]).uniform(0.0, np.pi, SW_DIRECTIONS)
    sw_dirs = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    laws, worst = {}, {}
    for key, run in sm.runs.items():
        x = run.x
        sw = _sliced_w1(x, fresh, sw_dirs)
        if ds.law is not None:
            res = check_mixture(
                x, ds.law, false_fail_rate=LAW_ALPHA, directions=_law_directions(), name="law"
            )
            ks, thr, disc = res.statistic, res.threshold, res.discrepancy
            kind = f"KS of {LAW_DIRECTIONS} projections against the exact projected mixture CDFs"
        else:
            ks, thr, disc = _projected_two_sample(x, fresh, LAW_ALPHA)
            kind = f"two-sample KS of {LAW_DIRECTIONS} projections against a fresh data draw"
        law = {"ks": ks, "threshold": thr, "alpha": LAW_ALPHA, "detectable": disc, "sw1": sw,
               "test": kind}  # fmt: skip
        if run.denoiser == "exact":
            law["passed"] = bool(ks <= thr)
            law["verdict"] = "passed" if law["passed"] else "FAILED"
        else:
            law["tolerance"] = MLP_LAW_TOL
            law["close"] = bool(ks <= thr + MLP_LAW_TOL)
            law["verdict"] = "close" if law["close"] else "far"
        laws[key] = law
        worst[key] = _worst_projection(x, ds.law, fresh)
    if ds.law is not None:
        base_ks = check_mixture(
            fresh, ds.law, false_fail_rate=LAW_ALPHA, directions=_law_directions()
        ).statistic
    else:
        base_ks = _projected_two_sample(
            ds.sample(np.random.default_rng([opts.seed, 5]), n), fresh, LAW_ALPHA
        )[0]
    base_sw = _sliced_w1(ds.sample(np.random.default_rng([opts.seed, 6]), n), fresh, sw_dirs)
    return LawStage(laws, worst, {"ks": float(base_ks), "sw1": base_sw})


def _run_summaries(d: DataStage, sm: SampleStage, par: ParityStage, law: LawStage) -> list:
    out = []
    for key, run in sm.runs.items():
        n = run.x.shape[0]
        out.append(
            {
                "denoiser": run.denoiser,
                "sampler": run.sampler,
                "steps": run.steps,
                "n": n,
                "ort_wall_s": run.wall_s,
                "ort_us_per_step": run.wall_s / run.steps * 1e6,
                "ort_us_per_step_per_sample": run.wall_s / run.steps / n * 1e6,
                "reference_us_per_step": par.stats[key]["reference_us_per_step_per_sample"]
                * par.stats[key]["n"],
                "parity": par.stats[key],
                "law": law.law[key],
            }
        )
    return out


def stage_report(opts, d: DataStage, tr: TrainStage, sm: SampleStage, par: ParityStage,
                 law: LawStage, used: str, reason: str, folder: Path, files: dict, log: _Log,
                 start: float) -> dict:  # fmt: skip
    """7. figures, summary.json and report.md."""
    import onnxruntime as ort

    log("[7/7] writing figures and the report")
    figures: dict[str, str] = {}
    base, samplers, n = d.base, d.samplers, opts.samples
    m = min(opts.parity_samples, opts.samples)
    runs = _run_summaries(d, sm, par, law)

    def fig(name: str, caption: str, png: bytes) -> None:
        write_bytes(folder / name, png)
        figures[name] = caption
        files[name] = caption

    exact_law = d.ds.law
    panels = []
    for (dn, sn), run in sm.runs.items():
        lw = law.law[dn, sn]
        rel = "≤" if lw["ks"] <= lw["threshold"] else ">"
        verdict = f"{lw['ks']:.3f} {rel} {lw['threshold']:.3f}"
        panels.append(
            (
                f"{dn} denoiser · {sn.upper()} {run.steps} steps\n"
                f"KS {verdict} (α={LAW_ALPHA:g}) · SW1 {lw['sw1']:.3f}",
                run.x,
            )
        )
    fig(
        "samples.png",
        "Samples over the data law",
        R.samples_figure(
            d.fresh,
            panels,
            law=exact_law,
            title=f"{d.ds.name}: onnxruntime samples (blue) with the data "
            + ("law's density contours (black)" if exact_law is not None else "(orange) on top")
            + f"; KS to the {'exact law' if exact_law is not None else 'data'} ≤ threshold passes",
        ),
    )
    fig(
        "parity.png",
        "Parity: per-sample |ONNX − reference| against the tolerance",
        R.parity_figure(
            par.errors,
            PARITY_TOL,
            PARITY_MAX_TOL,
            title=f"Parity, float32 onnxruntime ({used}) vs float64 NumPy, same noise, "
            f"{m} samples per run",
        ),
    )
    fig(
        "law.png",
        "Law: projected CDFs against the exact law, with the KS statistic and threshold",
        R.law_figure(
            law.worst,
            law.law,
            title="Law of the samples along the worst of "
            f"{LAW_DIRECTIONS} projections: empirical CDF vs "
            + ("exact law" if exact_law is not None else "a fresh data draw"),
        ),
    )
    if sm.trajectory is not None:
        tl, snaps = sm.trajectory
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
        "ᾱ and SNR curves, every visited step marked",
        R.schedule_figure(
            base.alpha_bar, marks, title=f"Schedule {base.name}, T = {base.T}: ᾱ_t and log SNR(t)"
        ),
    )
    fig(
        "timing.png",
        "Time per step and per sample",
        R.timing_figure(
            par.timing,
            title=f"Time per step per sample: onnxruntime on {used} (float32) and NumPy (float64)",
        ),
    )
    cfg, result = tr.config, tr.result
    fig(
        "training_loss.png",
        "Training loss and its Bayes-optimal floor",
        R.loss_figure(
            result.losses,
            floor=tr.floor,
            ylabel=f"MSE of the {cfg.prediction_type} prediction",
            title=f"Training loss of the MLP ({cfg.prediction_type} objective, "
            f"batch {cfg.batch_size})",
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
    n_exact = len(exact_runs)
    if n_exact:
        exact_text = (
            f"each exact-denoiser run ({n} ORT samples) is KS-tested along {LAW_DIRECTIONS} "
            "directions against the exact projected mixture CDFs (refdiff.stats.check_mixture: "
            f"DKW bound, Bonferroni), false-failure rate α = {LAW_ALPHA:g} per run "
            f"({n_exact} runs)."
        )
    else:
        exact_text = "no exact law for this data set (not a Gaussian mixture): skipped."
    kind = "the exact law" if exact_law is not None else f"a fresh draw of {n} data points"
    mlp_text = (
        f"the same KS statistic (against {kind}) for the trained MLP's samples; 'close' when it "
        f"is within {MLP_LAW_TOL} of the α-threshold (a quality label: training is approximate)."
        f" SW1 = sliced Wasserstein-1 ({SW_DIRECTIONS} random directions) to a fresh draw of {n}"
        " data points; the baseline row compares two fresh draws of the data (the noise floor)."
    )
    training = {**result.summary(), "steps": cfg.steps}
    if tr.floor is not None:
        training["bayes_floor"], training["bayes_floor_se"] = tr.floor
    summary = {
        "refdiff_version": refdiff.__version__,
        "passed": bool(passed),
        "wall_s": 0.0,
        "options": asdict(opts),
        "data": {
            "name": d.ds.name,
            "description": d.ds.description,
            "exact_law": exact_law is not None,
            "train_size": opts.train_size,
        },
        "schedule": {"name": base.name, "T": base.T, "alpha_bar_T": float(base.alpha_bar[-1])},
        "samplers": {
            s: {**info, "options_text": _options_text(info["options"])}
            for s, (_, _, info) in samplers.items()
        },
        "training": training,
        "provider": {
            "requested": opts.provider,
            "used": used,
            "reason": reason,
            "onnxruntime_version": ort.__version__,
            "threads": opts.threads,
        },
        "runs": runs,
        "baseline": law.baseline,
        "timing_us_per_step_per_sample": par.timing,
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


def run_demo(opts: DemoOptions, folder: Path, log: _Log) -> dict:
    """Stages 1-7, writing into ``folder`` (which the caller renames into place); returns the
    summary (what summary.json holds)."""
    start = time.perf_counter()
    used, reason = _provider(opts.provider)
    log(f"refdiff demo: provider {used} ({reason})")
    files: dict[str, str] = {}
    sess_kw = {"provider": used, "threads": opts.threads}
    d = stage_data(opts, log)
    tr = stage_train(opts, d, folder, log, files)
    ex = stage_export(d, tr, folder, sess_kw, log, files)
    sm = stage_sample(opts, d, ex, sess_kw, used, log)
    par = stage_parity(opts, d, ex, sm, sess_kw, log)
    law = stage_law(opts, d, sm, log)
    return stage_report(opts, d, tr, sm, par, law, used, reason, folder, files, log, start)


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
