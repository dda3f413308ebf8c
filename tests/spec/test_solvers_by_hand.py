"""Every σ-view sampler, two or three steps, against numbers worked out by hand.

Data N(0, 1) in one dimension: the exact denoiser is D(x; σ) = x/(1+σ²) (docs/math.md
eq. 19.11 with S = 1), written out here, not taken from refdiff.exact_sigma.  σ halves at each
step, so h = log 2 and e^{−h} = 1/2: the exponential-integrator coefficients are rational and
the expected values are exact fractions (comments show the arithmetic).  DPM-Solver++ and
UniPC are checked in diffusers' VP notation (α_t, s_t, λ = log α − log s) where the samplers
run in the VE state, so the two forms check each other.
"""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest

from refdiff import solvers


def D(x, sigma):
    """The exact denoiser of N(0, 1) data: x/(1+σ²)."""
    s = np.asarray(sigma, dtype=float).reshape(-1, *([1] * (np.ndim(x) - 1)))
    return np.asarray(x) / (1.0 + s**2)


def U(x, t):
    """The exact flow velocity of N(0, 1) data: x̂_0 = (1−t)x/((1−t)² + t²), u = (x − x̂_0)/t."""
    t = np.asarray(t, dtype=float).reshape(-1, *([1] * (np.ndim(x) - 1)))
    return (x - (1 - t) * x / ((1 - t) ** 2 + t**2)) / t


X1 = np.array([[1.0]])


def run(sampler, sigmas, noise=None, **options):
    sig = np.array([float(s) for s in sigmas])
    model = U if sampler == "flow_euler" else D
    step_noise = None if noise is None else np.array(noise, dtype=float).reshape(-1, 1, 1)
    return float(
        solvers.sample(model, sig, sampler=sampler, x_T=X1, step_noise=step_noise, **options)[0, 0]
    )


def test_euler_by_hand():
    # σ = 2: D = 1/5, d = (1 − 1/5)/2 = 2/5, x = 1 − 2/5 = 3/5
    # σ = 1: D = 3/10, d = 3/10, x = 3/5 − (1/2)(3/10) = 9/20
    assert run("euler", [2, 1, 0.5]) == pytest.approx(9 / 20, abs=1e-15)


def test_euler_churn_by_hand():
    # n = 2, S_churn = 0.5: γ = min(0.25, √2−1) = 1/4, σ̂ = 5/2, x̂ = 1 + √(25/4 − 4)·1 = 5/2
    # churned: D(5/2; 5/2) = (5/2)/(29/4) = 10/29, d = 25/29, x = 5/2 − (3/2)(25/29) = 35/29
    # σ = 1: σ̂ = 5/4, x̂ = 35/29 + √(25/16 − 1)(−1) = 35/29 − 3/4 = 53/116
    #   D(x̂; 5/4) = x̂/(41/16), d = (x̂ − D)/(5/4) = x̂ (25/41)(4/5) = x̂·20/41
    #   x = x̂ + (1/2 − 5/4) d = x̂ (1 − 15/41) = 53/116 · 26/41
    want = F(53, 116) * F(26, 41)
    got = run("euler", [2, 1, 0.5], noise=[1, -1], s_churn=0.5)
    assert got == pytest.approx(float(want), abs=1e-15)
    # diffusers' form: ε̂ = (x − D(x; σ))/σ before the churn.  σ = 2: ε̂ = 2/5, x̂ = 5/2,
    # x = 5/2 − (3/2)(2/5) = 19/10.  σ = 1: ε̂ = (19/10)(1/2) = 19/20, x̂ = 19/10 − 3/4 = 23/20,
    # x = 23/20 − (3/4)(19/20) = 35/80
    got = run("euler", [2, 1, 0.5], noise=[1, -1], s_churn=0.5, churn_model_input="unchurned")
    assert got == pytest.approx(35 / 80, abs=1e-15)
    # S_tmax below σ: no churn at all (plain Euler), the noise is drawn but unused
    got = run("euler", [2, 1, 0.5], noise=[1, -1], s_churn=0.5, s_tmax=0.9)
    assert got == pytest.approx(9 / 20, abs=1e-15)


