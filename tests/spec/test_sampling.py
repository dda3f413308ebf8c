"""Sampling loops (docs/math.md §8): hand-run loops, noise layout, trajectory, callbacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import respacing as RS
from refdiff import reverse as R
from refdiff import sampling as SA
from refdiff import schedule as S
from refdiff.errors import RandomnessError, ShapeError
from tests.strategies import examples, normal, schedules, seeds, state_shapes

SQ = math.sqrt


def zero_eps(x, t):
    return np.zeros_like(x)


def linear_denoiser(x, t):
    """A deterministic denoiser that depends on x and on the (base) time."""
    return 0.3 * x + 0.01 * t.reshape((-1,) + (1,) * (x.ndim - 1))


# -- hand-run loops, T = 2, β = (0.1, 0.2): ᾱ = (0.9, 0.72) ------------------------------------
def test_ddpm_loop_by_hand():
    s = S.from_betas([0.1, 0.2])
    # with ε̂ = 0 the DDPM mean is x_t/√α_t (Ho eq. 11), variance β̃_2 = 0.2·0.1/0.28 = 1/14
    # step 0 (t = 2 → 1):  x_1 = 1/√0.8 + √(1/14)·0.5
    # step 1 (t = 1 → 0):  x_0 = x_1/√0.9, no noise
    x1 = 1 / SQ(0.8) + SQ(1 / 14) * 0.5
    x, traj = SA.ddpm_sample(
        zero_eps, s, x_T=[[1.0]], step_noise=[[[0.5]], [[0.3]]], return_trajectory=True
    )
    np.testing.assert_allclose(traj[:, 0, 0], [1.0, x1, x1 / SQ(0.9)], rtol=1e-14)
    assert x[0, 0] == traj[-1, 0, 0]


def test_ddim_loop_by_hand():
    s = S.from_betas([0.1, 0.2])
    # η = 0, ε̂ = 0: x_{t−1} = √ᾱ_{t−1}·x_t/√ᾱ_t; x_1 = √0.9/√0.72, x_0 = 1/√0.72
    x = SA.ddim_sample(zero_eps, s, x_T=[[1.0]])
    assert x[0, 0] == pytest.approx(1 / SQ(0.72), rel=1e-14)
    # η = 1 at t = 2: σ² = (0.1/0.28)·(1 − 0.72/0.9) = 1/14; mean √0.9·x̂_0 + √(0.1 − 1/14)·0
    x = SA.ddim_sample(zero_eps, s, x_T=[[1.0]], step_noise=[[[0.5]], [[9.0]]], eta=1.0)
    x1 = SQ(0.9) / SQ(0.72) + SQ(1 / 14) * 0.5
    assert x[0, 0] == pytest.approx(x1 / SQ(0.9), rel=1e-14)


@given(schedules(max_T=12), state_shapes(), seeds)
@settings(max_examples=examples(20), deadline=None)
def test_loops_are_the_steps_in_order(sch, shape, seed):
    x_T, step_noise = SA.draw_noise(np.random.default_rng(seed), sch.T, shape)
    x = x_T.copy()
    for k in range(sch.T):
        t = sch.T - k
        out = linear_denoiser(x, np.full(shape[0], sch.timesteps[t]))
        x = R.ddpm_step(sch, x, t, out, noise=step_noise[k], clip=2.0)
    got = SA.ddpm_sample(linear_denoiser, sch, x_T=x_T, step_noise=step_noise, clip=2.0)
    np.testing.assert_array_equal(got, x)


# -- noise layout: rng equals injected noise ---------------------------------------------------
@given(schedules(max_T=10), state_shapes(), seeds)
@settings(max_examples=examples(20), deadline=None)
def test_rng_equals_draw_noise(sch, shape, seed):
    x_T, step_noise = SA.draw_noise(np.random.default_rng(seed), sch.T, shape)
    assert x_T.shape == shape and step_noise.shape == (sch.T, *shape)
    a = SA.ddpm_sample(linear_denoiser, sch, shape, rng=np.random.default_rng(seed))
    b = SA.ddpm_sample(linear_denoiser, sch, x_T=x_T, step_noise=step_noise)
    np.testing.assert_array_equal(a, b)
    a = SA.ddim_sample(linear_denoiser, sch, shape, rng=np.random.default_rng(seed), eta=0.7)
    b = SA.ddim_sample(linear_denoiser, sch, x_T=x_T, step_noise=step_noise, eta=0.7)
    np.testing.assert_array_equal(a, b)
    # η = 0 draws only x_T
    a = SA.ddim_sample(linear_denoiser, sch, shape, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(a, SA.ddim_sample(linear_denoiser, sch, x_T=x_T))
    # same seed, same bits
    c = SA.ddpm_sample(linear_denoiser, sch, shape, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(
        c, SA.ddpm_sample(linear_denoiser, sch, shape, rng=np.random.default_rng(seed))
    )


def test_ddim_eta1_loop_equals_ddpm_loop():
    sch = S.respace(S.linear(100), RS.spaced_times(100, 7, "trailing"))
    x_T, zs = SA.draw_noise(np.random.default_rng(3), sch.T, (4, 2))
    a = SA.ddim_sample(linear_denoiser, sch, x_T=x_T, step_noise=zs, eta=1.0, clip=1.0)
    b = SA.ddpm_sample(linear_denoiser, sch, x_T=x_T, step_noise=zs, clip=1.0)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


# -- trajectory, callback, base timesteps ------------------------------------------------------
@pytest.mark.parametrize("sampler", [SA.ddpm_sample, SA.ddim_sample])
def test_trajectory_and_callback(sampler):
    sch = S.linear(5)
    seen = []

    def cb(k, t, x):
        seen.append((k, t, x.copy()))

    x, traj = sampler(
        linear_denoiser,
        sch,
        (3, 2),
        rng=np.random.default_rng(0),
        return_trajectory=True,
        callback=cb,
    )
    assert traj.shape == (6, 3, 2) and traj.dtype == np.float64
    np.testing.assert_array_equal(traj[-1], x)
    assert [(k, t) for k, t, _ in seen] == [(0, 4), (1, 3), (2, 2), (3, 1), (4, 0)]
    for k, _, xk in seen:
        np.testing.assert_array_equal(xk, traj[k + 1])
    # trajectory[0] is x_T as drawn first from the Generator
    np.testing.assert_array_equal(traj[0], np.random.default_rng(0).standard_normal((3, 2)))


@pytest.mark.parametrize("sampler", [SA.ddpm_sample, SA.ddim_sample])
def test_respaced_sampler_calls_denoiser_with_base_timesteps(sampler):
    base = S.linear(10)
    sch = S.respace(base, [2, 5, 9])
    calls = []

    def den(x, t):
        calls.append(t.copy())
        return np.zeros_like(x)

    sampler(den, sch, (2, 3), rng=np.random.default_rng(1))
    assert [c.tolist() for c in calls] == [[9, 9], [5, 5], [2, 2]]
    assert all(c.dtype == np.int64 for c in calls)


def test_learned_variance_output_is_split_on_axis_1():
    sch = S.linear(4)

    def den(x, t):
        return np.concatenate([0.1 * x, np.full_like(x, -0.5)], axis=1)

    x_T, zs = SA.draw_noise(np.random.default_rng(5), sch.T, (2, 3))
    got = SA.ddpm_sample(den, sch, x_T=x_T, step_noise=zs, variance_type="learned_range")
    x = x_T
    for k in range(sch.T):
        t = sch.T - k
        x = R.ddpm_step(
            sch,
            x,
            t,
            0.1 * x,
            noise=zs[k],
            variance_type="learned_range",
            model_variance=np.full_like(x, -0.5),
        )
    np.testing.assert_allclose(got, x, rtol=1e-15)
    with pytest.raises(ShapeError) as e:
        SA.ddpm_sample(zero_eps, sch, x_T=x_T, step_noise=zs, variance_type="learned")
    assert e.value.argument == "denoiser output"


def test_missing_randomness_and_bad_noise_shapes():
    sch = S.linear(3)
    with pytest.raises(RandomnessError) as e:
        SA.ddpm_sample(zero_eps, sch, (2, 2))
    assert e.value.argument == "rng"
    with pytest.raises(RandomnessError) as e:  # x_T but no step noise for a random sampler
        SA.ddpm_sample(zero_eps, sch, x_T=np.zeros((2, 2)))
    assert e.value.argument == "rng"
    with pytest.raises(RandomnessError) as e:
        SA.ddim_sample(zero_eps, sch, x_T=np.zeros((2, 2)), eta=0.5)
    assert e.value.argument == "rng"
    with pytest.raises(ShapeError) as e:
        SA.ddpm_sample(zero_eps, sch, x_T=np.zeros((2, 2)), step_noise=np.zeros((2, 2, 2)))
    assert e.value.argument == "step_noise"
    with pytest.raises(ShapeError) as e:
        SA.ddpm_sample(zero_eps, sch, (3, 2), x_T=np.zeros((2, 2)), rng=np.random.default_rng(0))
    assert e.value.argument == "shape"


@given(st.integers(1, 3), seeds)
@settings(max_examples=examples(5), deadline=None)
def test_sample_is_float64_of_the_state_shape(B, seed):
    sch = S.linear(6)
    x = SA.ddpm_sample(linear_denoiser, sch, (B, 2, 2), rng=np.random.default_rng(seed))
    assert x.shape == (B, 2, 2) and x.dtype == np.float64 and np.isfinite(x).all()
    (x_T,) = normal(seed, (B, 2, 2))
    x = SA.ddim_sample(linear_denoiser, sch, x_T=x_T.astype(np.float32))
    assert x.dtype == np.float64
