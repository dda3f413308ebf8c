"""Unit tests of refdiff.stats: statistics against scipy, the three forms agree, power, errors,
the ledger and the session budget plugin.

Samples here come from FIXED seeds (not the suite salt), so every outcome is deterministic;
checks are made with ``check_*`` or inside ``isolated_ledger`` and do not touch the budget.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from refdiff import exact as EX
from refdiff import stats
from refdiff.errors import InputError, ShapeError

ROOT = Path(__file__).resolve().parents[2]
G2 = EX.Gaussian([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]])
MIX = EX.GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.5, 1.0]], [np.eye(2) * 0.3, np.eye(2)])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the statistics themselves ---------------------------------------------------------------
def test_ks_statistic_matches_scipy():
    x = rng(1).standard_normal(777)
    assert stats.ks_statistic(x, sps.norm.cdf) == pytest.approx(
        sps.kstest(x, "norm").statistic, rel=1e-12
    )


def test_two_sample_statistic_matches_scipy():
    a, b = rng(2).standard_normal(300), rng(3).standard_normal(450) + 0.1
    r = stats.check_two_sample(a, b, false_fail_rate=0.01)
    assert r.statistic == pytest.approx(sps.ks_2samp(a, b).statistic, rel=1e-12)


def test_dkw_epsilon_and_the_exact_kolmogorov_threshold():
    """ε = √(ln(2/α)/2n); never below the exact one-sample KS quantile (Massart's bound)."""
    for n, a in ((100, 0.05), (10_000, 1e-6), (100_000, 1e-3)):
        eps = stats.dkw_epsilon(n, a)
        assert eps == pytest.approx(math.sqrt(math.log(2 / a) / (2 * n)))
        assert eps >= sps.kstwo.isf(a, n) * (1 - 1e-9)


def test_mean_statistic_and_its_power_formula():
    x = G2.sample(rng(4), 1000)
    r = stats.check_mean(x, G2.mean, G2.cov, false_fail_rate=1e-3)
    d = x.mean(0) - G2.mean
    assert r.statistic == pytest.approx(1000 * d @ np.linalg.solve(G2.cov, d), rel=1e-10)
    assert r.threshold == pytest.approx(sps.chi2.isf(1e-3, 2), rel=1e-10)
    delta = stats.min_discrepancy_mean(1000, 1e-3, 0.05, dim=2)
    power = sps.ncx2.sf(sps.chi2.isf(1e-3, 2), 2, 1000 * delta**2)
    assert power == pytest.approx(0.95, abs=1e-9)


def test_covariance_bounds_are_chi2_quantiles():
    x = rng(5).standard_normal((400, 1)) * 2
    r = stats.check_covariance(x, [[4.0]], mean=[0.0], false_fail_rate=0.02)
    ss = float((x[:, 0] ** 2).sum() / 4)
    lo, hi = sps.chi2.ppf(0.01, 400), sps.chi2.isf(0.01, 400)
    assert r.passed == (lo <= ss <= hi)
    assert f"{lo / 400:.5g}" in r.detail and f"{hi / 400:.5g}" in r.detail
    r_hi = hi / sps.chi2.ppf(0.05, 400)
    r_lo = lo / sps.chi2.isf(0.05, 400)
    want = max(r_hi - 1, 1 - r_lo)
    got = stats.min_discrepancy_covariance(400, 0.02, 0.05)
    assert got == pytest.approx(want, rel=1e-10)


# The formulas the checks used before they were made O(d²) in memory, kept here as the
# independent references: the (n, k) projection for the covariance, a full solve for the
# Mahalanobis distances, the (n, K) matrix of component CDFs for the mixture projections.
def _old_covariance_statistic(x, cov, mean, alpha):
    n, d = x.shape
    centred = x - (x.mean(axis=0) if mean is None else mean)
    df = n - 1 if mean is None else n
    eye = np.eye(d)
    dirs = [eye[i] for i in range(d)]
    dirs += [(eye[i] + eye[j]) / math.sqrt(2.0) for i in range(d) for j in range(i + 1, d)]
    dirs = np.array(dirs)
    k = dirs.shape[0]
    proj = centred @ dirs.T  # (n, k)
    ss = np.einsum("nk,nk->k", proj, proj) / np.einsum("kd,de,ke->k", dirs, cov, dirs)
    lo, hi = sps.chi2.ppf(alpha / (2 * k), df), sps.chi2.isf(alpha / (2 * k), df)
    ratio = ss / df
    excess = np.maximum((lo / df - ratio) / (1 - lo / df), (ratio - hi / df) / (hi / df - 1))
    worst = int(np.argmax(excess))
    return abs(ratio[worst] - 1.0), bool(np.all((ss >= lo) & (ss <= hi))), ss


def _old_mvn_statistic(x, mean, cov):
    z = np.linalg.solve(np.linalg.cholesky(cov), (x - mean).T)
    r2 = np.einsum("dn,dn->n", z, z)
    return sps.kstest(r2, sps.chi2(x.shape[1]).cdf).statistic


def _old_mixture_statistic(x, law):
    w, mu, cv = np.asarray(law.weights), np.asarray(law.means), np.asarray(law.covs)
    out = []
    for u in stats.default_directions(x.shape[1]):
        pm, ps = mu @ u, np.sqrt(np.einsum("d,kde,e->k", u, cv, u))

        def cdf(y, pm=pm, ps=ps):
            return sps.norm.cdf((y[:, None] - pm) / ps) @ w

        out.append(sps.kstest(x @ u, cdf).statistic)
    return max(out)


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("known_mean", [True, False])
def test_scatter_matrix_covariance_statistic_equals_the_projection_statistic(d, known_mean):
    """uᵀ(Σᵢ cᵢcᵢᵀ)u = Σᵢ(uᵀcᵢ)²: the d×d scatter matrix gives the old (n, k) statistic."""
    g = rng(20 + d)
    a = g.standard_normal((d, d))
    cov = a @ a.T + 0.5 * np.eye(d)
    mean = 3.0 * g.standard_normal(d)
    for n, scale in ((7, 1.0), (300, 1.0), (300, 1.5)):  # the last one fails
        x = mean + scale * g.standard_normal((n, d)) @ np.linalg.cholesky(cov).T
        m = mean if known_mean else None
        r = stats.check_covariance(x, cov, mean=m, false_fail_rate=1e-3)
        stat, passed, ss = _old_covariance_statistic(x, cov, m, 1e-3)
        assert r.statistic == pytest.approx(stat, rel=1e-12, abs=1e-14)
        assert r.passed == passed
        dirs = stats._directions_cov(d)
        centre = mean if known_mean else x.mean(axis=0)
        new_ss = np.einsum("kd,de,ke->k", dirs, stats._scatter(x, centre), dirs)
        new_ss /= np.einsum("kd,de,ke->k", dirs, cov, dirs)
        np.testing.assert_allclose(new_ss, ss, rtol=1e-12)
    assert not r.passed  # the inflated variance is seen


def test_blocked_statistics_equal_the_whole_array_formulas(monkeypatch):
    """Row blocks smaller than n (and a last partial block) change only the rounding."""
    monkeypatch.setattr(stats, "BLOCK", 24)  # 8 rows of d = 3 per block
    mix = EX.GaussianMixture(
        [0.2, 0.5, 0.3],
        [[0.0, 1.0, -1.0], [2.0, 0.0, 0.5], [-1.0, -1.0, 0.0]],
        [np.eye(3) * 0.5, np.diag([1.0, 0.2, 0.7]), np.eye(3)],
    )
    x = mix.sample(rng(30), 1001)
    g3 = EX.Gaussian(x.mean(axis=0), np.cov(x, rowvar=False))
    r = stats.check_mvn(x, g3.mean, g3.cov, false_fail_rate=0.01)
    assert r.statistic == pytest.approx(_old_mvn_statistic(x, g3.mean, g3.cov), rel=1e-12)
    r = stats.check_mixture(x, mix, false_fail_rate=0.01)
    assert r.statistic == pytest.approx(_old_mixture_statistic(x, mix), rel=1e-12)
    r = stats.check_covariance(x, g3.cov, mean=g3.mean, false_fail_rate=0.01)
    assert r.statistic == pytest.approx(
        _old_covariance_statistic(x, g3.cov, g3.mean, 0.01)[0], rel=1e-12
    )


def test_samples_are_not_copied_or_written():
    x = rng(31).standard_normal((2000, 3))
    before = x.copy()
    assert stats._samples(x, ndim=2) is x
    stats.check_gaussian(x, np.zeros(3), np.eye(3), false_fail_rate=0.01)
    stats.check_mvn(x, np.zeros(3), np.eye(3), false_fail_rate=0.01)
    stats.check_mixture(x, EX.Gaussian(np.zeros(3), np.eye(3)), false_fail_rate=0.01)
    np.testing.assert_array_equal(x, before)


# -- the three forms agree -------------------------------------------------------------------
FORMS = {
    "cdf": (stats.min_discrepancy_cdf, stats.min_num_samples_cdf, {}),
    "two_sample": (stats.min_discrepancy_two_sample, stats.min_num_samples_two_sample, {}),
    "mvn": (stats.min_discrepancy_mvn, stats.min_num_samples_mvn, {}),
    "mean": (stats.min_discrepancy_mean, stats.min_num_samples_mean, {"dim": 3}),
    "covariance": (stats.min_discrepancy_covariance, stats.min_num_samples_covariance, {"dim": 2}),
    "mixture": (stats.min_discrepancy_mixture, stats.min_num_samples_mixture, {"dim": 2}),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("n", [50, 3000, 200_000])
def test_min_num_samples_inverts_min_discrepancy(form, n):
    disc, num, kw = FORMS[form]
    d = disc(n, 1e-6, 0.01, **kw)
    m = num(d, 1e-6, 0.01, **kw)
    assert m <= n  # n samples suffice for their own discrepancy …
    assert disc(m, 1e-6, 0.01, **kw) <= d * (1 + 1e-9)
    assert m == 1 or disc(m - 1, 1e-6, 0.01, **kw) > d * (1 - 1e-9)  # … and m is the least
    assert disc(4 * n, 1e-6, 0.01, **kw) < d  # more samples, finer discrepancies


def test_gaussian_forms():
    dm, dv = stats.min_discrepancy_gaussian(20_000, 1e-6, 0.01, dim=3)
    assert dm == pytest.approx(stats.min_discrepancy_mean(20_000, 5e-7, 0.01, dim=3))
    assert dv == pytest.approx(stats.min_discrepancy_covariance(20_000, 5e-7, 0.01, dim=3))
    assert stats.min_num_samples_gaussian((dm, dv), 1e-6, 0.01, dim=3) <= 20_000


# -- calibrated and powerful (fixed seeds) ----------------------------------------------------
def test_each_check_passes_on_its_own_law_and_fails_beyond_its_detectable_discrepancy():
    n, a = 20_000, 1e-6
    x = G2.sample(rng(6), n)
    y = MIX.sample(rng(7), n)
    assert stats.check_gaussian(x, G2.mean, G2.cov, false_fail_rate=a).passed
    assert stats.check_mvn(x, G2.mean, G2.cov, false_fail_rate=a).passed
    assert stats.check_mixture(y, MIX, false_fail_rate=a).passed
    assert stats.check_cdf(x[:, 0], sps.norm(1.0, 1.0).cdf, false_fail_rate=a).passed
    assert stats.check_two_sample(x[:10_000, 0], x[10_000:, 0], false_fail_rate=a).passed
    # a mean shift of 2 detectable discrepancies along a whitened direction
    dm, dv = stats.min_discrepancy_gaussian(n, a, 0.01, dim=2)
    L = np.linalg.cholesky(G2.cov)
    shifted = x + 2 * dm * L @ np.array([1.0, 0.0])
    assert not stats.check_gaussian(shifted, G2.mean, G2.cov, false_fail_rate=a).passed
    # a variance inflated by 2 detectable relative errors along e_2
    scaled = x.copy()
    scaled[:, 1] = G2.mean[1] + (x[:, 1] - G2.mean[1]) * math.sqrt(1 + 2 * dv)
    assert not stats.check_covariance(scaled, G2.cov, mean=G2.mean, false_fail_rate=a).passed
    # a mixture with one weight moved: KS distance 0.1 along e_1
    other = EX.GaussianMixture([0.4, 0.6], MIX.means, MIX.covs)
    assert not stats.check_mixture(y, other, false_fail_rate=a).passed
    assert not stats.check_mvn(x * 1.1, G2.mean, G2.cov, false_fail_rate=a).passed


def test_tolerance_admits_a_known_small_bias():
    x = rng(8).standard_normal(50_000) + 0.05  # KS distance Φ(0.025)−Φ(−0.025) ≈ 0.02
    law = sps.norm.cdf
    assert not stats.check_cdf(x, law, false_fail_rate=1e-6).passed
    r = stats.check_cdf(x, law, false_fail_rate=1e-6, tolerance=0.03)
    assert r.passed and r.threshold == pytest.approx(0.03 + stats.dkw_epsilon(50_000, 1e-6))


def test_mixture_accepts_objects_arrays_and_directions():
    y = MIX.sample(rng(9), 2000)
    a = stats.check_mixture(y, MIX, false_fail_rate=0.01)
    b = stats.check_mixture(y, MIX.weights, MIX.means, MIX.covs, false_fail_rate=0.01)
    assert a.statistic == b.statistic
    g = stats.check_mixture(G2.sample(rng(1), 500), G2, false_fail_rate=0.01, directions=[1, 1])
    assert "1 directions" in g.detail
    assert stats.default_directions(1).shape == (1, 1)
    assert stats.default_directions(3).shape == (5, 3)


def test_covariance_with_the_sample_mean():
    x = G2.sample(rng(10), 5000) + 3.0  # a mean shift does not matter when the mean is estimated
    assert stats.check_covariance(x, G2.cov, false_fail_rate=1e-6).passed
    assert not stats.check_covariance(x, G2.cov, mean=G2.mean, false_fail_rate=1e-6).passed


# -- failures, messages, errors --------------------------------------------------------------
def test_failure_message_states_everything():
    x = rng(11).standard_normal((1000, 1)) + 1.0
    with stats.isolated_ledger() as ledger:
        with pytest.raises(stats.StatisticalAssertionError) as ei:
            stats.assert_mean(x, [0.0], [[1.0]], false_fail_rate=1e-6, name="shifted")
        assert len(ledger) == 1 and not ledger[0].passed
    msg = str(ei.value)
    for part in ("shifted", "statistic", "threshold", "n=1000", "α=1e-06", "detectable", "δ="):
        assert part in msg
    assert isinstance(ei.value, AssertionError)


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: stats.check_cdf([0.1, 0.2], sps.norm.cdf, false_fail_rate=0.0), InputError),
        (lambda: stats.check_cdf([0.1, 0.2], sps.norm.cdf, false_fail_rate=1.5), InputError),
        (lambda: stats.check_cdf([[0.1, 0.2]], sps.norm.cdf, false_fail_rate=0.1), ShapeError),
        (
            lambda: stats.check_mean(np.zeros((5, 2)), [0.0], np.eye(2), false_fail_rate=0.1),
            ShapeError,
        ),
        (
            lambda: stats.check_mvn(
                np.zeros((5, 2)), [0, 0], [[1, 2], [2, 1]], false_fail_rate=0.1
            ),
            InputError,
        ),
        (
            lambda: stats.check_mixture(
                np.zeros((5, 2)), [0.5, 0.6], [[0], [1]], [[[1]], [[1]]], false_fail_rate=0.1
            ),
            InputError,
        ),  # fmt: skip
        (lambda: stats.min_num_samples_cdf(0.0, 0.1, 0.1), InputError),
        (lambda: stats.min_discrepancy_mean(0, 0.1, 0.1), InputError),
        (
            lambda: stats.check_cdf([0.1], sps.norm.cdf, false_fail_rate=0.1, tolerance=-1),
            InputError,
        ),
        (lambda: stats.assert_all([], name="none"), InputError),
        (lambda: stats.assert_check("passed"), InputError),
    ],
)
def test_bad_input_raises_typed_errors(call, err):
    with pytest.raises(err):
        call()


