"""Calibrated statistical assertions with stated error rates (docs/math.md §12; docs/stats.md).

Every test comes in three forms, after TensorFlow Probability's ``statistical_testing``:

- ``assert_X(samples, …, false_fail_rate=α)`` fails (raises
  :class:`StatisticalAssertionError`, an ``AssertionError``) with probability at most α when
  the samples really come from the stated law, and records (name, α, n, detectable
  discrepancy) in the session :data:`LEDGER`;
- ``min_discrepancy_X(n, false_fail_rate, false_pass_rate)`` is the smallest discrepancy
  that ``assert_X`` with n samples detects with probability at least 1 − false_pass_rate;
- ``min_num_samples_X(discrepancy, false_fail_rate, false_pass_rate)`` is the n needed to
  detect ``discrepancy`` that reliably.

``check_X`` is ``assert_X`` without recording or raising: it returns a :class:`CheckResult`
(used by the calibration run and by :func:`assert_all`, which combines several checks into
one Bonferroni assertion).

The tests and their null distributions (each exact or a proven bound; no resampling):

=============  ==========================================  ===================================
X              statistic                                   discrepancy it detects
=============  ==========================================  ===================================
cdf            KS distance to an exact 1-D CDF; DKW bound  KS distance
two_sample     KS distance of two samples; DKW (TFP's      KS distance
               triangle-inequality bound, conservative)
mean           n (x̄−m)ᵀΣ⁻¹(x̄−m) ~ χ²_d exactly            Mahalanobis mean shift ‖Σ^{-½}Δm‖
covariance     Σᵢ(uᵀ(xᵢ−m))²/uᵀΣu ~ χ²_n along the         relative variance error along one
               d(d+1)/2 directions e_i, (e_i+e_j)/√2;       of the directions
               two-sided, Bonferroni
mvn            KS of Mahalanobis distances² against χ²_d   KS distance (of the d² law)
mixture        KS of 1-D projections against the closed-   KS distance along one direction
               form projected mixture CDF, Bonferroni
gaussian       mean (α/2) and covariance (α/2) together    (mean shift, variance error)
=============  ==========================================  ===================================

DKW: P(sup|F_n − F| > ε) ≤ 2 exp(−2 n ε²) (Massart 1990), so ε(n, α) = √(ln(2/α) / (2n)).
Power of a KS test: if the true law is at KS distance ≥ δ = ε(n, α) + ε(n, β) from the
reference, the test fails with probability ≥ 1 − β.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import special

from ._check import all_finite, as_float_array, integer, real
from .errors import InputError, ShapeError

__all__ = [
    "DEFAULT_FALSE_PASS_RATE",
    "StatisticalAssertionError",
    "CheckResult",
    "LedgerEntry",
    "LEDGER",
    "record",
    "reset_ledger",
    "ledger_total",
    "ledger_summary",
    "isolated_ledger",
    "dkw_epsilon",
    "ks_statistic",
    "default_directions",
    "check_cdf",
    "assert_cdf",
    "min_discrepancy_cdf",
    "min_num_samples_cdf",
    "check_two_sample",
    "assert_two_sample",
    "min_discrepancy_two_sample",
    "min_num_samples_two_sample",
    "check_mean",
    "assert_mean",
    "min_discrepancy_mean",
    "min_num_samples_mean",
    "check_covariance",
    "assert_covariance",
    "min_discrepancy_covariance",
    "min_num_samples_covariance",
    "check_mvn",
    "assert_mvn",
    "min_discrepancy_mvn",
    "min_num_samples_mvn",
    "check_mixture",
    "assert_mixture",
    "min_discrepancy_mixture",
    "min_num_samples_mixture",
    "check_gaussian",
    "assert_gaussian",
    "min_discrepancy_gaussian",
    "min_num_samples_gaussian",
    "assert_check",
    "combine",
    "assert_all",
]

#: β used for the "detectable discrepancy" an assertion reports and records.
DEFAULT_FALSE_PASS_RATE = 0.01


class StatisticalAssertionError(AssertionError):
    """A statistical assertion failed: the message gives statistic, threshold, n, α and δ."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one statistical check (nothing recorded, nothing raised).

    ``statistic`` and ``threshold``: the test fails when statistic > threshold (for the
    two-sided variance test, the statistic is the worst direction's standardised excess).
    ``discrepancy`` is the smallest discrepancy (in ``measure`` units) detected with
    probability ≥ 1 − ``false_pass_rate``.
    """

    name: str
    kind: str
    passed: bool
    statistic: float
    threshold: float
    n: int
    alpha: float
    discrepancy: float
    measure: str
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE
    detail: str = ""

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        msg = (
            f"{self.name} ({self.kind}) {verdict}: statistic {self.statistic:.6g} "
            f"{'<=' if self.passed else '>'} threshold {self.threshold:.6g}; n={self.n}, "
            f"false_fail_rate α={self.alpha:.3g}; detectable {self.measure} "
            f"δ={self.discrepancy:.4g} (power {1 - self.false_pass_rate:.3g})"
        )
        return msg + (f"; {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class LedgerEntry:
    """One statistical assertion made in this process: what it risked and what it could see."""

    name: str
    kind: str
    alpha: float
    n: int
    discrepancy: float
    measure: str
    passed: bool = True


#: Every assertion made in this process, in order (the test session's error budget).
LEDGER: list[LedgerEntry] = []


def record(
    name: str,
    alpha: float,
    n: int,
    discrepancy: float,
    *,
    kind: str = "custom",
    measure: str = "",
    passed: bool = True,
) -> LedgerEntry:
    """Append an assertion to :data:`LEDGER` (for statistical tests written outside this module)."""
    _check_rate(alpha, "alpha")
    entry = LedgerEntry(str(name), kind, float(alpha), int(n), float(discrepancy), measure, passed)
    LEDGER.append(entry)
    return entry


def reset_ledger() -> None:
    """Empty :data:`LEDGER` in place."""
    LEDGER.clear()


def ledger_total() -> float:
    """Σα over :data:`LEDGER`: by the union bound, the chance that any assertion falsely failed."""
    return float(math.fsum(e.alpha for e in LEDGER))


def ledger_summary(entries: Sequence[LedgerEntry] | None = None) -> list[str]:
    """Human-readable lines: count, Σα, then one line per assertion name (n, α, δ ranges)."""
    entries = list(LEDGER if entries is None else entries)
    total = math.fsum(e.alpha for e in entries)
    lines = [f"{len(entries)} statistical assertions, Σα = {total:.3g}"]
    groups: dict[tuple[str, str], list[LedgerEntry]] = {}
    for e in entries:
        groups.setdefault((e.name, e.kind), []).append(e)
    for (name, kind), es in groups.items():
        ns = [e.n for e in es]
        ds = [e.discrepancy for e in es]
        n_txt = f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}..{max(ns)}"
        d_txt = f"{min(ds):.3g}" if min(ds) == max(ds) else f"{min(ds):.3g}..{max(ds):.3g}"
        failed = sum(not e.passed for e in es)
        lines.append(
            f"  {name} [{kind}] ×{len(es)}: Σα={math.fsum(e.alpha for e in es):.3g}, n={n_txt}, "
            f"detectable {es[0].measure} δ={d_txt}" + (f", {failed} FAILED" if failed else "")
        )
    return lines


@contextmanager
def isolated_ledger() -> Iterator[list[LedgerEntry]]:
    """Run a block against an empty :data:`LEDGER`, then restore the previous entries.

    For tests of this module and for calibration runs whose α is not part of the budget.
    """
    saved = LEDGER[:]
    LEDGER.clear()
    try:
        yield LEDGER
    finally:
        LEDGER[:] = saved


# -- helpers --------------------------------------------------------------------------------
def _check_rate(a: object, name: str) -> float:
    return real(
        a, name, low=0.0, high=1.0, low_open=True, high_open=True, what="a probability in (0, 1)"
    )


def _check_n(n: object, name: str = "n") -> int:
    return integer(n, name, low=1)


def _check_discrepancy(d: object, name: str = "discrepancy") -> float:
    return real(d, name, low=0.0, low_open=True, finite=False)


def _samples(
    x: object, name: str = "samples", *, ndim: int | None = None, finite: bool = True
) -> np.ndarray:
    """Samples as float64 (no copy when they already are: nothing here writes to them).

    Non-finite samples are a failure of what is tested, not bad input.  ``finite=False``
    leaves that check to the caller (:func:`_require_finite`), which can often read it off a
    reduction it computes anyway.
    """
    try:
        a = np.asarray(x)
        if a.dtype.kind == "c":  # would silently drop the imaginary part
            raise TypeError(f"dtype {a.dtype} is not real")
        a = a.astype(np.float64, copy=False)
    except (TypeError, ValueError) as e:
        raise InputError(name, f"cannot be read as a float array ({e})") from None
    if ndim == 1:
        if a.ndim != 1:
            raise ShapeError(name, f"must be 1-D (n,); got shape {a.shape}")
    elif ndim == 2:
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ShapeError(name, f"must be (n, d) or (n,); got shape {a.shape}")
    if a.shape[0] < 1:
        raise ShapeError(name, "needs at least one sample")
    if finite:
        _require_finite(a, name)
    return a


def _require_finite(a: np.ndarray, name: str = "samples") -> None:
    """Raise :class:`StatisticalAssertionError` when any sample is NaN or ±Inf.

    One summing pass without a temporary (a finite sum proves every term finite); the count
    in the message is only computed on failure.
    """
    if not all_finite(a):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise StatisticalAssertionError(f"{name}: {bad} of {a.size} samples are NaN or Inf")


# Elements per row block of the blocked passes over (n, d) samples: a block's temporaries
# stay in cache and the extra memory stays O(d²) however many samples there are.
BLOCK = 1 << 13


def _row_blocks(n: int, d: int) -> Iterator[slice]:
    rows = max(1, BLOCK // max(d, 1))
    for lo in range(0, n, rows):
        yield slice(lo, min(lo + rows, n))


def _scatter(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Σᵢ (xᵢ − c)(xᵢ − c)ᵀ for samples ``x`` (n, d) and a centre ``c`` (d,): (d, d) float64.

    Computed block by block (one pass over ``x``, no (n, d) temporary); for any unit u,
    uᵀ S u = Σᵢ (uᵀ(xᵢ − c))², the sum of squares of the projections.
    """
    n, d = x.shape
    out = np.zeros((d, d))
    buf = np.empty((min(n, max(1, BLOCK // d)), d))
    for blk in _row_blocks(n, d):
        b = buf[: blk.stop - blk.start]
        np.subtract(x[blk], centre, out=b)
        out += b.T @ b
    return out


def _mean_cov(mean: object, cov: object, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (d,), cov (d,d), lower Cholesky factor); cov must be positive definite."""
    m = as_float_array(mean, "mean", finite=False).reshape(-1)
    c = as_float_array(cov, "cov", finite=False)
    if c.ndim == 0:
        c = c.reshape(1, 1)
    if m.shape != (d,):
        raise ShapeError("mean", f"must have shape ({d},); got {m.shape}")
    if c.shape != (d, d):
        raise ShapeError("cov", f"must have shape ({d}, {d}); got {c.shape}")
    if not (np.isfinite(m).all() and np.isfinite(c).all()):
        raise InputError("mean", "mean and cov must be finite")
    if not np.allclose(c, c.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(c).max())):
        raise InputError("cov", "must be symmetric")
    c = 0.5 * (c + c.T)
    try:
        chol = np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        raise InputError("cov", "must be positive definite") from None
    return m, c, chol


def dkw_epsilon(n: int, false_fail_rate: float) -> float:
    """ε with P(sup|F_n − F| > ε) ≤ α for n samples: √(ln(2/α) / (2n)) (DKW, Massart 1990)."""
    n = _check_n(n)
    a = _check_rate(false_fail_rate, "false_fail_rate")
    return math.sqrt(math.log(2.0 / a) / (2.0 * n))


def ks_statistic(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    """sup_x |F_n(x) − F(x)| for 1-D ``samples`` (n,) and a vectorised CDF."""
    return _ks_sorted(np.sort(np.asarray(samples, dtype=np.float64)), cdf)


def _ks_sorted(x: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    """:func:`ks_statistic` of already sorted ``x`` (n,): max(i/n − F(x₍ᵢ₎), F(x₍ᵢ₎) − (i−1)/n)
    with two (n,) temporaries."""
    n = x.size
    f = np.asarray(cdf(x), dtype=np.float64)
    if f.shape != x.shape or not all_finite(f):
        raise InputError("cdf", f"must map (n,) to finite (n,) values; got shape {f.shape}")
    i = np.arange(1, n + 1, dtype=np.float64)
    tmp = np.divide(i, n)
    tmp -= f
    d_plus = np.max(tmp)
    i -= 1.0
    i /= n
    np.subtract(f, i, out=i)
    return float(max(d_plus, np.max(i)))


def _ks_discrepancy(n: int, alpha: float, beta: float) -> float:
    return dkw_epsilon(n, alpha) + dkw_epsilon(n, beta)


def _least_n(estimate: float, discrepancy: Callable[[int], float], delta: float) -> int:
    """The least n with discrepancy(n) ≤ δ (discrepancy decreasing in n), starting from the
    closed-form real solution ``estimate`` and correcting its rounding."""
    n = max(1, math.ceil(estimate))
    while discrepancy(n) > delta:
        n += 1
    while n > 1 and discrepancy(n - 1) <= delta:
        n -= 1
    return n


def _ks_num_samples(delta: float, alpha: float, beta: float) -> int:
    s = math.sqrt(math.log(2.0 / alpha)) + math.sqrt(math.log(2.0 / beta))
    return _least_n(s**2 / (2.0 * delta**2), lambda n: _ks_discrepancy(n, alpha, beta), delta)


def assert_check(result: CheckResult) -> CheckResult:
    """Record a :class:`CheckResult` in :data:`LEDGER`; raise if it failed.

    ``assert_X(...)`` is ``assert_check(check_X(...))``: use it for checks built elsewhere
    (e.g. a property that returns a CheckResult so that a calibration run can reuse it).
    """
    if not isinstance(result, CheckResult):
        raise InputError("result", f"must be a CheckResult; got {type(result).__name__}")
    record(
        result.name,
        result.alpha,
        result.n,
        result.discrepancy,
        kind=result.kind,
        measure=result.measure,
        passed=result.passed,
    )
    if not result.passed:
        raise StatisticalAssertionError(result.message())
    return result


def _rates(false_fail_rate: float, false_pass_rate: float) -> tuple[float, float]:
    return _check_rate(false_fail_rate, "false_fail_rate"), _check_rate(
        false_pass_rate, "false_pass_rate"
    )


def _tolerance(tol: object) -> float:
    return real(tol, "tolerance", low=0.0, high=1.0, high_open=True)


# -- 1-D CDF (KS with the DKW bound) -------------------------------------------------------
def check_cdf(
    samples,
    cdf: Callable[[np.ndarray], np.ndarray],
    *,
    false_fail_rate: float,
    tolerance: float = 0.0,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "cdf",
) -> CheckResult:
    """KS test of 1-D ``samples`` (n,) against the exact CDF ``cdf`` (vectorised).

    Fails when sup|F_n − F| > ε(n, α) + ``tolerance``: with ``tolerance`` τ > 0 it tests
    "the law is within KS distance τ of F", still with false-failure rate ≤ α.
    """
    a, b = _rates(false_fail_rate, false_pass_rate)
    tol = _tolerance(tolerance)
    x = _samples(samples, ndim=1)
    n = x.shape[0]
    stat = ks_statistic(x, cdf)
    thr = dkw_epsilon(n, a) + tol
    return CheckResult(
        name, "cdf", stat <= thr, stat, thr, n, a, tol + _ks_discrepancy(n, a, b), "KS distance", b
    )


def assert_cdf(
    samples,
    cdf,
    *,
    false_fail_rate: float,
    tolerance: float = 0.0,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "cdf",
) -> CheckResult:
    """Assert 1-D ``samples`` follow ``cdf`` (see :func:`check_cdf`); records in the ledger."""
    return assert_check(
        check_cdf(
            samples,
            cdf,
            false_fail_rate=false_fail_rate,
            tolerance=tolerance,
            false_pass_rate=false_pass_rate,
            name=name,
        )
    )


def min_discrepancy_cdf(n: int, false_fail_rate: float, false_pass_rate: float) -> float:
    """Smallest KS distance :func:`assert_cdf` detects with n samples: ε(n, α) + ε(n, β)."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    return _ks_discrepancy(_check_n(n), a, b)


def min_num_samples_cdf(discrepancy: float, false_fail_rate: float, false_pass_rate: float) -> int:
    """Smallest n with :func:`min_discrepancy_cdf` ≤ ``discrepancy`` (a KS distance)."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    return _ks_num_samples(_check_discrepancy(discrepancy), a, b)


# -- two samples (DKW on each, triangle inequality) ------------------------------------------
def _two_sample_eps(n: int, m: int, rate: float) -> float:
    return dkw_epsilon(n, rate / 2.0) + dkw_epsilon(m, rate / 2.0)


def check_two_sample(
    samples1,
    samples2,
    *,
    false_fail_rate: float,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "two_sample",
) -> CheckResult:
    """Two 1-D samples (n,), (m,) from the same law?  Fails when sup|F_n − G_m| > ε(n, α/2)
    + ε(m, α/2), a bound that holds for any continuous or discrete law (TFP's two-sample DKW;
    conservative: the real false-failure rate is far below α)."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    x = np.sort(_samples(samples1, "samples1", ndim=1))
    y = np.sort(_samples(samples2, "samples2", ndim=1))
    both = np.concatenate([x, y])
    fx = np.searchsorted(x, both, side="right") / x.size
    fy = np.searchsorted(y, both, side="right") / y.size
    stat = float(np.max(np.abs(fx - fy)))
    thr = _two_sample_eps(x.size, y.size, a)
    disc = thr + _two_sample_eps(x.size, y.size, b)
    return CheckResult(
        name,
        "two_sample",
        stat <= thr,
        stat,
        thr,
        min(x.size, y.size),
        a,
        disc,
        "KS distance",
        b,
        detail=f"n1={x.size}, n2={y.size}",
    )


def assert_two_sample(
    samples1,
    samples2,
    *,
    false_fail_rate: float,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "two_sample",
) -> CheckResult:
    """Assert two 1-D samples share a law (see :func:`check_two_sample`); records it."""
    return assert_check(
        check_two_sample(
            samples1,
            samples2,
            false_fail_rate=false_fail_rate,
            false_pass_rate=false_pass_rate,
            name=name,
        )
    )


def min_discrepancy_two_sample(
    n: int, false_fail_rate: float, false_pass_rate: float, *, n2: int | None = None
) -> float:
    """Smallest KS distance between the two laws detected with n (and ``n2``, default n) samples."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    n = _check_n(n)
    m = n if n2 is None else _check_n(n2, "n2")
    return _two_sample_eps(n, m, a) + _two_sample_eps(n, m, b)


def min_num_samples_two_sample(
    discrepancy: float, false_fail_rate: float, false_pass_rate: float
) -> int:
    """Smallest n (each sample) detecting a KS distance ``discrepancy`` between the laws."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    d = _check_discrepancy(discrepancy)
    s = math.sqrt(math.log(4.0 / a)) + math.sqrt(math.log(4.0 / b))
    return _least_n(
        2.0 * s**2 / d**2, lambda n: _two_sample_eps(n, n, a) + _two_sample_eps(n, n, b), d
    )


# -- Gaussian mean (χ² with known covariance) ----------------------------------------------
def _chi2_isf(p: float, df: float) -> float:
    """Upper quantile of χ²_df: P(χ² > q) = p."""
    return float(2.0 * special.gammainccinv(df / 2.0, p))


def _chi2_ppf(p: float, df: float) -> float:
    """Lower quantile of χ²_df: P(χ² ≤ q) = p."""
    return float(2.0 * special.gammaincinv(df / 2.0, p))


def _chi2_cdf(x: np.ndarray, df: float) -> np.ndarray:
    return special.gammainc(df / 2.0, np.maximum(x, 0.0) / 2.0)


def _noncentrality(dim: int, alpha: float, beta: float) -> float:
    """λ with P(χ'²_d(λ) > χ²_d quantile 1−α) = 1 − β (bisection; the power grows with λ)."""
    q = _chi2_isf(alpha, dim)

    def power(lam: float) -> float:
        return 1.0 - float(special.chndtr(q, dim, lam))

    lo, hi = 0.0, 1.0
    while power(hi) < 1.0 - beta:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if power(mid) < 1.0 - beta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def _check_dim(dim: object) -> int:
    return integer(dim, "dim", low=1)


def check_mean(
    samples,
    mean,
    cov,
    *,
    false_fail_rate: float,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "mean",
) -> CheckResult:
    """Is the mean of ``samples`` (n, d) ``mean`` (d,), given the true covariance ``cov`` (d, d)?

    Q = n (x̄ − m)ᵀ Σ⁻¹ (x̄ − m) ~ χ²_d exactly for Gaussian samples (for other laws by the CLT);
    fails when Q > χ²_d quantile 1 − α.  Detects a Mahalanobis shift ‖Σ^{-½}Δm‖ ≥ √(λ*/n).
    """
    a, b = _rates(false_fail_rate, false_pass_rate)
    x = _samples(samples, ndim=2, finite=False)
    n, d = x.shape
    xbar = x.mean(axis=0)
    if not np.isfinite(xbar).all():  # else every sample is finite (NaN and Inf propagate)
        _require_finite(x)
    m, _, chol = _mean_cov(mean, cov, d)
    z = np.linalg.solve(chol, (xbar - m))
    stat = float(n * z @ z)
    thr = _chi2_isf(a, d)
    disc = math.sqrt(_noncentrality(d, a, b) / n)
    return CheckResult(
        name,
        "mean",
        stat <= thr,
        stat,
        thr,
        n,
        a,
        disc,
        "Mahalanobis mean shift",
        b,
        detail=f"d={d}",
    )


def assert_mean(
    samples,
    mean,
    cov,
    *,
    false_fail_rate: float,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "mean",
) -> CheckResult:
    """Assert the sample mean matches ``mean`` (see :func:`check_mean`); records it."""
    return assert_check(
        check_mean(
            samples,
            mean,
            cov,
            false_fail_rate=false_fail_rate,
            false_pass_rate=false_pass_rate,
            name=name,
        )
    )


def min_discrepancy_mean(
    n: int, false_fail_rate: float, false_pass_rate: float, *, dim: int = 1
) -> float:
    """Smallest Mahalanobis mean shift :func:`assert_mean` detects: √(λ*(d, α, β) / n)."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    return math.sqrt(_noncentrality(_check_dim(dim), a, b) / _check_n(n))


def min_num_samples_mean(
    discrepancy: float, false_fail_rate: float, false_pass_rate: float, *, dim: int = 1
) -> int:
    """Smallest n detecting a Mahalanobis mean shift ``discrepancy``: ⌈λ* / δ²⌉."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    d = _check_discrepancy(discrepancy)
    lam = _noncentrality(_check_dim(dim), a, b)
    return _least_n(lam / d**2, lambda n: math.sqrt(lam / n), d)


# -- Gaussian covariance (directional variance χ², Bonferroni) --------------------------------
def _directions_cov(d: int) -> np.ndarray:
    """The d(d+1)/2 unit directions e_i and (e_i + e_j)/√2, i < j: shape (k, d)."""
    eye = np.eye(d)
    dirs = [eye[i] for i in range(d)]
    dirs += [(eye[i] + eye[j]) / math.sqrt(2.0) for i in range(d) for j in range(i + 1, d)]
    return np.array(dirs)


def _variance_bounds(df: int, alpha: float, k: int) -> tuple[float, float]:
    return _chi2_ppf(alpha / (2 * k), df), _chi2_isf(alpha / (2 * k), df)


def _variance_discrepancy(df: int, alpha: float, beta: float, k: int) -> float:
    lo, hi = _variance_bounds(df, alpha, k)
    r_hi = hi / _chi2_ppf(beta, df)
    r_lo = lo / _chi2_isf(beta, df)
    return float(max(r_hi - 1.0, 1.0 - r_lo))


def check_covariance(
    samples,
    cov,
    *,
    false_fail_rate: float,
    mean=None,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "covariance",
) -> CheckResult:
    """Is the covariance of ``samples`` (n, d) equal to ``cov`` (d, d)?

    Along each of the k = d(d+1)/2 directions u ∈ {e_i, (e_i+e_j)/√2}, the sum of squares
    S_u = Σᵢ (uᵀ(xᵢ − m))² / uᵀΣu ~ χ²_n when the true ``mean`` is given (χ²_{n−1} around the
    sample mean otherwise), exactly for Gaussian samples; these k quadratic forms determine Σ.
    Each is tested two-sided at α/k (Bonferroni).  ``statistic`` is the worst direction's
    variance ratio error |S_u/df − 1|, ``threshold`` the matching bound.
    """
    a, b = _rates(false_fail_rate, false_pass_rate)
    x = _samples(samples, ndim=2)
    n, d = x.shape
    if mean is None:
        _, c, _ = _mean_cov(np.zeros(d), cov, d)
        m = x.mean(axis=0)
        df = n - 1
        if df < 1:
            raise ShapeError("samples", "needs n >= 2 when the mean is estimated")
    else:
        m, c, _ = _mean_cov(mean, cov, d)
        df = n
    dirs = _directions_cov(d)
    k = dirs.shape[0]
    # S_u = Σᵢ (uᵀ(xᵢ − m))² = uᵀ S u with the d×d scatter matrix S: no (n, k) projection.
    ss = np.einsum("kd,de,ke->k", dirs, _scatter(x, m), dirs) / np.einsum(
        "kd,de,ke->k", dirs, c, dirs
    )
    lo, hi = _variance_bounds(df, a, k)
    ratio = ss / df
    excess = np.maximum((lo / df - ratio) / (1.0 - lo / df), (ratio - hi / df) / (hi / df - 1.0))
    worst = int(np.argmax(excess))
    passed = bool(np.all((ss >= lo) & (ss <= hi)))
    disc = _variance_discrepancy(df, a, b, k)
    detail = (
        f"d={d}, {k} directions; worst direction {np.round(dirs[worst], 4).tolist()} has variance "
        f"ratio {ratio[worst]:.5g}, accepted range [{lo / df:.5g}, {hi / df:.5g}]"
    )
    stat = float(abs(ratio[worst] - 1.0))
    thr = float(hi / df - 1.0 if ratio[worst] >= 1.0 else 1.0 - lo / df)
    return CheckResult(
        name,
        "covariance",
        passed,
        stat,
        thr,
        n,
        a,
        disc,
        "relative variance error",
        b,
        detail=detail,
    )


def assert_covariance(
    samples,
    cov,
    *,
    false_fail_rate: float,
    mean=None,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "covariance",
) -> CheckResult:
    """Assert the sample covariance matches ``cov`` (see :func:`check_covariance`); records it."""
    return assert_check(
        check_covariance(
            samples,
            cov,
            false_fail_rate=false_fail_rate,
            mean=mean,
            false_pass_rate=false_pass_rate,
            name=name,
        )
    )


def min_discrepancy_covariance(
    n: int, false_fail_rate: float, false_pass_rate: float, *, dim: int = 1, known_mean: bool = True
) -> float:
    """Smallest relative variance error (along one tested direction) detected with n samples."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    d = _check_dim(dim)
    df = _check_n(n) - (0 if known_mean else 1)
    if df < 1:
        raise InputError("n", "needs n >= 2 when the mean is estimated")
    return _variance_discrepancy(df, a, b, d * (d + 1) // 2)


def min_num_samples_covariance(
    discrepancy: float,
    false_fail_rate: float,
    false_pass_rate: float,
    *,
    dim: int = 1,
    known_mean: bool = True,
) -> int:
    """Smallest n with :func:`min_discrepancy_covariance` ≤ ``discrepancy``."""
    _rates(false_fail_rate, false_pass_rate)
    dlt = _check_discrepancy(discrepancy)

    def ok(n: int) -> bool:
        return (
            min_discrepancy_covariance(
                n, false_fail_rate, false_pass_rate, dim=dim, known_mean=known_mean
            )
            <= dlt
        )

    return _smallest_n(ok, 2)


def _smallest_n(ok: Callable[[int], bool], lo: int) -> int:
    hi = lo
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > 10**13:
            raise InputError("discrepancy", "is too small to detect with any practical n")
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


# -- multivariate normal law (KS of Mahalanobis distances against χ²_d) ------------------------
def check_mvn(
    samples,
    mean,
    cov,
    *,
    false_fail_rate: float,
    tolerance: float = 0.0,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "mvn",
) -> CheckResult:
    """Do ``samples`` (n, d) follow N(mean, cov)?  KS (DKW bound) of the squared Mahalanobis
    distances (x − m)ᵀΣ⁻¹(x − m) against χ²_d.  Consistent against any Gaussian other than
    N(mean, cov) (their distance law differs), weaker than :func:`check_gaussian` for a
    small mean shift."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    tol = _tolerance(tolerance)
    x = _samples(samples, ndim=2)
    n, d = x.shape
    m, _, chol = _mean_cov(mean, cov, d)
    # (x − m)ᵀΣ⁻¹(x − m) = ‖L⁻¹(x − m)‖², block by block (no (n, d) temporary)
    linv_t = np.linalg.solve(chol, np.eye(d)).T
    r2 = np.empty(n)
    buf = np.empty((min(n, max(1, BLOCK // d)), d))
    for blk in _row_blocks(n, d):
        c = buf[: blk.stop - blk.start]
        np.subtract(x[blk], m, out=c)
        z = c @ linv_t
        np.einsum("nd,nd->n", z, z, out=r2[blk])
    r2.sort()
    stat = _ks_sorted(r2, lambda v: _chi2_cdf(v, d))
    thr = dkw_epsilon(n, a) + tol
    return CheckResult(
        name,
        "mvn",
        stat <= thr,
        stat,
        thr,
        n,
        a,
        tol + _ks_discrepancy(n, a, b),
        "KS distance of Mahalanobis²",
        b,
        detail=f"d={d}",
    )


def assert_mvn(
    samples,
    mean,
    cov,
    *,
    false_fail_rate: float,
    tolerance: float = 0.0,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "mvn",
) -> CheckResult:
    """Assert ``samples`` follow N(mean, cov) (see :func:`check_mvn`); records it."""
    return assert_check(
        check_mvn(
            samples,
            mean,
            cov,
            false_fail_rate=false_fail_rate,
            tolerance=tolerance,
            false_pass_rate=false_pass_rate,
            name=name,
        )
    )


def min_discrepancy_mvn(n: int, false_fail_rate: float, false_pass_rate: float) -> float:
    """Smallest KS distance (of the Mahalanobis² law) :func:`assert_mvn` detects."""
    return min_discrepancy_cdf(n, false_fail_rate, false_pass_rate)


def min_num_samples_mvn(discrepancy: float, false_fail_rate: float, false_pass_rate: float) -> int:
    """Smallest n detecting a KS distance ``discrepancy`` of the Mahalanobis² law."""
    return min_num_samples_cdf(discrepancy, false_fail_rate, false_pass_rate)


# -- Gaussian mixtures (closed-form 1-D projections) --------------------------------------------
def default_directions(dim: int) -> np.ndarray:
    """Fixed unit projection directions for :func:`check_mixture`, shape (L, dim).

    The d coordinate axes, plus for d ≥ 2 the diagonal (1, …, 1)/√d and the alternating
    (1, −1, 1, …)/√d.  L = 1 for d = 1, else d + 2.
    """
    d = _check_dim(dim)
    dirs = list(np.eye(d))
    if d >= 2:
        dirs.append(np.ones(d) / math.sqrt(d))
        dirs.append(np.array([(-1.0) ** i for i in range(d)]) / math.sqrt(d))
    return np.array(dirs)


def _mixture_params(law, means, covs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (K,), means (K, d), covs (K, d, d)) from a mixture/Gaussian object or arrays."""
    if means is None and covs is None:
        if hasattr(law, "weights") and hasattr(law, "means") and hasattr(law, "covs"):
            w, mu, cv = law.weights, law.means, law.covs
        elif hasattr(law, "mean") and hasattr(law, "cov"):
            mu = np.asarray(law.mean, dtype=np.float64)[None]
            w, cv = np.ones(1), np.asarray(law.cov, dtype=np.float64)[None]
        else:
            raise InputError(
                "law", "give a mixture (weights, means, covs) or a Gaussian (mean, cov)"
            )
    else:
        w, mu, cv = law, means, covs
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    mu = np.asarray(mu, dtype=np.float64)
    cv = np.asarray(cv, dtype=np.float64)
    K = w.shape[0]
    if mu.ndim == 1:
        mu = mu[:, None]
    if cv.ndim == 1:
        cv = cv[:, None, None]
    if mu.shape[0] != K or cv.shape != (K, mu.shape[1], mu.shape[1]):
        raise ShapeError("means", f"weights {w.shape}, means {mu.shape}, covs {cv.shape} disagree")
    if np.any(w < 0) or not math.isclose(w.sum(), 1.0, rel_tol=1e-9):
        raise InputError("weights", "must be non-negative and sum to 1")
    return w, mu, cv


def _projected_cdf(
    w: np.ndarray, mu: np.ndarray, sd: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """y ↦ Σ_k w_k Φ((y − μ_k)/s_k) (a step at μ_k where s_k = 0), with two (n,) temporaries."""

    def cdf(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out, tmp = np.zeros(x.shape), np.empty(x.shape)
        for wk, mk, sk in zip(w, mu, sd, strict=True):
            if sk > 0:
                np.subtract(x, mk, out=tmp)
                tmp /= sk
                special.ndtr(tmp, out=tmp)
            else:
                np.greater_equal(x, mk, out=tmp)
            tmp *= wk
            out += tmp
        return np.clip(out, 0.0, 1.0, out=out)

    return cdf


def check_mixture(
    samples,
    law,
    means=None,
    covs=None,
    *,
    false_fail_rate: float,
    directions=None,
    tolerance: float = 0.0,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "mixture",
) -> CheckResult:
    """Do ``samples`` (n, d) follow the Gaussian mixture Σ w_k N(m_k, S_k)?

    ``law`` is an object with ``weights``/``means``/``covs`` (e.g.
    :class:`refdiff.exact.GaussianMixture`) or ``mean``/``cov`` (a Gaussian), or the weights
    (K,) with ``means`` (K, d) and ``covs`` (K, d, d).  Along each unit direction u (rows of
    ``directions``, default :func:`default_directions`) the projection uᵀx has the closed-form
    CDF Σ w_k Φ((y − uᵀm_k)/√(uᵀS_k u)); each is KS-tested at α/L (Bonferroni, DKW bound).
    ``tolerance`` τ: fail only when a projection is further than τ (KS) from its CDF.
    """
    a, b = _rates(false_fail_rate, false_pass_rate)
    tol = _tolerance(tolerance)
    w, mu, cv = _mixture_params(law, means, covs)
    x = _samples(samples, ndim=2)
    n, d = x.shape
    if mu.shape[1] != d:
        raise ShapeError("samples", f"have dimension {d}, the mixture {mu.shape[1]}")
    dirs = default_directions(d) if directions is None else np.asarray(directions, dtype=np.float64)
    if dirs.ndim == 1:
        dirs = dirs[None]
    if dirs.ndim != 2 or dirs.shape[1] != d or dirs.shape[0] < 1:
        raise ShapeError("directions", f"must be (L, {d}); got {dirs.shape}")
    norms = np.linalg.norm(dirs, axis=1)
    if np.any(norms == 0) or not np.isfinite(dirs).all():
        raise InputError("directions", "must be finite and non-zero")
    dirs = dirs / norms[:, None]
    L = dirs.shape[0]
    thr = dkw_epsilon(n, a / L) + tol
    stats_ = []
    for u in dirs:
        pm = mu @ u
        ps = np.sqrt(np.maximum(np.einsum("d,kde,e->k", u, cv, u), 0.0))
        proj = x @ u
        proj.sort()
        stats_.append(_ks_sorted(proj, _projected_cdf(w, pm, ps)))
    worst = int(np.argmax(stats_))
    stat = float(stats_[worst])
    disc = tol + dkw_epsilon(n, a / L) + dkw_epsilon(n, b)
    return CheckResult(
        name,
        "mixture",
        stat <= thr,
        stat,
        thr,
        n,
        a,
        disc,
        "KS distance (projection)",
        b,
        detail=f"d={d}, K={w.size}, {L} directions; worst {np.round(dirs[worst], 4).tolist()}",
    )


def assert_mixture(
    samples,
    law,
    means=None,
    covs=None,
    *,
    false_fail_rate: float,
    directions=None,
    tolerance: float = 0.0,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "mixture",
) -> CheckResult:
    """Assert ``samples`` follow the mixture (see :func:`check_mixture`); records it."""
    return assert_check(
        check_mixture(
            samples,
            law,
            means,
            covs,
            false_fail_rate=false_fail_rate,
            directions=directions,
            tolerance=tolerance,
            false_pass_rate=false_pass_rate,
            name=name,
        )
    )


def _num_directions(dim: int, num_directions: int | None) -> int:
    if num_directions is not None:
        return _check_n(num_directions, "num_directions")
    return default_directions(dim).shape[0]


def min_discrepancy_mixture(
    n: int,
    false_fail_rate: float,
    false_pass_rate: float,
    *,
    dim: int = 1,
    num_directions: int | None = None,
) -> float:
    """Smallest KS distance (along one tested direction) detected: ε(n, α/L) + ε(n, β)."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    L = _num_directions(dim, num_directions)
    return dkw_epsilon(_check_n(n), a / L) + dkw_epsilon(n, b)


def min_num_samples_mixture(
    discrepancy: float,
    false_fail_rate: float,
    false_pass_rate: float,
    *,
    dim: int = 1,
    num_directions: int | None = None,
) -> int:
    """Smallest n detecting a projected KS distance ``discrepancy``."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    L = _num_directions(dim, num_directions)
    d = _check_discrepancy(discrepancy)
    s = math.sqrt(math.log(2.0 * L / a)) + math.sqrt(math.log(2.0 / b))
    return _least_n(s**2 / (2.0 * d**2), lambda n: dkw_epsilon(n, a / L) + dkw_epsilon(n, b), d)


# -- Gaussian law: mean and covariance together ------------------------------------------------
def check_gaussian(
    samples,
    mean,
    cov,
    *,
    false_fail_rate: float,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "gaussian",
) -> CheckResult:
    """Do Gaussian ``samples`` (n, d) have mean ``mean`` and covariance ``cov``?

    :func:`check_mean` at α/2 and :func:`check_covariance` (known mean) at α/2; passes when
    both do.  ``discrepancy`` is the detectable Mahalanobis mean shift; the detail also gives
    the detectable relative variance error.  The most powerful test here for the Gaussian
    outputs of samplers run with the exact denoiser.
    """
    a, b = _rates(false_fail_rate, false_pass_rate)
    rm = check_mean(samples, mean, cov, false_fail_rate=a / 2, false_pass_rate=b, name=name)
    rc = check_covariance(
        samples, cov, mean=mean, false_fail_rate=a / 2, false_pass_rate=b, name=name
    )
    if not rm.passed:
        stat, thr, part = rm.statistic, rm.threshold, "mean χ²"
    else:
        stat, thr, part = rc.statistic, rc.threshold, "variance ratio error"
    detail = (
        f"{part}; mean: χ²={rm.statistic:.5g} vs {rm.threshold:.5g} "
        f"({'ok' if rm.passed else 'FAIL'}); "
        f"covariance: {rc.detail} ({'ok' if rc.passed else 'FAIL'}); detectable relative variance "
        f"error {rc.discrepancy:.4g}"
    )
    return CheckResult(
        name,
        "gaussian",
        rm.passed and rc.passed,
        stat,
        thr,
        rm.n,
        a,
        rm.discrepancy,
        f"Mahalanobis mean shift (and relative variance error {rc.discrepancy:.3g})",
        b,
        detail=detail,
    )


def assert_gaussian(
    samples,
    mean,
    cov,
    *,
    false_fail_rate: float,
    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE,
    name: str = "gaussian",
) -> CheckResult:
    """Assert Gaussian ``samples`` have this mean and covariance (see :func:`check_gaussian`)."""
    return assert_check(
        check_gaussian(
            samples,
            mean,
            cov,
            false_fail_rate=false_fail_rate,
            false_pass_rate=false_pass_rate,
            name=name,
        )
    )


def min_discrepancy_gaussian(
    n: int, false_fail_rate: float, false_pass_rate: float, *, dim: int = 1
) -> tuple[float, float]:
    """(Mahalanobis mean shift, relative variance error) :func:`assert_gaussian` detects."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    return (
        min_discrepancy_mean(n, a / 2, b, dim=dim),
        min_discrepancy_covariance(n, a / 2, b, dim=dim),
    )


def min_num_samples_gaussian(
    discrepancy: tuple[float, float] | float,
    false_fail_rate: float,
    false_pass_rate: float,
    *,
    dim: int = 1,
) -> int:
    """Smallest n detecting a mean shift and a relative variance error (a pair, or one float
    used for both)."""
    a, b = _rates(false_fail_rate, false_pass_rate)
    dm, dv = (discrepancy, discrepancy) if np.isscalar(discrepancy) else discrepancy
    return max(
        min_num_samples_mean(dm, a / 2, b, dim=dim),
        min_num_samples_covariance(dv, a / 2, b, dim=dim),
    )


# -- several checks as one assertion ------------------------------------------------------------
def combine(results: Sequence[CheckResult], *, name: str = "combined") -> CheckResult:
    """Several checks as one (Bonferroni): passes iff all passed; α = Σ αᵢ, n = min nᵢ,
    δ = max δᵢ; statistic/threshold of the first failure (or of the closest call)."""
    results = list(results)
    if not results or not all(isinstance(r, CheckResult) for r in results):
        raise InputError("results", "needs a non-empty sequence of CheckResult")
    alpha = math.fsum(r.alpha for r in results)
    if not 0 < alpha < 1:
        raise InputError("results", f"their α sum to {alpha}, not a probability")
    failed = [r for r in results if not r.passed]
    worst = failed[0] if failed else max(results, key=lambda r: r.statistic / r.threshold)
    return CheckResult(
        name,
        f"all×{results[0].kind}",
        not failed,
        worst.statistic,
        worst.threshold,
        min(r.n for r in results),
        alpha,
        max(r.discrepancy for r in results),
        worst.measure,
        worst.false_pass_rate,
        detail=(
            f"{len(failed)} of {len(results)} checks failed; first: {worst.message()}"
            if failed
            else f"{len(results)} checks; closest: {worst.message()}"
        ),
    )


def assert_all(results: Sequence[CheckResult], *, name: str = "combined") -> CheckResult:
    """One assertion from several checks: fails if any failed; α = Σ αᵢ (Bonferroni).

    Records a single ledger entry (see :func:`combine`) so that a test checking many times
    or marginals at once spends its budget visibly in one place.
    """
    return assert_check(combine(results, name=name))
