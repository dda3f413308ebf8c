"""Deterministic tests of the exact ground truth (refdiff.exact) — no statistics, no ledger.

Each identity is checked against an independent derivation: scipy densities, numerical
integration, finite differences, Bayes' rule, hand derivations for T = 1, and the two
published exactness facts of Ho et al. 2020 §3.2 (σ² = β is optimal for x_0 ~ N(0, I),
σ² = β̃ for a point mass).  The sampler-versus-recursion tests run refdiff's DDPM/DDIM loops
with injected noise and the exact denoiser and require the exact affine recursion's answer:
every coefficient bug in the reverse step shows up here, however small.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from refdiff import exact as EX
from refdiff import parameterization as PZ
from refdiff import posterior, sampling
from refdiff import schedule as S
from refdiff.errors import (
    InputError,
    OptionError,
    RandomnessError,
    ShapeError,
    TimestepError,
    UndefinedError,
)
from tests._suite import (
    ddim_options,
    ddpm_options,
    gaussians,
    mixtures,
    rng_for,
    sampler_schedules,
    seeds,
)

MIX1 = EX.GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [[[0.2]], [[0.5]]])
MIX2 = EX.GaussianMixture(
    [0.2, 0.5, 0.3],
    [[-2.0, 1.0], [2.0, 0.0], [0.0, -2.0]],
    [np.eye(2) * 0.3, [[0.5, 0.2], [0.2, 0.4]], np.eye(2) * 0.8],
)
G2 = EX.Gaussian([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]])


# -- data laws ------------------------------------------------------------------------------
def test_gaussian_log_prob_matches_scipy():
    x = np.random.default_rng(0).standard_normal((5, 2))
    want = sps.multivariate_normal(G2.mean, G2.cov).logpdf(x)
    np.testing.assert_allclose(G2.log_prob(x), want, rtol=1e-12)


def test_mixture_log_prob_matches_scipy():
    x = np.random.default_rng(1).standard_normal((6, 2)) * 2
    want = np.log(
        sum(
            w * sps.multivariate_normal(m, c).pdf(x)
            for w, m, c in zip(MIX2.weights, MIX2.means, MIX2.covs)
        )
    )
    np.testing.assert_allclose(MIX2.log_prob(x), want, rtol=1e-12)


def test_sampling_shapes_and_seed_determinism():
    a = MIX2.sample(np.random.default_rng(3), 7)
    b = MIX2.sample(np.random.default_rng(3), 7)
    assert a.shape == (7, 2) and np.array_equal(a, b)
    assert G2.sample(np.random.default_rng(3), 4).shape == (4, 2)
    assert EX.Gaussian([0.0], [[0.0]]).sample(np.random.default_rng(0), 3).tolist() == [[0.0]] * 3


@pytest.mark.parametrize(
    "make, err",
    [
        (lambda: EX.Gaussian([0.0, 1.0], [[1.0, 0.0]]), ShapeError),
        (lambda: EX.Gaussian([0.0, 1.0], [[1.0, 0.5], [0.0, 1.0]]), InputError),
        (lambda: EX.Gaussian([0.0, 1.0], [[1.0, 2.0], [2.0, 1.0]]), InputError),
        (lambda: EX.Gaussian([np.nan], [[1.0]]), InputError),
        (lambda: EX.GaussianMixture([0.5, 0.6], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), InputError),
        (lambda: EX.GaussianMixture([1.0], [[0.0], [1.0]], [[[1.0]]]), ShapeError),
        (lambda: EX.Gaussian([0.0], [[1.0]]).sample(None, 3), RandomnessError),
        (lambda: EX.Gaussian([0.0], [[0.0]]).log_prob([[0.0]]), UndefinedError),
        (lambda: EX.marginal(G2, 1.5), InputError),
        (lambda: EX.marginal(G2, S.linear(10), 11), TimestepError),
        (lambda: EX.marginal(G2, S.linear(10)), InputError),
        (lambda: EX.marginal("data", 0.5), InputError),
    ],
)
def test_bad_input_raises_typed_errors(make, err):
    with pytest.raises(err):
        make()


# -- marginal, score, Tweedie ---------------------------------------------------------------
@functools.cache
def _gauss_legendre() -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(300)


def _quad(f) -> float:
    """∫_{−10}^{10} f(x0) dx0 by 300-node Gauss–Legendre (f vectorised over x0 (n,))."""
    nodes, weights = _gauss_legendre()
    return float(10.0 * weights @ f(10.0 * nodes))


def _joint_density(x: float, ab: float):
    """x0 ↦ p_0(x0) q(x_t = x | x0) for MIX1 (vectorised)."""
    return lambda x0: (
        np.exp(MIX1.log_prob(x0[:, None])) * sps.norm.pdf(x, math.sqrt(ab) * x0, math.sqrt(1 - ab))
    )


def test_quadrature_is_accurate():
    assert _quad(lambda x0: np.exp(MIX1.log_prob(x0[:, None]))) == pytest.approx(1.0, abs=1e-13)


@pytest.mark.parametrize("ab", [0.9, 0.3, 0.01])
def test_marginal_density_is_the_convolution(ab):
    """p_t(x) = ∫ N(x; √ᾱ x0, 1−ᾱ) p_0(x0) dx0, by quadrature (eq. 3.2)."""
    law = EX.marginal(MIX1, ab)
    for x in (-2.0, 0.1, 1.7):
        want = _quad(_joint_density(x, ab))
        assert math.exp(law.log_prob([[x]])[0]) == pytest.approx(want, rel=1e-10)


def test_marginal_of_a_gaussian_and_the_schedule_form():
    s = S.cosine(20)
    law = EX.marginal(G2, s, 7)
    ab = s.alpha_bar[7]
    np.testing.assert_allclose(law.mean, math.sqrt(ab) * G2.mean)
    np.testing.assert_allclose(law.cov, ab * G2.cov + (1 - ab) * np.eye(2))
    assert EX.marginal(G2, s, 0).cov.tolist() == G2.cov.tolist()


@pytest.mark.parametrize("ab", [0.95, 0.5, 0.02])
@pytest.mark.parametrize("data", [MIX2, G2], ids=["mixture", "gaussian"])
def test_score_is_the_gradient_of_the_log_marginal(data, ab):
    """score() against central finite differences of log p_t (h = 1e-5)."""
    x = np.random.default_rng(5).standard_normal((4, 2)) * 1.5
    law = EX.marginal(data, ab)
    h = 1e-5
    fd = np.stack(
        [(law.log_prob(x + h * e) - law.log_prob(x - h * e)) / (2 * h) for e in np.eye(2)], axis=1
    )
    np.testing.assert_allclose(EX.score(data, x, ab), fd, rtol=1e-6, atol=1e-7)


@given(data=mixtures(), ab=st.floats(0.001, 0.999), seed=seeds)
@settings(max_examples=30)
def test_tweedie_identity(data, ab, seed):
    """E[x0|x_t] = (x_t + (1−ᾱ) ∇log p_t(x_t)) / √ᾱ; the two sides are computed independently."""
    x = EX.marginal(data, ab).sample(rng_for(seed), 5)
    lhs = EX.posterior_mean_x0(data, x, ab)
    rhs = (x + (1 - ab) * EX.score(data, x, ab)) / math.sqrt(ab)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-8, atol=1e-8)


def test_posterior_mean_by_quadrature_1d():
    """E[x0|x_t] = ∫ x0 q(x_t|x0) p(x0) dx0 / p_t(x_t) for a 1-D mixture."""
    ab = 0.4
    xs = np.array([[-1.0], [0.3], [2.0]])
    got = EX.posterior_mean_x0(MIX1, xs, ab)[:, 0]
    for x, g in zip(xs[:, 0], got):
        w = _joint_density(x, ab)
        assert g == pytest.approx(_quad(lambda x0, w=w: x0 * w(x0)) / _quad(w), rel=1e-10)


def test_posterior_mean_is_gaussian_conditioning_of_the_forward_joint():
    """For Gaussian data: E[x0|x_t] = m + Σ_{0t} Σ_tt⁻¹ (x_t − √ᾱ m) from forward_joint."""
    ab = 0.3
    joint = EX.forward_joint(G2, [1.0, ab])
    s0t, stt = joint.cov[:2, 2:], joint.cov[2:, 2:]
    x = np.random.default_rng(2).standard_normal((3, 2))
    want = G2.mean + (x - joint.mean[2:]) @ np.linalg.solve(stt, s0t.T)
    np.testing.assert_allclose(EX.posterior_mean_x0(G2, x, ab), want, rtol=1e-12, atol=1e-12)


def test_per_sample_alpha_bar():
    x = np.random.default_rng(4).standard_normal((3, 2))
    ab = np.array([0.9, 0.5, 0.1])
    got = EX.posterior_mean_x0(MIX2, x, ab[:, None])
    for i in range(3):
        np.testing.assert_allclose(got[i], EX.posterior_mean_x0(MIX2, x[i : i + 1], ab[i])[0])


# -- the denoiser callable ------------------------------------------------------------------
def test_denoiser_prediction_types_agree_and_use_base_times():
    base = S.linear(100)
    sched = S.respace(base, [1, 30, 60, 100])
    x = np.random.default_rng(6).standard_normal((3, 2))
    t = np.array([30, 30, 100])
    ab = base.alpha_bar[t][:, None]
    x0 = EX.denoiser(MIX2, sched, "x0")(x, t)
    np.testing.assert_allclose(x0, EX.posterior_mean_x0(MIX2, x, ab))
    for pt in ("epsilon", "v", "score"):
        for sch in (base, sched):  # base times are looked up in either
            out = EX.denoiser(MIX2, sch, pt)(x, t)
            np.testing.assert_allclose(
                PZ.convert(base, x, t, out, pt, "x0"), x0, rtol=1e-10, atol=1e-12
            )
    np.testing.assert_allclose(
        EX.denoiser(MIX2, base, "score")(x, t), EX.score(MIX2, x, ab), rtol=1e-9, atol=1e-12
    )
    with pytest.raises(TimestepError):
        EX.denoiser(MIX2, sched, "x0")(x, np.array([29, 30, 30]))
    with pytest.raises(OptionError):
        EX.denoiser(MIX2, base, "noise")


def test_denoiser_accepts_image_shaped_states():
    g = EX.Gaussian(np.zeros(6), np.eye(6) * 0.5)
    x = np.random.default_rng(0).standard_normal((2, 3, 2))
    out = EX.denoiser(g, S.linear(10), "x0")(x, np.array([5, 5]))
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(
        out.reshape(2, 6), EX.posterior_mean_x0(g, x.reshape(2, 6), S.linear(10).alpha_bar[5])
    )


# -- the exact reverse kernel ---------------------------------------------------------------
def test_reverse_coefficients_match_the_posterior_module():
    """The product-rule coefficients of refdiff.exact against refdiff.posterior (eq. 4.1–4.2)."""
    for sch in (S.cosine(30), S.respace(S.linear(1000), [1, 200, 500, 999, 1000])):
        for t in range(1, sch.T + 1):
            c0, ct, v = EX.reverse_coefficients(sch, t)
            p0, pt = posterior.posterior_coefficients(sch, t)
            assert (c0, ct) == pytest.approx((float(p0), float(pt)), rel=1e-12, abs=1e-15)
            assert v == pytest.approx(
                float(posterior.posterior_variance(sch, t)), rel=1e-12, abs=1e-300
            )


@pytest.mark.parametrize("data", [MIX1, MIX2], ids=["1d", "2d"])
@pytest.mark.parametrize("t", [1, 2, 4])
def test_reverse_kernel_is_bayes_rule(data, t):
    """log q(x_s|x_t) = log q(x_t|x_s) + log p_s(x_s) − log p_t(x_t) (s = previous step)."""
    sch = S.respace(S.cosine(50), [3, 10, 30, 50])
    rng = np.random.default_rng(t)
    D = data.dim
    x_t = EX.marginal(data, sch, t).sample(rng, 4)
    x_s = rng.standard_normal((4, D)) * 1.5
    r = sch.alpha_bar[t] / sch.alpha_bar[t - 1]
    log_fwd = (
        sps.multivariate_normal(np.zeros(D), (1 - r) * np.eye(D))
        .logpdf(x_t - math.sqrt(r) * x_s)
        .reshape(-1)
    )
    want = (
        log_fwd
        + EX.marginal(data, sch, t - 1).log_prob(x_s)
        - EX.marginal(data, sch, t).log_prob(x_t)
    )
    got = EX.reverse_kernel(data, sch, x_t, t).log_prob(x_s)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_reverse_kernel_sampling_and_chain_shapes():
    sch = S.cosine(5)
    rng = np.random.default_rng(0)
    k = EX.reverse_kernel(MIX2, sch, rng.standard_normal((6, 2)), 3)
    assert k.sample(rng).shape == (6, 2)
    x0, traj = EX.reverse_sample(MIX2, sch, 8, rng=rng, return_trajectory=True)
    assert x0.shape == (8, 2) and traj.shape == (6, 8, 2) and np.array_equal(traj[-1], x0)
    with pytest.raises(TimestepError):
        EX.reverse_kernel(MIX2, sch, x0, 0)


# -- schedule anchors: the ᾱ the exact laws take as given ----------------------------------------
def test_named_schedules_have_their_published_alpha_bar():
    """Cosine: ᾱ_t = f(t)/f(0), f(u) = cos²((u/T + s)/(1 + s)·π/2) while β < max_beta
    (Nichol & Dhariwal 2021 eq. 17); linear: β_1 = 1e-4, β_T = 0.02, equally spaced."""
    for T in (5, 50, 1000):
        c = S.cosine(T)
        t = np.arange(T + 1)
        f = np.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
        unclipped = c.beta < 0.999
        np.testing.assert_allclose(c.alpha_bar[unclipped], (f / f[0])[unclipped], rtol=1e-10)
        lin = S.linear(T)
        want = 1e-4 + (0.02 - 1e-4) * np.arange(T) / max(T - 1, 1)
        np.testing.assert_allclose(lin.beta[1:], want, rtol=1e-12)
        np.testing.assert_allclose(lin.alpha_bar, np.cumprod(1 - lin.beta), rtol=1e-12)


def test_beta_is_the_alpha_bar_ratio():
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} on every schedule, respaced ones included (eq. 2.9)."""
    for sch in (
        S.cosine(40),
        S.respace(S.linear(1000), [1, 11, 500, 1000]),
        S.respace(S.cosine(100), [7, 50]),
    ):
        ratio = 1 - sch.alpha_bar[1:] / sch.alpha_bar[:-1]
        np.testing.assert_allclose(sch.beta[1:], ratio, rtol=1e-12, err_msg=repr(sch))


