"""refdiff.sigma: the σ view of VP schedules, conversions, EDM preconditioning, σ schedules
(docs/math.md §15-§17), by hand and as Hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import parameterization as P
from refdiff import schedule as Sch
from refdiff import sigma as S
from refdiff.errors import InputError, OptionError, ScheduleError, UndefinedError
from tests.strategies import examples, schedules, seeds

sigmas_st = st.floats(min_value=1e-3, max_value=1e3)


def test_vp_ve_by_hand():
    # ᾱ = 0.2: σ = √(0.8/0.2) = 2; x_vp = x/√5
    assert S.sigma_from_alpha_bar(0.2) == pytest.approx(2.0, abs=1e-15)
    assert S.alpha_bar_from_sigma(2.0) == pytest.approx(0.2, abs=1e-15)
    np.testing.assert_allclose(S.to_vp(np.array([[5.0]]), 2.0), [[math.sqrt(5)]], atol=1e-15)
    np.testing.assert_allclose(S.to_ve(np.array([[1.0]]), 2.0), [[math.sqrt(5)]], atol=1e-15)


def test_conversions_by_hand():
    x, s = np.array([[3.0]]), 2.0
    # ε = 1: D = 3 − 2 = 1;  v: D = x/(1+σ²) − σ v/√(1+σ²) = 3/5 − 2/√5 · v
    assert S.to_denoised(np.array([[1.0]]), x, s, "epsilon")[0, 0] == pytest.approx(1.0)
    v = 0.5
    want = 3 / 5 - 2 / math.sqrt(5) * v
    assert S.to_denoised(np.array([[v]]), x, s, "v")[0, 0] == pytest.approx(want, abs=1e-15)
    # score s = −0.5: D = 3 + 4(−0.5) = 1;  flow u = 1: D = (3 − 2)/3 = 1/3
    assert S.to_denoised(np.array([[-0.5]]), x, s, "score")[0, 0] == pytest.approx(1.0)
    assert S.to_denoised(np.array([[1.0]]), x, s, "flow")[0, 0] == pytest.approx(1 / 3)


@settings(max_examples=examples(60), deadline=None)
@given(seeds, sigmas_st, st.sampled_from(S.PREDICTION_TYPES))
def test_conversions_round_trip(seed, sigma, kind):
    rng = np.random.default_rng(seed)
    x, d = rng.standard_normal((2, 3, 2)) * [[[1.0]], [[sigma]]]
    p = S.from_denoised(d, x, sigma, kind)
    np.testing.assert_allclose(S.to_denoised(p, x, sigma, kind), d, rtol=1e-9, atol=1e-9 * sigma)


@settings(max_examples=examples(40), deadline=None)
@given(seeds, schedules(max_T=30), st.sampled_from(["epsilon", "x0", "v"]))
def test_conversions_agree_with_the_vp_parameterisation(seed, sch, kind):
    """At σ_t of a schedule, x̂_0 from a VP prediction at x_vp equals to_denoised at x_ve
    (eqs. 5.1-5.4 against 18.9-18.11)."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, sch.T + 1))
    ab = float(sch.alpha_bar[t])
    if ab == 0.0:
        return
    sigma = math.sqrt((1 - ab) / ab)
    x_vp, pred = rng.standard_normal((2, 2, 3))
    x0_vp, _ = P.to_x0_eps(pred, x_vp, ab, kind)
    got = S.to_denoised(pred, S.to_ve(x_vp, sigma), sigma, kind)
    np.testing.assert_allclose(got, x0_vp, rtol=1e-9, atol=1e-9)


def test_edm_preconditioning_by_hand_and_unit_variance():
    # σ = σ_d = 0.5: c_skip = 1/2, c_out = 0.25/√0.5, c_in = 1/√0.5, c_noise = ¼ ln ½
    c_skip, c_out, c_in, c_noise = S.edm_preconditioning(0.5, 0.5)
    assert (c_skip, c_out, c_in) == pytest.approx((0.5, 0.25 / math.sqrt(0.5), 1 / math.sqrt(0.5)))
    assert c_noise == pytest.approx(0.25 * math.log(0.5))
    s = np.geomspace(1e-3, 1e3, 25)
    c_skip, c_out, c_in, _ = S.edm_preconditioning(s, 0.7)
    # Karras et al. 2022 App. B.6: unit-variance input and training target
    np.testing.assert_allclose(c_in**2 * (s**2 + 0.49), 1.0, rtol=1e-12)
    np.testing.assert_allclose(c_out**2, 0.49 * (1 - c_skip), rtol=1e-9)
    with pytest.raises(InputError) as e:
        S.edm_preconditioning(1.0, 0.0)
    assert e.value.argument == "sigma_data"