def test_euler_ancestral_by_hand():
    # σ 2 → 1: σ_up = √(1·(4 − 1)/4) = √3/2, σ_down = √(1 − 3/4) = 1/2;
    #   x = 1 + (1/2 − 2)(2/5) + (√3/2) z₀ = 2/5 + (√3/2)·1
    # σ 1 → 0: σ_up = σ_down = 0, x = x + (0 − 1)(x − x/2) = x/2 (z₁ unused)
    want = (0.4 + math.sqrt(3) / 2) / 2
    assert run("euler_ancestral", [2, 1, 0], noise=[1, 7]) == pytest.approx(want, abs=1e-15)
    # η = 1/2 halves σ_up: σ_up = √3/4, σ_down = √(1 − 3/16) = √13/4
    want = (1 + (math.sqrt(13) / 4 - 2) * 0.4 + math.sqrt(3) / 4) / 2
    got = run("euler_ancestral", [2, 1, 0], noise=[1, 7], eta=0.5)
    assert got == pytest.approx(want, abs=1e-15)


def test_heun_by_hand():
    # σ 2 → 1: d = 2/5, x' = 3/5, d' = (3/5 − 3/10)/1 = 3/10, x = 1 − (2/5 + 3/10)/2 = 13/20
    # σ 1 → 0: Euler only: x = 13/20 − (13/20 − 13/40) = 13/40
    assert run("heun", [2, 1, 0]) == pytest.approx(13 / 40, abs=1e-15)
    # to σ = 1/2 instead: d = 13/40, x' = 13/20 − 13/80 = 39/80, d' = (39/80)(1 − 4/5)/(1/2)
    # = 39/200, x = 13/20 − (1/2)(13/40 + 39/200)/2 = 13/20 − 104/800 = 13/25
    assert run("heun", [2, 1, 0.5]) == pytest.approx(13 / 25, abs=1e-15)


def test_dpm_2_by_hand():
    # σ = 4, 1, 1/4: the log-σ midpoints are √(4·1) = 2 and √(1·1/4) = 1/2
    # σ 4 → 1: D(1; 4) = 1/17, d = (16/17)/4 = 4/17, x' = 1 + (2 − 4)(4/17) = 9/17,
    #   D(x'; 2) = 9/85, d' = (9/17 − 9/85)/2 = 18/85, x = 1 + (1 − 4)(18/85) = 31/85
    # σ 1 → 1/4: d = x/2, x' = x + (1/2 − 1)(x/2) = 3x/4, D(x'; 1/2) = 4x'/5,
    #   d' = (x'/5)/(1/2) = 3x/10, x = x + (1/4 − 1)(3x/10) = 31x/40
    want = F(31, 85) * F(31, 40)
    assert run("dpm_2", [4, 1, 0.25]) == pytest.approx(float(want), abs=1e-15)
    # into σ = 0 the step is Euler: x = 31/85 + (0 − 1)(31/170) = 31/170
    assert run("dpm_2", [4, 1, 0]) == pytest.approx(31 / 170, abs=1e-15)
    # churn, n = 2, S_churn = 1/2: γ = 1/4.  σ = 4: σ̂ = 5, x̂ = 1 + √(25 − 16)·1 = 4,
    #   D(4; 5) = 4/26, d = (4 − 2/13)/5 = 10/13, σ_m = √(5 · 5/4) = 5/2,
    #   x' = 4 + (5/2 − 5)(10/13) = 27/13, d' = x'(1 − 4/29)/(5/2) = (27/13)(10/29),
    #   x = 4 + (5/4 − 5) d' = 4 − (15/4)(270/377) = 991/754
    # σ = 5/4: σ̂ = 25/16, x̂ = x + √(625/256 − 25/16)(−1) = x − 15/16; Euler into σ = 0:
    #   x̂ − σ̂ (x̂ − D)/σ̂ = D(x̂; 25/16) = x̂ · 256/881
    want = (F(991, 754) - F(15, 16)) * F(256, 881)
    got = run("dpm_2", [4, 1.25, 0], noise=[1, -1], s_churn=0.5)
    assert got == pytest.approx(float(want), abs=1e-15)


