"""Checks of user callables against the reference with injected noise (``check_*``), their
raising twins (``assert_*_close``) and the statistical form for whole samplers
(:func:`assert_sampler_law`).  docs/verify.md §Python API."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from .._check import renamed
from ..errors import InputError, UndefinedError
from .adapters import from_numpy_like, to_numpy
from .cases import STATE_SHAPE, Case, Setting, as_setting, expected, make_inputs
from .comparison import Comparison, compare, compare_alpha_bar
from .diagnoses import diagnosis_for
from .tolerance import Tolerance, as_tolerance

__all__ = [
    "check_alpha_bar",
    "check_q_sample",
    "check_posterior",
    "check_ddpm_step",
    "check_ddim_step",
    "assert_checks",
    "assert_alpha_bar_close",
    "assert_q_sample_close",
    "assert_posterior_close",
    "assert_ddpm_step_close",
    "assert_ddim_step_close",
    "assert_sampler_law",
]


# -- checks of user callables -----------------------------------------------------------------
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


def _undefined_check(case: Case, tol: Tolerance, index_base: int, why: str) -> Comparison:
    return Comparison(
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


def _run_cases(cases, call, tol, index_base) -> list[Comparison]:
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
) -> list[Comparison]:
    """Compare ᾱ (T,) (index 0..T−1) with the reference of ``setting``'s base schedule."""
    st = as_setting(setting)
    return [compare_alpha_bar(st, alpha_bar, as_tolerance(dtype, tolerance))]


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
) -> list[Comparison]:
    """``fn(x0, t, noise) -> x_t`` against eq. 3.2 at the chosen times of the base schedule."""
    st, tol = as_setting(setting), as_tolerance(dtype, tolerance)
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
) -> list[Comparison]:
    """``fn(x0, x_t, t) -> (mean, variance)`` against eqs. 4.1–4.2 (variance may be a scalar
    or anything broadcasting against the state)."""
    st, tol = as_setting(setting), as_tolerance(dtype, tolerance)
    cases = _cases("posterior_mean", st, {}, times, index_base, shape, seed)
    off, out = index_base - 1, []
    for c in cases:
        mean, var = fn(c.inputs["x0"], c.inputs["x_t"], c.base_time + off)
        cv = Case("posterior_variance", st, c.t, {}, c.inputs)
        out += _run_cases([c], lambda _c, m=mean: m, tol, index_base)
        out += _run_cases([cv], lambda _c, v=var: v, tol, index_base)
    return out


def _step_checks(op, fn, setting, options, index_base, dtype, tolerance, times, shape, seed):
    st, tol = as_setting(setting), as_tolerance(dtype, tolerance)
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
) -> list[Comparison]:
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
) -> list[Comparison]:
    """``fn(x_t, t, model_output, noise) -> x_{t−1}`` against eqs. 7.9–7.10; ``options`` are
    those of :func:`refdiff.reverse.ddim_parts` plus ``final_step_noise``."""
    return _step_checks(
        "ddim_step", fn, setting, options, index_base, dtype, tolerance, times, shape, seed
    )


def assert_checks(checks: Iterable[Comparison], *, diagnose: bool = True) -> list[Comparison]:
    """Raise AssertionError naming every failing check (op, options, t, max abs/rel error and,
    when a known bug explains it, the likely cause); return the checks otherwise."""
    checks = list(checks)
    bad = [c for c in checks if c.status in ("FAIL", "error")]
    if bad:
        if diagnose:
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
    sample_fn: Callable | None = None,
    setting: Setting | Mapping | None = None,
    *,
    sampler: str | Callable | None = None,
    kind: str | None = None,
    options: Mapping[str, object] | None = None,
    data_mean=None,
    data_cov=None,
    n: int = 4000,
    false_fail_rate: float = 1e-6,
    index_base: int = 0,
    name: str | None = None,
):
    """Statistical check of a whole sampler whose noise cannot be injected.

    ``sample_fn(denoiser, n) -> samples (n, d)`` runs the implementation's own loop (its own
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

    ``sampler``: "ddpm" (the default) or "ddim", the kind of step ``sample_fn`` takes
    (``kind=``, its former keyword, still works with a DeprecationWarning; so does passing the
    callable as ``sampler=``, its former name).
    """
    from .. import exact, stats  # scipy: imported when a sampler law is asserted

    if callable(sampler) and sample_fn is None:
        warnings.warn(
            "assert_sampler_law(sampler=<callable>) is deprecated: pass the callable first "
            "(sample_fn) and the step kind as sampler='ddpm' or 'ddim'",
            DeprecationWarning,
            stacklevel=2,
        )
        sample_fn, sampler = sampler, None
    if not callable(sample_fn):
        raise InputError("sample_fn", f"must be callable; got {type(sample_fn).__name__}")
    kind = renamed(sampler, kind, new_name="sampler", old_name="kind", default="ddpm")

    st = as_setting(setting)
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
        raise InputError("sampler", f"must be 'ddpm' or 'ddim'; got {kind!r}")
    f = exact.denoiser(data, sched, str(opts.get("prediction_type", "epsilon")))
    off = 1 - index_base

    def denoiser(x_t, t):
        x = to_numpy(x_t, "x_t").astype(np.float64)
        tb = np.asarray(to_numpy(t, "t")).astype(np.int64).reshape(-1) + off
        out = f(x, np.broadcast_to(tb, (x.shape[0],)))
        return from_numpy_like(out, x_t) if not isinstance(x_t, np.ndarray) else out

    samples = to_numpy(sample_fn(denoiser, n), "samples").astype(np.float64).reshape(n, d)
    return stats.assert_gaussian(
        samples,
        law.mean,
        law.cov,
        false_fail_rate=false_fail_rate,
        name=name or f"{kind} sampler law [{st.label()}]",
    )
