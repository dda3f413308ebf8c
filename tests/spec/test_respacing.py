"""Timestep spacing (docs/math.md §6) against hand-listed timesteps.

refdiff times are 1-based: time = diffusers / improved-diffusion index + 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import respacing as RS
from refdiff import schedule as S
from refdiff.errors import InputError
from tests.strategies import examples


def times(*idx: int) -> list[int]:
    """0-based peer indices → refdiff times."""
    return [i + 1 for i in idx]


# -- leading -----------------------------------------------------------------------------------
def test_leading_by_hand():
    # T=10, N=3: stride T//N = 3 → indices 0, 3, 6
    np.testing.assert_array_equal(RS.spaced_times(10, 3, "leading"), times(0, 3, 6))
    # steps_offset=1 shifts every index: 1, 4, 7
    np.testing.assert_array_equal(RS.spaced_times(10, 3, "leading", steps_offset=1), times(1, 4, 7))
    # T=1000, N=10, steps_offset=1 (Stable Diffusion): diffusers [901, 801, …, 1]
    np.testing.assert_array_equal(
        RS.spaced_times(1000, 10, "leading", steps_offset=1), times(*range(1, 902, 100))
    )


def test_leading_offset_with_N_equal_T_raises():
    # diffusers#10003: steps_offset=1 with N = T reaches index T (out of range)
    with pytest.raises(InputError) as e:
        RS.spaced_times(1000, 1000, "leading", steps_offset=1)
    assert e.value.argument == "steps_offset"
    with pytest.raises(InputError) as e:
        RS.spaced_times(4, 4, "leading", steps_offset=1)
    assert e.value.argument == "steps_offset"
    # N = T without offset is every step
    np.testing.assert_array_equal(RS.spaced_times(4, 4, "leading"), [1, 2, 3, 4])


def test_steps_offset_only_for_leading():
    for spacing in ("trailing", "linspace"):
        with pytest.raises(InputError) as e:
            RS.spaced_times(10, 3, spacing, steps_offset=1)
        assert e.value.argument == "steps_offset"


# -- trailing ----------------------------------------------------------------------------------
def test_trailing_by_hand():
    # T=10, N=3: arange(10, 0, −10/3) = 10, 6.67, 3.33 → round 10, 7, 3 → −1: 9, 6, 2
    np.testing.assert_array_equal(RS.spaced_times(10, 3, "trailing"), times(2, 6, 9))
    # T=1000, N=10: 999, 899, …, 99
    np.testing.assert_array_equal(
        RS.spaced_times(1000, 10, "trailing"), times(*range(99, 1000, 100))
    )


def test_trailing_float_arange_extra_value():
    # T=15, N=13: float arange(15, 0, −15/13) has 14 values, the last ≈ 1e-15 (→ index −1).
    # The N intended values 15 − k·15/13, k = 0..12, are
    # 15, 13.85, 12.69, 11.54, 10.38, 9.23, 8.08, 6.92, 5.77, 4.62, 3.46, 2.31, 1.15
    # → round 15, 14, 13, 12, 10, 9, 8, 7, 6, 5, 3, 2, 1 → index − 1
    assert len(np.arange(15, 0, -15 / 13)) == 14
    expected = times(0, 1, 2, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)
    np.testing.assert_array_equal(RS.spaced_times(15, 13, "trailing"), expected)


# -- linspace ----------------------------------------------------------------------------------
def test_linspace_by_hand():
    # T=10, N=3: linspace(0, 9, 3) = 0, 4.5, 9 → round half to even: 0, 4, 9
    np.testing.assert_array_equal(RS.spaced_times(10, 3, "linspace"), times(0, 4, 9))
    # T=10, N=4: 0, 3, 6, 9
    np.testing.assert_array_equal(RS.spaced_times(10, 4, "linspace"), times(0, 3, 6, 9))
    # T=1000, N=10: stride 999/9 = 111 exactly (diffusers#12633's 111 vs 100)
    np.testing.assert_array_equal(
        RS.spaced_times(1000, 10, "linspace"), times(*range(0, 1000, 111))
    )
    # N=1: just index 0
    np.testing.assert_array_equal(RS.spaced_times(1000, 1, "linspace"), [1])


# -- improved-diffusion space_timesteps --------------------------------------------------------
def test_space_timesteps_ddimN_by_hand():
    # ddim50 at T=1000: stride 20 → {0, 20, …, 980} (PEERS, improved-diffusion respace.py)
    np.testing.assert_array_equal(RS.space_timesteps(1000, "ddim50"), times(*range(0, 1000, 20)))
    # ddim21 at T=1000: the smallest s with len(range(0, 1000, s)) = 21 is 48 (47 gives 22)
    assert len(range(0, 1000, 47)) == 22 and len(range(0, 1000, 48)) == 21
    np.testing.assert_array_equal(RS.space_timesteps(1000, "ddim21"), times(*range(0, 1000, 48)))
    np.testing.assert_array_equal(RS.space_timesteps(10, "ddim10"), times(*range(10)))
    # improved-diffusion searches strides 1..T−1 only, so "ddim1" has no stride (T ≥ 2)
    with pytest.raises(InputError) as e:
        RS.space_timesteps(10, "ddim1")
    assert e.value.argument == "sections"


def test_space_timesteps_sections_by_hand():
    # T=10, "2,3": two sections of 5.  Section 0 takes 2 at stride (5−1)/(2−1) = 4: 0, 4.
    # Section 1 (start 5) takes 3 at stride (5−1)/(3−1) = 2: 5, 7, 9.
    np.testing.assert_array_equal(RS.space_timesteps(10, "2,3"), times(0, 4, 5, 7, 9))
    np.testing.assert_array_equal(RS.space_timesteps(10, [2, 3]), times(0, 4, 5, 7, 9))
    # T=11, "2,3": the first section is one longer (6): stride 5 → 0, 5; then 6, 8, 10
    np.testing.assert_array_equal(RS.space_timesteps(11, "2,3"), times(0, 5, 6, 8, 10))
    # a count of 1 takes the first step of its section: T=10, "1,1" → 0, 5
    np.testing.assert_array_equal(RS.space_timesteps(10, "1,1"), times(0, 5))
    # T=6, [5]: stride 5/4 = 1.25 → 0, 1.25, 2.5, 3.75, 5 → Python round: 0, 1, 2, 4, 5
    # (exact ties: here accumulation and linspace agree)
    np.testing.assert_array_equal(RS.space_timesteps(6, [5]), times(0, 1, 2, 4, 5))
    np.testing.assert_array_equal(RS.spaced_times(6, 5, "linspace"), times(0, 1, 2, 4, 5))


def test_half_integer_case_space_timesteps_vs_linspace():
    # T=1000, N=21: the 11th step sits at 10·999/20 = 499.5.
    # linspace rounds 499.5 half to even → 500 (time 501).
    # space_timesteps *accumulates* the stride 49.95 ten times: 499.49999999999994 → 499 (500).
    pos = 0.0
    for _ in range(10):
        pos += 999 / 20
    assert pos < 499.5 and round(pos) == 499
    st_ = RS.space_timesteps(1000, [21])
    ls = RS.spaced_times(1000, 21, "linspace")
    assert st_[10] == 500 and ls[10] == 501
    # everything else agrees: 10·999/20 is the only half-integer tie of k·999/20
    np.testing.assert_array_equal(np.delete(st_, 10), np.delete(ls, 10))
    # PEERS: identical for N = 50 and 250 at T = 1000
    for n in (50, 250):
        np.testing.assert_array_equal(
            RS.space_timesteps(1000, [n]), RS.spaced_times(1000, n, "linspace")
        )


# -- properties --------------------------------------------------------------------------------
@st.composite
def t_and_n(draw, max_T=400):
    T = draw(st.integers(1, max_T))
    return T, draw(st.integers(1, T))


@given(t_and_n(), st.sampled_from(RS.SPACINGS))
@settings(max_examples=examples(80), deadline=None)
def test_every_spacing_gives_N_increasing_times_in_range(tn, spacing):
    T, N = tn
    tau = RS.spaced_times(T, N, spacing)
    assert tau.dtype == np.int64 and tau.shape == (N,)
    assert tau[0] >= 1 and tau[-1] <= T and np.all(np.diff(tau) > 0)
    if spacing == "trailing":
        assert tau[-1] == T  # trailing always starts the chain at the last step
    if spacing == "linspace":
        assert tau[0] == 1 and (tau[-1] == T or N == 1)  # linspace(0, T−1, 1) = [0]
    if spacing == "leading":
        np.testing.assert_array_equal(tau, 1 + (T // N) * np.arange(N))
    # respace accepts every list
    assert S.respace(S.linear(T, 1e-4, 0.02), tau).T == N


@given(t_and_n())
@settings(max_examples=examples(60), deadline=None)
def test_space_timesteps_single_section(tn):
    T, N = tn
    tau = RS.space_timesteps(T, [N])
    assert tau.shape == (N,) and tau[0] == 1 and np.all(np.diff(tau) > 0)
    assert tau[-1] == T or N == 1
    # never further than one from linspace rounding
    assert np.max(np.abs(tau - RS.spaced_times(T, N, "linspace"))) <= 1


@given(st.integers(2, 60), st.integers(1, 30))
@settings(max_examples=examples(60), deadline=None)
def test_ddimN_equals_leading_when_N_divides_T(n, m):
    T = n * m
    np.testing.assert_array_equal(
        RS.space_timesteps(T, f"ddim{n}"), RS.spaced_times(T, n, "leading")
    )