def test_lms_by_hand():
    # step 0 (order 1): x = 1 + (1 − 2)(2/5) = 3/5
    # step 1 (order 2), nodes σ₁ = 1, σ₀ = 2: ∫₁^{1/2} (2 − τ) dτ = −5/8, ∫₁^{1/2} (τ − 1) dτ = 1/8
    #   d₁ = 3/10, d₀ = 2/5: x = 3/5 − (5/8)(3/10) + (1/8)(2/5) = 37/80
    assert run("lms", [2, 1, 0.5], order=2) == pytest.approx(37 / 80, abs=1e-15)
    c = solvers.lms_coefficients(np.array([2.0, 1.0, 0.5]), 1, 4)
    np.testing.assert_allclose(c, [-5 / 8, 1 / 8], atol=1e-15)


def _vp(sigma):
    """(α_t, s_t, λ_t) of diffusers' VP notation at VE σ."""
    a = 1 / math.sqrt(1 + sigma**2)
    return a, sigma * a, math.log(a) - math.log(sigma * a)


def test_dpmpp_2m_by_hand():
    # VE: step 0 (1st order) x = (1/2)·1 − (1/2 − 1)(1/5) = 3/5;
    # step 1: D = 3/10, r = 1, D̄ = (3/2)(3/10) − (1/2)(1/5) = 7/20, x = 3/10 + 7/40 = 19/40
    assert run("dpmpp_2m", [2, 1, 0.5], lower_order_final=False) == pytest.approx(
        19 / 40, abs=1e-15
    )
    # diffusers' lower_order_final (n < 15): the last step is first order:
    # x = (1/2)(3/5) + (1/2)(3/10) = 9/20
    assert run("dpmpp_2m", [2, 1, 0.5]) == pytest.approx(9 / 20, abs=1e-15)
    # the same in the VP form of Lu et al. Alg. 2 (x_vp = α x):
    (a0, s0, l0), (a1, s1, l1), (a2, s2, l2) = _vp(2.0), _vp(1.0), _vp(0.5)
    m0 = 1 / 5
    x1 = (s1 / s0) * (a0 * 1.0) - a1 * (math.exp(-(l1 - l0)) - 1) * m0
    m1 = (x1 / a1) / 2
    h, h0 = l2 - l1, l1 - l0
    dbar = (1 + 1 / (2 * (h0 / h))) * m1 - m0 / (2 * (h0 / h))
    x2 = (s2 / s1) * x1 - a2 * (math.exp(-h) - 1) * dbar
    assert run("dpmpp_2m", [2, 1, 0.5], lower_order_final=False) == pytest.approx(
        x2 / a2, rel=1e-14
    )
    # uneven λ steps, σ = 2, 1, 1/4: h₀ = log 2, h₁ = log 4, r = 1/2, e^{−h₁} = 1/4;
    # D̄ = (1 + 1/(2r)) (3/10) − (1/5)/(2r) = 3/5 − 1/5 = 2/5, x = (1/4)(3/5) + (3/4)(2/5) = 9/20
    assert run("dpmpp_2m", [2, 1, 0.25], lower_order_final=False) == pytest.approx(0.45, abs=1e-15)
    # into σ = 0 the step is x̂_0 itself: 3/10
    assert run("dpmpp_2m", [2, 1, 0], lower_order_final=False) == pytest.approx(3 / 10, abs=1e-15)


