"""Schedules (docs/math.md §2): hand-derived values for tiny T, published numbers, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import schedule as S
from refdiff.errors import TimestepError
from tests.strategies import betas, examples, hand_schedule, schedules

EXACT = dict(rtol=1e-14, atol=0.0)


# -- hand derivations: β = (0.1, 0.2, 0.5) -----------------------------------------------------
def test_hand_schedule_per_step_arrays():
    s = hand_schedule()
    assert s.T == 3 and not s.is_respaced
    # entry 0 is the data: β_0 = 0, ᾱ_0 = 1, time 0
    np.testing.assert_allclose(s.beta, [0.0, 0.1, 0.2, 0.5], **EXACT)
    np.testing.assert_allclose(s.alpha, [1.0, 0.9, 0.8, 0.5], **EXACT)
    # ᾱ_1 = 0.9; ᾱ_2 = 0.9·0.8 = 0.72; ᾱ_3 = 0.72·0.5 = 0.36
    np.testing.assert_allclose(s.alpha_bar, [1.0, 0.9, 0.72, 0.36], **EXACT)
    np.testing.assert_allclose(s.alpha_bar_prev, [1.0, 1.0, 0.9, 0.72], **EXACT)
    np.testing.assert_allclose(s.sqrt_alpha_bar, [1.0, 0.9**0.5, 0.72**0.5, 0.6], **EXACT)
    np.testing.assert_allclose(s.sqrt_one_minus_alpha_bar, [0.0, 0.1**0.5, 0.28**0.5, 0.8], **EXACT)
    np.testing.assert_array_equal(s.timesteps, [0, 1, 2, 3])
    assert s.base_alpha_bar_1 == pytest.approx(0.9, rel=1e-15)


def test_hand_schedule_snr_and_sigma():
    s = hand_schedule()
    # SNR = ᾱ/(1−ᾱ): 0.9/0.1 = 9, 0.72/0.28 = 18/7, 0.36/0.64 = 9/16; +inf at t = 0
    assert s.snr[0] == np.inf
    np.testing.assert_allclose(s.snr[1:], [9.0, 18.0 / 7.0, 9.0 / 16.0], rtol=1e-13)
    np.testing.assert_allclose(s.log_snr[1:], np.log([9.0, 18.0 / 7.0, 9.0 / 16.0]), rtol=1e-13)
    # σ_VE = √((1−ᾱ)/ᾱ) = 1/3, √(7/18), 4/3; 0 at t = 0
    np.testing.assert_allclose(
        s.sigma, [0.0, 1.0 / 3.0, math.sqrt(7.0 / 18.0), 4.0 / 3.0], rtol=1e-13
    )


def test_schedule_arrays_are_read_only():
    s = hand_schedule()
    for a in (s.beta, s.alpha_bar, s.timesteps, s.alpha, s.snr, s.sqrt_alpha_bar):
        with pytest.raises(ValueError):
            a[1] = 0.5


# -- named schedules ---------------------------------------------------------------------------
def test_linear_T3_by_hand():
    # linspace(1e-4, 0.02, 3) = (1e-4, (1e-4 + 0.02)/2, 0.02)
    s = S.linear(3)
    np.testing.assert_allclose(s.beta[1:], [1e-4, 0.01005, 0.02], rtol=1e-13)
    np.testing.assert_allclose(
        s.alpha_bar[1:], np.cumprod([1 - 1e-4, 1 - 0.01005, 1 - 0.02]), rtol=1e-14
    )


def test_linear_iddpm_scaling():
    # improved-diffusion: scale = 1000/T; T = 1000 is the plain linear schedule
    np.testing.assert_array_equal(S.linear_iddpm(1000).beta, S.linear(1000).beta)
    # T = 2000: scale 0.5 → β from 5e-5 to 0.01;  T = 50: scale 20 → 0.002 to 0.4
    s = S.linear_iddpm(2000)
    assert s.beta[1] == pytest.approx(5e-5, rel=1e-12) and s.beta[-1] == pytest.approx(0.01)
    s = S.linear_iddpm(50)
    assert s.beta[1] == pytest.approx(0.002, rel=1e-12) and s.beta[-1] == pytest.approx(0.4)


def test_scaled_linear_T3_by_hand():
    a, b = math.sqrt(0.00085), math.sqrt(0.012)
    s = S.scaled_linear(3)
    np.testing.assert_allclose(s.beta[1:], [0.00085, ((a + b) / 2) ** 2, 0.012], rtol=1e-13)


def test_sigmoid_T3_by_hand():
    # x = (−6, 0, 6);  β = sigmoid(x)·(0.02 − 1e-4) + 1e-4
    sig = [1 / (1 + math.exp(6.0)), 0.5, 1 / (1 + math.exp(-6.0))]
    s = S.sigmoid(3)
    np.testing.assert_allclose(s.beta[1:], [v * (0.02 - 1e-4) + 1e-4 for v in sig], rtol=1e-13)


def test_cosine_T2_by_hand():
    def f(u, s=0.008):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    c = S.cosine(2)
    # β_1 = 1 − f(1/2)/f(0);  β_2 = min(1 − f(1)/f(1/2), 0.999) = 0.999 since f(1) ≈ 0
    assert c.beta[1] == pytest.approx(1 - f(0.5) / f(0.0), rel=1e-13)
    assert c.beta[2] == 0.999
    assert S.cosine(2, max_beta=0.5).beta[2] == 0.5


def test_cosine_T1000_published_numbers():
    # PEERS B1 (float64, T=1000): β_1 ≈ 4.128e-5, only the last β clipped, ᾱ_T ≈ 2.43e-9
    c = S.cosine(1000)
    assert c.beta[1] == pytest.approx(4.128e-5, rel=1e-3)
    assert c.beta[-1] == 0.999
    assert np.count_nonzero(c.beta >= 0.999) == 1
    assert c.alpha_bar[-1] == pytest.approx(2.43e-9, rel=1e-2)
    # without clipping ᾱ_t would be f(t/T)/f(0); every unclipped step follows it
    u = np.arange(1000) / 1000
    f = np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(c.alpha_bar[:-1], f / f[0], rtol=1e-10)


def test_make_schedule_names():
    for name in S.SCHEDULES:
        s = S.make_schedule(name, 20)
        assert s.T == 20 and np.all(np.diff(s.alpha_bar) < 0)
    np.testing.assert_array_equal(
        S.make_schedule("linear", 10, beta_end=0.03).beta, S.linear(10, beta_end=0.03).beta
    )


# -- zero terminal SNR (Lin et al. 2023) -------------------------------------------------------
def test_zero_terminal_snr_by_hand():
    # √ᾱ = (√0.9, √0.72, 0.6) → (√ᾱ − 0.6)·√0.9/(√0.9 − 0.6)
    s0, s2, s3 = math.sqrt(0.9), math.sqrt(0.72), 0.6
    z = S.rescale_zero_terminal_snr(hand_schedule())
    np.testing.assert_allclose(
        z.alpha_bar, [1.0, 0.9, ((s2 - s3) * s0 / (s0 - s3)) ** 2, 0.0], rtol=1e-13, atol=0
    )
    assert z.alpha_bar[-1] == 0.0 and z.beta[-1] == 1.0
    assert z.snr[-1] == 0.0 and z.log_snr[-1] == -np.inf and z.sigma[-1] == np.inf
    # T = 2: the middle vanishes, β = (0.1, 1)
    z2 = S.rescale_zero_terminal_snr(S.from_betas([0.1, 0.2]))
    np.testing.assert_allclose(z2.beta, [0.0, 0.1, 1.0], rtol=1e-13)


def test_zero_terminal_snr_sd_numbers():
    # PEERS B7: SD scaled_linear, T=1000: ᾱ_1 = 0.99915 kept, ᾱ_T = 0, β_T = 1
    z = S.make_schedule("scaled_linear", 1000, zero_terminal_snr=True)
    assert z.alpha_bar[1] == pytest.approx(0.99915, rel=1e-12)
    assert z.alpha_bar[-1] == 0.0 and z.beta[-1] == 1.0


@given(betas(min_T=2, max_T=50))
@settings(max_examples=examples(40), deadline=None)
def test_zero_terminal_snr_properties(b):
    base = S.from_betas(b)
    z = S.rescale_zero_terminal_snr(base)
    assert z.T == base.T
    assert z.alpha_bar[1] == pytest.approx(base.alpha_bar[1], rel=1e-12)
    assert z.alpha_bar[-1] == 0.0 and z.beta[-1] == 1.0
    assert np.all(np.diff(z.alpha_bar) < 0)
    assert np.all((z.beta[1:] > 0) & (z.beta[1:] <= 1))
    # √ᾱ' is an affine function of √ᾱ: every chord has the same slope s_1/(s_1 − s_T)
    x, y = np.sqrt(base.alpha_bar[1:]), np.sqrt(z.alpha_bar[1:])
    slope = x[0] / (x[0] - x[-1])
    np.testing.assert_allclose(y, slope * (x - x[-1]), rtol=1e-9, atol=1e-12)


# -- derived quantities and round trips over random schedules ----------------------------------
@given(betas())
@settings(max_examples=examples(60), deadline=None)
def test_derived_quantities(b):
    s = S.from_betas(b)
    np.testing.assert_allclose(s.alpha_bar[1:], np.cumprod(1.0 - b), rtol=1e-13)
    np.testing.assert_allclose(s.alpha * s.alpha_bar_prev, s.alpha_bar, rtol=1e-13)
    np.testing.assert_allclose(s.sqrt_alpha_bar**2, s.alpha_bar, rtol=1e-13)
    np.testing.assert_allclose(s.sqrt_one_minus_alpha_bar**2, 1 - s.alpha_bar, rtol=1e-13)
    ab = s.alpha_bar[1:]
    np.testing.assert_allclose(s.snr[1:], ab / (1 - ab), rtol=1e-13)
    np.testing.assert_allclose(np.exp(s.log_snr[1:]), s.snr[1:], rtol=1e-9)
    # B8: ᾱ = 1/(1 + σ²)
    np.testing.assert_allclose(1.0 / (1.0 + s.sigma[1:] ** 2), ab, rtol=1e-12)
    # from_alpha_bar inverts from_betas
    s2 = S.from_alpha_bar(ab)
    np.testing.assert_allclose(s2.beta, s.beta, rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(s2.alpha_bar, s.alpha_bar)


# -- time-index conversions --------------------------------------------------------------------
def test_t_from_index_and_back():
    np.testing.assert_array_equal(S.t_from_index([0, 1, 999]), [1, 2, 1000])
    assert S.t_from_index(0) == 1 and S.index_from_t(1) == 0
    i = np.arange(50)
    np.testing.assert_array_equal(S.index_from_t(S.t_from_index(i)), i)
    assert S.t_from_index(i).dtype == np.int64
    with pytest.raises(TimestepError) as e:
        S.index_from_t([0, 3])
    assert e.value.argument == "t"


# -- respace -----------------------------------------------------------------------------------
def test_respace_by_hand():
    r = S.respace(hand_schedule(), [1, 3])
    # ᾱ' = (1, ᾱ_1, ᾱ_3) = (1, 0.9, 0.36);  β'_2 = 1 − 0.36/0.9 = 0.6
    np.testing.assert_allclose(r.alpha_bar, [1.0, 0.9, 0.36], **EXACT)
    np.testing.assert_allclose(r.beta, [0.0, 0.1, 0.6], rtol=1e-14)
    np.testing.assert_array_equal(r.timesteps, [0, 1, 3])
    assert r.T == 2 and r.is_respaced and r.base_alpha_bar_1 == pytest.approx(0.9)
    # composing: keep step 2 of r (base time 3): β' = 1 − 0.36 = 0.64
    rr = S.respace(r, [2])
    np.testing.assert_allclose(rr.beta, [0.0, 0.64], rtol=1e-14)
    np.testing.assert_array_equal(rr.timesteps, [0, 3])
    assert rr.base_alpha_bar_1 == pytest.approx(0.9)
    # respacing to the later times only: base_alpha_bar_1 still ᾱ at base time 1
    assert S.respace(hand_schedule(), [2, 3]).base_alpha_bar_1 == pytest.approx(0.9)


@given(schedules(respaced=False), st.data())
@settings(max_examples=examples(50), deadline=None)
def test_respace_properties(base, data):
    times = sorted(
        data.draw(
            st.lists(st.integers(1, base.T), min_size=1, max_size=base.T, unique=True), "times"
        )
    )
    r = S.respace(base, times)
    assert r.T == len(times)
    np.testing.assert_array_equal(r.timesteps, [0, *times])
    np.testing.assert_array_equal(r.alpha_bar, base.alpha_bar[r.timesteps])
    # β'_k = 1 − ᾱ_τk/ᾱ_τ(k−1) (eq. 2.9); compared as 1 − β' (absolute error ~ 1 ulp)
    np.testing.assert_allclose(
        1 - r.beta[1:], r.alpha_bar[1:] / r.alpha_bar[:-1], rtol=0, atol=2e-16
    )
    # keeping every step is the identity
    full = S.respace(base, np.arange(1, base.T + 1))
    np.testing.assert_array_equal(full.alpha_bar, base.alpha_bar)
    np.testing.assert_allclose(full.beta, base.beta, rtol=1e-12, atol=1e-16)
    assert not full.is_respaced