def test_non_finite_samples_fail_the_assertion():
    with pytest.raises(stats.StatisticalAssertionError, match="NaN or Inf"):
        stats.check_mean([[0.0], [np.nan]], [0.0], [[1.0]], false_fail_rate=0.1)


# -- the ledger ------------------------------------------------------------------------------
def test_ledger_records_every_assertion_and_isolates():
    before = list(stats.LEDGER)
    x = G2.sample(rng(12), 2000)
    with stats.isolated_ledger() as ledger:
        assert ledger == []
        stats.assert_gaussian(x, G2.mean, G2.cov, false_fail_rate=1e-6, name="g")
        checks = [
            stats.check_cdf(x[:, 0], sps.norm(1, 1).cdf, false_fail_rate=a) for a in (1e-6, 2e-6)
        ]
        stats.assert_all(checks, name="two")
        stats.record("external", 3e-6, 10, 0.5, kind="custom", measure="KS distance")
        assert [e.name for e in ledger] == ["g", "two", "external"]
        assert stats.ledger_total() == pytest.approx(1e-6 + 3e-6 + 3e-6)
        lines = stats.ledger_summary()
        assert lines[0].startswith("3 statistical assertions, Σα = 7e-06")
        assert any("two [all×cdf]" in line for line in lines)
        stats.reset_ledger()
        assert stats.ledger_total() == 0.0
    assert stats.LEDGER == before