def test_dpmpp_2m_sde_by_hand():
    # η = 1: e^{−ηh} = 1/2, e^{−ĥ} = 1/4, noise scale σ_{i+1}√(1 − 1/4) = σ_{i+1}√3/2.
    # step 0: x = (1/2)(1/2)·1 + (3/4)(1/5) + (√3/2) z₀ = 2/5 + √3/2 (z₀ = 1)
    # step 1: D = x/2, x' = (1/4) x + (3/4) D + c (D − 1/5)/1 + (1/2)(√3/2) z₁,
    #   c = ½·3/4 (midpoint) or (3/4)/(−2 log 2) + 1 (heun)
    x1 = 0.4 + math.sqrt(3) / 2
    d1 = x1 / 2
    for solver_type, c in (("midpoint", 3 / 8), ("heun", 1 - 0.75 / (2 * math.log(2)))):
        want = x1 / 4 + 0.75 * d1 + c * (d1 - 0.2) - math.sqrt(3) / 4
        got = run(
            "dpmpp_2m_sde",
            [2, 1, 0.5],
            noise=[1, -1],
            solver_type=solver_type,
            lower_order_final=False,
        )
        assert got == pytest.approx(want, abs=1e-14), solver_type
    # diffusers' VP form of the first-order SDE step: (s_t/s_s) e^{−h} x + α_t(1 − e^{−2h}) m
    # + s_t √(1 − e^{−2h}) z, in VE terms: for z₀ = 1
    (a0, s0, _), (a1, s1, _) = _vp(2.0), _vp(1.0)
    x1_vp = (s1 / s0) * 0.5 * a0 + a1 * 0.75 * 0.2 + s1 * math.sqrt(0.75)
    assert x1_vp / a1 == pytest.approx(x1, abs=1e-14)
    # η = 0 with the midpoint form is dpmpp_2m
    assert run("dpmpp_2m_sde", [2, 1, 0.5], eta=0.0, lower_order_final=False) == pytest.approx(
        19 / 40, abs=1e-15
    )


