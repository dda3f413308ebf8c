"""The sampling loops' fixed cost: coefficient tables read off once per schedule and options,
x_T not kept alive, the per-step checks trimmed without losing a typed error
(docs/math.md §8; the timings themselves are in benchmarks/, section ``loops``)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from benchmarks._timing import peak_python_bytes
from refdiff import affine as A
from refdiff import sampling as SM
from refdiff import schedule as S
from refdiff.errors import InputError, NonFiniteError, ShapeError


def _sch(T: int = 6) -> S.Schedule:
    return S.linear(T)


def test_tables_are_read_off_once_per_schedule_and_options():
    s = _sch()
    a = A.cached_coefficients(s, "ddim", {"eta": 0.5})
    assert A.cached_coefficients(s, "ddim", {"eta": 0.5}) is a
    fresh = A.affine_coefficients(s, "ddim", eta=0.5)
    for name in ("a", "b", "s"):
        np.testing.assert_array_equal(getattr(a, name), getattr(fresh, name))
        assert not getattr(a, name).flags.writeable  # shared tables cannot be edited
    # another schedule with the same content, other options, other value types: other tables
    assert A.cached_coefficients(_sch(), "ddim", {"eta": 0.5}) is not a
    assert A.cached_coefficients(s, "ddim", {"eta": 1.0}) is not a
    assert A.cached_coefficients(s, "ddim", {}) is not A.cached_coefficients(s, "ddpm", {})
    one, one_f = (A.cached_coefficients(s, "ddim", {"eta": v}) for v in (1, 1.0))
    assert one is not one_f
    np.testing.assert_array_equal(one.s, one_f.s)


def test_refused_options_are_refused_every_time():
    s = _sch()
    for _ in range(2):
        with pytest.raises(InputError) as e:
            A.cached_coefficients(s, "ddim", {"eta": -1.0})
        assert e.value.argument == "eta"


def test_the_cache_is_bounded_and_goes_with_its_schedule():
    s = _sch()
    for i in range(3 * A._CACHE_SIZE):
        A.cached_coefficients(s, "ddim", {"eta": i / (3 * A._CACHE_SIZE)})
    assert len(A._CACHE[s]) == A._CACHE_SIZE
    n, alive = len(A._CACHE), weakref.ref(s)
    del s
    gc.collect()
    assert alive() is None  # the cache does not keep a schedule alive …
    assert len(A._CACHE) <= n - 1  # … and its tables go with it


def test_only_plain_scalar_options_make_a_key():
    assert A._options_key("ddim", {"eta": np.array(0.5)}) is None  # computed, never cached
    key = A._options_key("ddim", {"eta": 0.5, "clip": None})
    assert key == A._options_key("ddim", {"clip": None, "eta": 0.5})  # order does not matter
    assert key != A._options_key("ddim", {"eta": np.float64(0.5), "clip": None})
    assert A._options_key("ddim", {"eta": 0.0}) != A._options_key("ddim", {"eta": -0.0})


def _peak_states(sample, shape) -> float:
    """Peak bytes traced while ``sample()`` runs, in states of ``shape`` (float64)."""
    return peak_python_bytes(sample) / (8 * np.prod(shape))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_peak_memory_is_three_states(sampler):
    """x_t, the model output and x_{t−1}: x_T is not kept alive after the first step (it was
    a fourth state) and the last output is dropped before the next denoiser call."""
    shape = (4096, 64)  # larger than the affine step's block: no whole-size temporary
    s = _sch(5)
    fn = SM.ddpm_sample if sampler == "ddpm" else SM.ddim_sample

    def run():
        fn(lambda x, t: 0.1 * x, s, shape, rng=np.random.default_rng(0))

    run()  # the coefficient tables are cached: not part of the peak
    assert 2.9 < _peak_states(run, shape) < 3.2


@pytest.mark.parametrize("shape", [(1, 2), (3, 7), (64, 2)])
def test_bad_denoiser_outputs_still_raise_typed_errors(shape):
    s = _sch(3)
    for sampler in (SM.ddpm_sample, SM.ddim_sample):
        bad = np.ones(shape)
        bad[-1, -1] = np.nan
        with pytest.raises(NonFiniteError) as e:
            sampler(lambda x, t, bad=bad: bad, s, shape, rng=np.random.default_rng(0))
        assert e.value.argument == "denoiser output"
        with pytest.raises(ShapeError) as e:
            sampler(lambda x, t: np.ones((9, 9)), s, shape, rng=np.random.default_rng(0))
        assert e.value.argument == "model_output"


def test_float32_and_list_outputs_are_converted_as_before():
    s = _sch(3)
    x_T = np.random.default_rng(1).standard_normal((2, 3))
    want = SM.ddim_sample(lambda x, t: 0.5 * np.ones_like(x), s, x_T=x_T)
    for out in (np.full((2, 3), 0.5, np.float32), [[0.5] * 3] * 2):
        got = SM.ddim_sample(lambda x, t, out=out: out, s, x_T=x_T)
        np.testing.assert_array_equal(got, want)