def test_combine_is_bonferroni():
    ok = stats.check_cdf(rng(13).standard_normal(100), sps.norm.cdf, false_fail_rate=0.01)
    bad = stats.check_cdf(rng(13).standard_normal(100) + 3, sps.norm.cdf, false_fail_rate=0.02)
    c = stats.combine([ok, bad], name="c")
    assert not c.passed and c.alpha == pytest.approx(0.03) and "1 of 2 checks failed" in c.detail
    assert stats.combine([ok, ok]).passed


# -- the session budget plugin (tests/conftest.py) --------------------------------------------
def _run_plugin(tmp_path: Path, n_assertions: int, alpha: float) -> subprocess.CompletedProcess:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_budget.py").write_text(
        textwrap.dedent(
            f"""
            import numpy as np
            from scipy import stats as sps
            from refdiff import stats

            def test_spend():
                x = np.random.default_rng(0).standard_normal(1000)
                for i in range({n_assertions}):
                    stats.assert_cdf(x, sps.norm.cdf, false_fail_rate={alpha}, name=f"a{{i}}")
            """
        )
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest"]
    cmd += ["-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_budget_plugin_prints_the_summary_and_fails_an_overspending_run(tmp_path):
    over = _run_plugin(tmp_path, 3, 5e-5)  # Σα = 1.5e-4 > 1e-4, every test passes
    assert over.returncode != 0, over.stdout
    assert "3 statistical assertions, Σα = 0.00015" in over.stdout
    assert "FAILED: the statistical assertions spent Σα = 0.00015 > budget 0.0001" in over.stdout
    assert "1 passed" in over.stdout
    # (the within-budget case is every ordinary session: "budget ok: …" and exit status 0)
