"""σ-view and flow-matching schedulers: their σ grid and whole trajectories against
:mod:`refdiff.sigma`, :mod:`refdiff.flow` and :mod:`refdiff.solvers` (docs/verify.md
§Scheduler kinds; docs/math.md §15-§19).

A multistep sampler is only right if its history is: it is verified along a whole trajectory
with injected noise — the scheduler's own loop is run from x_T with the exact denoiser of a
Gaussian mixture as the model (so every step's input is the one the reference sees), and each
state is compared with :func:`refdiff.solvers.sample` on the σ grid read from the scheduler
(the grid itself is checked separately by :func:`compare_sigmas`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import exact, exact_sigma, flow, solvers
from .. import sigma as sg
from .cases import Setting
from .comparison import Comparison
from .tolerance import Tolerance

__all__ = [
    "TRAJECTORY_STEPS",
    "MIXTURE",
    "reference_sigmas",
    "compare_sigmas",
    "compare_trajectory",
    "karras_rho",
    "TrajectoryBug",
    "TRAJECTORY_BUGS",
    "trajectory_bug",
]

TRAJECTORY_STEPS = 12
BATCH = 8
MIXTURE = exact.GaussianMixture(
    [0.3, 0.7], [[-1.0, 0.5], [1.5, 0.0]], [np.eye(2) * 0.2, [[1.0, 0.3], [0.3, 0.6]]]
)


# -- the σ-view bug catalogue: a bug is the reference run with other options -----------------
@dataclass(frozen=True)
class TrajectoryBug:
    """A known bug of a σ-view sampler: the reference with ``change(sampler, options)``
    (new options, or None where the bug cannot occur) reproduces it."""

    name: str
    message: str
    reference: str
    change: Callable[[str, Mapping[str, object]], dict | None]
    planted: str = ""


TRAJECTORY_BUGS: dict[str, TrajectoryBug] = {}


def trajectory_bug(
    *, message: str, reference: str, planted: str = ""
) -> Callable[[Callable], Callable]:
    """Register ``f(sampler, options) -> options with the bug | None`` as a σ-view bug."""

    def register(fn):
        TRAJECTORY_BUGS[fn.__name__] = TrajectoryBug(fn.__name__, message, reference, fn, planted)
        return fn

    return register


_MULTISTEP = ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc")


@trajectory_bug(
    message="looks like the lower-order final steps missing (lower_order_final ignored: the "
    "multistep order kept up to the last steps)",
    reference="docs/math.md §19 (lower_order_final); docs/samplers.md",
    planted="NoLowerOrderFinal",
)
def lower_order_final_missing(sampler: str, o: Mapping[str, object]) -> dict | None:
    """lower_order_final=True asked, the full order taken."""
    if sampler in _MULTISTEP and o.get("lower_order_final", True):
        return {**o, "lower_order_final": False}
    return None


@trajectory_bug(
    message="looks like lower-order final steps taken where the sampler has none",
    reference="docs/math.md §19 (lower_order_final)",
)
def lower_order_final_extra(sampler: str, o: Mapping[str, object]) -> dict | None:
    """lower_order_final=False asked, lower-order final steps taken."""
    if sampler in _MULTISTEP and not o.get("lower_order_final", True):
        return {**o, "lower_order_final": True}
    return None


@trajectory_bug(
    message="looks like η missing (η taken as 0: no noise added, a deterministic sampler)",
    reference="docs/math.md §19 (ancestral and SDE samplers)",
    planted="EtaMissing",
)
def eta_missing(sampler: str, o: Mapping[str, object]) -> dict | None:
    """The stochastic sampler run with η = 0."""
    if sampler in ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde") and o.get("eta", 1.0):
        return {**o, "eta": 0.0}
    return None


@trajectory_bug(
    message="looks like the third-order SDE d₂ coefficient of the other peer (diffusers: "
    "−φ₃ − 1, k-diffusion: −φ₃)",
    reference="docs/samplers.md (diffusers_sde_d2); docs/math.md §19.6",
)
def sde_d2_other_peer(sampler: str, o: Mapping[str, object]) -> dict | None:
    """The 3M SDE with the other peer's d₂ coefficient."""
    if sampler == "dpmpp_3m_sde":
        return {**o, "diffusers_sde_d2": not o.get("diffusers_sde_d2", False)}
    return None