# -- the exact sampler laws -----------------------------------------------------------------
def test_ddpm_and_ddim_law_for_T1_by_hand():
    """T = 1, data N(μ, s²): the single step returns x̂0 = E[x0|x1], x1 ~ N(0, 1), so the law
    is N(μ β / C, ᾱ s⁴ / C²) with ᾱ = 1 − β, C = ᾱ s² + β."""
    beta, mu, s2 = 0.3, 0.7, 2.0
    sch = S.from_betas([beta])
    ab = 1 - beta
    C = ab * s2 + beta
    g = EX.Gaussian([mu], [[s2]])
    for law in (
        EX.ddpm_law(g, sch),
        EX.ddpm_law(g, sch, variance_type="fixed_large"),
        EX.ddim_law(g, sch, eta=0.7),
    ):
        assert law.mean[0] == pytest.approx(mu * beta / C, rel=1e-13)
        assert law.cov[0, 0] == pytest.approx(ab * s2**2 / C**2, rel=1e-13)
    # DDIM ending at ᾱ = f < 1: x0 = √f x̂0 + √(1−f) ε̂ = k1 x1 + k0, η = 0.
    f = 0.9
    k1 = math.sqrt(f) * math.sqrt(ab) * s2 / C + math.sqrt(1 - f) * (1 - ab * s2 / C) / math.sqrt(
        beta
    )
    k0 = math.sqrt(f) * mu * beta / C - math.sqrt(1 - f) * math.sqrt(
        ab
    ) * mu * beta / C / math.sqrt(beta)
    law = EX.ddim_law(g, sch, final_alpha_bar=f)
    assert law.mean[0] == pytest.approx(k0, rel=1e-12)
    assert law.cov[0, 0] == pytest.approx(k1**2, rel=1e-12)


