"""One convention for scalar options (refdiff._check): NumPy scalars are accepted wherever a
Python number is, bools are refused wherever a number is expected."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import exact, respacing, reverse, sampling, schedule, stats
from refdiff._check import integer, real
from refdiff.errors import InputError, ScheduleError


@pytest.mark.parametrize("v", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integer_accepts_python_and_numpy_ints(v):
    out = integer(v, "n", low=1, high=5)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("v", [True, False, 3.0, np.float64(3.0), "3", None, [3]])
def test_integer_refuses_bools_floats_and_the_rest(v):
    with pytest.raises(InputError) as e:
        integer(v, "n")
    assert e.value.argument == "n" and repr(v) in str(e.value)


@pytest.mark.parametrize("v", [0, 6, np.int64(-1)])
def test_integer_range(v):
    with pytest.raises(InputError, match=r"n: must be an int in \[1, 5\]"):
        integer(v, "n", low=1, high=5)


@pytest.mark.parametrize("v", [0.5, 1, np.float32(0.5), np.float16(0.5), np.int64(1)])
def test_real_accepts_python_and_numpy_numbers(v):
    out = real(v, "eta", low=0.0, high=1.0)
    assert out == float(v) and type(out) is float


@pytest.mark.parametrize("v", [True, np.bool_(True), math.nan, math.inf, "0.5", None, 1 + 0j])
def test_real_refuses_bools_non_finite_and_the_rest(v):
    with pytest.raises(InputError) as e:
        real(v, "eta")
    assert e.value.argument == "eta"


def test_real_interval_ends_and_error_class():
    assert real(1.0, "r", low=0.0, high=1.0, low_open=True) == 1.0
    with pytest.raises(InputError, match=r"r: must be a finite float in \(0, 1\]"):
        real(0.0, "r", low=0.0, high=1.0, low_open=True)
    assert real(math.inf, "d", low=0.0, low_open=True, finite=False) == math.inf
    with pytest.raises(ScheduleError):
        real(2.0, "beta_end", high=1.0, error=ScheduleError)


# The public entry points follow the convention (each was once hand-written).
S = schedule.linear(10)
X = np.zeros((1, 2))

ACCEPT_NUMPY = {
    "make_schedule T": lambda v: schedule.make_schedule("linear", v(10)),
    "cosine s": lambda v: schedule.cosine(10, s=v(0)),
    "spaced_times N": lambda v: respacing.spaced_times(10, v(5)),
    "ddim eta": lambda v: reverse.ddim_step(S, X, 5, X, eta=v(0), noise=X),
    "ddpm clip": lambda v: reverse.ddpm_step(S, X, 5, X, clip=v(1), noise=X),
    "draw_noise num_steps": lambda v: sampling.draw_noise(np.random.default_rng(0), v(2), (1, 2)),
    "stats dim": lambda v: stats.min_discrepancy_mean(100, 1e-3, 0.1, dim=v(2)),
    "exact n": lambda v: exact.Gaussian(np.zeros(1), np.eye(1)).sample(
        np.random.default_rng(0), v(3)
    ),
}


@pytest.mark.parametrize("name", list(ACCEPT_NUMPY))
@pytest.mark.parametrize("kind", [np.int64, np.float32])
def test_entry_points_accept_numpy_scalars_and_refuse_bools(name, kind):
    call = ACCEPT_NUMPY[name]
    integers = ("make_schedule T", "spaced_times N", "draw_noise num_steps", "exact n", "stats dim")
    if kind is np.float32 and name in integers:
        kind = np.int32
    call(kind)
    with pytest.raises(InputError):
        call(lambda _v: True)
