"""refdiff.flow: the straight path, its velocity, shifts, flow ↔ σ-view adapters
(docs/math.md §18), by hand and as Hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import exact_sigma as X
from refdiff import flow as F
from refdiff.errors import InputError
from refdiff.exact import Gaussian
from tests.strategies import examples, seeds

unit = st.floats(min_value=0.0, max_value=1.0)
shifts = st.floats(min_value=0.05, max_value=20.0)


def test_path_and_shift_by_hand():
    x0, eps = np.array([[2.0]]), np.array([[-1.0]])
    assert F.interpolate(x0, eps, 0.25)[0, 0] == pytest.approx(0.75 * 2 - 0.25)
    assert F.velocity_target(x0, eps)[0, 0] == -3.0
    # s = 3, σ = 1/2: 1.5/(1 + 1) = 3/4
    assert F.shift(0.5, 3.0) == pytest.approx(0.75, abs=1e-15)
    assert F.time_shift(0.5, math.log(3.0)) == pytest.approx(0.75, abs=1e-15)
    assert F.time_shift(0.5, 3.0, "linear") == pytest.approx(0.75, abs=1e-15)
    # Flux: μ(256) = 0.5, μ(4096) = 1.15
    assert F.flux_mu(256) == pytest.approx(0.5) and F.flux_mu(4096) == pytest.approx(1.15)
    # n = 2, shift 3, σ_min 1/2: [1, 3/4], then 0
    np.testing.assert_allclose(F.flow_sigmas(2, shift_factor=3.0), [1.0, 0.75, 0.0], atol=1e-15)
    np.testing.assert_allclose(F.flow_sigmas(2, mu=math.log(3.0)), [1.0, 0.75, 0.0], atol=1e-15)


@settings(max_examples=examples(80), deadline=None)
@given(unit, shifts, shifts)
def test_shift_composes_and_inverts(sigma, a, b):
    np.testing.assert_allclose(F.shift(F.shift(sigma, a), b), F.shift(sigma, a * b), atol=1e-12)
    np.testing.assert_allclose(F.unshift(F.shift(sigma, a), a), sigma, atol=1e-12)
    assert F.shift(0.0, a) == 0.0 and F.shift(1.0, a) == pytest.approx(1.0, abs=1e-15)


@settings(max_examples=examples(40), deadline=None)
@given(shifts, st.integers(2, 50))
def test_shifted_grids_decrease_and_shift_more_for_larger_s(s, n):
    g = F.flow_sigmas(n, shift_factor=s)
    assert np.all(np.diff(g) < 0) and g[0] == pytest.approx(1.0) and g[-1] == 0.0
    bigger = F.flow_sigmas(n, shift_factor=2 * s)
    assert np.all(bigger[1:-1] > g[1:-1])


@settings(max_examples=examples(40), deadline=None)
@given(seeds, st.floats(0.01, 0.99))
def test_velocity_and_denoiser_adapters_invert(seed, t):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((2, 2))
    g = Gaussian(rng.standard_normal(2), A @ A.T + 0.1 * np.eye(2))
    u = X.velocity(g)
    x = rng.standard_normal((5, 2))
    tt = np.full(5, t)
    u2 = F.velocity_from_denoiser(F.denoiser_from_velocity(u))
    np.testing.assert_allclose(u2(x, tt), u(x, tt), rtol=1e-9, atol=1e-9)
    # σ ↔ t (eq. 18.5)
    assert F.flow_t(F.ve_sigma(t)) == pytest.approx(t, rel=1e-12)


def test_exact_velocity_is_the_conditional_expectation():
    """u(x, t) = E[ε − x_0 | x_t = x]: for N(m, S) data the regression of ε − x_0 on x_t is
    linear, with slope Cov(ε − x_0, x_t) Cov(x_t)⁻¹ (computed here from the joint law)."""
    g = Gaussian(np.array([1.0, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]]))
    t = 0.3
    I = np.eye(2)
    cov_x = (1 - t) ** 2 * g.cov + t**2 * I
    cov_ux = t * I - (1 - t) * g.cov  # Cov(ε − x_0, (1−t)x_0 + tε)
    x = np.array([[0.2, 0.9], [-1.0, 0.0]])
    slope = cov_ux @ np.linalg.inv(cov_x)
    want = -g.mean + (x - (1 - t) * g.mean) @ slope.T
    np.testing.assert_allclose(X.velocity(g)(x, np.full(2, t)), want, rtol=1e-12)


def test_errors_name_their_argument():
    for call, arg in (
        (lambda: F.shift(0.5, 0.0), "s"),
        (lambda: F.shift(1.5, 2.0), "sigma"),
        (lambda: F.flow_sigmas(0), "n"),
        (lambda: F.time_shift(0.5, -1.0, "linear"), "mu"),
        (lambda: F.flux_mu(0), "seq_len"),
    ):
        with pytest.raises(InputError) as e:
            call()
        assert e.value.argument == arg
