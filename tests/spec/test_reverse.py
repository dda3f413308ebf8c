"""Reverse steps (docs/math.md §7): DDPM variance types, clipping, thresholding, DDIM options."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import forward as F
from refdiff import posterior as P
from refdiff import reverse as R
from refdiff import schedule as S
from refdiff.errors import InputError, UndefinedError
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
SQ = math.sqrt


def prediction_of(kind, x0, eps, ab):
    """The exact model output of each type for x_t = √ᾱ x_0 + √(1−ᾱ) ε (eqs. 5.3, 5.5)."""
    return {"epsilon": eps, "x0": x0, "v": SQ(ab) * eps - SQ(1 - ab) * x0}[kind]


# -- DDPM by hand: β = (0.1, 0.2, 0.5), ᾱ = (0.9, 0.72, 0.36) ----------------------------------
def test_ddpm_fixed_small_by_hand():
    s = hand_schedule()
    # t = 3, x_t = 1, ε̂ = 0.5:  x̂_0 = (1 − √0.64·0.5)/√0.36 = (1 − 0.4)/0.6 = 1
    p = R.ddpm_parts(s, [[1.0]], 3, [[0.5]])
    assert p.x0[0, 0] == pytest.approx(1.0, rel=1e-14)
    # μ = c0·x̂_0 + ct·x_t = (0.5√0.72 + 0.28√0.5)/0.64
    mu = (0.5 * SQ(0.72) + 0.28 * SQ(0.5)) / 0.64
    # Ho et al. eq. 11: (x_t − β_t/√(1−ᾱ_t)·ε̂)/√α_t = (1 − 0.5/0.8·0.5)/√0.5 — the same number
    assert mu == pytest.approx((1 - 0.5 / 0.8 * 0.5) / SQ(0.5), rel=1e-14)
    assert p.mean[0, 0] == pytest.approx(mu, rel=1e-14)
    assert float(p.variance) == pytest.approx(0.21875, rel=1e-14)  # β̃_3 = 0.5·0.28/0.64
    x = R.ddpm_step(s, [[1.0]], 3, [[0.5]], noise=[[0.2]])
    assert x[0, 0] == pytest.approx(mu + SQ(0.21875) * 0.2, rel=1e-14)
    # t = 1: no noise is added
    x1 = R.ddpm_step(s, [[1.0]], 1, [[0.5]], noise=[[5.0]])
    np.testing.assert_array_equal(x1, R.ddpm_parts(s, [[1.0]], 1, [[0.5]]).mean)


def test_ddpm_variance_types_by_hand():
    s = hand_schedule()
    t = np.array([1, 2, 3])
    x, out = np.ones((3, 1)), np.zeros((3, 1))

    def var(vt, **kw):
        return R.ddpm_parts(s, x, t, out, variance_type=vt, **kw).variance.ravel()

    np.testing.assert_allclose(var("fixed_small"), [0.0, 1 / 14, 0.21875], rtol=1e-14, atol=0)
    np.testing.assert_allclose(var("fixed_large"), [0.1, 0.2, 0.5], rtol=1e-14)
    # improved-diffusion: append(β̃_2, β[2:]) → (1/14, 0.2, 0.5)
    np.testing.assert_allclose(var("fixed_large_iddpm"), [1 / 14, 0.2, 0.5], rtol=1e-14)
    # learned_range, v = 0: the geometric mean of the ends; "next": lower end at t=1 is β̃_2
    mv = np.zeros((3, 1))
    np.testing.assert_allclose(
        var("learned_range", model_variance=mv),
        [SQ(0.1 / 14), SQ(0.2 / 14), SQ(0.5 * 0.21875)],
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        var("learned", model_variance=np.log([[0.3], [0.2], [0.1]])), [0.3, 0.2, 0.1]
    )
    np.testing.assert_allclose(
        var("learned_linear", model_variance=[[0.3], [0.2], [0.1]]), [0.3, 0.2, 0.1]
    )


def test_clip_and_threshold_by_hand():
    s = hand_schedule()
    # x0-prediction 3.0 clipped to 1; ε̂ re-derived from the clipped x̂_0 at t = 3
    p = R.ddpm_parts(s, [[1.0]], 3, [[3.0]], prediction_type="x0", clip=1.0)
    assert p.x0[0, 0] == 1.0
    assert p.eps[0, 0] == pytest.approx((1.0 - 0.6 * 1.0) / 0.8, rel=1e-14)
    # dynamic thresholding: |x̂_0| = (0.5, 3, 2, 1)
    x0 = np.array([[0.5, -3.0, 2.0, 1.0]])
    # ratio 1 → s = clip(max = 3, 1, 2.5) = 2.5 → clip(x, ±2.5)/2.5
    np.testing.assert_allclose(
        R.dynamic_threshold(x0, 1.0, 2.5), [[0.2, -1.0, 0.8, 0.4]], rtol=1e-15
    )
    # ratio 0.5 → linear-interpolated median of (0.5, 1, 2, 3) = 1.5
    np.testing.assert_allclose(
        R.dynamic_threshold(x0, 0.5, 10.0), [[1 / 3, -1.0, 1.0, 2 / 3]], rtol=1e-15
    )
    # quantile below 1: s = 1, nothing but a clip to [−1, 1]
    np.testing.assert_array_equal(
        R.dynamic_threshold(np.array([[0.5, -0.2]]), 0.9, 5.0), [[0.5, -0.2]]
    )


# -- DDIM by hand ------------------------------------------------------------------------------
def test_ddim_by_hand():
    s = hand_schedule()
    # t = 3, x_t = 1, ε̂ = 0.5 → x̂_0 = 1
    x = R.ddim_step(s, [[1.0]], 3, [[0.5]])  # η = 0: √ᾱ_2 x̂_0 + √(1−ᾱ_2) ε̂
    assert x[0, 0] == pytest.approx(SQ(0.72) + SQ(0.28) * 0.5, rel=1e-14)
    # η = 1: σ² = (1−0.72)/(1−0.36)·(1 − 0.36/0.72) = 0.4375·0.5 = 0.21875 = β̃_3
    p = R.ddim_parts(s, [[1.0]], 3, [[0.5]], eta=1.0)
    assert float(p.variance.ravel()[0]) == pytest.approx(0.21875, rel=1e-14)
    assert p.mean[0, 0] == pytest.approx(SQ(0.72) + SQ(0.28 - 0.21875) * 0.5, rel=1e-14)
    # η = 0.5: σ² = 0.25·0.21875
    p = R.ddim_parts(s, [[1.0]], 3, [[0.5]], eta=0.5)
    assert float(p.variance.ravel()[0]) == pytest.approx(0.0546875, rel=1e-14)
    x = R.ddim_step(s, [[1.0]], 3, [[0.5]], eta=0.5, noise=[[-1.0]])
    assert x[0, 0] == pytest.approx(
        SQ(0.72) + SQ(0.28 - 0.0546875) * 0.5 - SQ(0.0546875), rel=1e-14
    )


def test_ddim_final_alpha_bar_by_hand():
    # respaced to base times (2, 3): step t = 1 is base time 2, ᾱ' = (1, 0.72, 0.36)
    r = S.respace(hand_schedule(), [2, 3])
    xt, eps = np.array([[1.0]]), np.array([[0.5]])
    x0 = (1.0 - SQ(0.28) * 0.5) / SQ(0.72)
    # "one": ᾱ_prev = 1 → x_0 = x̂_0
    assert R.ddim_step(r, xt, 1, eps)[0, 0] == pytest.approx(x0, rel=1e-14)
    # "first": ᾱ_prev = ᾱ at base time 1 = 0.9 → √0.9 x̂_0 + √0.1 ε̂
    got = R.ddim_step(r, xt, 1, eps, final_alpha_bar="first")
    assert got[0, 0] == pytest.approx(SQ(0.9) * x0 + SQ(0.1) * 0.5, rel=1e-14)
    got = R.ddim_step(r, xt, 1, eps, final_alpha_bar=0.95)
    assert got[0, 0] == pytest.approx(SQ(0.95) * x0 + SQ(0.05) * 0.5, rel=1e-14)
    # the option only touches the last step
    for fab in ("first", 0.95):
        np.testing.assert_array_equal(
            R.ddim_step(r, xt, 2, eps, final_alpha_bar=fab), R.ddim_step(r, xt, 2, eps)
        )


def test_ddim_final_step_noise_by_hand():
    r = S.respace(hand_schedule(), [2, 3])
    xt, eps, z = np.array([[1.0]]), np.array([[0.5]]), np.array([[2.0]])
    x0 = (1.0 - SQ(0.28) * 0.5) / SQ(0.72)
    # η = 1, "first": σ² = (1−0.9)/(1−0.72)·(1 − 0.72/0.9) = (0.1/0.28)·0.2 = 1/14
    var = 1 / 14
    mean = SQ(0.9) * x0 + SQ(0.1 - var) * 0.5
    kw = dict(eta=1.0, final_alpha_bar="first", noise=z)
    assert R.ddim_step(r, xt, 1, eps, **kw)[0, 0] == pytest.approx(mean, rel=1e-13)
    got = R.ddim_step(r, xt, 1, eps, final_step_noise=True, **kw)
    assert got[0, 0] == pytest.approx(mean + SQ(var) * 2.0, rel=1e-13)
    # with "one" σ_1 = 0, so final_step_noise changes nothing
    np.testing.assert_array_equal(
        R.ddim_step(r, xt, 1, eps, eta=1.0, noise=z, final_step_noise=True),
        R.ddim_step(r, xt, 1, eps, eta=1.0, noise=z),
    )


def test_ddim_rederive_eps_by_hand():
    s = hand_schedule()
    # x0-prediction 3 at t = 3, x_t = 1, clip 1.  Raw ε̂ = (1 − 0.6·3)/0.8 = −1;
    # re-derived from the clipped x̂_0 = 1: (1 − 0.6)/0.8 = 0.5
    kw = dict(prediction_type="x0", clip=1.0)
    p_re = R.ddim_parts(s, [[1.0]], 3, [[3.0]], rederive_eps=True, **kw)
    p_raw = R.ddim_parts(s, [[1.0]], 3, [[3.0]], rederive_eps=False, **kw)
    assert p_re.eps[0, 0] == pytest.approx(0.5) and p_raw.eps[0, 0] == pytest.approx(-1.0)
    assert p_re.mean[0, 0] == pytest.approx(SQ(0.72) + SQ(0.28) * 0.5, rel=1e-14)
    assert p_raw.mean[0, 0] == pytest.approx(SQ(0.72) - SQ(0.28), rel=1e-14)


def test_ddim_inverse_by_hand():
    s = hand_schedule()
    # s = 1 → 2 with ε̂ = 0.5 at x_1 = 1: x̂_0 = (1 − √0.1·0.5)/√0.9; x_2 = √0.72 x̂_0 + √0.28·0.5
    x0 = (1 - SQ(0.1) * 0.5) / SQ(0.9)
    got = R.ddim_inverse_step(s, [[1.0]], 1, [[0.5]])
    assert got[0, 0] == pytest.approx(SQ(0.72) * x0 + SQ(0.28) * 0.5, rel=1e-14)
    # s = 0: the state is x_0 itself → x_1 = √0.9 x_0 + √0.1 ε̂
    got = R.ddim_inverse_step(s, [[1.0]], 0, [[0.5]])
    assert got[0, 0] == pytest.approx(SQ(0.9) + SQ(0.1) * 0.5, rel=1e-14)


# -- properties --------------------------------------------------------------------------------
@st.composite
def step_case(draw, min_T=1):
    sch = draw(schedules(min_T=min_T))
    shape = draw(state_shapes())
    if draw(st.booleans()):
        t = draw(st.integers(1, sch.T))
    else:
        t = np.array(draw(st.lists(st.integers(1, sch.T), min_size=shape[0], max_size=shape[0])))
    return sch, shape, t


def _ab(sch, t, ndim):
    return per_sample(sch.alpha_bar[t], ndim)


@given(step_case(), seeds)
@settings(max_examples=examples(50), deadline=None)
def test_ddpm_mean_equals_ho_eq11(case, seed):
    # μ = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t (Ho et al. 2020 eq. 11), with the (respaced) β_t
    sch, shape, t = case
    xt, eps = normal(seed, shape, 2)
    n = len(shape)
    beta = per_sample(1.0 - sch.alpha_bar[t] / sch.alpha_bar_prev[t], n)
    mu = (xt - beta / np.sqrt(1 - _ab(sch, t, n)) * eps) / np.sqrt(1 - beta)
    scale = 1 + np.abs(mu)
    got = R.ddpm_parts(sch, xt, t, eps).mean
    assert np.all(np.abs(got - mu) <= 1e-9 * scale / np.sqrt(_ab(sch, t, n)))


@given(step_case(), seeds, st.sampled_from(["epsilon", "x0", "v"]))
@settings(max_examples=examples(50), deadline=None)
def test_ddpm_mean_with_exact_prediction_is_posterior_mean(case, seed, kind):
    sch, shape, t = case
    x0, eps = normal(seed, shape, 2)
    n = len(shape)
    ab = _ab(sch, t, n)
    xt = F.q_sample(sch, x0, t, noise=eps)
    out = {"epsilon": eps, "x0": x0, "v": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[kind]
    got = R.ddpm_parts(sch, xt, t, out, prediction_type=kind).mean
    want, _ = P.posterior_mean_var(sch, x0, xt, t)
    tol = 1e-9 * (1 + np.abs(want)) / np.minimum(np.sqrt(ab), np.sqrt(1 - ab))
    assert np.all(np.abs(got - want) <= tol)


@given(
    step_case(),
    seeds,
    st.sampled_from(["epsilon", "x0", "v"]),
    st.sampled_from([None, 0.5, 1.0, 3.0]),
)
@settings(max_examples=examples(60), deadline=None)
def test_ddim_eta1_equals_ddpm_fixed_small(case, seed, kind, clip):
    sch, shape, t = case
    out, xt, z = normal(seed, shape, 3)
    kw = dict(prediction_type=kind, clip=clip)
    a = R.ddim_step(sch, xt, t, out, eta=1.0, rederive_eps=True, noise=z, **kw)
    b = R.ddpm_step(sch, xt, t, out, variance_type="fixed_small", noise=z, **kw)
    pa = R.ddim_parts(sch, xt, t, out, eta=1.0, **kw)
    pb = R.ddpm_parts(sch, xt, t, out, **kw)
    n = len(shape)
    cond = 1.0 / np.minimum(np.sqrt(_ab(sch, t, n)), np.sqrt(1 - _ab(sch, t, n)))
    scale = (1 + np.abs(b) + np.abs(xt) + np.abs(out)) * cond
    assert np.all(np.abs(a - b) <= 1e-9 * scale)
    np.testing.assert_allclose(pa.variance, pb.variance, rtol=1e-9, atol=1e-15)


@given(step_case(), seeds)
@settings(max_examples=examples(30), deadline=None)
def test_fixed_large_conventions_differ_only_at_t1(case, seed):
    sch, shape, t = case
    xt, out = normal(seed, shape, 2)
    a = R.ddpm_parts(sch, xt, t, out, variance_type="fixed_large")
    b = R.ddpm_parts(sch, xt, t, out, variance_type="fixed_large_iddpm")
    np.testing.assert_array_equal(a.mean, b.mean)
    t_b = np.broadcast_to(t, (shape[0],))

    def per_row(v):
        return np.broadcast_to(v, (shape[0],) + (1,) * (len(shape) - 1)).reshape(shape[0])

    va, vb = per_row(a.variance), per_row(b.variance)
    np.testing.assert_array_equal(va[t_b >= 2], vb[t_b >= 2])
    np.testing.assert_allclose(va, sch.beta[t_b], rtol=1e-15)
    if sch.T >= 2:
        np.testing.assert_allclose(vb[t_b == 1], P.posterior_variance(sch, 2), rtol=1e-15)
    np.testing.assert_allclose(per_row(b.log_variance), np.log(vb), rtol=1e-15)


@given(step_case(), seeds, st.sampled_from(P.LOG_VARIANCE_CLIPPINGS))
@settings(max_examples=examples(30), deadline=None)
def test_learned_variance_types(case, seed, clipping):
    sch, shape, t = case
    xt, out, lv = normal(seed, shape, 3)
    n = len(shape)
    kw = dict(log_variance_clipping=clipping)
    a = R.ddpm_parts(sch, xt, t, out, variance_type="learned", model_variance=lv, **kw)
    b = R.ddpm_parts(
        sch, xt, t, out, variance_type="learned_linear", model_variance=np.exp(lv), **kw
    )
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-15)
    np.testing.assert_allclose(a.log_variance, b.log_variance, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(a.mean, b.mean)

    def lr(v):
        return R.ddpm_parts(
            sch, xt, t, out, variance_type="learned_range", model_variance=np.full(shape, v), **kw
        )

    lo = per_sample(P.posterior_log_variance(sch, t, clipping), n)
    hi = per_sample(np.log(sch.beta[t]), n)
    np.testing.assert_allclose(lr(-1.0).log_variance, np.broadcast_to(lo, shape), rtol=1e-14)
    np.testing.assert_allclose(lr(1.0).log_variance, np.broadcast_to(hi, shape), rtol=1e-14)
    np.testing.assert_allclose(
        lr(0.0).variance, np.broadcast_to(np.exp((lo + hi) / 2), shape), rtol=1e-12
    )
    # fixed_small's variance is the lower end (away from the t = 1 convention)
    fs = R.ddpm_parts(sch, xt, t, out, **kw)
    t_b = np.broadcast_to(t, (shape[0],))
    m = t_b >= 2
    np.testing.assert_allclose(
        np.broadcast_to(fs.log_variance, shape)[m], lr(-1.0).log_variance[m], rtol=1e-14
    )


@given(step_case(), seeds, st.floats(0.1, 5.0), st.sampled_from(["epsilon", "x0", "v"]))
@settings(max_examples=examples(40), deadline=None)
def test_clip_and_threshold_max_one(case, seed, scale, kind):
    sch, shape, t = case
    xt, out = normal(seed, shape, 2)
    out = out * scale
    raw = R.ddpm_parts(sch, xt, t, out, prediction_type=kind)
    c = R.ddpm_parts(sch, xt, t, out, prediction_type=kind, clip=1.0)
    np.testing.assert_array_equal(c.x0, np.clip(raw.x0, -1, 1))
    th = R.ddpm_parts(sch, xt, t, out, prediction_type=kind, threshold_ratio=0.9, threshold_max=1.0)
    np.testing.assert_array_equal(th.x0, c.x0)
    np.testing.assert_array_equal(th.mean, c.mean)
    # the ε̂ a step reports is consistent with its clipped x̂_0
    ab = _ab(sch, t, len(shape))
    np.testing.assert_allclose(
        np.sqrt(ab) * c.x0 + np.sqrt(1 - ab) * c.eps, xt, rtol=1e-9, atol=1e-9
    )
    # DDIM: the same clip, and threshold max 1 again equals the clip
    d1 = R.ddim_parts(sch, xt, t, out, prediction_type=kind, clip=1.0)
    d2 = R.ddim_parts(sch, xt, t, out, prediction_type=kind, threshold_ratio=0.5, threshold_max=1.0)
    np.testing.assert_array_equal(d1.mean, d2.mean)


@given(state_shapes(), seeds, st.floats(0.01, 1.0), st.floats(1.0, 10.0))
@settings(max_examples=examples(40), deadline=None)
def test_dynamic_threshold_properties(shape, seed, ratio, max_value):
    (x0,) = normal(seed, shape)
    x0 = 3 * x0
    y = R.dynamic_threshold(x0, ratio, max_value)
    flat = np.abs(x0).reshape(shape[0], -1)
    s = np.clip(np.quantile(flat, ratio, axis=1), 1.0, max_value)
    assert np.all(np.abs(y).reshape(shape[0], -1) <= 1.0 + 1e-15)
    for b in range(shape[0]):
        np.testing.assert_allclose(y[b], np.clip(x0[b], -s[b], s[b]) / s[b], rtol=1e-15)


@given(step_case(), seeds)
@settings(max_examples=examples(30), deadline=None)
def test_ddpm_noise_mask_and_rng(case, seed):
    sch, shape, t = case
    xt, out = normal(seed, shape, 2)
    z = np.random.default_rng(seed).standard_normal(shape)
    x = R.ddpm_step(sch, xt, t, out, noise=z)
    p = R.ddpm_parts(sch, xt, t, out)
    mask = per_sample(np.broadcast_to(t, (shape[0],)) > 1, len(shape))
    np.testing.assert_allclose(x, p.mean + mask * np.sqrt(p.variance) * z, rtol=1e-15)
    np.testing.assert_array_equal(x, R.ddpm_step(sch, xt, t, out, rng=np.random.default_rng(seed)))
    # DDIM with η = 0 needs no noise at all
    np.testing.assert_array_equal(R.ddim_step(sch, xt, t, out), R.ddim_parts(sch, xt, t, out).mean)


@given(schedules(min_T=2), state_shapes(), seeds, st.data())
@settings(max_examples=examples(40), deadline=None)
def test_ddim_deterministic_round_trip_with_exact_eps(sch, shape, seed, data):
    # with the true ε, DDIM (η = 0) maps q_sample(x_0, t, ε) to q_sample(x_0, t−1, ε), and the
    # inverse step maps it back
    t = data.draw(st.integers(2, sch.T), "t")
    x0, eps = normal(seed, shape, 2)
    xt = F.q_sample(sch, x0, t, noise=eps)
    xs = F.q_sample(sch, x0, t - 1, noise=eps)
    cond = 1 / min(SQ(sch.alpha_bar[t]), SQ(1 - sch.alpha_bar[t - 1]))
    tol = 1e-12 * cond * (1 + np.max(np.abs(x0)) + np.max(np.abs(eps)))
    np.testing.assert_allclose(R.ddim_step(sch, xt, t, eps), xs, rtol=0, atol=tol)
    np.testing.assert_allclose(R.ddim_inverse_step(sch, xs, t - 1, eps), xt, rtol=0, atol=tol)


def test_zero_terminal_snr_steps():
    z = S.rescale_zero_terminal_snr(hand_schedule())
    T, xt, out = z.T, np.array([[0.3, -0.7]]), np.array([[0.1, 0.2]])
    for step in (R.ddpm_step, R.ddim_step):
        with pytest.raises(UndefinedError) as e:
            step(z, xt, T, out, prediction_type="epsilon", noise=np.zeros((1, 2)))
        assert e.value.argument == "prediction_type"
        # v-prediction at ᾱ_T = 0: x̂_0 = −v, finite everywhere
        x = step(z, xt, T, out, prediction_type="v", noise=np.ones((1, 2)))
        assert np.isfinite(x).all()
    p = R.ddpm_parts(z, xt, T, out, prediction_type="v")
    np.testing.assert_array_equal(p.x0, -out)
    # posterior at t = T with ᾱ_T = 0: mean √ᾱ_{T−1} x̂_0, variance 1 − ᾱ_{T−1}
    np.testing.assert_allclose(p.mean, SQ(z.alpha_bar[T - 1]) * -out, rtol=1e-14)
    assert float(p.variance) == pytest.approx(1 - z.alpha_bar[T - 1], rel=1e-14)
    p = R.ddim_parts(z, xt, T, out, prediction_type="v", eta=0.0)
    np.testing.assert_allclose(
        p.mean, SQ(z.alpha_bar[T - 1]) * -out + SQ(1 - z.alpha_bar[T - 1]) * xt, rtol=1e-14
    )


def test_model_variance_required_and_refused():
    s = hand_schedule()
    for vt in ("learned", "learned_linear", "learned_range"):
        with pytest.raises(InputError) as e:
            R.ddpm_parts(s, [[1.0]], 2, [[0.0]], variance_type=vt)
        assert e.value.argument == "model_variance"
    for vt in ("fixed_small", "fixed_large", "fixed_large_iddpm"):
        with pytest.raises(InputError) as e:
            R.ddpm_parts(s, [[1.0]], 2, [[0.0]], variance_type=vt, model_variance=[[0.0]])
        assert e.value.argument == "model_variance"
    with pytest.raises(InputError) as e:
        R.ddpm_parts(s, [[1.0]], 2, [[0.0]], variance_type="learned_linear", model_variance=[[0.0]])
    assert e.value.argument == "model_variance"