@pytest.mark.parametrize(
    "sch",
    [S.cosine(6), S.respace(S.linear(1000), [1, 100, 400, 1000]), S.from_betas([0.5, 0.9, 0.2])],
    ids=["cosine6", "respaced", "big-betas"],
)
def test_ho_et_al_exactness_facts(sch):
    """Started from the exact marginal of x_T: σ² = β (fixed_large) reproduces every marginal
    of N(m, I) data down to x_1 (the last step adds no noise, so x_0 is not exact); σ² = β̃
    (fixed_small) every marginal of a point mass; so does DDIM for any η (its non-Markovian
    process keeps q(x_{t−1}|x_0); Song et al. 2021 Lemma 1)."""
    m = np.array([0.8, -1.2])
    unit = EX.Gaussian(m, np.eye(2))
    point = EX.Gaussian(m, np.zeros((2, 2)))
    for data, law_fn, opts, last in (
        (unit, EX.ddpm_law, {"variance_type": "fixed_large"}, 1),
        (point, EX.ddpm_law, {"variance_type": "fixed_small"}, 0),
        (point, EX.ddim_law, {"eta": 0.0}, 0),
        (point, EX.ddim_law, {"eta": 0.6}, 0),
    ):
        laws = law_fn(
            data, sch, start=EX.marginal(data, sch, sch.T), return_trajectory=True, **opts
        )
        for k, law in enumerate(laws[: len(laws) - last]):
            want = EX.marginal(data, sch, sch.T - k)
            np.testing.assert_allclose(law.mean, want.mean, atol=1e-12)
            np.testing.assert_allclose(law.cov, want.cov, atol=1e-12)
    # …and they are not exact otherwise (the check above can fail):
    wrong = EX.ddpm_law(unit, sch, start=EX.marginal(unit, sch, sch.T), variance_type="fixed_small")
    assert not np.allclose(wrong.cov, unit.cov, atol=1e-6)


