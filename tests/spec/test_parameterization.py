"""ε / x̂_0 / v / score conversions (docs/math.md §5): hand values, round trips, definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refdiff import forward as F
from refdiff import parameterization as PZ
from refdiff import schedule as S
from refdiff.errors import UndefinedError
from tests.strategies import examples, hand_schedule, normal, schedules, seeds, state_shapes

TYPES = PZ.PREDICTION_TYPES


def by_definition(x0, eps, ab):
    """Each prediction from (x_0, ε), written out from the definitions (eqs. 3.2, 5.3, 5.5)."""
    sa, s1 = math.sqrt(ab), math.sqrt(1 - ab)
    return {
        "epsilon": eps,
        "x0": x0,
        "v": sa * eps - s1 * x0,
        # ∇_{x_t} log N(x_t; √ᾱ x_0, (1−ᾱ) I) = −(x_t − √ᾱ x_0)/(1−ᾱ) = −ε/√(1−ᾱ)
        "score": -eps / s1,
    }


# -- hand derivations: t = 2, ᾱ = 0.72 ---------------------------------------------------------
def test_conversions_by_hand():
    s = hand_schedule()
    x0, eps = np.array([[1.0]]), np.array([[0.5]])
    xt = math.sqrt(0.72) * 1.0 + math.sqrt(0.28) * 0.5
    want = {
        "epsilon": 0.5,
        "x0": 1.0,
        "v": math.sqrt(0.72) * 0.5 - math.sqrt(0.28) * 1.0,
        "score": -0.5 / math.sqrt(0.28),
    }
    for src, dst in itertools.product(TYPES, TYPES):
        got = PZ.convert(s, [[xt]], 2, [[want[src]]], src, dst)
        assert got[0, 0] == pytest.approx(want[dst], rel=1e-13), (src, dst)
    np.testing.assert_allclose(F.q_sample(s, x0, 2, noise=eps), [[xt]], rtol=1e-15)


def test_score_is_the_gradient_of_the_log_density():
    # central finite difference of log q(x_t|x_0) in x_t, against the score from x_0
    s = hand_schedule()
    x0, xt, h = np.array([[0.3, -1.2]]), np.array([[0.7, 0.1]]), 1e-5
    grad = np.zeros_like(xt)
    for j in range(2):
        e = np.zeros_like(xt)
        e[0, j] = h
        grad[0, j] = (F.q_log_prob(s, xt + e, x0, 3)[0] - F.q_log_prob(s, xt - e, x0, 3)[0]) / (
            2 * h
        )
    np.testing.assert_allclose(PZ.convert(s, xt, 3, x0, "x0", "score"), grad, rtol=1e-8)


# -- round trips and definitions over random schedules -----------------------------------------
@st.composite
def conditioned(draw):
    """A schedule and a t whose √ᾱ and √(1−ᾱ) are both ≥ 1e-2 (conversions divide by them)."""
    sch = draw(schedules())
    ok = np.flatnonzero((sch.alpha_bar >= 1e-4) & (sch.alpha_bar <= 1 - 1e-4))
    ok = ok[ok >= 1]
    assume(ok.size > 0)
    return sch, int(draw(st.sampled_from(ok.tolist())))


@given(conditioned(), state_shapes(), seeds, st.sampled_from(TYPES), st.sampled_from(TYPES))
@settings(max_examples=examples(80), deadline=None)
def test_every_conversion_matches_definitions_and_round_trips(case, shape, seed, src, dst):
    sch, t = case
    x0, eps = normal(seed, shape, 2)
    ab = sch.alpha_bar[t]
    xt = F.q_sample(sch, x0, t, noise=eps)
    want = by_definition(x0, eps, ab)
    cond = 1.0 / min(math.sqrt(ab), math.sqrt(1 - ab)) ** 2
    scale = 1.0 + np.max(np.abs(xt)) + max(np.max(np.abs(w)) for w in want.values())
    tol = 1e-13 * cond * scale
    got = PZ.convert(sch, xt, t, want[src], src, dst)
    assert got.shape == shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want[dst], rtol=0, atol=tol)
    back = PZ.convert(sch, xt, t, got, dst, src)
    np.testing.assert_allclose(back, want[src], rtol=0, atol=tol)
    # to_x0_eps / from_x0_eps agree with convert
    x0_hat, eps_hat = PZ.to_x0_eps(want[src], xt, ab, src)
    np.testing.assert_allclose(x0_hat, x0, rtol=0, atol=tol)
    np.testing.assert_allclose(eps_hat, eps, rtol=0, atol=tol)
    np.testing.assert_allclose(PZ.from_x0_eps(x0, eps, ab, dst), want[dst], rtol=0, atol=tol)


@given(schedules(), st.integers(1, 4), seeds, st.data())
@settings(max_examples=examples(30), deadline=None)
def test_per_sample_t(sch, B, seed, data):
    t = np.array(data.draw(st.lists(st.integers(1, sch.T), min_size=B, max_size=B)), dtype=np.int64)
    x0, eps = normal(seed, (B, 2), 2)
    xt = F.q_sample(sch, x0, t, noise=eps)
    v = PZ.convert(sch, xt, t, eps, "epsilon", "v")
    for b in range(B):
        ab = sch.alpha_bar[t[b]]
        np.testing.assert_allclose(
            v[b], math.sqrt(ab) * eps[b] - math.sqrt(1 - ab) * x0[b], rtol=1e-9, atol=1e-12
        )


# -- zero terminal SNR -------------------------------------------------------------------------
def test_zero_terminal_snr_epsilon_undefined_v_works():
    z = S.rescale_zero_terminal_snr(hand_schedule())
    T, xt, p = z.T, np.array([[0.4, -0.3]]), np.array([[1.0, 2.0]])
    for src in ("epsilon", "score"):
        for dst in ("x0", "v"):
            with pytest.raises(UndefinedError) as e:
                PZ.convert(z, xt, T, p, src, dst)
            assert e.value.argument == "prediction_type"
    # ᾱ_T = 0: x_T is pure noise, so x̂_0 = −v and ε̂ = x_T
    np.testing.assert_array_equal(PZ.convert(z, xt, T, p, "v", "x0"), -p)
    np.testing.assert_array_equal(PZ.convert(z, xt, T, p, "v", "epsilon"), xt)
    np.testing.assert_array_equal(PZ.convert(z, xt, T, p, "x0", "epsilon"), xt)
    # below T every type is defined
    assert np.isfinite(PZ.convert(z, xt, T - 1, p, "epsilon", "x0")).all()


def test_undefined_at_alpha_bar_one():
    x = np.array([[1.0]])
    with pytest.raises(UndefinedError) as e:
        PZ.to_x0_eps(x, x, np.array(1.0), "x0")
    assert e.value.argument == "t"
    with pytest.raises(UndefinedError) as e:
        PZ.from_x0_eps(x, x, np.array(1.0), "score")
    assert e.value.argument == "t"
