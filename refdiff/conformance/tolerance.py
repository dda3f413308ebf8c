"""Tolerances: how far a correct implementation at a given precision may be from the float64
reference, derived from the magnitudes involved (docs/verify.md §Tolerances)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._check import real
from ..errors import InputError, OptionError
from ..schedule import Schedule
from .cases import Case, Setting, expected, magnitude

__all__ = [
    "UNIT_ROUNDOFF",
    "Tolerance",
    "as_tolerance",
    "schedule_sensitivity",
    "tolerance_array",
    "alpha_bar_tolerance",
]

# Unit roundoff u = 2^-p (p = significand bits incl. the hidden one) of each precision.
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}


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
        real(self.factor, "factor", low=0.0, low_open=True, finite=False)

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
        """The precision of the schedule arithmetic (see the class docstring)."""
        if self.schedule is not None:
            return self.schedule
        return "float32" if self.state in ("float16", "bfloat16") else self.state

    @property
    def u_state(self) -> float:
        """Unit roundoff of the state precision."""
        return UNIT_ROUNDOFF[self.state]

    @property
    def u_schedule(self) -> float:
        """Unit roundoff of the schedule precision."""
        return UNIT_ROUNDOFF[self.schedule_precision]

    def describe(self) -> str:
        """A one-line description (``float32 states, float32 schedule, K=8``)."""
        return f"{self.state} states, {self.schedule_precision} schedule, K={self.factor:g}"


def as_tolerance(dtype: object, tolerance: Tolerance | None) -> Tolerance:
    """``tolerance``, or the preset for ``dtype`` when it is None."""
    return tolerance if tolerance is not None else Tolerance.for_dtype(dtype)


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
    return Schedule.unchecked(s.beta.copy(), ab, s.timesteps.copy(), base1, s.name)


def _local_schedule(s: Schedule, t: int) -> tuple[Schedule, int]:
    """The entries of ``s`` an op at t reads (t, t−1, and 1, 2 for the t = 1 conventions), as a
    small schedule with the same values, and t's index in it (cheap finite differences)."""
    idx = sorted({0, 1, t - 1, t} | ({2} if s.T >= 2 else set()))
    idx = [i for i in idx if 0 <= i <= s.T]
    local = Schedule.unchecked(
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
    return Schedule.unchecked(
        beta, s.alpha_bar.copy(), s.timesteps.copy(), s.base_alpha_bar_1, s.name
    )


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


def alpha_bar_tolerance(setting: Setting, tol: Tolerance) -> np.ndarray:
    """Tolerance on ᾱ_1..ᾱ_T (T,): K u (1 + Σ_{r≤b} (1 + 1/α_r)) ᾱ_b + K u² (see
    :func:`schedule_sensitivity` for the cumulative-product error model)."""
    s = setting.base()
    alpha = np.maximum(s.alpha[1:], tol.u_schedule)
    g = np.cumsum(1.0 + 1.0 / alpha)
    ab = s.alpha_bar[1:]
    return tol.factor * tol.u_schedule * ((1.0 + g) * ab + tol.u_schedule)