def test_karras_by_hand():
    # ρ = 2, σ ∈ [1, 9]: √σ linear 3 → 1: [3, 2, 1]² = [9, 4, 1], then 0
    np.testing.assert_allclose(S.karras(3, 1.0, 9.0, rho=2.0), [9, 4, 1, 0], atol=1e-13)
    # ρ = 7 (the default): endpoints exact, the middle point ((9^{1/7} + 1)/2)^7
    mid = ((9 ** (1 / 7) + 1) / 2) ** 7
    np.testing.assert_allclose(S.karras(3, 1.0, 9.0), [9, mid, 1, 0], rtol=1e-13)
    np.testing.assert_allclose(S.karras(3, 1.0, 9.0, final_sigma="none"), [9, mid, 1], rtol=1e-13)
    np.testing.assert_allclose(S.karras(2, 1.0, 9.0, final_sigma=0.5), [9, 1, 0.5], rtol=1e-13)
    np.testing.assert_allclose(
        S.karras(2, 1.0, 9.0, final_sigma="sigma_min"), [9, 1, 1], rtol=1e-13
    )


def test_exponential_and_beta_by_hand():
    np.testing.assert_allclose(S.exponential(3, 1.0, 100.0), [100, 10, 1, 0], rtol=1e-13)
    # Beta(0.6, 0.6) is symmetric: the middle of 3 is the midpoint
    np.testing.assert_allclose(S.beta_sigmas(3, 1.0, 9.0), [9, 5, 1, 0], rtol=1e-12)


@settings(max_examples=examples(60), deadline=None)
@given(
    st.integers(2, 60),
    st.floats(1e-3, 1.0),
    st.floats(1.5, 200.0),
    st.floats(0.5, 10.0),
    st.sampled_from(["karras", "exponential", "beta_sigmas"]),
)
def test_sigma_schedules_decrease_between_their_endpoints(n, lo, ratio, rho, kind):
    hi = lo * ratio
    fn = getattr(S, kind)
    s = fn(n, lo, hi, rho) if kind == "karras" else fn(n, lo, hi)
    assert s.shape == (n + 1,) and s[-1] == 0.0
    assert np.all(np.diff(s) < 0)
    assert s[0] == pytest.approx(hi, rel=1e-12) and s[-2] == pytest.approx(lo, rel=1e-12)
    if kind == "karras":  # ρ → larger concentrates steps at small σ: σ^{1/ρ} is linear
        np.testing.assert_allclose(np.diff(s[:-1] ** (1 / rho), 2), 0, atol=1e-9 * hi)


@settings(max_examples=examples(40), deadline=None)
@given(schedules(min_T=2, max_T=40), seeds)
def test_sigma_to_t_inverts_t_to_sigma(sch, seed):
    if not np.isfinite(sch.sigma[-1]):
        return
    rng = np.random.default_rng(seed)
    t = rng.uniform(1, sch.T, 8)
    np.testing.assert_allclose(S.sigma_to_t(sch, S.t_to_sigma(sch, t)), t, rtol=1e-9)
    ints = np.arange(1, sch.T + 1)
    for how in ("log_linear", "linear"):
        np.testing.assert_allclose(S.t_to_sigma(sch, ints, how), sch.sigma[1:], rtol=1e-12)
    assert np.all(np.diff(S.sigma_to_t(sch, np.sort(sch.sigma[1:]))) > 0)


def test_sigma_interpolation_by_hand():
    """Between two grid points, log-linear is the geometric mean at the midpoint, linear the
    arithmetic mean (eqs. 17.4-17.5)."""
    sch = Sch.from_alpha_bar([0.5, 0.2])  # σ_1 = 1, σ_2 = 2
    assert S.t_to_sigma(sch, 1.5) == pytest.approx(math.sqrt(2), abs=1e-15)
    assert S.t_to_sigma(sch, 1.5, "linear") == pytest.approx(1.5, abs=1e-15)
    assert S.sigma_to_t(sch, math.sqrt(2)) == pytest.approx(1.5, abs=1e-15)
    # outside the grid: clamped to [1, T] (diffusers' _sigma_to_t)
    np.testing.assert_allclose(S.sigma_to_t(sch, [0.1, 10.0]), [1.0, 2.0])