@trajectory_bug(
    message="looks like the other SDE solver type (midpoint ↔ heun)",
    reference="docs/samplers.md (dpmpp_2m_sde solver_type)",
)
def sde_solver_type_flipped(sampler: str, o: Mapping[str, object]) -> dict | None:
    """The 2M SDE with the other solver_type."""
    if sampler == "dpmpp_2m_sde":
        st = "heun" if o.get("solver_type", "midpoint") == "midpoint" else "midpoint"
        return {**o, "solver_type": st}
    return None


def _final(cfg: Mapping[str, object]) -> str:
    return "sigma_min" if cfg.get("final_sigmas_type") == "sigma_min" else "zero"


def reference_sigmas(
    setting: Setting, cfg: Mapping[str, object], own_t=None, full_range: bool = False
) -> np.ndarray:
    """The σ grid (n+1,) refdiff gives for a scheduler configuration ``cfg`` on ``setting``
    (eqs. 17.1-17.6; flow: eqs. 18.6-18.7).  ``own_t``: the scheduler's own 0-based
    timesteps, where σ is read off the schedule at them (the spacing is checked by the
    ``timesteps`` op).  ``full_range``: a Karras/exponential/beta grid spans the whole
    training σ range (diffusers' DPM-Solver/UniPC) rather than the σ of the first and last
    kept steps (its Euler/Heun/LMS)."""
    n = setting.N
    if "shift" in cfg and "beta_schedule" not in cfg:  # flow matching
        s = float(cfg.get("shift", 1.0))  # type: ignore[arg-type]
        T = int(cfg.get("num_train_timesteps", 1000))  # type: ignore[arg-type]
        return flow.flow_sigmas(n, shift_factor=s, sigma_min=float(flow.shift(1.0 / T, s)))
    base = setting.base()
    # diffusers takes σ_min, σ_max of a Karras/exponential/beta grid from the σ at its
    # spaced timesteps (the first and the last kept step)
    kept = setting.times().astype(np.float64)
    ends = [1.0, float(base.T)] if full_range else [kept.min(), kept.max()]
    lo, hi = (float(v) for v in sg.t_to_sigma(base, ends, "linear"))
    fin = _final(cfg)
    if cfg.get("use_karras_sigmas"):
        return sg.karras(n, lo, hi, rho=7.0, final_sigma=fin)
    if cfg.get("use_exponential_sigmas"):
        return sg.exponential(n, lo, hi, final_sigma=fin)
    if cfg.get("use_beta_sigmas"):
        return sg.beta_sigmas(n, lo, hi, final_sigma=fin)
    t = np.asarray(own_t, dtype=np.float64) + 1.0
    return sg.append_final(sg.t_to_sigma(base, t, "linear"), fin, float(base.sigma[1]))


def karras_rho(grid: np.ndarray) -> float | None:
    """The ρ of eq. 17.1 a Karras grid (n+1,) ending in 0 or σ_min was built with, by
    bisection on its middle point (None when it is not a Karras grid)."""
    g = np.asarray(grid, dtype=np.float64)
    body = g[:-1] if g[-1] == 0 or (len(g) > 2 and g[-1] == g[-2]) else g
    if body.size < 3 or not np.all(body > 0):
        return None
    hi, lo = float(body[0]), float(body[-1])

    def grid_for(rho: float) -> np.ndarray:
        return sg.karras(body.size, lo, hi, rho=rho, final_sigma="none")

    a, b = 0.5, 50.0
    mid = body.size // 2
    for _ in range(100):
        m = 0.5 * (a + b)
        if grid_for(m)[mid] > body[mid]:  # a larger ρ moves the middle towards σ_min
            a = m
        else:
            b = m
    rho = 0.5 * (a + b)
    err = np.max(np.abs(grid_for(rho) - body) / body)
    return rho if err < 1e-4 else None


