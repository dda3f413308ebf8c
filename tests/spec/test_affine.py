"""refdiff.affine: the reverse step as x_{t−1} = a_t x_t + b_t o + s_t z (docs/math.md (7.12)).

Hand values pin the coefficients; Hypothesis checks the affine step against the reference step
of refdiff.reverse for every affine option; the noise stream and the blocked update of large
states have their own tests (both are mutant catchers in tests/mutants.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import affine as A
from refdiff import reverse as R
from refdiff import sampling as SA
from refdiff import schedule as S
from refdiff.errors import InputError, RandomnessError, ShapeError, TimestepError
from tests.strategies import examples, hand_schedule, schedules, seeds, state_shapes

AB = (0.9, 0.72, 0.36)  # ᾱ of the hand schedule β = (0.1, 0.2, 0.5)


def _ulp_bound(c: A.AffineCoefficients, t: int, x, o, z, ab: float) -> np.ndarray:
    """16 ulp of |x| + |o| + |z|, times the largest factor either form applies.

    The reference rounds its intermediates x̂_0 = (…)/√ᾱ_t and ε̂ = (…)/√(1 − ᾱ_t); the affine form
    regroups them, so the two differ by rounding amplified by at most those factors (measured
    worst: 27 ulp of this scale against the 16 × amp allowed).  A coefficient bug is ≥ 1e-8
    relative: far outside.
    """
    amp = max(1.0, abs(c.a[t]), abs(c.b[t]), abs(c.s[t]), 1 / math.sqrt(ab))
    if ab < 1.0:
        amp = max(amp, 1 / math.sqrt(1.0 - ab))
    return 16 * np.finfo(np.float64).eps * amp * (np.abs(x) + np.abs(o) + np.abs(z)) + 1e-300


def test_ddpm_coefficients_by_hand():
    c = A.affine_coefficients(hand_schedule(), "ddpm")
    beta, ab = (0.1, 0.2, 0.5), AB
    for t in (1, 2, 3):
        alpha = 1 - beta[t - 1]
        assert c.a[t] == pytest.approx(1 / math.sqrt(alpha), rel=1e-14)
        want_b = -beta[t - 1] / (math.sqrt(alpha) * math.sqrt(1 - ab[t - 1]))
        assert c.b[t] == pytest.approx(want_b, rel=1e-14)
    # σ_t² = β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); no noise at t = 1
    assert c.s[1] == 0.0
    assert c.s[2] == pytest.approx(math.sqrt(0.2 * 0.1 / 0.28), rel=1e-14)
    assert c.s[3] == pytest.approx(math.sqrt(0.5 * 0.28 / 0.64), rel=1e-14)
    assert np.isnan(c.a[0]) and c.draws and c.method == "ddpm"
    large = A.affine_coefficients(hand_schedule(), "ddpm", variance_type="fixed_large")
    np.testing.assert_allclose(large.s[2:], np.sqrt([0.2, 0.5]), rtol=1e-14)
    np.testing.assert_array_equal(large.a, c.a)


def test_ddim_coefficients_by_hand():
    c = A.affine_coefficients(hand_schedule(), "ddim")
    prev = (1.0, 0.9, 0.72)
    for t in (1, 2, 3):
        ab, abp = AB[t - 1], prev[t - 1]
        assert c.a[t] == pytest.approx(math.sqrt(abp / ab), rel=1e-14)
        want_b = math.sqrt(1 - abp) - math.sqrt(abp) * math.sqrt(1 - ab) / math.sqrt(ab)
        assert c.b[t] == pytest.approx(want_b, abs=1e-15, rel=1e-14)
    assert not c.draws and np.all(c.s[1:] == 0.0)
    # η = 1 is DDPM's fixed_small step (docs/math.md §7.2)
    one = A.affine_coefficients(hand_schedule(), "ddim", eta=1.0)
    ddpm = A.affine_coefficients(hand_schedule(), "ddpm")
    for k in "abs":
        np.testing.assert_allclose(getattr(one, k)[1:], getattr(ddpm, k)[1:], rtol=1e-13)
    assert one.draws


DDPM_OPTIONS = st.fixed_dictionaries(
    {
        "prediction_type": st.sampled_from(["epsilon", "x0", "v", "score"]),
        "variance_type": st.sampled_from(["fixed_small", "fixed_large", "fixed_large_iddpm"]),
    }
)
DDIM_OPTIONS = st.fixed_dictionaries(
    {
        "prediction_type": st.sampled_from(["epsilon", "x0", "v", "score"]),
        "eta": st.sampled_from([0.0, 0.3, 1.0]),
        "rederive_eps": st.booleans(),
        "final_alpha_bar": st.sampled_from(["one", "first", 0.5]),
        "final_step_noise": st.booleans(),
    }
)


@settings(max_examples=examples(150), deadline=None)
@given(
    st.one_of(st.tuples(st.just("ddpm"), DDPM_OPTIONS), st.tuples(st.just("ddim"), DDIM_OPTIONS)),
    schedules(max_T=30),
    state_shapes(),
    seeds,
    st.data(),
)
def test_affine_step_is_the_reference_step(method_options, schedule, shape, seed, data):
    method, options = method_options
    t = data.draw(st.integers(1, schedule.T))
    x, o, z = np.random.default_rng(seed).standard_normal((3, *shape))
    step = R.ddpm_step if method == "ddpm" else R.ddim_step
    c = A.affine_coefficients(schedule, method, **options)
    assert A.is_affine(method, **options)
    ref = step(schedule, x, t, o, noise=z, **options)
    got = A.affine_step(c, x, t, o, noise=z)
    assert got.shape == ref.shape and got.dtype == np.float64
    assert np.all(np.abs(got - ref) <= _ulp_bound(c, t, x, o, z, schedule.alpha_bar[t]))


@settings(max_examples=examples(40), deadline=None)
@given(seeds, st.sampled_from([("ddpm", {}), ("ddim", {"eta": 0.5}), ("ddim", {})]))
def test_affine_step_draws_what_the_reference_step_draws(seed, method_options):
    """Same Generator state → same noise (up to rounding) and the same stream position after."""
    method, options = method_options
    s = S.linear(100)
    x, o = np.random.default_rng(seed ^ 1).standard_normal((2, 5, 3))
    c = A.affine_coefficients(s, method, **options)
    step = R.ddpm_step if method == "ddpm" else R.ddim_step
    for t in (100, 37, 2, 1):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        ref = step(s, x, t, o, rng=r1, **options)
        got = A.affine_step(c, x, t, o, rng=r2)
        z = np.random.default_rng(seed).standard_normal(x.shape) if c.draws else 0.0 * x
        assert np.all(np.abs(got - ref) <= _ulp_bound(c, t, x, o, z, s.alpha_bar[t]))
        assert r1.standard_normal() == r2.standard_normal()  # both drew exactly as much


@pytest.mark.parametrize("method,options", [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 1.0})])
def test_large_states_are_stepped_block_by_block(method, options):
    """A state of 2 blocks + 3 elements: every element, the block edges and the tail."""
    s = S.cosine(50)
    n = 2 * A.BLOCK + 3
    rng = np.random.default_rng(7)
    x, o, z = rng.standard_normal((3, n, 1))
    c = A.affine_coefficients(s, method, **options)
    step = R.ddpm_step if method == "ddpm" else R.ddim_step
    for t in (50, 1):
        ref = step(s, x, t, o, noise=z, **options)
        got = A.affine_step(c, x, t, o, noise=z)
        assert np.all(np.abs(got - ref) <= _ulp_bound(c, t, x, o, z, s.alpha_bar[t]))
        # an element's value does not depend on the batch: blocks = the whole-array path
        part = A.affine_step(c, x[-5:], t, o[-5:], noise=z[-5:])
        np.testing.assert_array_equal(got[-5:], part)
        r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
        ref = step(s, x, t, o, rng=r1, **options)
        got = A.affine_step(c, x, t, o, rng=r2)
        zz = np.random.default_rng(3).standard_normal(x.shape)
        assert np.all(np.abs(got - ref) <= _ulp_bound(c, t, x, o, zz, s.alpha_bar[t]))


@pytest.mark.parametrize(
    "method,options,affine",
    [
        ("ddpm", {}, True),
        ("ddpm", {"clip": 1.0}, False),
        ("ddpm", {"threshold_ratio": 0.9}, False),
        ("ddpm", {"variance_type": "learned_range"}, False),
        ("ddim", {"eta": 1.0, "rederive_eps": False}, True),
        ("ddim", {"clip": 2.0}, False),
    ],
)
def test_samplers_take_the_affine_step_only_where_it_is_the_same_step(method, options, affine):
    """The loop's result equals a hand loop over refdiff.reverse with the same draws."""
    assert A.is_affine(method, **options) is affine
    s = S.respace(S.linear(200), [1, 50, 120, 200])
    shape = (6, 2)
    learned = options.get("variance_type") in ("learned_range",)

    def denoiser(x, t):
        out = np.sin(x + t[:, None] / 200.0)
        return np.concatenate([out, np.tanh(out)], axis=1) if learned else out

    sample = SA.ddpm_sample if method == "ddpm" else SA.ddim_sample
    got = sample(denoiser, s, shape, rng=np.random.default_rng(11), **options)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape)
    for t in range(s.T, 0, -1):
        out = denoiser(x, np.full(shape[0], s.timesteps[t]))
        if method == "ddpm":
            mv = None
            if learned:
                out, mv = np.split(out, 2, axis=1)
            x = R.ddpm_step(s, x, t, out, rng=rng, model_variance=mv, **options)
        else:
            x = R.ddim_step(s, x, t, out, rng=rng if options.get("eta") else None, **options)
    if affine:
        np.testing.assert_allclose(got, x, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(got, x)  # the reference step itself


def test_errors_name_the_argument():
    s = hand_schedule()
    c = A.affine_coefficients(s)
    x = np.zeros((2, 3))
    coefs = functools.partial(A.affine_coefficients, s)
    cases = [
        (lambda: coefs("ddpm", clip=1.0), InputError, "clip"),
        (lambda: coefs("ddpm", threshold_ratio=0.9), InputError, "threshold_ratio"),
        (lambda: coefs("ddpm", variance_type="learned"), InputError, "variance_type"),
        (lambda: coefs("euler"), InputError, "sampler"),
        (lambda: A.affine_coefficients("linear", "ddpm"), InputError, "schedule"),
        (lambda: coefs("ddpm", prediction_type="eps"), InputError, "prediction_type"),
        (lambda: A.affine_step(c, x, 0, x, rng=np.random.default_rng()), TimestepError, "t"),
        (lambda: A.affine_step(c, x, 4, x, rng=np.random.default_rng()), TimestepError, "t"),
        (lambda: A.affine_step(c, x, np.array([1, 2]), x, noise=x), TimestepError, "t"),
        (lambda: A.affine_step(c, x, 1.5, x, noise=x), TimestepError, "t"),
        (lambda: A.affine_step(c, x, 2, x[:1], noise=x), ShapeError, "model_output"),
        (lambda: A.affine_step(c, x, 2, x, noise=x[:1]), ShapeError, "noise"),
        (lambda: A.affine_step(c, np.float64(1.0), 2, x, noise=x), ShapeError, "x_t"),
        (lambda: A.affine_step(c, x, 2, x), RandomnessError, "rng"),
        (lambda: A.affine_step(c, x, 2, x, rng=3), RandomnessError, "rng"),
        (lambda: A.affine_step((1, 2), x, 2, x, noise=x), InputError, "coef"),
        (lambda: A.affine_step(c, x.astype(bool), 2, x, noise=x), InputError, "x_t"),
    ]
    for call, kind, argument in cases:
        with pytest.raises(kind) as e:
            call()
        assert e.value.argument == argument, (argument, e.value)


def test_inputs_are_converted_and_never_written():
    s = hand_schedule()
    c = A.affine_coefficients(s)
    x32 = np.ones((2, 3), dtype=np.float32)
    o = [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]
    z = np.full((2, 3), 2.0)
    before = z.copy()
    got = A.affine_step(c, x32, np.int64(3), o, noise=z)
    want = R.ddpm_step(s, x32, 3, o, noise=z)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-15)
    np.testing.assert_array_equal(z, before)
    assert not c.a.flags.writeable


def test_the_former_keyword_method_still_works_with_a_warning():
    s = hand_schedule()
    new = A.affine_coefficients(s, sampler="ddim", eta=0.5)
    with pytest.warns(DeprecationWarning, match="method="):
        old = A.affine_coefficients(s, method="ddim", eta=0.5)
    assert old.sampler == old.method == "ddim"
    np.testing.assert_array_equal(old.a, new.a)
    with pytest.warns(DeprecationWarning):
        assert not A.is_affine(method="ddpm", clip=1.0)
    with pytest.warns(DeprecationWarning), pytest.raises(InputError):
        A.affine_coefficients(s, "ddpm", method="ddim")
    with pytest.warns(DeprecationWarning, match="AffineCoefficients"):
        assert A.AffineStep is A.AffineCoefficients