def test_dpmpp_3m_sde_by_hand():
    # η = 0 (ODE), σ = 4, 2, 1, 1/2: every h = log 2, r₀ = r₁ = 1, e^{−h} = 1/2,
    # φ₂ = (1/2 − 1)/h + 1, φ₃ = φ₂/h − 1/2.
    # step 0: x = 1/2 + (1/2)(1/17) = 9/17        (D(1; 4) = 1/17)
    # step 1: D₁ = (9/17)/5 = 9/85, x = (1/2)(9/17) + (1/2)(9/85) + φ₂ (9/85 − 1/17)
    # step 2: D₂ = x/2, d₁⁰ = D₂ − D₁, d₁¹ = D₁ − D₀, d₁ = d₁⁰ + (d₁⁰ − d₁¹)/2,
    #   d₂ = (d₁⁰ − d₁¹)/2, x = x/2 + D₂/2 + φ₂ d₁ − k φ₃ d₂ (k = 1 published, 2 Taylor)
    h = math.log(2)
    p2 = -0.5 / h + 1
    p3 = p2 / h - 0.5
    m0 = 1 / 17
    x = 9 / 17
    m1 = x / 5
    x = x / 2 + m1 / 2 + p2 * (m1 - m0)
    m2 = x / 2
    d10, d11 = m2 - m1, m1 - m0
    d1, d2 = d10 + (d10 - d11) / 2, (d10 - d11) / 2
    for k, opt in ((1, False), (2, True)):
        want = x / 2 + m2 / 2 + p2 * d1 - k * p3 * d2
        got = run("dpmpp_3m_sde", [4, 2, 1, 0.5], eta=0.0, lower_order_final=False, taylor_d2=opt)
        assert got == pytest.approx(want, abs=1e-14), opt
    # lower_order_final (n = 3 < 15): step 1 second order, step 2 first order
    want = (x + m2) / 2
    got = run("dpmpp_3m_sde", [4, 2, 1, 0.5], eta=0.0)
    assert got == pytest.approx(want, abs=1e-14)
    # η = 1, z = 0, the same grid: ĥ = 2h, e^{−ĥ} = 1/4, e^{−ηh} = 1/2, φ₂(ĥ), φ₃(ĥ).
    # step 0: x = (1/2)(1/2)·1 + (3/4)(1/17);  step 1: x = x/4 + (3/4) D₁ + φ₂(ĥ)(D₁ − D₀)
    # step 2, published (k-diffusion):  x/4 + (3/4) D₂ + φ₂(ĥ) d₁ − φ₃(ĥ) d₂;
    # diffusers' sde-dpmsolver++ order 3, in VE terms (÷ α_t):
    #   x/4 + (1 − e^{−2h}) D₂ + ((1 − e^{−2h})/(−2h) + 1) d₁ + ((1 − e^{−2h} − 2h)/(2h)² − ½) d₂
    q2 = -0.75 / (2 * h) + 1
    q3 = q2 / (2 * h) - 0.5
    x = 0.25 + 0.75 / 17
    m1 = x / 5
    x = x / 4 + 0.75 * m1 + q2 * (m1 - m0)
    m2 = x / 2
    d10, d11 = m2 - m1, m1 - m0
    d1, d2 = d10 + (d10 - d11) / 2, (d10 - d11) / 2
    zero = [0.0, 0.0, 0.0]
    published = x / 4 + 0.75 * m2 + q2 * d1 - q3 * d2
    got = run("dpmpp_3m_sde", [4, 2, 1, 0.5], noise=zero, lower_order_final=False)
    assert got == pytest.approx(published, abs=1e-14)
    diffusers = (
        x / 4 + 0.75 * m2 + (0.75 / (-2 * h) + 1) * d1 + ((0.75 - 2 * h) / (2 * h) ** 2 - 0.5) * d2
    )
    got = run(
        "dpmpp_3m_sde", [4, 2, 1, 0.5], noise=zero, lower_order_final=False, diffusers_sde_d2=True
    )
    assert got == pytest.approx(diffusers, abs=1e-14)
    assert diffusers - published == pytest.approx(-d2, abs=1e-14)
    # η = 1, first step: e^{−ĥ} = 1/4, x = 1/4 + (3/4)(1/17) + 2·√(3/4)·z₀
    got = run("dpmpp_3m_sde", [4, 2], noise=[1.0])
    assert got == pytest.approx(0.25 + 0.75 / 17 + math.sqrt(3), abs=1e-14)


def test_unipc_by_hand():
    # bh2, order 2, σ = 2, 1, 1/2 (h = log 2, φ = e^{−h} − 1 = −1/2 = B(h)):
    # UniP-1: x₁ = (1/2)·1 − φ·(1/5) = 3/5; D₁ = D(3/5; 1) = 3/10
    # UniC-1 (ρ = 1/2): x₁ᶜ = 3/5 − B·(1/2)(3/10 − 1/5) = 3/5 + 1/40 = 5/8
    # UniP-2 from x₁ᶜ: r₁ = log(σ₁/σ₀)/h = −1, D₁' = (1/5 − 3/10)/(−1) = 1/10, ρ = 1/2:
    #   x₂ = (1/2)(5/8) − φ(3/10) − B(1/2)(1/10) = 5/16 + 3/20 + 1/40 = 39/80
    assert run("unipc", [2, 1, 0.5], lower_order_final=False) == pytest.approx(39 / 80, abs=1e-15)
    # without the corrector x₂ = (1/2)(3/5) + 3/20 + 1/40 = 19/40 (DPM-Solver++(2M)'s value)
    got = run("unipc", [2, 1, 0.5], lower_order_final=False, corrector=False)
    assert got == pytest.approx(19 / 40, abs=1e-15)
    assert run("unipc", [2, 1, 0.5], lower_order_final=False, disable_corrector=(0,)) == (
        pytest.approx(19 / 40, abs=1e-15)
    )
    # lower_order_final: the last step is UniP-1: x₂ = (1/2)(5/8) + (1/2)(3/10) = 37/80
    assert run("unipc", [2, 1, 0.5]) == pytest.approx(37 / 80, abs=1e-15)
    # bh1: B(h) = −h; UniC-1: x₁ᶜ = 3/5 + h(1/2)(1/10); UniP-2: b₁ = (φ/(−h) − 1)/B, ρ = 1/2
    h = math.log(2)
    x1c = 0.6 + h * 0.05
    want = 0.5 * x1c + 0.15 + h * 0.5 * 0.1
    got = run("unipc", [2, 1, 0.5], lower_order_final=False, solver_type="bh1")
    assert got == pytest.approx(want, abs=1e-15)


