"""Comparing an implementation's output with the reference: :class:`Comparison` results.

(``Check`` is the former name of :class:`Comparison`, kept as an alias: "check" elsewhere in
refdiff means input validation or a statistical check.)"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .adapters import to_numpy
from .cases import Case, Setting, expected, magnitude, options_label
from .tolerance import Tolerance, alpha_bar_tolerance, tolerance_array

__all__ = ["Comparison", "Check", "compare", "compare_alpha_bar", "compare_timesteps"]


# -- comparing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
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
        """The time, in the implementation's index and (if different) refdiff's."""
        if self.index_base == 1:
            return f"t={self.base_time} (1-based)"
        return f"t={self.index} (0-based; refdiff t={self.base_time})"

    def message(self) -> str:
        """One line naming the op, options, setting, time, errors and the diagnosis."""
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


Check = Comparison  # the former name


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
) -> Comparison:
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
            {**base, "actual": np.array(a)},
            f"{n} of {a.size} output values are NaN or Inf "
            f"(the reference is finite, max |x| {np.max(np.abs(exp)):.3g})",
        )
    mx, rel, ratio = _errors(a, exp, tarr, mag)
    ok = ratio <= 1.0
    return Comparison(
        **base,
        max_abs=mx,
        max_rel=rel,
        ratio=ratio,
        passed=ok,
        status="ok" if ok else "FAIL",
        actual=np.array(a),
    )


def _schedule_check(op, setting, actual, exp, tarr, mag, tol, problem=None) -> Comparison:
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
    return Comparison(
        **base, max_abs=mx, max_rel=rel, ratio=ratio, passed=ok, status="ok" if ok else "FAIL"
    )


def _failed(base: dict, problem: str) -> Comparison:
    """A failed comparison that has no error to measure (wrong shape, NaN, wrong times)."""
    return Comparison(
        **base,
        max_abs=math.inf,
        max_rel=math.inf,
        ratio=math.inf,
        passed=False,
        problem=problem,
        status="FAIL",
    )


def compare_alpha_bar(setting: Setting, actual: object, tol: Tolerance) -> Comparison:
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


def compare_timesteps(setting: Setting, actual_times: object) -> Comparison:
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
    return Comparison(**base, max_abs=0.0, max_rel=0.0, ratio=0.0, passed=True)
