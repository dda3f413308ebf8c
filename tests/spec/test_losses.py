"""Training targets and the variational bound (docs/math.md §9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from refdiff import forward as F
from refdiff import losses as L
from refdiff import reverse as R
from refdiff import schedule as S
from tests.strategies import examples, hand_schedule, normal, schedules, seeds, state_shapes

SQ = math.sqrt
LN2 = math.log(2.0)
BINS = -1.0 + 2.0 * np.arange(256) / 255.0  # the 256 data levels in [−1, 1]


# -- targets and MSE ---------------------------------------------------------------------------
def test_training_targets_by_hand():
    s = hand_schedule()
    x0, z = np.array([[1.0, -1.0]]), np.array([[0.5, 2.0]])
    np.testing.assert_array_equal(L.training_target(s, x0, 2, z, "epsilon"), z)
    np.testing.assert_array_equal(L.training_target(s, x0, 2, z, "x0"), x0)
    # v = √ᾱ ε − √(1−ᾱ) x_0 at ᾱ_2 = 0.72
    np.testing.assert_allclose(
        L.training_target(s, x0, 2, z, "v"),
        [[SQ(0.72) * 0.5 - SQ(0.28), SQ(0.72) * 2.0 + SQ(0.28)]],
        rtol=1e-13,
    )
    # MSE of a zero prediction against ε = (0.5, 2): (0.25 + 4)/2
    np.testing.assert_allclose(L.mse_loss(s, np.zeros((1, 2)), x0, 2, z), [2.125], rtol=1e-15)


@given(schedules(), state_shapes(), seeds, st.sampled_from(["epsilon", "x0", "v"]))
@settings(max_examples=examples(30), deadline=None)
def test_target_is_what_the_reverse_step_inverts(sch, shape, seed, kind):
    # the target fed back as a prediction recovers x_0 exactly (up to conditioning)
    x0, z = normal(seed, shape, 2)
    t = sch.T
    xt = F.q_sample(sch, x0, t, noise=z)
    target = L.training_target(sch, x0, t, z, kind)
    assert L.mse_loss(sch, target, x0, t, z, kind).max() == 0.0
    p = R.ddpm_parts(sch, xt, t, target, prediction_type=kind)
    cond = 1 / min(SQ(sch.alpha_bar[t]), SQ(1 - sch.alpha_bar[t]))
    np.testing.assert_allclose(p.x0, x0, rtol=0, atol=1e-12 * cond * (1 + np.abs(xt).max()))
    np.testing.assert_allclose(
        L.mse_loss(sch, target + 1.0, x0, t, z, kind), np.ones(shape[0]), rtol=1e-12
    )


# -- normal_kl ---------------------------------------------------------------------------------
def test_normal_kl_by_hand():
    # KL(N(0,1) ‖ N(1,1)) = ½;  KL(N(0,1) ‖ N(0,4)) = ½(−1 + ln 4 + ¼)
    assert L.normal_kl(0.0, 0.0, 1.0, 0.0) == pytest.approx(0.5, rel=1e-15)
    assert L.normal_kl(0.0, 0.0, 0.0, math.log(4)) == pytest.approx(0.5 * (-1 + math.log(4) + 0.25))
    assert L.normal_kl(0.3, -1.0, 0.3, -1.0) == 0.0


@given(
    st.floats(-3, 3),
    st.floats(-4, 2),
    st.floats(-3, 3),
    st.floats(-4, 2),
)
@settings(max_examples=examples(15), deadline=None)
def test_normal_kl_against_numerical_integral(m1, lv1, m2, lv2):
    # ∫ p log(p/q) by quadrature; scipy.stats checked on one point to pin the log-densities
    sd1, sd2 = math.exp(0.5 * lv1), math.exp(0.5 * lv2)

    def logpdf(x, m, sd):
        return -0.5 * math.log(2 * math.pi * sd * sd) - (x - m) ** 2 / (2 * sd * sd)

    assert logpdf(0.7, m2, sd2) == pytest.approx(stats.norm.logpdf(0.7, m2, sd2), rel=1e-12)
    kl, _ = integrate.quad(
        lambda x: math.exp(logpdf(x, m1, sd1)) * (logpdf(x, m1, sd1) - logpdf(x, m2, sd2)),
        m1 - 30 * sd1,
        m1 + 30 * sd1,
        limit=200,
    )
    assert float(L.normal_kl(m1, lv1, m2, lv2)) == pytest.approx(kl, rel=1e-6, abs=1e-9)


# -- discretized Gaussian decoder --------------------------------------------------------------
def test_discretized_likelihood_by_hand():
    # mean 0, scale 1, x = 0: Φ̃(1/255) − Φ̃(−1/255), Φ̃ the tanh approximation
    def phi(x):
        return 0.5 * (1 + math.tanh(SQ(2 / math.pi) * (x + 0.044715 * x**3)))

    ll = L.discretized_gaussian_log_likelihood(0.0, 0.0, 0.0)
    assert float(ll) == pytest.approx(math.log(phi(1 / 255) - phi(-1 / 255)), rel=1e-12)
    # the edge bins take the tails: x = −1 → log Φ̃(−1 + 1/255); x = 1 → log(1 − Φ̃(1 − 1/255))
    assert float(L.discretized_gaussian_log_likelihood(-1.0, 0.0, 0.0)) == pytest.approx(
        math.log(phi(-1 + 1 / 255)), rel=1e-12
    )
    assert float(L.discretized_gaussian_log_likelihood(1.0, 0.0, 0.0)) == pytest.approx(
        math.log(1 - phi(1 - 1 / 255)), rel=1e-12
    )
    x = np.linspace(-8, 8, 2001)
    assert np.abs(L.approx_standard_normal_cdf(x) - stats.norm.cdf(x)).max() < 2e-4


@given(st.floats(-1.5, 1.5), st.floats(-5.0, 0.5))
@settings(max_examples=examples(30), deadline=None)
def test_discretized_likelihood_sums_to_one(mean, log_scale):
    p = np.exp(L.discretized_gaussian_log_likelihood(BINS, mean, log_scale))
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    # each bin within the tanh approximation's error of the exact Gaussian bin mass
    sd = math.exp(log_scale)
    hi = np.where(BINS > 0.999, np.inf, BINS + 1 / 255)
    lo = np.where(BINS < -0.999, -np.inf, BINS - 1 / 255)
    exact = stats.norm.cdf(hi, mean, sd) - stats.norm.cdf(lo, mean, sd)
    assert np.abs(p - exact).max() < 4e-4


# -- prior and VLB -----------------------------------------------------------------------------
def test_prior_bpd_by_hand():
    # q(x_3|x_0 = 1) = N(0.6, 0.64): KL to N(0,1) = ½(0.64 + 0.36 − 1 − ln 0.64) = −ln 0.8 nats
    got = L.prior_bpd(hand_schedule(), np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(got, [-math.log(0.8) / LN2], rtol=1e-13)


@given(schedules(), state_shapes(), seeds)
@settings(max_examples=examples(30), deadline=None)
def test_prior_bpd_closed_form(sch, shape, seed):
    (x0,) = normal(seed, shape)
    ab = sch.alpha_bar[-1]
    kl = 0.5 * ((1 - ab) + ab * x0**2 - 1 - math.log(1 - ab))
    np.testing.assert_allclose(
        L.prior_bpd(sch, x0), kl.reshape(shape[0], -1).mean(axis=1) / LN2, rtol=1e-9, atol=1e-15
    )


def test_vlb_term_by_hand():
    s = hand_schedule()
    x0, xt = np.array([[0.2]]), np.array([[0.5]])
    # exact model at t ≥ 2 → KL 0;  a shifted mean by δ → δ²/(2 β̃ ln 2) bits
    p = R.ddpm_parts(s, xt, 3, x0, prediction_type="x0")
    assert L.vlb_term_bpd(s, x0, xt, 3, p.mean, p.log_variance)[0] == pytest.approx(0.0, abs=1e-15)
    got = L.vlb_term_bpd(s, x0, xt, 3, p.mean + 0.1, p.log_variance)[0]
    assert got == pytest.approx(0.01 / (2 * 0.21875) / LN2, rel=1e-12)
    # t = 1: the decoder NLL of x_0's bin
    got = L.vlb_term_bpd(s, x0, xt, 1, np.array([[0.1]]), np.log(0.01))
    want = -L.discretized_gaussian_log_likelihood(0.2, 0.1, 0.5 * math.log(0.01)) / LN2
    assert got[0] == pytest.approx(float(want), rel=1e-14)


def _exact_eps_denoiser(sch, x0):
    def den(xt, t):
        ab = sch.alpha_bar[t].reshape((-1,) + (1,) * (xt.ndim - 1))
        return (xt - np.sqrt(ab) * x0) / np.sqrt(1 - ab)

    return den


@given(schedules(max_T=20, respaced=False), st.integers(1, 3), seeds)
@settings(max_examples=examples(15), deadline=None)
def test_vlb_bpd(sch, B, seed):
    rng = np.random.default_rng(seed)
    x0 = BINS[rng.integers(0, 256, size=(B, 4))]
    zs = rng.standard_normal((sch.T, B, 4))
    total, terms = L.vlb_bpd(sch, x0, lambda x, t: 0.1 * x, noise=zs)
    assert terms.shape == (sch.T + 1, B) and total.shape == (B,)
    assert np.all(terms >= 0) and np.all(total > 0) and np.isfinite(total).all()
    np.testing.assert_allclose(total, terms.sum(axis=0), rtol=1e-15)
    np.testing.assert_allclose(terms[0], L.prior_bpd(sch, x0), rtol=1e-15)
    # rng path draws the same noise
    t2, _ = L.vlb_bpd(sch, x0, lambda x, t: 0.1 * x, rng=np.random.default_rng(seed + 1))
    t3, _ = L.vlb_bpd(
        sch,
        x0,
        lambda x, t: 0.1 * x,
        noise=np.random.default_rng(seed + 1).standard_normal((sch.T, B, 4)),
    )
    np.testing.assert_array_equal(t2, t3)
    # the exact denoiser with fixed_small: every KL term L_{t−1}, t ≥ 2, vanishes
    _, terms = L.vlb_bpd(sch, x0, _exact_eps_denoiser(sch, x0), noise=zs)
    assert np.all(np.abs(terms[2:]) <= 1e-6)


def test_vlb_bpd_learned_range_runs():
    sch = S.linear(8, 1e-3, 0.2)
    x0 = BINS[np.random.default_rng(0).integers(0, 256, size=(2, 3))]

    def den(x, t):
        return np.concatenate([0.1 * x, np.zeros_like(x)], axis=1)

    total, terms = L.vlb_bpd(
        sch, x0, den, rng=np.random.default_rng(1), variance_type="learned_range"
    )
    assert np.all(total > 0) and np.all(terms >= 0)