def _exact_step(x, s0, t, prim):
    """x(σ=t) of dx/dσ = (x − m(λ))/σ, λ = −log σ, from x at σ = s0 (eq. 15.7):
    x_t = (t/s0) x + t (P(λ_t) − P(λ_s0)) with P a primitive of e^u m(u)."""
    return (t / s0) * x + t * (prim(-math.log(t)) - prim(-math.log(s0)))


def test_unipc_is_exact_for_polynomial_data_predictions():
    """Where ρ solves R ρ = b (UniP-p, p ≥ 3; UniC-p, p ≥ 2) the step integrates D(λ) through
    its p (predictor) or p + 1 (corrector) λ-points exactly: one step is exact for D a
    polynomial of degree p − 1 or p (Zhao et al. 2023 §3).  (UniP-1 is exact for constant D;
    UniP-2 and UniC-1 use ρ = ½, exact only as h → 0.)"""
    s0, t, past = 2.0, 1.3, [3.1, 4.7]  # uneven steps
    polys = {
        1: (lambda u: 1.0 + 0 * u, lambda u: math.exp(u)),
        2: (lambda u: u, lambda u: math.exp(u) * (u - 1)),
        3: (lambda u: u * u, lambda u: math.exp(u) * (u * u - 2 * u + 2)),
        4: (lambda u: u**3, lambda u: math.exp(u) * (u**3 - 3 * u * u + 6 * u - 6)),
    }
    x = np.array([[0.7]])
    for variant in ("bh1", "bh2"):
        for p in (1, 3):
            m, prim = polys[p]  # degree p − 1: the predictor is exact
            ms = [np.array([[m(-math.log(s))]]) for s in past]
            got = solvers._unipc(x, m(-math.log(s0)) + 0 * x, ms, past, s0, t, p, variant)
            want = _exact_step(0.7, s0, t, prim)
            assert float(got[0, 0]) == pytest.approx(want, abs=1e-13), ("P", variant, p)
        for p in (2, 3):
            m, prim = polys[p + 1]  # degree p: the corrector (with D at t) is exact
            ms = [np.array([[m(-math.log(s))]]) for s in past]
            m_t = np.array([[m(-math.log(t))]])
            got = solvers._unipc(x, m(-math.log(s0)) + 0 * x, ms, past, s0, t, p, variant, m_t=m_t)
            assert float(got[0, 0]) == pytest.approx(_exact_step(0.7, s0, t, prim), abs=1e-13), (
                "C",
                variant,
                p,
            )


