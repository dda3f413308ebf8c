"""The σ-view samplers against exact laws (docs/math.md §19.5).

- Small step counts, Gaussian data: with the exact denoiser every sampler is affine in
  (x_T, z_0, …, z_{n−1}), so its output law is exactly Gaussian (exact_sigma.sampler_law,
  eq. 19.14).  Samples drawn through the ``rng`` path must follow it: one
  stats.assert_gaussian per sampler at α = 1e-7 (n = 20 000; it detects a Mahalanobis mean
  shift 0.057 and a relative variance error 0.083 with probability 0.99).
- Point-mass data: D(x; σ) = m for every σ, and every step of every sampler then maps
  N(m, σ_i² I) exactly onto N(m, σ_{i+1}² I) (deterministic steps scale x − m by σ_{i+1}/σ_i,
  stochastic ones split σ_{i+1}² into a scaled part and fresh noise): the exact law at σ_n is
  N(m, σ_n² I) for any grid (non-statistical).  Except diffusers' churn
  (``churn_model_input="unchurned"``): ε̂ comes from the state before the churn, so one step
  gives variance (σ_i + σ_{i+1} − σ̂)² + σ̂² − σ_i² > σ_{i+1}² (stated exactly below).
- Gaussian-mixture data, 50-100 steps: samples within a stated KS tolerance (the
  discretisation bias, measured at n = 2·10⁵: Euler/Euler-ancestral 100 steps ≤ 0.013, flow
  Euler 100 steps with shift 3 ≤ 0.007, the 2nd-4th order samplers ≤ 0.0035) of the exact
  data law, at α = 1e-7 each.
- diffusers' stochastic flow sampling (x_{i+1} = (1−σ_{i+1}) x̂_0 + σ_{i+1} z) re-noises the
  posterior *mean*: its law does not converge to the data law (stated as a property).
"""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import exact_sigma as X
from refdiff import flow as F
from refdiff import sigma as S
from refdiff import solvers, stats
from refdiff.exact import Gaussian, GaussianMixture
from tests._suite import rng_for

ALPHA = 1e-7
N_SAMPLES = 20_000

G2 = Gaussian(np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]]))

# sampler case → (sampler, options)
CASES = {
    "euler": ("euler", {}),
    "euler churn": ("euler", {"s_churn": 1.0}),
    "euler churn unchurned": ("euler", {"s_churn": 1.0, "churn_model_input": "unchurned"}),
    "euler_ancestral": ("euler_ancestral", {}),
    "euler_ancestral eta=0.5": ("euler_ancestral", {"eta": 0.5}),
    "heun churn": ("heun", {"s_churn": 2.0}),
    "lms": ("lms", {}),
    "dpmpp_2m": ("dpmpp_2m", {}),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}),
    "dpmpp_2m_sde heun": ("dpmpp_2m_sde", {"solver_type": "heun", "lower_order_final": False}),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {"lower_order_final": False}),
    "unipc-3": ("unipc", {"order": 3, "lower_order_final": False}),
    "flow_euler": ("flow_euler", {}),
    "flow_euler stochastic": ("flow_euler", {"stochastic": True}),
    "dpm_2 churn": ("dpm_2", {"s_churn": 2.0}),
}


def _grid(sampler: str, n: int = 5) -> np.ndarray:
    if sampler == "flow_euler":
        return F.flow_sigmas(n, shift_factor=3.0)
    return S.karras(n, 0.1, 10.0)


def _model(sampler: str, data):
    return X.velocity(data) if sampler == "flow_euler" else X.denoiser(data)


def law_check(case: str, seed: int):
    sampler, options = CASES[case]
    sig = _grid(sampler)
    law = X.sampler_law(sampler, G2, sig, **options)
    x = solvers.sample(
        _model(sampler, G2), sig, (N_SAMPLES, 2), sampler=sampler, rng=rng_for(seed), **options
    )
    return stats.check_gaussian(x, law.mean, law.cov, false_fail_rate=ALPHA, name=case)


@pytest.mark.parametrize("case", list(CASES))
def test_samples_follow_the_exact_law(case):
    stats.assert_check(law_check(case, list(CASES).index(case)))