def test_ddim_eta_one_is_ddpm_fixed_small():
    """σ(η=1)² = β̃ and √(1−ᾱ_{t−1}−β̃) ε̂ completes the posterior mean (Song et al. 2021)."""
    sch = S.respace(S.cosine(200), [1, 5, 50, 120, 200])
    a = EX.ddim_law(G2, sch, eta=1.0)
    b = EX.ddpm_law(G2, sch)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-12)
    np.testing.assert_allclose(a.cov, b.cov, atol=1e-12)


def test_ddim_final_alpha_bar_first_ends_where_it_is():
    """Unrespaced with final ᾱ = ᾱ_1: the last step maps x_1 to itself (σ = 0)."""
    sch = S.linear(20)
    laws = EX.ddim_law(G2, sch, final_alpha_bar="first", return_trajectory=True)
    np.testing.assert_allclose(laws[-1].mean, laws[-2].mean, atol=1e-13)
    np.testing.assert_allclose(laws[-1].cov, laws[-2].cov, atol=1e-13)


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: EX.ddpm_law(G2, S.linear(10), variance_type="learned_range"), InputError),
        (lambda: EX.ddpm_law(G2, S.linear(10), clip=1.0), InputError),
        (lambda: EX.ddim_law(G2, S.linear(10), threshold_ratio=0.9), InputError),
        (lambda: EX.ddpm_law(MIX2, S.linear(10)), InputError),
        (lambda: EX.ddpm_law(G2, S.linear(10), variance="fixed_small"), OptionError),
        (lambda: EX.ddim_law(G2, S.linear(10), eta=1.5), InputError),
        (lambda: EX.ddim_law(G2, S.linear(10), final_alpha_bar="zero"), OptionError),
        (lambda: EX.ddim_law(G2, S.rescale_zero_terminal_snr(S.linear(10))), UndefinedError),
        (lambda: EX.ddpm_law(G2, S.linear(10), prediction_type="sample"), OptionError),
    ],
)
def test_law_refusals(call, err):
    with pytest.raises(err):
        call()