def test_dpmpp_3m_d2_coefficient():
    """One 3M step (η = 0) with exact history on D(λ) = λ²: the Taylor coefficient −2φ₃ d₂ is
    exact, the published −φ₃ d₂ misses half the curvature term (eq. 19.7 note)."""
    sig = np.array([4.0, 2.9, 2.0, 1.1])
    quad = lambda u: u * u  # noqa: E731
    prim = lambda u: math.exp(u) * (u * u - 2 * u + 2)  # noqa: E731

    def Dq(x, sigma):
        return np.full_like(x, quad(-math.log(float(np.asarray(sigma).ravel()[0]))))

    # start at σ₀ and force the third step only to be compared: the first two steps are
    # first and second order, so measure the third step alone: run from the exact states.
    x0 = 0.5
    xs = [x0]
    for i in range(3):
        xs.append(_exact_step(xs[-1], sig[i], sig[i + 1], prim))
    # the third step (σ₂ → σ₃) from the exact x₂ with history D₀, D₁, D₂:
    h = math.log(sig[2] / sig[3])
    h1, h2 = math.log(sig[1] / sig[2]), math.log(sig[0] / sig[1])
    m0, m1, m2 = (quad(-math.log(s)) for s in sig[2::-1])
    r0, r1 = h1 / h, h2 / h
    d10, d11 = (m0 - m1) / r0, (m1 - m2) / r1
    d1, d2 = d10 + (d10 - d11) * r0 / (r0 + r1), (d10 - d11) / (r0 + r1)
    p2 = math.expm1(-h) / h + 1
    p3 = p2 / h - 0.5
    base = math.exp(-h) * xs[2] - math.expm1(-h) * m0
    assert base + p2 * d1 - 2 * p3 * d2 == pytest.approx(xs[3], abs=1e-13)
    assert abs(base + p2 * d1 - p3 * d2 - xs[3]) > 1e-4
    # and the sampler takes exactly this step (its earlier steps differ from the exact ones
    # by the first- and second-order errors, propagated linearly with factor σ₃/σ_{i+1}):
    for taylor in (False, True):
        got = solvers.dpmpp_3m_sde(
            Dq, sig, x_T=np.array([[x0]]), eta=0.0, lower_order_final=False, taylor_d2=taylor
        )
        e0 = (
            math.exp(-math.log(sig[0] / sig[1])) * x0
            - math.expm1(-math.log(sig[0] / sig[1])) * quad(-math.log(sig[0]))
        ) - xs[1]
        hh = math.log(sig[1] / sig[2])
        step1 = (
            math.exp(-hh) * xs[1]
            - math.expm1(-hh) * m1
            + (math.expm1(-hh) / hh + 1) * (m1 - m2) / (h2 / hh)
        )
        e1 = step1 - xs[2]
        k = 2 if taylor else 1
        third = base + p2 * d1 - k * p3 * d2 - xs[3]
        want = xs[3] + e0 * sig[3] / sig[1] + e1 * sig[3] / sig[2] + third
        assert float(got[0, 0]) == pytest.approx(want, abs=1e-13), taylor


def test_flow_euler_by_hand():
    # t = 1: x̂_0 = 0, u = x = 1, x = 1 + (1/2 − 1)·1 = 1/2
    # t = 1/2: x̂_0 = (1/2)(1/2)/(1/4 + 1/4) = 1/2, u = (1/2 − 1/2)/(1/2) = 0, x = 1/2
    assert run("flow_euler", [1, 0.5, 0]) == pytest.approx(0.5, abs=1e-15)
    # stochastic: x = (1 − σ_{i+1})(x − σ_i u) + σ_{i+1} z.  Step 0 (t = 1, x = 1, u = 1):
    # x̂_0 = 0, x = (1/2)·0 + (1/2)·2 = 1 (z₀ = 2).  Step 1 (t = 1/2, x = 1): x̂_0 =
    # (1/2)/(1/4 + 1/4) = 1, u = 0, x = (1 − 0)·1 + 0·z₁ = 1
    assert run("flow_euler", [1, 0.5, 0], noise=[2, 5], stochastic=True) == pytest.approx(1.0)


def test_dispatcher_and_callback():
    seen = []
    x, traj = solvers.sample(
        D,
        np.array([2.0, 1.0, 0.5]),
        sampler="euler",
        x_T=X1,
        return_trajectory=True,
        callback=lambda i, s, x: seen.append((i, s, float(x[0, 0]))),
    )
    assert [(i, s) for i, s, _ in seen] == [(0, 1.0), (1, 0.5)]
    np.testing.assert_allclose([v for *_, v in seen], [0.6, 0.45], atol=1e-15)
    np.testing.assert_allclose(traj[:, 0, 0], [1.0, 0.6, 0.45], atol=1e-15)
