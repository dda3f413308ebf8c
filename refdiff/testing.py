"""Conformance testing for other implementations, importable into any pytest suite (docs/verify.md).

Three layers:

1. **Checks against the reference** with injected noise: ``assert_alpha_bar_close``,
   ``assert_q_sample_close``, ``assert_posterior_close``, ``assert_ddpm_step_close``,
   ``assert_ddim_step_close`` (and ``check_*`` twins that return :class:`Check` results
   instead of raising).  The user's function takes NumPy float64 arrays and returns anything
   array-like (NumPy, ``__array__``, DLPack, ``.numpy()``); its time argument follows the
   user's ``index_base`` (0: the diffusers / improved-diffusion index, 1: refdiff's time).
2. **Tolerances** (:class:`Tolerance`) stated per precision and derived from the magnitudes
   involved — see :func:`tolerance_array` and docs/verify.md §Tolerances.
3. **A statistical form** for whole samplers whose noise cannot be injected:
   :func:`assert_sampler_law` compares their output on Gaussian data, driven by the exact
   denoiser, with the exact law (refdiff.exact, refdiff.stats).

Plus Hypothesis strategies (:func:`settings`, :func:`schedules`, :func:`timesteps`,
:func:`states`, :func:`ddpm_options`, :func:`ddim_options`); Hypothesis is imported only when
a strategy is built.

Operations (``op``), each compared elementwise with the reference of docs/math.md:

=================== ============================================  =========================
op                  the user's function                           reference (docs/math.md)
=================== ============================================  =========================
alpha_bar           an array (T,) of ᾱ at index 0..T−1             eq. 2.2 (§2)
q_sample            fn(x0, t, noise) → x_t                         eq. 3.2
posterior           fn(x0, x_t, t) → (mean, variance)             eqs. 4.1–4.2
ddpm_step           fn(x_t, t, model_output, noise) → x_{t−1}      eqs. 7.3–7.8
ddim_step           fn(x_t, t, model_output, noise) → x_{t−1}      eqs. 7.9–7.10
=================== ============================================  =========================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import forward, posterior, respacing, reverse
from ._check import is_real
from .adapters import to_numpy
from .errors import InputError, OptionError, UndefinedError
from .parameterization import from_x0_eps
from .schedule import Schedule, make_schedule, respace

__all__ = [
    "UNIT_ROUNDOFF",
    "Tolerance",
    "Setting",
    "Case",
    "Check",
    "OPS",
    "make_inputs",
    "expected",
    "magnitude",
    "tolerance_array",
    "compare",
    "compare_alpha_bar",
    "compare_timesteps",
    "options_label",
    "check_alpha_bar",
    "check_q_sample",
    "check_posterior",
    "check_ddpm_step",
    "check_ddim_step",
    "assert_alpha_bar_close",
    "assert_q_sample_close",
    "assert_posterior_close",
    "assert_ddpm_step_close",
    "assert_ddim_step_close",
    "assert_checks",
    "assert_sampler_law",
    "settings",
    "schedules",
    "timesteps",
    "states",
    "ddpm_options",
    "ddim_options",
]

# Unit roundoff u = 2^-p (p = significand bits incl. the hidden one) of each precision.
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}
OPS = ("q_sample", "posterior_mean", "posterior_variance", "ddpm_step", "ddim_step")
STATE_SHAPE = (3, 2, 4, 4)  # (B, C, H, W): 32 values per sample, enough for quantiles


# -- tolerances ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """How far a *correct* implementation computing at a given precision may be from the
    float64 reference.

    ``state``: precision of the arithmetic on states (x_t, model output, noise).
    ``schedule``: precision the schedule (β, ᾱ and the coefficients built from them) is
    computed and stored in; defaults to ``state``, except for 16-bit states, where it
    defaults to float32 — a half-precision ᾱ rounds to 1 at small t (1 − ᾱ_1 = β_1 = 1e-4 <
    2^-11) and no correct implementation stores it that way (diffusers PR #3005).
    ``factor``: safety factor K on the first-order error bound (see :func:`tolerance_array`).

    Elementwise, ``|actual − expected| ≤ K (u_state·M + u_schedule·(M + S))`` where M is the
    sum of the magnitudes of all terms the reference formula adds up and S the first-order
    sensitivity of the output to the rounding error a cumulative product of the schedule in
    that precision carries.
    """

    state: str = "float64"
    schedule: str | None = None
    factor: float = 8.0

    def __post_init__(self) -> None:
        for nm in ("state", "schedule"):
            v = getattr(self, nm)
            if v is not None and v not in UNIT_ROUNDOFF:
                raise InputError(nm, f"unknown precision {v!r}; valid: {', '.join(UNIT_ROUNDOFF)}")
        if not (is_real(self.factor) and self.factor > 0):
            raise InputError("factor", f"must be > 0; got {self.factor!r}")

    @classmethod
    def for_dtype(cls, dtype: object = "float64", **kw: Any) -> Tolerance:
        """The preset for an implementation computing in ``dtype`` (a name or NumPy dtype)."""
        if isinstance(dtype, Tolerance):
            return dtype
        try:
            name = str(np.dtype(dtype)) if dtype != "bfloat16" else dtype
        except TypeError:  # "float8", a typo: a typed error listing the precisions
            raise OptionError("dtype", dtype, list(UNIT_ROUNDOFF)) from None
        return cls(state=name, **kw)

    @property
    def schedule_precision(self) -> str:
        if self.schedule is not None:
            return self.schedule
        return "float32" if self.state in ("float16", "bfloat16") else self.state

    @property
    def u_state(self) -> float:
        return UNIT_ROUNDOFF[self.state]

    @property
    def u_schedule(self) -> float:
        return UNIT_ROUNDOFF[self.schedule_precision]

    def describe(self) -> str:
        return f"{self.state} states, {self.schedule_precision} schedule, K={self.factor:g}"


def _as_tolerance(dtype: object, tolerance: Tolerance | None) -> Tolerance:
    return tolerance if tolerance is not None else Tolerance.for_dtype(dtype)


# -- settings: which schedule and which kept steps --------------------------------------------
@dataclass(frozen=True)
class Setting:
    """A base schedule and the steps a sampler keeps (docs/math.md §2, §6).

    ``num_steps=None`` keeps all T steps.  ``spacing``/``steps_offset`` follow
    :func:`refdiff.respacing.spaced_times`.
    """

    schedule: str = "linear"
    T: int = 1000
    num_steps: int | None = None
    spacing: str = "leading"
    steps_offset: int = 0
    zero_terminal_snr: bool = False

    def base(self) -> Schedule:
        return _base_schedule(self.schedule, self.T, self.zero_terminal_snr)

    def times(self) -> np.ndarray:
        """Kept base times, ascending, 1-based, shape (N,)."""
        if self.num_steps is None:
            return np.arange(1, self.T + 1, dtype=np.int64)
        return _spaced(self.T, self.num_steps, self.spacing, self.steps_offset)

    def respaced(self) -> Schedule:
        if self.num_steps is None:
            return self.base()
        return _respaced(self)

    @property
    def N(self) -> int:
        return self.T if self.num_steps is None else int(self.num_steps)

    def label(self) -> str:
        s = self.schedule + ("+zsnr" if self.zero_terminal_snr else "")
        if self.num_steps is None:
            return f"{s} T={self.T} all steps"
        off = f"+{self.steps_offset}" if self.steps_offset else ""
        return f"{s} T={self.T} {self.spacing}{off} N={self.num_steps}"


@functools.lru_cache(maxsize=64)
def _base_schedule(name: str, T: int, zsnr: bool) -> Schedule:
    return make_schedule(name, T, zero_terminal_snr=zsnr)


@functools.lru_cache(maxsize=256)
def _spaced(T: int, n: int, spacing: str, offset: int) -> np.ndarray:
    a = respacing.spaced_times(T, n, spacing, offset)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=256)
def _respaced(setting: Setting) -> Schedule:
    return respace(setting.base(), setting.times())


def options_label(options: Mapping[str, object]) -> str:
    """``key=value`` pairs in a stable order; options set to None are left out."""
    order = [k for k in _OPTION_ORDER if k in options] + sorted(set(options) - set(_OPTION_ORDER))
    parts = []
    for k in order:
        v = options[k]
        if v is None:
            continue
        parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


_OPTION_ORDER = (
    "prediction_type",
    "variance_type",
    "eta",
    "final_alpha_bar",
    "clip",
    "threshold_ratio",
    "threshold_max",
    "rederive_eps",
    "log_variance_clipping",
    "final_step_noise",
)


# -- cases ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Case:
    """One comparison: ``op`` at time ``t`` (refdiff time on the schedule the op runs on: the
    base schedule for q_sample/posterior, the respaced one for steps) with ``inputs``."""

    op: str
    setting: Setting
    t: int
    options: Mapping[str, object] = field(default_factory=dict)
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def schedule(self) -> Schedule:
        return (
            self.setting.respaced()
            if self.op in ("ddpm_step", "ddim_step")
            else self.setting.base()
        )

    @property
    def base_time(self) -> int:
        return int(self.schedule.timesteps[self.t])


def _ab(schedule: Schedule, t: int) -> float:
    return float(schedule.alpha_bar[t])


def make_inputs(
    op: str,
    schedule: Schedule,
    t: int,
    options: Mapping[str, object],
    rng: np.random.Generator,
    shape: tuple[int, ...] = STATE_SHAPE,
) -> dict[str, np.ndarray]:
    """Plausible inputs for ``op`` at ``t``: data x0 ~ N(0, 0.9²) (some beyond ±1, so clipping
    acts), x_t from q(x_t|x0), an imperfect model output (truth + N(0, 0.3²)), noise."""
    x0 = 0.9 * rng.standard_normal(shape)
    eps = rng.standard_normal(shape)
    ab = _ab(schedule, t)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps
    noise = rng.standard_normal(shape)
    if op == "q_sample":
        return {"x0": x0, "noise": noise}
    if op.startswith("posterior"):
        return {"x0": x0, "x_t": x_t}
    pt = str(options.get("prediction_type", "epsilon"))
    truth = from_x0_eps(x0, eps, ab, pt) if pt != "score" else -eps / math.sqrt(1.0 - ab)
    out = {
        "x_t": x_t,
        "model_output": truth + 0.3 * rng.standard_normal(shape),
        "noise": noise,
        "x0": x0,  # the data x_t was noised from (not an input of the step itself)
    }
    vt = options.get("variance_type")
    if vt in reverse.LEARNED:
        beta = float(schedule.beta[t])
        if vt == "learned_range":
            mv = rng.uniform(-1.0, 1.0, shape)
        else:
            mv = math.log(beta) + 0.3 * rng.standard_normal(shape)
            if vt == "learned_linear":
                mv = np.exp(mv)
        out["model_variance"] = mv
    return out


def expected(case: Case, schedule: Schedule | None = None) -> np.ndarray:
    """The reference output of ``case`` (float64), optionally on another ``schedule``.

    Raises :class:`~refdiff.errors.UndefinedError` where the reference is undefined (e.g.
    ε-prediction where ᾱ_t = 0).
    """
    s = case.schedule if schedule is None else schedule
    i, o, t = case.inputs, dict(case.options), case.t
    with np.errstate(all="ignore"):
        if case.op == "q_sample":
            return forward.q_sample(s, i["x0"], t, noise=i["noise"])
        if case.op == "posterior_mean":
            return posterior.posterior_mean_var(s, i["x0"], i["x_t"], t)[0]
        if case.op == "posterior_variance":
            v = posterior.posterior_variance(s, t)
            return np.broadcast_to(np.asarray(v, dtype=np.float64), i["x_t"].shape).copy()
        if case.op == "ddpm_step":
            mv = i.get("model_variance")
            kw = {"model_variance": mv} if mv is not None else {}
            return reverse.ddpm_step(s, i["x_t"], t, i["model_output"], noise=i["noise"], **kw, **o)
        if case.op == "ddim_step":
            return reverse.ddim_step(s, i["x_t"], t, i["model_output"], noise=i["noise"], **o)
    raise InputError("op", f"unknown op {case.op!r}; valid: {', '.join(OPS)}")


def _pred_magnitudes(x_t, m, ab: float, prediction_type: str):
    """Elementwise magnitudes of (x̂0, ε̂) as sums of |terms| of eqs. 5.1–5.4."""
    sa, s1 = math.sqrt(ab), math.sqrt(max(1.0 - ab, 0.0))
    ax, am = np.abs(x_t), np.abs(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction_type == "v":
            return sa * ax + s1 * am, sa * am + s1 * ax
        if prediction_type == "x0":
            return am, (ax + sa * am) / s1
        if prediction_type == "score":
            am = s1 * am
        return (ax + s1 * am) / sa, am


def magnitude(case: Case) -> np.ndarray:
    """M: elementwise sum of the magnitudes of every term the reference formula adds up,
    intermediate results (x̂0, ε̂) included.  Rounding in precision u perturbs each term by
    at most a few u of its size, so a correct implementation's error is O(u·M)."""
    s, t, i, o = case.schedule, case.t, case.inputs, case.options
    ab = _ab(s, t)
    if case.op == "q_sample":
        return math.sqrt(ab) * np.abs(i["x0"]) + math.sqrt(1 - ab) * np.abs(i["noise"])
    if case.op == "posterior_mean":
        c0, ct = posterior.posterior_coefficients(s, t)
        return float(c0) * np.abs(i["x0"]) + float(ct) * np.abs(i["x_t"])
    if case.op == "posterior_variance":
        return np.abs(expected(case))
    x_t, m, z = i["x_t"], i["model_output"], i["noise"]
    mx0, meps = _pred_magnitudes(x_t, m, ab, str(o.get("prediction_type", "epsilon")))
    s1 = math.sqrt(max(1.0 - ab, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        meps_re = (np.abs(x_t) + math.sqrt(ab) * mx0) / s1 if s1 > 0 else meps
    if case.op == "ddpm_step":
        p = reverse.ddpm_parts(
            s, x_t, t, m, model_variance=i.get("model_variance"), **_ddpm_part_opts(o)
        )
        c0, ct = posterior.posterior_coefficients(s, t)
        mag = float(c0) * mx0 + float(ct) * np.abs(x_t)
        if t > 1:
            logs = 0.0
            vt = o.get("variance_type")
            if vt == "learned":
                logs = np.abs(i["model_variance"])
            elif vt == "learned_range":
                logs = np.abs(p.log_variance) + 1.0
            mag = mag + np.sqrt(p.variance) * np.abs(z) * (1.0 + 0.5 * logs)
        return mag
    # ddim
    p = reverse.ddim_parts(s, x_t, t, m, **_ddim_part_opts(o))
    abp = _ddim_abp(s, t, o)
    e = meps_re if o.get("rederive_eps", True) else meps
    d = math.sqrt(max(1.0 - abp - float(np.max(p.variance)), 0.0))
    mag = math.sqrt(abp) * mx0 + d * e
    eta = float(o.get("eta", 0.0))
    if eta > 0 and (t > 1 or o.get("final_step_noise", False)):
        mag = mag + np.sqrt(p.variance) * np.abs(z)
    return mag


def _ddpm_part_opts(o: Mapping[str, object]) -> dict:
    keys = ("prediction_type", "variance_type", "clip", "threshold_ratio", "threshold_max")
    return {k: o[k] for k in (*keys, "log_variance_clipping") if k in o}


def _ddim_part_opts(o: Mapping[str, object]) -> dict:
    return {k: v for k, v in o.items() if k != "final_step_noise"}


def _ddim_abp(s: Schedule, t: int, o: Mapping[str, object]) -> float:
    if t > 1:
        return float(s.alpha_bar[t - 1])
    f = o.get("final_alpha_bar", "one")
    if f == "one":
        return 1.0
    return float(s.base_alpha_bar_1) if f == "first" else float(f)  # type: ignore[arg-type]


# -- first-order sensitivity to the schedule's rounding ---------------------------------------
_FD_STEP = -(2.0**-20)


def _boundaries(s: Schedule, t: int) -> list[int]:
    """Base times the op at t depends on (ᾱ_t, ᾱ_{t−1}, t = 2 for the t = 1 conventions, the
    base time 1 for the final ᾱ)."""
    b = {1} if t <= 2 else set()
    for j in (t - 1, t, 2 if t == 1 else -1):
        if 1 <= j <= s.T:
            b.add(int(s.timesteps[j]))
    return sorted(b)


def _ab_at_base(s: Schedule, b: int) -> float:
    j = np.flatnonzero(s.timesteps == b)
    return float(s.alpha_bar[j[0]]) if j.size else float(s.base_alpha_bar_1)


def _scaled_tail(s: Schedule, b: int, h: float) -> Schedule:
    """ᾱ at base times ≥ b scaled by (1 + h); β left as it is (so 1 − ᾱ and β disagree by the
    perturbation, as they do in floating point)."""
    ab = s.alpha_bar.copy()
    m = s.timesteps >= b
    m[0] = False
    ab[m] *= 1.0 + h
    base1 = s.base_alpha_bar_1 * (1.0 + h) if b <= 1 else s.base_alpha_bar_1
    return _fast_schedule(s.beta.copy(), ab, s.timesteps.copy(), base1, s.name)


def _fast_schedule(beta, alpha_bar, timesteps, base1: float, name: str) -> Schedule:
    """A Schedule from arrays derived from a valid one, without re-validation (the finite
    differences build thousands of them)."""
    s = object.__new__(Schedule)
    for k, v in (("beta", beta), ("alpha_bar", alpha_bar), ("timesteps", timesteps)):
        v.setflags(write=False)
        object.__setattr__(s, k, v)
    object.__setattr__(s, "base_alpha_bar_1", float(base1))
    object.__setattr__(s, "name", name)
    return s


def _local_schedule(s: Schedule, t: int) -> tuple[Schedule, int]:
    """The entries of ``s`` an op at t reads (t, t−1, and 1, 2 for the t = 1 conventions), as a
    small schedule with the same values, and t's index in it (cheap finite differences)."""
    idx = sorted({0, 1, t - 1, t} | ({2} if s.T >= 2 else set()))
    idx = [i for i in idx if 0 <= i <= s.T]
    local = _fast_schedule(
        s.beta[idx].copy(),
        s.alpha_bar[idx].copy(),
        s.timesteps[idx].copy(),
        s.base_alpha_bar_1,
        s.name,
    )
    return local, idx.index(t)


def _scaled_beta(s: Schedule, j: int, h: float) -> Schedule:
    beta = s.beta.copy()
    beta[j] *= 1.0 + h
    return _fast_schedule(beta, s.alpha_bar.copy(), s.timesteps.copy(), s.base_alpha_bar_1, s.name)


def schedule_sensitivity(
    case: Case, fn: Callable[[Schedule], np.ndarray] | None = None
) -> np.ndarray:
    """S = Σ_k w_k |∂y/∂h_k|: how much the output moves, per unit roundoff u, under the
    errors a schedule computed in floating point carries.

    ᾱ_b = ∏_{r≤b} α_r computed in floating point has relative error ≲ Σ_{r≤b} (1 + 1/α_r)·u
    (one rounding per product, and α_r = 1 − β_r rounded relative to 1).  Between two base
    times b_{k−1} < b_k the op depends on, the accumulated error is a common factor (1 + h_k)
    on every ᾱ at or after b_k, with |h_k| ≲ w_k u, w_k = 2 (b_k − b_{k−1}) + ᾱ_{b_{k−1}}/ᾱ_{b_k}.
    Independently, β_t (or the respaced β′_t = 1 − ᾱ_t/ᾱ_{t−1}, a ratio of products over
    n = b_t − b_{t−1} factors) has relative error ≲ (2n + 1)(1 − β_t)/β_t · u.
    Each ∂y/∂h is a finite difference of the reference itself, so every cancellation of the
    formula (1 − ᾱ near t = 0, 1/√ᾱ near t = T, β/(1 − ᾱ)) is accounted for.
    """
    s, t = _local_schedule(case.schedule, case.t)
    if fn is None:
        local = replace(case, t=t)

        def fn(sch: Schedule) -> np.ndarray:
            return expected(local, sch)

    y0 = fn(s)
    total = np.zeros_like(y0, dtype=np.float64)

    def add(w: float, sch: Schedule) -> None:
        nonlocal total
        if w <= 0:
            return
        with np.errstate(all="ignore"):
            d = np.abs(fn(sch) - y0) / abs(_FD_STEP)
        total = total + w * np.nan_to_num(d, nan=0.0, posinf=0.0)

    prev_b, prev_ab = 0, 1.0
    for b in _boundaries(s, t):
        ab = _ab_at_base(s, b)
        add(2.0 * (b - prev_b) + (prev_ab / ab if ab > 0 else 0.0), _scaled_tail(s, b, _FD_STEP))
        prev_b, prev_ab = b, ab
    uses_beta = case.op not in ("q_sample", "ddim_step")
    for j in ({t, 2} if t == 1 and s.T >= 2 else {t}) if uses_beta else ():
        beta = float(s.beta[j])
        n = int(s.timesteps[j] - s.timesteps[j - 1])
        if 0.0 < beta < 1.0:
            add((2.0 * n + 1.0) * (1.0 - beta) / beta, _scaled_beta(s, j, _FD_STEP))
    return total


def tolerance_array(case: Case, tol: Tolerance, mag: np.ndarray | None = None) -> np.ndarray:
    """Elementwise tolerance ``K (u_state·M + u_schedule·(M + S))`` (docs/verify.md)."""
    m = magnitude(case) if mag is None else mag
    sens = schedule_sensitivity(case)
    return tol.factor * (tol.u_state * m + tol.u_schedule * (m + sens))


# -- comparing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """The outcome of one comparison.  ``max_rel`` is relative to the magnitude M of the terms
    (see :func:`magnitude`), ``ratio`` is the worst error/tolerance (≤ 1 passes)."""

    op: str
    setting: Setting
    t: int
    base_time: int
    options: Mapping[str, object]
    max_abs: float
    max_rel: float
    ratio: float
    passed: bool
    problem: str | None = None
    status: str = "ok"  # ok | FAIL | unsupported | undefined | error
    index_base: int = 1
    tolerance: Tolerance | None = None
    diagnosis: str | None = None
    case: Case | None = field(default=None, repr=False, compare=False)
    actual: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def index(self) -> int:
        """The implementation's own time value for this step."""
        return self.base_time - 1 + self.index_base

    def where(self) -> str:
        if self.index_base == 1:
            return f"t={self.base_time}"
        return f"t={self.index} (refdiff t={self.base_time})"

    def message(self) -> str:
        opts = options_label(self.options)
        head = f"{self.op} {opts}".strip() + f" [{self.setting.label()}]"
        if self.status in ("unsupported", "undefined", "error"):
            return f"{head}: {self.status}: {self.problem}"
        if self.problem:
            body = f"{self.where()}: {self.problem}"
        else:
            body = (
                f"{self.where()} max abs err {self.max_abs:.3g}, max rel err {self.max_rel:.3g} "
                f"(worst err/tol {self.ratio:.3g}"
                + (f"; tolerance for {self.tolerance.describe()}" if self.tolerance else "")
                + ")"
            )
        msg = f"{head}: {body}"
        if self.diagnosis:
            msg += f", {self.diagnosis}"
        return msg


def _errors(actual: np.ndarray, exp: np.ndarray, tol_arr: np.ndarray, mag: np.ndarray):
    with np.errstate(all="ignore"):
        err = np.abs(actual - exp)
        ratio = np.where(err == 0, 0.0, err / tol_arr)
        rel = np.where(err == 0, 0.0, err / mag)
    return float(np.nanmax(err)), float(np.nanmax(rel)), float(np.nanmax(ratio))


def compare(
    case: Case,
    actual: object,
    tol: Tolerance,
    *,
    index_base: int = 1,
    exp: np.ndarray | None = None,
) -> Check:
    """Compare the implementation's ``actual`` output for ``case`` with the reference."""
    exp = expected(case) if exp is None else exp
    a = to_numpy(actual, case.op).astype(np.float64)
    base = dict(
        op=case.op,
        setting=case.setting,
        t=case.t,
        base_time=case.base_time,
        options=dict(case.options),
        index_base=index_base,
        tolerance=tol,
        case=case,
    )
    try:
        if case.op != "posterior_variance" and a.shape != exp.shape:
            raise ValueError  # only a variance may come as a scalar or (B, 1, ...)
        a = np.broadcast_to(a, exp.shape)
    except ValueError:
        return _failed(
            base, f"output shape {a.shape} does not match the reference shape {exp.shape}"
        )
    mag = magnitude(case)
    tarr = tolerance_array(case, tol, mag)
    bad = ~np.isfinite(a)
    if bad.any():
        n = int(bad.sum())
        return _failed(
            base,
            f"{n} of {a.size} output values are NaN or Inf "
            f"(the reference is finite, max |x| {np.max(np.abs(exp)):.3g})",
        )
    mx, rel, ratio = _errors(a, exp, tarr, mag)
    ok = ratio <= 1.0
    return Check(
        **base,
        max_abs=mx,
        max_rel=rel,
        ratio=ratio,
        passed=ok,
        status="ok" if ok else "FAIL",
        actual=np.array(a),
    )


def _schedule_check(op, setting, actual, exp, tarr, mag, tol, problem=None) -> Check:
    base = dict(
        op=op,
        setting=setting,
        t=setting.T,
        base_time=setting.T,
        options={},
        tolerance=tol,
        actual=actual,
    )
    if problem:
        return _failed(base, problem)
    mx, rel, ratio = _errors(actual, exp, tarr, mag)
    with np.errstate(all="ignore"):
        worst = int(np.nanargmax(np.abs(actual - exp) / tarr))
    base.update(t=worst + 1, base_time=worst + 1)
    ok = ratio <= 1.0
    return Check(
        **base, max_abs=mx, max_rel=rel, ratio=ratio, passed=ok, status="ok" if ok else "FAIL"
    )


def _failed(base: dict, problem: str) -> Check:
    """A failed comparison that has no error to measure (wrong shape, NaN, wrong times)."""
    return Check(
        **base,
        max_abs=math.inf,
        max_rel=math.inf,
        ratio=math.inf,
        passed=False,
        problem=problem,
        status="FAIL",
    )


def alpha_bar_tolerance(setting: Setting, tol: Tolerance) -> np.ndarray:
    """Tolerance on ᾱ_1..ᾱ_T (T,): K u (1 + Σ_{r≤b} (1 + 1/α_r)) ᾱ_b + K u² (see
    :func:`schedule_sensitivity` for the cumulative-product error model)."""
    s = setting.base()
    alpha = np.maximum(s.alpha[1:], tol.u_schedule)
    g = np.cumsum(1.0 + 1.0 / alpha)
    ab = s.alpha_bar[1:]
    return tol.factor * tol.u_schedule * ((1.0 + g) * ab + tol.u_schedule)


def compare_alpha_bar(setting: Setting, actual: object, tol: Tolerance) -> Check:
    """Compare an implementation's ᾱ for ``setting`` — shape (T,) indexed 0..T−1, or (T+1,)
    starting with ᾱ_0 = 1 — with the reference (eq. 2.2)."""
    s = setting.base()
    a = to_numpy(actual, "alpha_bar").astype(np.float64).ravel()
    exp = s.alpha_bar[1:]
    if a.shape == (s.T + 1,) and a[0] == 1.0:
        a = a[1:]
    if a.shape != exp.shape:
        return _schedule_check(
            "alpha_bar", setting, a, exp, None, None, tol, f"shape {a.shape}, expected ({s.T},)"
        )
    if not np.isfinite(a).all():
        return _schedule_check("alpha_bar", setting, a, exp, None, None, tol, "NaN or Inf in ᾱ")
    tarr = alpha_bar_tolerance(setting, tol)
    return _schedule_check("alpha_bar", setting, a, exp, tarr, np.maximum(exp, 1e-300), tol)


def compare_timesteps(setting: Setting, actual_times: object) -> Check:
    """Exact comparison of the kept base times (ascending, 1-based) with the reference."""
    exp = setting.times()
    a = np.asarray(to_numpy(actual_times, "timesteps")).astype(np.int64).ravel()
    base = dict(op="timesteps", setting=setting, t=setting.N, base_time=setting.N, options={})
    if a.shape != exp.shape or not np.array_equal(a, exp):
        extra = np.setdiff1d(a, exp)[:5]
        missing = np.setdiff1d(exp, a)[:5]
        prob = (
            f"{a.size} steps, expected {exp.size}; "
            f"unexpected (1-based) {extra.tolist()}, missing {missing.tolist()}"
        )
        return _failed(base, prob)
    return Check(**base, max_abs=0.0, max_rel=0.0, ratio=0.0, passed=True)


# -- checks of user callables -----------------------------------------------------------------
def _setting(setting: Setting | Mapping | None) -> Setting:
    if setting is None:
        return Setting()
    if isinstance(setting, Setting):
        return setting
    if isinstance(setting, Mapping):
        return Setting(**setting)
    raise InputError("setting", f"must be a Setting or a dict; got {type(setting).__name__}")


def _pick_times(n: int, times: object, kept: np.ndarray, index_base: int) -> list[int]:
    """Refdiff times (1..n on the schedule the op runs on) to check."""
    if isinstance(times, str):
        if times == "all":
            return list(range(1, n + 1))
        if times == "auto":
            c = {1, 2, 3, n // 4, n // 2, (3 * n) // 4, n - 1, n}
            return sorted(x for x in c if 1 <= x <= n)
        raise InputError("times", f"must be 'auto', 'all' or a list; got {times!r}")
    out = []
    for v in times:  # type: ignore[union-attr]
        b = int(v) + 1 - index_base
        j = np.flatnonzero(kept == b)
        if not j.size:
            raise InputError("times", f"{v} is not a kept step (index_base={index_base})")
        out.append(int(j[0]) + 1)
    return out


def _undefined_check(case: Case, tol: Tolerance, index_base: int, why: str) -> Check:
    return Check(
        op=case.op,
        setting=case.setting,
        t=case.t,
        base_time=case.base_time,
        options=dict(case.options),
        max_abs=0.0,
        max_rel=0.0,
        ratio=0.0,
        passed=True,
        problem=why,
        status="undefined",
        index_base=index_base,
        tolerance=tol,
    )


def _run_cases(cases, call, tol, index_base) -> list[Check]:
    out = []
    for case in cases:
        try:
            exp = expected(case)
        except UndefinedError as e:
            out.append(_undefined_check(case, tol, index_base, f"reference undefined ({e})"))
            continue
        out.append(compare(case, call(case), tol, index_base=index_base, exp=exp))
    return out


def _cases(op, setting, options, times, index_base, shape, seed) -> list[Case]:
    s = Setting.respaced(setting) if op in ("ddpm_step", "ddim_step") else setting.base()
    kept = s.timesteps[1:]
    rng = np.random.default_rng(seed)
    res = []
    for t in _pick_times(s.T, times, kept, index_base):
        res.append(Case(op, setting, t, dict(options), make_inputs(op, s, t, options, rng, shape)))
    return res


def check_alpha_bar(
    alpha_bar: object, setting: Setting | Mapping | None = None, *, dtype="float64", tolerance=None
) -> list[Check]:
    """Compare ᾱ (T,) (index 0..T−1) with the reference of ``setting``'s base schedule."""
    st = _setting(setting)
    return [compare_alpha_bar(st, alpha_bar, _as_tolerance(dtype, tolerance))]


def check_q_sample(
    fn: Callable,
    setting: Setting | Mapping | None = None,
    *,
    index_base: int = 0,
    dtype="float64",
    tolerance: Tolerance | None = None,
    times="auto",
    shape: tuple[int, ...] = STATE_SHAPE,
    seed: int = 0,
) -> list[Check]:
    """``fn(x0, t, noise) -> x_t`` against eq. 3.2 at the chosen times of the base schedule."""
    st, tol = _setting(setting), _as_tolerance(dtype, tolerance)
    cases = _cases("q_sample", st, {}, times, index_base, shape, seed)
    off = index_base - 1

    def call(c):
        return fn(c.inputs["x0"], c.base_time + off, c.inputs["noise"])

    return _run_cases(cases, call, tol, index_base)


def check_posterior(
    fn: Callable,
    setting: Setting | Mapping | None = None,
    *,
    index_base: int = 0,
    dtype="float64",
    tolerance: Tolerance | None = None,
    times="auto",
    shape: tuple[int, ...] = STATE_SHAPE,
    seed: int = 0,
) -> list[Check]:
    """``fn(x0, x_t, t) -> (mean, variance)`` against eqs. 4.1–4.2 (variance may be a scalar
    or anything broadcasting against the state)."""
    st, tol = _setting(setting), _as_tolerance(dtype, tolerance)
    cases = _cases("posterior_mean", st, {}, times, index_base, shape, seed)
    off, out = index_base - 1, []
    for c in cases:
        mean, var = fn(c.inputs["x0"], c.inputs["x_t"], c.base_time + off)
        cv = Case("posterior_variance", st, c.t, {}, c.inputs)
        out += _run_cases([c], lambda _c, m=mean: m, tol, index_base)
        out += _run_cases([cv], lambda _c, v=var: v, tol, index_base)
    return out


def _step_checks(op, fn, setting, options, index_base, dtype, tolerance, times, shape, seed):
    st, tol = _setting(setting), _as_tolerance(dtype, tolerance)
    options = dict(options or {})
    cases = _cases(op, st, options, times, index_base, shape, seed)
    off = index_base - 1

    def call(c):
        i = c.inputs
        kw = {"model_variance": i["model_variance"]} if "model_variance" in i else {}
        return fn(i["x_t"], c.base_time + off, i["model_output"], i["noise"], **kw)

    return _run_cases(cases, call, tol, index_base)


def check_ddpm_step(
    fn: Callable,
    setting: Setting | Mapping | None = None,
    *,
    options: Mapping[str, object] | None = None,
    index_base: int = 0,
    dtype="float64",
    tolerance: Tolerance | None = None,
    times="auto",
    shape: tuple[int, ...] = STATE_SHAPE,
    seed: int = 0,
) -> list[Check]:
    """``fn(x_t, t, model_output, noise[, model_variance=]) -> x_{t−1}`` against eqs. 7.3–7.8.

    ``t`` is the base (training) step in the caller's ``index_base``; on a respaced
    ``setting`` the previous step is the previous kept one.  ``options`` are those of
    :func:`refdiff.reverse.ddpm_parts` (the conventions the implementation follows).
    """
    return _step_checks(
        "ddpm_step", fn, setting, options, index_base, dtype, tolerance, times, shape, seed
    )


def check_ddim_step(
    fn: Callable,
    setting: Setting | Mapping | None = None,
    *,
    options: Mapping[str, object] | None = None,
    index_base: int = 0,
    dtype="float64",
    tolerance: Tolerance | None = None,
    times="auto",
    shape: tuple[int, ...] = STATE_SHAPE,
    seed: int = 0,
) -> list[Check]:
    """``fn(x_t, t, model_output, noise) -> x_{t−1}`` against eqs. 7.9–7.10; ``options`` are
    those of :func:`refdiff.reverse.ddim_parts` plus ``final_step_noise``."""
    return _step_checks(
        "ddim_step", fn, setting, options, index_base, dtype, tolerance, times, shape, seed
    )


def assert_checks(checks: Iterable[Check], *, diagnose: bool = True) -> list[Check]:
    """Raise AssertionError naming every failing check (op, options, t, max abs/rel error and,
    when a known bug explains it, the likely cause); return the checks otherwise."""
    checks = list(checks)
    bad = [c for c in checks if c.status in ("FAIL", "error")]
    if bad:
        if diagnose:
            from .verify import diagnosis_for

            bad = [diagnosis_for(c) for c in bad]
        lines = [c.message() for c in bad[:8]]
        more = f"\n… and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise AssertionError(
            f"{len(bad)} of {len(checks)} checks failed:\n  " + "\n  ".join(lines) + more
        )
    return checks


def assert_alpha_bar_close(alpha_bar, setting=None, *, dtype="float64", tolerance=None):
    """Assert ᾱ (T,) matches the reference schedule of ``setting`` (see :func:`check_alpha_bar`)."""
    return assert_checks(check_alpha_bar(alpha_bar, setting, dtype=dtype, tolerance=tolerance))


def assert_q_sample_close(fn, setting=None, **kw):
    """Assert ``fn(x0, t, noise)`` is q_sample (see :func:`check_q_sample`)."""
    return assert_checks(check_q_sample(fn, setting, **kw))


def assert_posterior_close(fn, setting=None, **kw):
    """Assert ``fn(x0, x_t, t) -> (mean, var)`` is the posterior (see :func:`check_posterior`)."""
    return assert_checks(check_posterior(fn, setting, **kw))


def assert_ddpm_step_close(fn, setting=None, **kw):
    """Assert ``fn`` is a DDPM step (see :func:`check_ddpm_step`); the AssertionError names the
    option, t, the max abs/rel error and a likely cause."""
    return assert_checks(check_ddpm_step(fn, setting, **kw))


def assert_ddim_step_close(fn, setting=None, **kw):
    """Assert ``fn`` is a DDIM step (see :func:`check_ddim_step`)."""
    return assert_checks(check_ddim_step(fn, setting, **kw))


# -- statistical form for whole samplers --------------------------------------------------------
def assert_sampler_law(
    sampler: Callable,
    setting: Setting | Mapping | None = None,
    *,
    kind: str = "ddpm",
    options: Mapping[str, object] | None = None,
    data_mean=None,
    data_cov=None,
    n: int = 4000,
    false_fail_rate: float = 1e-6,
    index_base: int = 0,
    name: str | None = None,
):
    """Statistical check of a whole sampler whose noise cannot be injected.

    ``sampler(denoiser, n) -> samples (n, d)`` runs the implementation's own loop (its own
    random numbers, x_T ~ N(0, I)) over the setting's kept steps, calling
    ``denoiser(x_t, t)``: the *exact* denoiser of Gaussian data N(``data_mean``,
    ``data_cov``) (default d = 2), returning the prediction ``options["prediction_type"]``
    in the framework of ``x_t`` (duck-typed), with ``t`` the base steps in the sampler's
    ``index_base``.  With the exact denoiser every step is affine, so the output law is
    exactly Gaussian (:func:`refdiff.exact.ddpm_law` / :func:`refdiff.exact.ddim_law`, fixed
    variance types, no clipping); the samples are tested against it with
    :func:`refdiff.stats.assert_gaussian` (mean χ² and directional variances) at
    ``false_fail_rate`` — recorded in refdiff.stats's error-budget ledger.  Returns the stats
    CheckResult (with the detectable mean shift and variance error); raises its
    AssertionError on failure.
    """
    from . import exact, stats
    from .adapters import from_numpy_like

    st = _setting(setting)
    opts = dict(options or {})
    sched = st.respaced()
    if data_mean is None:
        d = 2 if data_cov is None else int(np.asarray(data_cov).shape[0])
        m = np.full(d, 0.3)
    else:
        m = np.atleast_1d(np.asarray(data_mean, dtype=np.float64))
        d = m.shape[0]
    cov = np.diag(np.linspace(0.2, 0.6, d)) if data_cov is None else np.asarray(data_cov, float)
    data = exact.Gaussian(m, cov)
    if kind == "ddpm":
        law = exact.ddpm_law(data, sched, **opts)
    elif kind == "ddim":
        law = exact.ddim_law(data, sched, **opts)
    else:
        raise InputError("kind", f"must be 'ddpm' or 'ddim'; got {kind!r}")
    f = exact.denoiser(data, sched, str(opts.get("prediction_type", "epsilon")))
    off = 1 - index_base

    def denoiser(x_t, t):
        x = to_numpy(x_t, "x_t").astype(np.float64)
        tb = np.asarray(to_numpy(t, "t")).astype(np.int64).reshape(-1) + off
        out = f(x, np.broadcast_to(tb, (x.shape[0],)))
        return from_numpy_like(out, x_t) if not isinstance(x_t, np.ndarray) else out

    samples = to_numpy(sampler(denoiser, n), "samples").astype(np.float64).reshape(n, d)
    return stats.assert_gaussian(
        samples,
        law.mean,
        law.cov,
        false_fail_rate=false_fail_rate,
        name=name or f"{kind} sampler law [{st.label()}]",
    )


# -- Hypothesis strategies ------------------------------------------------------------------
def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as e:  # pragma: no cover - hypothesis is in the test extra
        raise ImportError(
            "refdiff.testing strategies need hypothesis (pip install hypothesis)"
        ) from e
    return st


def _valid_setting(s: Setting) -> bool:
    try:
        s.times()
    except InputError:
        return False
    return True


def settings(
    *,
    names: Sequence[str] = ("linear", "scaled_linear", "cosine", "sigmoid"),
    min_T: int = 2,
    max_T: int = 1000,
    respaced: bool = True,
    zero_terminal_snr: bool | None = False,
):
    """Strategy for :class:`Setting`: a named schedule, T, and (if ``respaced``) a number of
    kept steps with a spacing rule.  ``zero_terminal_snr=None`` draws both."""
    st = _st()

    @st.composite
    def build(draw):
        T = draw(st.integers(min_T, max_T))
        name = draw(st.sampled_from(list(names)))
        if name == "linear_iddpm":
            T = min(T, 50_000)
        zs = draw(st.booleans()) if zero_terminal_snr is None else bool(zero_terminal_snr)
        if zs and T < 2:
            zs = False
        n = None
        spacing, off = "leading", 0
        if respaced and draw(st.booleans()):
            n = draw(st.integers(1, T))
            spacing = draw(st.sampled_from(respacing.SPACINGS))
            off = 1 if spacing == "leading" and n * (T // n) < T and draw(st.booleans()) else 0
        return Setting(name, T, n, spacing, off, zs)

    return build().filter(_valid_setting)


def schedules(**kw):
    """Strategy for (possibly respaced) :class:`~refdiff.schedule.Schedule` objects; keywords
    as :func:`settings`."""
    return settings(**kw).map(Setting.respaced)


def timesteps(schedule: Schedule | Setting | int, *, min_t: int = 1):
    """Strategy for a time t ∈ [min_t, T] of a schedule (or of a Setting's kept steps)."""
    st = _st()
    if isinstance(schedule, Setting):
        n = schedule.N
    elif isinstance(schedule, Schedule):
        n = schedule.T
    else:
        n = int(schedule)
    return st.integers(min_t, n)


def states(
    shape: tuple[int, ...] | None = None,
    *,
    scale: float = 3.0,
    max_batch: int = 4,
    max_dim: int = 8,
):
    """Strategy for finite float64 states (B, D) (or of ``shape``) with |x| ≤ ``scale``."""
    st = _st()
    from hypothesis.extra import numpy as hnp

    if shape is None:
        shp = st.tuples(st.integers(1, max_batch), st.integers(1, max_dim))
    else:
        shp = st.just(tuple(shape))
    elems = st.floats(-scale, scale, allow_nan=False, allow_infinity=False, width=64)
    return shp.flatmap(lambda s: hnp.arrays(np.float64, s, elements=elems))


def ddpm_options(
    *,
    prediction_types: Sequence[str] = ("epsilon", "x0", "v"),
    variance_types: Sequence[str] = reverse.VARIANCE_TYPES,
    clipping: bool = True,
):
    """Strategy for option dicts of :func:`refdiff.reverse.ddpm_step`."""
    st = _st()
    return st.fixed_dictionaries(
        {
            "prediction_type": st.sampled_from(list(prediction_types)),
            "variance_type": st.sampled_from(list(variance_types)),
            "log_variance_clipping": st.sampled_from(list(posterior.LOG_VARIANCE_CLIPPINGS)),
        }
    ).flatmap(lambda d: _with_clipping(d, clipping))


def ddim_options(
    *,
    prediction_types: Sequence[str] = ("epsilon", "x0", "v"),
    etas: Sequence[float] | None = None,
    clipping: bool = True,
):
    """Strategy for option dicts of :func:`refdiff.reverse.ddim_step`."""
    st = _st()
    eta = st.sampled_from(list(etas)) if etas is not None else st.sampled_from([0.0, 0.5, 1.0])
    return st.fixed_dictionaries(
        {
            "prediction_type": st.sampled_from(list(prediction_types)),
            "eta": eta,
            "final_alpha_bar": st.sampled_from(["one", "first"]),
            "rederive_eps": st.booleans(),
            "final_step_noise": st.booleans(),
        }
    ).flatmap(lambda d: _with_clipping(d, clipping))


def _with_clipping(d: dict, clipping: bool):
    st = _st()
    if not clipping:
        return st.just(d)
    return st.sampled_from([{}, {"clip": 1.0}, {"threshold_ratio": 0.9, "threshold_max": 1.5}]).map(
        lambda extra: {**d, **extra}
    )


def with_options(case: Case, **options: object) -> Case:
    """``case`` with some options replaced (used by the diagnoses)."""
    return replace(case, options={**case.options, **options})