# -- the samplers ARE the exact recursion (injected noise) --------------------------------------
def _run_recursion(steps, x_T, step_noise):
    x = x_T
    for k, s in enumerate(steps):
        x = x @ s.A.T + s.b + s.sigma * step_noise[k]
    return x


@given(bs=sampler_schedules(), data=gaussians(), seed=seeds, opt=st.data())
@settings(max_examples=150)
def test_ddpm_sample_is_the_exact_affine_recursion(bs, data, seed, opt):
    """refdiff.sampling.ddpm_sample with the exact denoiser and injected noise equals
    x ← A x + b + σ z with (A, b, σ) of refdiff.exact, to rounding."""
    base, sch = bs
    options = opt.draw(ddpm_options(base))
    x_T, noise = sampling.draw_noise(rng_for(seed), sch.T, (3, data.dim))
    den = EX.denoiser(data, base, options["prediction_type"])
    got = sampling.ddpm_sample(den, sch, x_T=x_T, step_noise=noise, **options)
    want = _run_recursion(EX.ddpm_affine_steps(data, sch, **options), x_T, noise)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)


@given(bs=sampler_schedules(), data=gaussians(), seed=seeds, opt=st.data())
@settings(max_examples=150)
def test_ddim_sample_is_the_exact_affine_recursion(bs, data, seed, opt):
    """As above for ddim_sample, over η, final ᾱ, final-step noise and ε re-derivation."""
    base, sch = bs
    options = opt.draw(ddim_options(base))
    x_T, noise = sampling.draw_noise(rng_for(seed), sch.T, (3, data.dim))
    den = EX.denoiser(data, base, options["prediction_type"])
    got = sampling.ddim_sample(den, sch, x_T=x_T, step_noise=noise, **options)
    want = _run_recursion(EX.ddim_affine_steps(data, sch, **options), x_T, noise)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("ddpm", {"variance_type": "fixed_small"}),
        ("ddpm", {"variance_type": "fixed_large", "prediction_type": "v"}),
        ("ddim", {"eta": 0.5, "final_alpha_bar": "first", "final_step_noise": True}),
        ("ddim", {"eta": 0.0, "prediction_type": "x0"}),
    ],
)
def test_the_law_is_the_samplers_law_by_probing(kind, options):
    """Monte-Carlo-free: with the exact denoiser the sampler is affine in (x_T, z_1..z_N), so
    running it on 0 and on each unit vector gives x_0 = M u + c exactly, and the law of x_0 for
    u ~ N(0, I) is N(c, M Mᵀ): compare with ddpm_law / ddim_law."""
    base = S.cosine(100)
    sch = S.respace(base, [3, 40, 70, 100])
    D, N = G2.dim, sch.T
    n_in = D + N * D
    u = np.vstack([np.zeros(n_in), np.eye(n_in)])  # row 0: baseline; rows 1..: probes
    x_T = u[:, :D]
    noise = u[:, D:].reshape(-1, N, D).transpose(1, 0, 2)
    den = EX.denoiser(G2, base, options.get("prediction_type", "epsilon"))
    run = sampling.ddpm_sample if kind == "ddpm" else sampling.ddim_sample
    out = run(den, sch, x_T=x_T, step_noise=noise, **options)
    c, M = out[0], (out[1:] - out[0]).T  # (D,), (D, n_in)
    law = (EX.ddpm_law if kind == "ddpm" else EX.ddim_law)(G2, sch, **options)
    np.testing.assert_allclose(law.mean, c, atol=1e-12)
    np.testing.assert_allclose(law.cov, M @ M.T, atol=1e-12)
