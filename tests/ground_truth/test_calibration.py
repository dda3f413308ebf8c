"""Calibration (slow; ``make calibrate``): the stated false-failure rates are the real ones.

Under correct code, each check is repeated with fresh seeds at a loose α = 0.05 and its
failures counted.  An exact binomial test (scipy.stats.binomtest) at ALPHA_CAL = 1e-3 per row
judges the count: two-sided where the null distribution is exact or tight (the rate must be
α), one-sided where the check is a Bonferroni union or a triangle-inequality bound (the rate
must be at most α).  These binomial tests are this run's own error rate (about 1e-3 × the
rows), outside the suite's Σα budget: this is a separate session, and the checks it repeats
go through refdiff.stats.check_* (never recorded).

1. The statistical tests of refdiff.stats on samples drawn from their exact null.
2. The suite's own properties (the ``*_check`` functions of
   tests/ground_truth/test_statistical_*.py) on fixed representative configurations: a rate
   above α here would mean the ground truth (refdiff.exact) is not exact.
3. The tolerance of the 1000-step DDPM mixture test bounds its real discretisation bias.

The terminal summary prints the table (rate, expected, 3-binomial-σ band).
``REFDIFF_CALIBRATION_REPS`` scales the repetitions (default 1000 for 1., 200 for 2.).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy import stats as sps

from refdiff import exact as EX
from refdiff import respacing as RS
from refdiff import schedule as S
from refdiff import stats
from tests._suite import CALIBRATION_REPORT, SALT
from tests.ground_truth import test_statistical_forward as FWD
from tests.ground_truth import test_statistical_reverse as REV
from tests.ground_truth import test_statistical_samplers as SMP

pytestmark = pytest.mark.slow

NOMINAL = 0.05
ALPHA_CAL = 1e-3
REPS_NULL = int(os.environ.get("REFDIFF_CALIBRATION_REPS", "1000"))
REPS_SUITE = max(50, REPS_NULL // 5)

G2 = EX.Gaussian([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]])
G3 = EX.Gaussian([0.5, -1.0, 2.0], [[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.8]])
MIX2 = EX.GaussianMixture(
    [0.2, 0.5, 0.3],
    [[-2.0, 1.0], [2.0, 0.0], [0.0, -2.0]],
    [np.eye(2) * 0.3, [[0.5, 0.2], [0.2, 0.4]], np.eye(2) * 0.8],
)
MIX1 = EX.GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [[[0.2]], [[0.5]]])


def _rng(row: str, i: int) -> np.random.Generator:
    key = int.from_bytes(row.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([SALT, 0xCA11B, key, len(row), i])


def _judge(row: str, failures: int, reps: int, exact: bool) -> None:
    expected = reps * NOMINAL
    sigma = math.sqrt(reps * NOMINAL * (1 - NOMINAL))
    alt = "two-sided" if exact else "greater"
    p = sps.binomtest(failures, reps, NOMINAL, alternative=alt).pvalue
    band = (
        f"[{max(0.0, expected - 3 * sigma):.1f}, {expected + 3 * sigma:.1f}]"
        if exact
        else f"<= {expected + 3 * sigma:.1f}"
    )
    inside = (abs(failures - expected) <= 3 * sigma) if exact else failures <= expected + 3 * sigma
    line = (
        f"{row:44s} {failures:4d}/{reps:<5d} rate {failures / reps:.4f}  "
        f"{'=' if exact else '≤'} {NOMINAL}  3σ band {band:16s} {'ok' if inside else 'OUT'}  "
        f"binomial p={p:.3g}"
    )
    CALIBRATION_REPORT.append(line)
    assert p >= ALPHA_CAL, f"miscalibrated: {line}"


def _count(row: str, reps: int, make) -> int:
    failures = 0
    for i in range(reps):
        result = make(_rng(row, i))
        failures += not result.passed
    return failures


# -- 1. the tests of refdiff.stats under their exact null -------------------------------------
def _null_cases():
    n = 500
    a = NOMINAL
    return {
        # name: (exact?, make(rng) -> CheckResult)
        "cdf (KS/DKW, N(0,1))": (
            True,
            lambda r: stats.check_cdf(r.standard_normal(n), sps.norm.cdf, false_fail_rate=a),
        ),
        "two_sample (DKW triangle, conservative)": (
            False,
            lambda r: stats.check_two_sample(
                r.standard_normal(n), r.standard_normal(2 * n), false_fail_rate=a
            ),
        ),
        "mean (χ², d=3)": (
            True,
            lambda r: stats.check_mean(G3.sample(r, n), G3.mean, G3.cov, false_fail_rate=a),
        ),
        "covariance (χ², d=1)": (
            True,
            lambda r: stats.check_covariance(
                r.standard_normal((n, 1)) * 2.0, [[4.0]], mean=[0.0], false_fail_rate=a
            ),
        ),
        "covariance (χ², d=3, 6 directions)": (
            False,
            lambda r: stats.check_covariance(
                G3.sample(r, n), G3.cov, mean=G3.mean, false_fail_rate=a
            ),
        ),
        "covariance (sample mean, d=2)": (
            False,
            lambda r: stats.check_covariance(G2.sample(r, n), G2.cov, false_fail_rate=a),
        ),
        "mvn (Mahalanobis KS, d=3)": (
            True,
            lambda r: stats.check_mvn(G3.sample(r, n), G3.mean, G3.cov, false_fail_rate=a),
        ),
        "mixture (1 projection, d=1)": (
            True,
            lambda r: stats.check_mixture(MIX1.sample(r, n), MIX1, false_fail_rate=a),
        ),
        "mixture (4 projections, d=2)": (
            False,
            lambda r: stats.check_mixture(MIX2.sample(r, n), MIX2, false_fail_rate=a),
        ),
        "gaussian (mean + covariance, d=2)": (
            False,
            lambda r: stats.check_gaussian(G2.sample(r, n), G2.mean, G2.cov, false_fail_rate=a),
        ),
    }


@pytest.mark.parametrize("row", list(_null_cases()))
def test_stats_false_failure_rate_under_the_null(row):
    exact, make = _null_cases()[row]
    _judge("stats." + row, _count(row, REPS_NULL, make), REPS_NULL, exact)


# -- 2. the suite's properties, end to end ------------------------------------------------------
def _suite_cases():
    a = NOMINAL
    short = S.from_betas([0.1, 0.3, 0.2, 0.5])
    cos = S.cosine(1000)
    lin = S.linear(1000)
    trailing = S.respace(cos, RS.spaced_times(1000, 6, "trailing"))
    ddim5 = S.respace(lin, RS.space_timesteps(1000, "ddim5"))
    return {
        "forward.chain (cosine 20, t=12)": lambda r: FWD.chain_check(
            S.cosine(20), G2, 12, r, a, 5000
        ),
        "forward.transition_joint (s=3, t=10)": lambda r: FWD.transition_check(
            S.linear(30, 1e-3, 0.2), G2, 3, 10, r, a, 5000
        ),
        "posterior.joint (big β, t=3)": lambda r: FWD.posterior_check(short, G2, 3, r, a, 5000),
        "exact.reverse_chain (mixture, 4 steps)": lambda r: REV.reverse_chain_check(
            MIX2, S.respace(S.cosine(100), [5, 30, 60, 100]), r, a, 3000
        ),
        "ddpm.exact_law (fixed_large, v, trailing 6)": lambda r: SMP.ddpm_check(
            cos, trailing, G3, {"variance_type": "fixed_large", "prediction_type": "v"}, r, a
        ),
        "ddim.exact_law (η=0.5, final ᾱ_1, ddim5)": lambda r: SMP.ddim_check(
            lin,
            ddim5,
            G3,
            {"eta": 0.5, "final_alpha_bar": "first", "final_step_noise": True},
            r,
            a,
        ),
        "samplers.exact_cases (fixed_large, N(m,I))": lambda r: SMP.exact_case_check(
            "ddpm fixed_large, N(m, I)", S.cosine(6), S.cosine(6), [0.5, -1.0], r, a, 5000
        ),
    }


@pytest.mark.parametrize("row", list(_suite_cases()))
def test_suite_property_false_failure_rate(row):
    make = _suite_cases()[row]
    _judge(row, _count(row, REPS_SUITE, make), REPS_SUITE, exact=False)


# -- 3. the DDPM-on-mixtures tolerance bounds the real bias --------------------------------------
N_BIAS = int(os.environ.get("REFDIFF_CALIBRATION_BIAS_N", "200000"))
NARROW = [[0.04, 0.032], [0.032, 0.04]]


@pytest.mark.parametrize(
    "data, name, variance_type",
    [
        (
            EX.GaussianMixture(np.array([0.1, 1.0]) / 1.1, [[-3.0], [3.0]], [[[0.04]], [[0.04]]]),
            "linear",
            "fixed_small",
        ),
        (
            EX.GaussianMixture(
                np.array([0.1, 1.0, 1.0]) / 2.1, [[-3.0], [0.0], [3.0]], [[[0.04]]] * 3
            ),
            "linear",
            "fixed_small",
        ),
        (
            EX.GaussianMixture(
                np.ones(3) / 3,
                [[-3.0, -3.0], [3.0, 3.0], [-3.0, 3.0]],
                [np.eye(2) * 0.04, NARROW, np.eye(2) * 0.04],
            ),
            "linear",
            "fixed_small",
        ),
    ],
    ids=["1d-unequal-narrow", "1d-three-narrow", "2d-narrow-correlated"],
)
def test_ddpm_mixture_bias_is_within_the_tolerance(data, name, variance_type):
    """With n = N_BIAS samples, KS_n + ε(n, ALPHA_CAL/L) ≤ DDPM_MIXTURE_TOLERANCE: the true
    projected KS distance of 1000-step DDPM to the data law is below the tolerance the suite
    assumes, with confidence 1 − ALPHA_CAL (extreme members of the suite's mixture family)."""
    base = S.make_schedule(name, 1000)
    rng = _rng(f"bias {name} {variance_type} {data.dim} {data.K}", 0)
    r = SMP.mixture_ddpm_check(data, base, variance_type, rng, NOMINAL, N_BIAS, tolerance=0.0)
    L = stats.default_directions(data.dim).shape[0]
    bound = r.statistic + stats.dkw_epsilon(N_BIAS, ALPHA_CAL / L)
    line = (
        f"ddpm.mixture bias ({name}, {variance_type}, d={data.dim}, K={data.K}): "
        f"KS {r.statistic:.4f} "
        f"+ ε {bound - r.statistic:.4f} = {bound:.4f} <= tolerance {SMP.DDPM_MIXTURE_TOLERANCE}"
    )
    CALIBRATION_REPORT.append(line + ("" if bound <= SMP.DDPM_MIXTURE_TOLERANCE else "  FAILED"))
    assert bound <= SMP.DDPM_MIXTURE_TOLERANCE, line