def test_from_schedule_grids():
    sch = Sch.linear(1000)
    s = S.from_schedule(sch, 10)
    assert s.shape == (11,) and s[-1] == 0
    assert s[0] == pytest.approx(sch.sigma[1000]) and s[-2] == pytest.approx(sch.sigma[1])
    # trailing: t = 1000, 900, …, 100
    s = S.from_schedule(sch, 10, spacing="trailing", final_sigma="none")
    np.testing.assert_allclose(s, sch.sigma[np.arange(1000, 0, -100)], rtol=1e-12)
    # leading with steps_offset 1 (Stable Diffusion): 0-based 900, 800, …, 0 → +1 +1
    s = S.from_schedule(sch, 10, spacing="leading", steps_offset=1, final_sigma="none")
    np.testing.assert_allclose(s, sch.sigma[np.arange(902, 0, -100)], rtol=1e-12)
    # final σ_min appends the smallest training σ
    s = S.from_schedule(sch, 4, spacing="trailing", final_sigma="sigma_min")
    assert s[-1] == sch.sigma[1]


def test_denoiser_from_model_round_trip():
    """A model that predicts the exact ε of N(0, I) data in the VP state gives the exact VE
    denoiser D = x/(1+σ²) for every timestep rule (the VP ε does not depend on t here)."""
    sch = Sch.linear(100)

    def eps_model(x_vp, t):
        ab = 1.0 / (1.0 + S.t_to_sigma(sch, np.clip(np.asarray(t, float), 1, 100)) ** 2)
        return np.sqrt(1 - ab)[:, None] * x_vp  # E[ε | x_vp] for N(0, I) data

    x = np.array([[1.0, -2.0]])
    for how in ("continuous", "round", "nearest"):
        D = S.denoiser_from_model(eps_model, sch, "epsilon", timestep=how)
        sig = float(sch.sigma[37]) if how != "continuous" else 1.2345
        np.testing.assert_allclose(D(x, np.array([sig])), x / (1 + sig**2), rtol=1e-9)


def test_errors_name_their_argument():
    with pytest.raises(OptionError) as e:
        S.to_denoised([[1.0]], [[1.0]], 1.0, "eps")
    assert e.value.argument == "prediction_type"
    with pytest.raises(ScheduleError) as e:
        S.karras(3, 2.0, 1.0)
    assert e.value.argument == "sigma_min"
    with pytest.raises(UndefinedError) as e:
        S.from_denoised([[1.0]], [[1.0]], 0.0, "epsilon")
    assert e.value.argument == "sigma"
    with pytest.raises(InputError) as e:
        S.karras(0, 1.0, 2.0)
    assert e.value.argument == "n"
    with pytest.raises(InputError) as e:
        S.karras(3, 1.0, 2.0, final_sigma=5.0)
    assert e.value.argument == "final_sigma"


@settings(max_examples=examples(20), deadline=None)
@given(
    st.sampled_from(["epsilon", "x0", "v", "score"]),
    st.sampled_from(["round", "nearest"]),
    st.integers(1, 100),
    seeds,
)
def test_denoiser_from_model_wraps_the_exact_vp_model(kind, how, t, seed):
    """On the grid (σ = σ_t), the adapter around refdiff.exact's VP model of any prediction
    type is the exact σ-view denoiser (eqs. 15.2, 18.9-18.12)."""
    from refdiff import exact as E
    from refdiff import exact_sigma as X

    sch = Sch.cosine(100)
    g = E.Gaussian(np.array([0.5, -1.0]), np.array([[0.6, 0.2], [0.2, 0.4]]))
    D = S.denoiser_from_model(E.denoiser(g, sch, kind), sch, kind, timestep=how)
    sig = float(sch.sigma[t])
    x = np.random.default_rng(seed).standard_normal((4, 2)) * np.sqrt(1 + sig**2)
    want = X.denoiser(g)(x, np.full(4, sig))
    np.testing.assert_allclose(D(x, np.full(4, sig)), want, rtol=1e-8, atol=1e-8 * (1 + sig))