def compare_sigmas(
    setting: Setting,
    got: object,
    cfg: Mapping[str, object],
    tol: Tolerance,
    own_t=None,
    full_range: bool = False,
) -> Comparison:
    """Compare a scheduler's σ grid with :func:`reference_sigmas` (relative, in the schedule
    precision: K·u·(1 + |log σ| scale) per entry); a failing Karras grid is diagnosed with
    the ρ it was built with."""
    exp = reference_sigmas(setting, cfg, own_t, full_range)
    a = np.asarray(got, dtype=np.float64).ravel()
    base: dict[str, Any] = dict(
        op="sigmas", setting=setting, t=setting.N, base_time=setting.N, options={}, tolerance=tol
    )
    if a.shape != exp.shape:
        return Comparison(
            **base,
            max_abs=math.inf,
            max_rel=math.inf,
            ratio=math.inf,
            passed=False,
            problem=f"{a.size} σ values, expected {exp.size} (n + 1 with the final σ)",
            status="FAIL",
        )
    err = np.abs(a - exp)
    mag = np.abs(exp)
    # σ = √((1−ᾱ)/ᾱ) from a table in the schedule precision: 1−ᾱ cancels, relative error
    # ≈ u/(2σ²) (flow σ: no cancellation)
    with np.errstate(divide="ignore"):
        amp = 16.0 if "shift" in cfg else 16.0 + 1.0 / np.maximum(mag, 1e-12) ** 2
        if any(
            cfg.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
        ):
            amp = 16.0 + 1.0 / float(np.min(mag[mag > 0])) ** 2  # every σ inherits σ_min's
    tarr = tol.factor * tol.u_schedule * amp * np.maximum(mag, 1e-12)
    with np.errstate(all="ignore"):
        ratio = float(np.nanmax(np.where(err == 0, 0.0, err / tarr)))
        rel = float(np.nanmax(np.where(err == 0, 0.0, err / np.maximum(mag, 1e-300))))
    ok = bool(np.isfinite(a).all()) and ratio <= 1.0
    diag = None
    if not ok and cfg.get("use_karras_sigmas"):
        rho = karras_rho(a)
        if rho is not None and abs(rho - 7.0) > 1e-3:
            diag = f"looks like a wrong Karras ρ (the grid is eq. 17.1 with ρ = {rho:.3g}, not 7)"
    return Comparison(
        **base,
        max_abs=float(np.nanmax(err)),
        max_rel=rel,
        ratio=ratio,
        passed=ok,
        status="ok" if ok else "FAIL",
        diagnosis=diag,
        actual=a,
    )


