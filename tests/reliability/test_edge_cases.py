"""Numerical edge cases (docs/reliability.md §5): t at 1 and T, zero terminal SNR, ᾱ near 1,
float32/float16 inputs, very large batches, values beyond the documented domain.

Every expected value here is derived from the formula in the test (noted), not copied from
a run of the code.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest

from refdiff import errors as E
from refdiff import forward as F
from refdiff import losses as L
from refdiff import parameterization as PZ
from refdiff import posterior as P
from refdiff import respacing as RS
from refdiff import reverse as R
from refdiff import sampling as SA
from refdiff import schedule as S

EPS64 = np.finfo(np.float64).eps


def _z(seed, shape=(3, 4)):
    return np.random.default_rng(seed).standard_normal(shape)


SCHEDULES = {
    "linear": S.linear(1000),
    "cosine": S.cosine(1000),
    "zero_snr": S.rescale_zero_terminal_snr(S.scaled_linear(1000)),
    "respaced_trailing": S.respace(S.linear(1000), RS.spaced_times(1000, 10, "trailing")),
    "T1": S.linear(1),
}


# -- t = 1 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_t1_posterior_variance_is_zero_and_log_variance_follows_its_convention(name):
    s = SCHEDULES[name]
    assert P.posterior_variance(s, 1) == 0.0  # β̃_1 = β_1 (1 − ᾱ_0)/(1 − ᾱ_1), ᾱ_0 = 1
    assert P.posterior_log_variance(s, 1, "floor") == math.log(1e-20)
    if s.T >= 2:  # "next": log β̃_1 := log β̃_2 (improved-diffusion)
        assert P.posterior_log_variance(s, 1, "next") == P.posterior_log_variance(s, 2, "next")
    c0, ct = P.posterior_coefficients(s, 1)  # q(x_0 | x_1, x_0) is a point mass at x_0
    assert ct == 0.0 and c0 == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("variance_type", R.VARIANCE_TYPES)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_t1_ddpm_step_adds_no_noise(name, variance_type):
    s, x, out = SCHEDULES[name], _z(1), _z(2)
    mv = np.zeros_like(x) if variance_type in R.LEARNED else None
    if variance_type == "learned_linear":
        mv = np.full_like(x, 0.01)
    a = R.ddpm_step(s, x, 1, out, noise=_z(3), variance_type=variance_type, model_variance=mv)
    b = R.ddpm_step(s, x, 1, out, noise=_z(4), variance_type=variance_type, model_variance=mv)
    assert np.array_equal(a, b) and np.isfinite(a).all()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_t1_ddim_lands_on_x0_hat_with_final_alpha_bar_one(name):
    """x_0 = √1·x̂_0 + √(1 − 1 − 0)·ε̂ = x̂_0 exactly, for any η (σ_1 = 0 when ᾱ_prev = 1)."""
    s, x, out = SCHEDULES[name], _z(5), _z(6)
    for eta in (0.0, 1.0):
        parts = R.ddim_parts(s, x, 1, out, eta=eta)
        step = R.ddim_step(s, x, 1, out, eta=eta, noise=_z(7))
        assert np.array_equal(step, parts.x0) and parts.variance.max() == 0.0


# -- t = T --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_tT_every_step_function_is_finite(name):
    s, x, out = SCHEDULES[name], _z(8), _z(9)
    T = s.T
    zero_snr = s.alpha_bar[T] == 0.0
    pt = "v" if zero_snr else "epsilon"
    for f in (F.q_sample, F.q_step_sample):
        assert np.isfinite(f(s, x, T, noise=out)).all()
    assert np.isfinite(P.posterior_sample(s, x, out, T, noise=_z(10))).all()
    for vt in ("fixed_small", "fixed_large", "fixed_large_iddpm"):
        assert np.isfinite(
            R.ddpm_step(s, x, T, out, noise=_z(10), prediction_type=pt, variance_type=vt)
        ).all()
    assert np.isfinite(R.ddim_step(s, x, T, out, eta=1.0, noise=_z(10), prediction_type=pt)).all()
    assert np.isfinite(L.prior_bpd(s, np.tanh(x))).all()


def test_tT_zero_snr_forward_is_pure_noise():
    """ᾱ_T = 0 and β_T = 1 exactly: x_T = 0·x_0 + 1·ε and x_T = √0·x_{T−1} + √1·z, bit for bit."""
    s = SCHEDULES["zero_snr"]
    x, z = _z(11), _z(12)
    assert s.alpha_bar[-1] == 0.0 and s.beta[-1] == 1.0
    assert np.array_equal(F.q_sample(s, x, s.T, noise=z), z)
    assert np.array_equal(F.q_step_sample(s, x, s.T, noise=z), z)


# -- zero terminal SNR ------------------------------------------------------------------------
def test_zero_snr_documented_infinities():
    s = SCHEDULES["zero_snr"]
    assert s.snr[0] == np.inf and s.log_snr[0] == np.inf and s.sigma[0] == 0.0
    assert s.snr[-1] == 0.0 and s.log_snr[-1] == -np.inf and s.sigma[-1] == np.inf
    assert np.isfinite(s.snr[1:]).all() and np.isfinite(s.log_snr[1:-1]).all()
    assert np.isfinite(s.sigma[:-1]).all()
    # ᾱ_1 is kept by the rescale (Lin et al. 2023, Alg. 1)
    assert s.alpha_bar[1] == pytest.approx(S.scaled_linear(1000).alpha_bar[1], rel=1e-12)


@pytest.mark.parametrize("pt", ["epsilon", "score"])
def test_zero_snr_eps_and_score_are_undefined_at_T(pt):
    s, x, out = SCHEDULES["zero_snr"], _z(13), _z(14)
    with pytest.raises(E.UndefinedError) as info:
        R.ddpm_step(s, x, s.T, out, noise=_z(15), prediction_type=pt)
    assert info.value.argument == "prediction_type"
    # one step earlier ᾱ > 0 and the same call is fine
    assert np.isfinite(R.ddpm_step(s, x, s.T - 1, out, noise=_z(15), prediction_type=pt)).all()


def test_zero_snr_v_and_x0_at_T_by_formula():
    """At ᾱ = 0: x̂_0 = √ᾱ x − √(1−ᾱ) v = −v; ε̂ = √ᾱ v + √(1−ᾱ) x = x (eq. 5.4);
    with x0-prediction ε̂ = (x − √ᾱ x̂_0)/√(1−ᾱ) = x (eq. 5.2)."""
    s, x, v = SCHEDULES["zero_snr"], _z(16), _z(17)
    parts = R.ddim_parts(s, x, s.T, v, prediction_type="v", rederive_eps=False)
    assert np.array_equal(parts.x0, -v) and np.array_equal(parts.eps, x)
    assert np.array_equal(PZ.convert(s, x, s.T, v, "x0", "epsilon"), x)


def test_zero_snr_samplers_run_end_to_end_with_v_prediction():
    s = S.respace(SCHEDULES["zero_snr"], RS.spaced_times(1000, 8, "trailing"))
    assert s.alpha_bar[-1] == 0.0  # trailing spacing keeps t = T

    def den(x, t):
        return 0.5 * x

    a = SA.ddpm_sample(den, s, (5, 2), rng=np.random.default_rng(0), prediction_type="v")
    b = SA.ddim_sample(den, s, (5, 2), rng=np.random.default_rng(0), prediction_type="v", eta=1.0)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    with pytest.raises(E.UndefinedError):
        SA.ddim_sample(den, s, (5, 2), rng=np.random.default_rng(0))


# -- ᾱ near 1; float32 / float16 inputs --------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int32])
def test_lower_precision_inputs_are_promoted_to_float64_exactly(dtype):
    """Inputs are promoted (never downcast): the result is bit-identical to passing the same
    values as float64, and is float64."""
    s = SCHEDULES["cosine"]
    x, out, z = (np.round(_z(k) * 4).astype(dtype) for k in (18, 19, 20))
    up = [a.astype(np.float64) for a in (x, out, z)]
    for f in (
        lambda a, b, c: F.q_sample(s, a, 3, noise=c),
        lambda a, b, c: R.ddpm_step(s, a, 3, b, noise=c),
        lambda a, b, c: R.ddim_step(s, a, 1, b, eta=0.5, noise=c),
        lambda a, b, c: L.mse_loss(s, b, a, 2, c),
    ):
        got, want = f(x, out, z), f(*up)
        assert got.dtype == np.float64 and np.array_equal(got, want)


def test_float16_alpha_bar_near_one_is_refused():
    """ᾱ_1 = 0.9999 and ᾱ_2 = 0.99978 of the T = 1000 linear schedule both round to 1.0 in
    float16 (spacing 2⁻¹¹ below 1): a schedule from them is refused, not divided by 0."""
    ab16 = SCHEDULES["linear"].alpha_bar[1:].astype(np.float16)
    assert ab16[0] == 1.0  # the premise, from float16's spacing
    with pytest.raises(E.ScheduleError) as info:
        S.from_alpha_bar(ab16)
    assert info.value.argument == "alpha_bar"


def test_float32_alpha_bar_loses_digits_of_one_minus_alpha_bar():
    """Documented: float32 ᾱ_1 ≈ 1 − 1e-4 carries an absolute error up to 2⁻²⁵ ≈ 3e-8, so
    1 − ᾱ_1 (the noise variance) is only known to ~3e-4 relative; refdiff's float64
    schedules keep it to ~1e-12.  Compute schedules in float64."""
    ab = SCHEDULES["linear"].alpha_bar[1]
    rel32 = abs((1.0 - float(np.float32(ab))) / (1.0 - ab) - 1.0)
    assert 1e-6 < rel32 <= 2.0**-25 / (1.0 - ab)
    s32 = S.from_alpha_bar(SCHEDULES["linear"].alpha_bar[1:].astype(np.float32))
    assert s32.alpha_bar.dtype == np.float64 and np.all(np.diff(s32.alpha_bar) < 0)


@pytest.mark.parametrize("beta1", [1e-4, 1e-8, 1e-12, 1e-15])
def test_tiny_first_beta_precision_is_as_documented(beta1):
    """1 − ᾱ_1 is computed as 1 − (1 − β_1): relative error ≤ ε/β_1 (one rounding of
    1 − β_1).  The posterior coefficient c0_1 = β_1/(1 − ᾱ_1) (exactly 1 in real arithmetic)
    inherits it.  Below β ≈ 1.1e-16 the schedule is refused (row sched-beta-rounds-away)."""
    s = S.from_betas([beta1, 0.02])
    c0, _ = P.posterior_coefficients(s, 1)
    assert abs(c0 - 1.0) <= 2 * EPS64 / beta1 + 4 * EPS64


# -- very large batches -----------------------------------------------------------------------
def test_large_batch_rows_are_independent_and_bit_identical():
    """10⁶ × 2 states (16 MB each): every row equals the same computation on that row alone,
    bit for bit (the formulas are elementwise), in well under a few seconds."""
    s = SCHEDULES["cosine"]
    B = 10**6
    rng = np.random.default_rng(21)
    x, out, z = (
        rng.standard_normal((B, 2)),
        rng.standard_normal((B, 2)),
        rng.standard_normal((B, 2)),
    )
    t = rng.integers(1, s.T + 1, B)
    t0 = time.perf_counter()
    xs = F.q_sample(s, x, t, noise=z)
    step = R.ddpm_step(s, x, t, out, noise=z, variance_type="fixed_large", clip=1.0)
    ddim = R.ddim_step(s, x, t, out, eta=0.3, noise=z)
    elapsed = time.perf_counter() - t0
    for i in (0, 1, 12345, B - 1):
        sl = slice(i, i + 1)
        assert np.array_equal(xs[sl], F.q_sample(s, x[sl], t[sl], noise=z[sl]))
        assert np.array_equal(
            step[sl],
            R.ddpm_step(
                s, x[sl], t[sl], out[sl], noise=z[sl], variance_type="fixed_large", clip=1.0
            ),
        )
        assert np.array_equal(ddim[sl], R.ddim_step(s, x[sl], t[sl], out[sl], eta=0.3, noise=z[sl]))
    assert elapsed < 10.0


def test_large_batch_sampler_runs_with_rng():
    s = S.respace(S.linear(1000), RS.spaced_times(1000, 4, "trailing"))
    x = SA.ddim_sample(lambda x, t: 0.1 * x, s, (200_000, 2), rng=np.random.default_rng(0), eta=1.0)
    assert x.shape == (200_000, 2) and np.isfinite(x).all()


# -- beyond the documented domain -------------------------------------------------------------
def test_values_beyond_1e100_overflow_loudly_not_silently():
    """The finite-in/finite-out guarantee covers |values| ≤ 1e100.  Beyond, float64 overflow
    is possible (here (x − μ)² in a log-density) and NumPy says so with a RuntimeWarning —
    refdiff never suppresses it (pyproject turns refdiff's RuntimeWarnings into errors in
    the tests)."""
    s = SCHEDULES["linear"]
    x = np.full((1, 2), 1e200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp = F.q_log_prob(s, x, np.zeros((1, 2)), 5)
    assert lp[0] == -np.inf
    assert any(
        issubclass(w.category, RuntimeWarning) and "overflow" in str(w.message) for w in caught
    )
    lp_ok = F.q_log_prob(s, np.full((1, 2), 1e100), np.zeros((1, 2)), 5)
    assert np.isfinite(lp_ok).all()