@pytest.mark.parametrize("case", [c for c in CASES if c != "euler churn unchurned"])
def test_point_mass_is_sampled_exactly_at_any_step_count(case):
    sampler, options = CASES[case]
    m = np.array([0.7, -0.2])
    point = Gaussian(m, np.zeros((2, 2)))
    for n in (1, 2, 3, 7):
        sig = _grid(sampler, n)
        if sampler == "flow_euler":  # flow state (1−σ) x_0 + σ ε: law N((1−σ) m, σ² I)
            end = sig[-1]
            law = X.sampler_law(sampler, point, sig, **options)
            np.testing.assert_allclose(law.mean, (1 - end) * m, atol=1e-12)
        else:
            sig = S.karras(n, 0.1, 10.0, final_sigma=0.05)
            start = Gaussian(m, sig[0] ** 2 * np.eye(2))
            law = X.sampler_law(sampler, point, sig, start=start, **options)
            end = sig[-1]
            np.testing.assert_allclose(law.mean, m, atol=1e-12)
        np.testing.assert_allclose(law.cov, end**2 * np.eye(2), atol=1e-12)


def test_unchurned_euler_inflates_the_variance_of_a_point_mass():
    m = np.array([0.7, -0.2])
    point = Gaussian(m, np.zeros((2, 2)))
    for s0, s1, churn in ((2.0, 1.0, 0.3), (10.0, 0.5, 0.4), (1.0, 0.0, 0.1)):
        sig = np.array([s0, s1])
        opts = {"s_churn": churn, "churn_model_input": "unchurned"}
        law = X.sampler_law("euler", point, sig, start=Gaussian(m, s0**2 * np.eye(2)), **opts)
        s_hat = s0 * (1 + min(churn, np.sqrt(2) - 1))
        var = (s0 + s1 - s_hat) ** 2 + s_hat**2 - s0**2
        np.testing.assert_allclose(law.cov, var * np.eye(2), rtol=1e-12)
        assert var > s1**2
        churned = X.sampler_law(
            "euler", point, sig, start=Gaussian(m, s0**2 * np.eye(2)), s_churn=churn
        )
        np.testing.assert_allclose(churned.cov, s1**2 * np.eye(2), atol=1e-12)


MIX = GaussianMixture(
    np.array([0.3, 0.5, 0.2]),
    np.array([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]]),
    np.array([np.diag([0.1, 0.3]), [[0.2, 0.1], [0.1, 0.3]], np.diag([0.5, 0.05])]),
)
# case → (sampler, options, steps, KS tolerance)
MIX_CASES = {
    "euler": ("euler", {}, 100, 0.03),
    "euler_ancestral": ("euler_ancestral", {}, 100, 0.03),
    "heun": ("heun", {}, 50, 0.01),
    "lms": ("lms", {}, 100, 0.01),
    "dpmpp_2m": ("dpmpp_2m", {}, 50, 0.01),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}, 100, 0.01),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {}, 100, 0.01),
    "unipc-3": ("unipc", {"order": 3}, 50, 0.01),
    "flow_euler shift 3": ("flow_euler", {}, 100, 0.02),
    "dpm_2": ("dpm_2", {}, 50, 0.01),
}


@pytest.mark.parametrize("case", list(MIX_CASES))
def test_mixture_data_law_at_many_steps(case):
    sampler, options, n, tol = MIX_CASES[case]
    if sampler == "flow_euler":
        sig = F.flow_sigmas(n, shift_factor=3.0)
    else:
        sig = S.karras(n, 0.002, 80.0)
    rng = rng_for(1000 + list(MIX_CASES).index(case))
    x = solvers.sample(
        _model(sampler, MIX), sig, (N_SAMPLES, 2), sampler=sampler, rng=rng, **options
    )
    stats.assert_mixture(x, MIX, false_fail_rate=ALPHA, tolerance=tol, name=f"mixture {case}")


def test_stochastic_flow_sampling_does_not_converge_to_the_data_law():
    """Re-noising x̂_0 = E[x_0|x] (not a draw of x_0) shrinks the covariance at every step:
    at 64 and 128 steps the law has converged (it moves < 0.05) to a law whose covariance is
    > 0.2 from the data's, while deterministic flow Euler is within 0.03 of it."""
    laws = {}
    for stochastic in (False, True):
        for n in (64, 128):
            sig = np.linspace(1.0, 0.0, n + 1)
            laws[stochastic, n] = X.sampler_law("flow_euler", G2, sig, stochastic=stochastic)
    assert np.abs(laws[False, 128].cov - G2.cov).max() < 0.03
    assert np.abs(laws[True, 128].cov - laws[True, 64].cov).max() < 0.05
    assert np.abs(laws[True, 128].cov - G2.cov).max() > 0.2