def compare_trajectory(target: Any, setting: Setting, tol: Tolerance) -> Comparison:
    """Run ``target.trajectory`` (a :class:`~.adapters.DiffusersTarget` of a σ-view or flow
    scheduler) and compare every state with :func:`refdiff.solvers.sample` on the same grid,
    x_T and injected noise.  Tolerance: K·u_schedule·4n·(1 + max |x|) — each of the n steps
    rounds a few coefficients computed from the scheduler's σ table in its precision."""
    kind = target.kind_info
    rng = np.random.default_rng(int(setting.N) * 7919 + 17)
    n = setting.N
    z0 = rng.standard_normal((BATCH, 2))
    z = rng.standard_normal((n, BATCH, 2))
    D = exact_sigma.denoiser(MIXTURE)
    V = exact_sigma.velocity(MIXTURE)
    probe_grid = None
    try:
        probe_grid = target.sigmas(setting)
    except Exception:  # noqa: BLE001 - the trajectory reports its own failure below
        probe_grid = None
    s0 = float(probe_grid[0]) if probe_grid is not None else 1.0
    x_T = z0 if kind.family == "flow" else s0 * z0
    base: dict[str, Any] = dict(
        op="trajectory",
        setting=setting,
        t=n,
        base_time=n,
        options={"sampler": kind.sampler, **dict(kind.options)},
        tolerance=tol,
        index_base=0,
    )
    grid, got = target.trajectory(setting, D, V, x_T, z)
    opts = dict(kind.options)
    model = V if kind.family == "flow" else D
    noise = z if solvers.needs_noise(kind.sampler, **opts) else None
    with np.errstate(all="ignore"):
        _, ref = solvers.sample(
            model,
            grid,
            sampler=kind.sampler,
            x_T=x_T,
            step_noise=noise,
            return_trajectory=True,
            **opts,
        )
    ref = ref[1 : 1 + got.shape[0]]
    scale = 1.0 + float(np.nanmax(np.abs(ref)))
    if not np.isfinite(got).all():
        bad = int((~np.isfinite(got)).sum())
        first = int(np.argmax(~np.isfinite(got).reshape(got.shape[0], -1).all(axis=1)))
        return Comparison(
            **base,
            max_abs=math.inf,
            max_rel=math.inf,
            ratio=math.inf,
            passed=False,
            problem=f"{bad} state values NaN or Inf, first at step {first} (0-based) "
            f"σ {grid[first]:.4g} → {grid[first + 1]:.4g}",
            status="FAIL",
            actual=got,
        )
    err = np.abs(got - ref)
    per_step = err.reshape(err.shape[0], -1).max(axis=1)
    tol_abs = tol.factor * tol.u_schedule * 4 * n * scale
    ratio = float(per_step.max() / tol_abs)
    worst = int(np.argmax(per_step))
    ok = ratio <= 1.0
    problem = diag = None
    if not ok:
        diag = diagnose_trajectory(kind.sampler, opts, model, grid, x_T, z, got, tol_abs)
        first = int(np.argmax(per_step > tol_abs))
        problem = (
            f"the trajectory leaves the reference at step {first} (0-based, σ "
            f"{grid[first]:.4g} → {grid[first + 1]:.4g}); worst at step {worst}: max abs err "
            f"{per_step[worst]:.3g} (err/tol {ratio:.3g}; tolerance K·u·4n·(1+max|x|) "
            f"for {tol.describe()})"
        )
    return Comparison(
        **base,
        max_abs=float(per_step.max()),
        max_rel=float(per_step.max() / scale),
        ratio=ratio,
        passed=ok,
        status="ok" if ok else "FAIL",
        problem=problem,
        diagnosis=diag,
        actual=got,
    )


def run_reference(
    sampler: str,
    options: Mapping[str, object],
    model: Callable,
    grid: np.ndarray,
    x_T: np.ndarray,
    z: np.ndarray,
) -> np.ndarray:
    """The reference trajectory (n, B, ...) float64 after x_T of ``sampler`` with
    ``options`` on the σ ``grid`` (n+1,), step noise ``z`` (n, B, ...) (docs/samplers.md)."""
    noise = z if solvers.needs_noise(sampler, **options) else None
    with np.errstate(all="ignore"):
        _, ref = solvers.sample(
            model,
            grid,
            sampler=sampler,
            x_T=x_T,
            step_noise=noise,
            return_trajectory=True,
            **options,
        )
    return ref[1:]


def diagnose_trajectory(
    sampler: str,
    options: Mapping[str, object],
    model: Callable,
    grid: np.ndarray,
    x_T: np.ndarray,
    z: np.ndarray,
    got: np.ndarray,
    tol_abs: float,
) -> str | None:
    """The registered σ-view bugs whose reference trajectory reproduces ``got`` (n, B, ...)
    within 4·``tol_abs`` ("… or …"; None when none does)."""
    names = []
    for bug in TRAJECTORY_BUGS.values():
        o2 = bug.change(sampler, options)
        if o2 is None:
            continue
        if callable(getattr(model, "fresh", None)):
            model.fresh()  # a replayed model starts again at its first call
        try:
            alt = run_reference(sampler, o2, model, grid, x_T, z)[: got.shape[0]]
        except Exception:  # noqa: BLE001 - a hypothesis that cannot run explains nothing
            continue
        if np.all(np.abs(got - alt) <= 4 * tol_abs):
            names.append(f"{bug.message} [{bug.reference}]")
    return " or ".join(names) or None
