"""The posterior q(x_{t−1}|x_t, x_0) (docs/math.md §4): hand values and Bayes' rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import forward as F
from refdiff import posterior as P
from refdiff import schedule as S
from tests.strategies import (
    examples,
    hand_schedule,
    normal,
    per_sample,
    schedules,
    seeds,
    state_shapes,
)

TIGHT = dict(rtol=1e-10, atol=1e-12)


# -- hand derivations: β = (0.1, 0.2, 0.5), ᾱ = (0.9, 0.72, 0.36), ᾱ_prev = (1, 0.9, 0.72) -----
def test_coefficients_by_hand():
    s = hand_schedule()
    c0, ct = P.posterior_coefficients(s, np.array([1, 2, 3]))
    # c0_t = β_t √ᾱ_{t−1}/(1−ᾱ_t):  0.1·1/0.1 = 1;  0.2√0.9/0.28;  0.5√0.72/0.64
    np.testing.assert_allclose(
        c0, [1.0, 0.2 * math.sqrt(0.9) / 0.28, 0.5 * math.sqrt(0.72) / 0.64], rtol=1e-14
    )
    # ct_t = (1−ᾱ_{t−1}) √α_t/(1−ᾱ_t):  0;  0.1√0.8/0.28;  0.28√0.5/0.64
    np.testing.assert_allclose(
        ct, [0.0, 0.1 * math.sqrt(0.8) / 0.28, 0.28 * math.sqrt(0.5) / 0.64], rtol=1e-14, atol=0
    )


def test_variance_by_hand():
    s = hand_schedule()
    # β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t):  0;  0.2·0.1/0.28 = 1/14;  0.5·0.28/0.64 = 0.21875
    np.testing.assert_allclose(
        P.posterior_variance(s, np.array([1, 2, 3])), [0.0, 1 / 14, 0.21875], rtol=1e-14, atol=0
    )
    assert P.posterior_variance(s, 2) == pytest.approx(1 / 14, rel=1e-14)


def test_log_variance_clipping_conventions():
    s = hand_schedule()
    t = np.array([1, 2, 3])
    # "next" (improved-diffusion): log β̃_1 := log β̃_2 = log(1/14)
    np.testing.assert_allclose(
        P.posterior_log_variance(s, t, "next"), np.log([1 / 14, 1 / 14, 0.21875]), rtol=1e-14
    )
    # "floor" (diffusers, DDPM v1): log max(β̃, 1e-20)
    np.testing.assert_allclose(
        P.posterior_log_variance(s, t, "floor"), np.log([1e-20, 1 / 14, 0.21875]), rtol=1e-14
    )
    # T = 1 has no β̃_2: "next" falls back to the floor
    one = S.from_betas([0.3])
    assert P.posterior_log_variance(one, 1, "next") == pytest.approx(math.log(1e-20))


def test_mean_var_and_sample_by_hand():
    s = hand_schedule()
    x0, xt = np.array([[1.0, -1.0]]), np.array([[0.5, 2.0]])
    mean, var = P.posterior_mean_var(s, x0, xt, 3)
    c0, ct = 0.5 * math.sqrt(0.72) / 0.64, 0.28 * math.sqrt(0.5) / 0.64
    np.testing.assert_allclose(mean, c0 * x0 + ct * xt, rtol=1e-14)
    assert float(var) == pytest.approx(0.21875, rel=1e-14)
    x = P.posterior_sample(s, x0, xt, 3, noise=[[1.0, -0.5]])
    np.testing.assert_allclose(x, c0 * x0 + ct * xt + math.sqrt(0.21875) * np.array([[1.0, -0.5]]))
    # at t = 1 the posterior is the point mass at x_0
    mean, var = P.posterior_mean_var(s, x0, xt, 1)
    np.testing.assert_allclose(mean, x0, rtol=1e-14)
    assert float(var) == 0.0


# -- independent derivations -------------------------------------------------------------------
@st.composite
def case(draw):
    sch = draw(schedules(min_T=2))
    t = draw(st.integers(2, sch.T))
    return sch, t


@given(case(), state_shapes(), seeds)
@settings(max_examples=examples(60), deadline=None)
def test_gaussian_product_rule(c, shape, seed):
    """Bayes: q(x_{t−1}|x_0)·q(x_t|x_{t−1}) normalised, by precision weighting."""
    sch, t = c
    x0, xt = normal(seed, shape, 2)
    ab_prev, ab = sch.alpha_bar[t - 1], sch.alpha_bar[t]
    r = ab / ab_prev  # the one-step α (respaced: ratio of kept ᾱ)
    # prior  N(x_{t−1}; √ᾱ_{t−1} x_0, 1−ᾱ_{t−1})
    # likelihood as a function of x_{t−1}: N(x_t; √r x_{t−1}, 1−r) ∝ N(x_{t−1}; x_t/√r, (1−r)/r)
    prec = 1.0 / (1.0 - ab_prev) + r / (1.0 - r)
    var = 1.0 / prec
    mean = var * (math.sqrt(ab_prev) * x0 / (1.0 - ab_prev) + math.sqrt(r) * xt / (1.0 - r))
    got_mean, got_var = P.posterior_mean_var(sch, x0, xt, t)
    np.testing.assert_allclose(got_mean, mean, **TIGHT)
    assert float(got_var) == pytest.approx(var, rel=1e-10)
    # the same by conditioning the joint Gaussian (x_{t−1}, x_t) | x_0:
    # Var x_{t−1} = 1−ᾱ_{t−1}, Cov = √r (1−ᾱ_{t−1}), Var x_t = 1−ᾱ_t
    cov = math.sqrt(r) * (1.0 - ab_prev)
    mean2 = math.sqrt(ab_prev) * x0 + cov / (1.0 - ab) * (xt - math.sqrt(ab) * x0)
    var2 = (1.0 - ab_prev) - cov**2 / (1.0 - ab)
    np.testing.assert_allclose(got_mean, mean2, **TIGHT)
    assert float(got_var) == pytest.approx(var2, rel=1e-8, abs=1e-15)


@given(case(), state_shapes(), seeds)
@settings(max_examples=examples(40), deadline=None)
def test_bayes_rule_on_densities(c, shape, seed):
    """log q(x_{t−1}|x_t,x_0) = log q(x_t|x_{t−1}) + log q(x_{t−1}|x_0) − log q(x_t|x_0)."""
    sch, t = c
    x0, xt, xp = normal(seed, shape, 3)
    mean, var = P.posterior_mean_var(sch, x0, xt, t)
    lhs = F.gaussian_log_prob(xp, mean, var)
    rhs = (
        F.q_step_log_prob(sch, xt, xp, t)
        + F.q_log_prob(sch, xp, x0, t - 1)
        - F.q_log_prob(sch, xt, x0, t)
    )
    scale = 1.0 + np.abs(lhs) + np.abs(F.q_step_log_prob(sch, xt, xp, t))
    assert np.all(np.abs(lhs - rhs) <= 1e-8 * scale)


@given(schedules(), st.integers(1, 4), seeds, st.data())
@settings(max_examples=examples(30), deadline=None)
def test_per_sample_t_and_rng(sch, B, seed, data):
    t = np.array(data.draw(st.lists(st.integers(1, sch.T), min_size=B, max_size=B)), dtype=np.int64)
    x0, xt = normal(seed, (B, 3), 2)
    mean, var = P.posterior_mean_var(sch, x0, xt, t)
    c0, ct = P.posterior_coefficients(sch, t)
    np.testing.assert_allclose(mean, per_sample(c0, 2) * x0 + per_sample(ct, 2) * xt, rtol=1e-14)
    np.testing.assert_allclose(var, per_sample(P.posterior_variance(sch, t), 2), rtol=1e-14)
    a = P.posterior_sample(sch, x0, xt, t, rng=np.random.default_rng(seed))
    b = P.posterior_sample(
        sch, x0, xt, t, noise=np.random.default_rng(seed).standard_normal((B, 3))
    )
    np.testing.assert_array_equal(a, b)
    # both conventions agree for t ≥ 2
    lv_next = P.posterior_log_variance(sch, t, "next")
    lv_floor = P.posterior_log_variance(sch, t, "floor")
    np.testing.assert_array_equal(lv_next[t >= 2], lv_floor[t >= 2])
