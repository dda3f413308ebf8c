"""The forward process (docs/math.md §3): hand values, composition, scipy log-densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from refdiff import forward as F
from refdiff import schedule as S
from tests.strategies import (
    examples,
    hand_schedule,
    normal,
    per_sample,
    schedules,
    seeds,
    state_shapes,
    timesteps_for,
)

TIGHT = dict(rtol=1e-12, atol=1e-12)


# -- hand derivations: β = (0.1, 0.2, 0.5), ᾱ = (0.9, 0.72, 0.36) ------------------------------
def test_q_step_by_hand():
    s = hand_schedule()
    mean, var = F.q_step_mean_var(s, [[2.0, -1.0]], 3)
    # q(x_3|x_2) = N(√(1−0.5)·x_2, 0.5)
    np.testing.assert_allclose(mean, [[2.0 * math.sqrt(0.5), -math.sqrt(0.5)]], **TIGHT)
    assert float(var) == pytest.approx(0.5, rel=1e-15)
    x = F.q_step_sample(s, [[2.0, -1.0]], 3, noise=[[0.3, -0.2]])
    np.testing.assert_allclose(
        x, [[2 * math.sqrt(0.5) + math.sqrt(0.5) * 0.3, -math.sqrt(0.5) - 0.2 * math.sqrt(0.5)]]
    )


def test_q_sample_by_hand():
    s = hand_schedule()
    # x_2 = √0.72·x_0 + √0.28·ε
    x = F.q_sample(s, [[1.0, -2.0]], 2, noise=[[0.5, 0.1]])
    np.testing.assert_allclose(
        x, [[math.sqrt(0.72) + 0.5 * math.sqrt(0.28), -2 * math.sqrt(0.72) + 0.1 * math.sqrt(0.28)]]
    )
    mean, var = F.q_mean_var(s, [[1.0, -2.0]], 0)  # t = 0 is the data itself
    np.testing.assert_array_equal(mean, [[1.0, -2.0]])
    assert float(var) == 0.0
    # per-sample t: rows at t = 1 and t = 3
    mean, var = F.q_mean_var(s, [[1.0], [1.0]], np.array([1, 3]))
    np.testing.assert_allclose(mean, [[math.sqrt(0.9)], [0.6]], **TIGHT)
    np.testing.assert_allclose(var, [[0.1], [0.64]], **TIGHT)


def test_q_transition_by_hand():
    s = hand_schedule()
    # q(x_3|x_1): ratio ᾱ_3/ᾱ_1 = 0.36/0.9 = 0.4 → N(√0.4·x_1, 0.6)
    mean, var = F.q_transition_mean_var(s, [[1.5]], 3, 1)
    np.testing.assert_allclose(mean, [[1.5 * math.sqrt(0.4)]], **TIGHT)
    assert float(var) == pytest.approx(0.6, rel=1e-14)
    x = F.q_transition_sample(s, [[1.5]], 3, 1, noise=[[-1.0]])
    np.testing.assert_allclose(x, [[1.5 * math.sqrt(0.4) - math.sqrt(0.6)]], **TIGHT)
    # s = 0 is q(x_t|x_0);  s = t − 1 is one step
    for t in (1, 2, 3):
        for got, want in (
            (F.q_transition_mean_var(s, [[1.5]], t, 0), F.q_mean_var(s, [[1.5]], t)),
            (F.q_transition_mean_var(s, [[1.5]], t, t - 1), F.q_step_mean_var(s, [[1.5]], t)),
        ):
            np.testing.assert_allclose(got[0], want[0], **TIGHT)
            np.testing.assert_allclose(got[1], want[1], **TIGHT)


def test_log_probs_by_hand():
    s = hand_schedule()
    # log N(0.5; √0.72·1, 0.28)
    lp = F.q_log_prob(s, [[0.5]], [[1.0]], 2)
    expect = -0.5 * math.log(2 * math.pi * 0.28) - (0.5 - math.sqrt(0.72)) ** 2 / (2 * 0.28)
    assert lp.shape == (1,) and lp[0] == pytest.approx(expect, rel=1e-13)
    # log N(0.5; √0.8·1, 0.2) for one step t = 2
    lp = F.q_step_log_prob(s, [[0.5]], [[1.0]], 2)
    expect = -0.5 * math.log(2 * math.pi * 0.2) - (0.5 - math.sqrt(0.8)) ** 2 / (2 * 0.2)
    assert lp[0] == pytest.approx(expect, rel=1e-13)


# -- composition q(x_t|x_s) ∘ q(x_s|x_0) = q(x_t|x_0) ------------------------------------------
@st.composite
def s_t_case(draw):
    sch = draw(schedules(min_T=2))
    t = draw(st.integers(2, sch.T))
    s = draw(st.integers(0, t - 1))
    return sch, s, t


@given(s_t_case(), state_shapes(), seeds)
@settings(max_examples=examples(60), deadline=None)
def test_composition_of_means_and_variances(case, shape, seed):
    sch, s, t = case
    (x0,) = normal(seed, shape)
    m_s, v_s = F.q_mean_var(sch, x0, s)
    m_ts, v_ts = F.q_transition_mean_var(sch, m_s, t, s)
    a, _ = F.q_transition_mean_var(sch, np.ones(shape), t, s)  # the scale √(ᾱ_t/ᾱ_s)
    m_t, v_t = F.q_mean_var(sch, x0, t)
    np.testing.assert_allclose(m_ts, m_t, **TIGHT)
    np.testing.assert_allclose(a**2 * v_s + v_ts, np.broadcast_to(v_t, shape), **TIGHT)
    # the one-step chain s → s+1 → … → t composes to q(x_t|x_s) as well
    mean, var = np.array(1.0), np.array(0.0)
    for u in range(s + 1, t + 1):
        a_u, v_u = F.q_step_mean_var(sch, np.ones((1,)), u)
        mean, var = a_u[0] * mean, a_u[0] ** 2 * var + v_u
    a_st, v_st = F.q_transition_mean_var(sch, np.ones((1,)), t, s)
    np.testing.assert_allclose([mean, var], [a_st[0], v_st], **TIGHT)


@given(s_t_case(), state_shapes(), seeds)
@settings(max_examples=examples(40), deadline=None)
def test_composition_pathwise_with_injected_noise(case, shape, seed):
    # x_s = √ᾱ_s x_0 + √(1−ᾱ_s) z_1,  x_t = √r x_s + √(1−r) z_2 with r = ᾱ_t/ᾱ_s
    # ⇒ x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,  ε = (√r √(1−ᾱ_s) z_1 + √(1−r) z_2)/√(1−ᾱ_t)
    sch, s, t = case
    x0, z1, z2 = normal(seed, shape, 3)
    ab_s, ab_t = sch.alpha_bar[s], sch.alpha_bar[t]
    r = ab_t / ab_s
    x_s = F.q_sample(sch, x0, s, noise=z1)
    x_t = F.q_transition_sample(sch, x_s, t, s, noise=z2)
    eps = (math.sqrt(r) * math.sqrt(1 - ab_s) * z1 + math.sqrt(1 - r) * z2) / math.sqrt(1 - ab_t)
    np.testing.assert_allclose(x_t, F.q_sample(sch, x0, t, noise=eps), **TIGHT)


@given(schedules(respaced=False), seeds, st.data())
@settings(max_examples=examples(30), deadline=None)
def test_respaced_step_is_base_transition(base, seed, data):
    # one step k of a respaced schedule is q(x_τk | x_τ(k−1)) of the base schedule
    kept = data.draw(st.lists(st.integers(1, base.T), min_size=1, unique=True), "kept")
    sch = S.respace(base, sorted(kept))
    (x,) = normal(seed, (2, 3))
    for k in range(1, sch.T + 1):
        m1, v1 = F.q_step_mean_var(sch, x, k)
        m2, v2 = F.q_transition_mean_var(base, x, sch.timesteps[k], sch.timesteps[k - 1])
        np.testing.assert_allclose(m1, m2, **TIGHT)
        np.testing.assert_allclose(v1, v2, **TIGHT)


# -- vectorisation, rng ------------------------------------------------------------------------
@given(schedules(), state_shapes(), seeds, st.data())
@settings(max_examples=examples(40), deadline=None)
def test_per_sample_t_matches_loop(sch, shape, seed, data):
    t = data.draw(timesteps_for(sch.T, shape[0]), "t")
    x0, z = normal(seed, shape, 2)
    x = F.q_sample(sch, x0, t, noise=z)
    tb = np.broadcast_to(t, (shape[0],))
    for b in range(shape[0]):
        np.testing.assert_allclose(
            x[b : b + 1], F.q_sample(sch, x0[b : b + 1], int(tb[b]), noise=z[b : b + 1]), **TIGHT
        )
    assert x.shape == shape and x.dtype == np.float64


@given(schedules(), state_shapes(), seeds)
@settings(max_examples=examples(20), deadline=None)
def test_rng_equals_injected_noise(sch, shape, seed):
    (x0,) = normal(seed + 1 if seed < 2**32 - 1 else 0, shape)
    t = sch.T
    a = F.q_sample(sch, x0, t, rng=np.random.default_rng(seed))
    b = F.q_sample(sch, x0, t, noise=np.random.default_rng(seed).standard_normal(shape))
    np.testing.assert_array_equal(a, b)
    a = F.q_step_sample(sch, x0, t, rng=np.random.default_rng(seed))
    b = F.q_step_sample(sch, x0, t, noise=np.random.default_rng(seed).standard_normal(shape))
    np.testing.assert_array_equal(a, b)


# -- log-densities against scipy.stats ---------------------------------------------------------
@given(s_t_case(), state_shapes(), seeds)
@settings(max_examples=examples(40), deadline=None)
def test_log_probs_against_scipy(case, shape, seed):
    sch, s, t = case
    x0, xs, xt = normal(seed, shape, 3)
    B = shape[0]
    ab, abs_, a_t = sch.alpha_bar[t], sch.alpha_bar[s], sch.alpha[t]

    def ref(x, loc, var):
        return stats.norm.logpdf(x, loc=loc, scale=math.sqrt(var)).reshape(B, -1).sum(axis=1)

    np.testing.assert_allclose(
        F.q_log_prob(sch, xt, x0, t), ref(xt, math.sqrt(ab) * x0, 1 - ab), rtol=1e-10
    )
    np.testing.assert_allclose(
        F.q_step_log_prob(sch, xt, xs, t), ref(xt, math.sqrt(a_t) * xs, 1 - a_t), rtol=1e-10
    )
    np.testing.assert_allclose(
        F.q_transition_log_prob(sch, xt, xs, t, s),
        ref(xt, math.sqrt(ab / abs_) * xs, 1 - ab / abs_),
        rtol=1e-10,
    )
    # the same as one multivariate normal with covariance (1−ᾱ_t)·I over the data axes
    d = int(np.prod(shape[1:], dtype=int))
    mvn = stats.multivariate_normal(mean=np.zeros(d), cov=(1 - ab) * np.eye(d))
    expect = mvn.logpdf((xt - math.sqrt(ab) * x0).reshape(B, d))
    np.testing.assert_allclose(F.q_log_prob(sch, xt, x0, t), np.atleast_1d(expect), rtol=1e-10)


@given(schedules(), st.integers(1, 4), seeds, st.data())
@settings(max_examples=examples(20), deadline=None)
def test_per_sample_log_prob(sch, B, seed, data):
    t = data.draw(timesteps_for(sch.T, B), "t")
    x0, xt = normal(seed, (B, 2), 2)
    ab = per_sample(sch.alpha_bar[t], 2)
    expect = stats.norm.logpdf(xt, np.sqrt(ab) * x0, np.sqrt(1 - ab)).sum(axis=1)
    np.testing.assert_allclose(F.q_log_prob(sch, xt, x0, t), expect, rtol=1e-10)
