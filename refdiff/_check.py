"""Input validation shared by every module: one place that turns bad input into typed errors.

The conventions, stated once: an integer option is a Python or NumPy integer and a real one a
Python or NumPy int or float (np.float32 too); a bool is neither (``True`` is not 1 here);
an option name is one of a listed set of strings.  :func:`integer`, :func:`real` and
:func:`option` enforce them and return the plain Python value (docs/reliability.md §1).
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from collections.abc import Sequence

import numpy as np

from .errors import (
    DTypeError,
    InputError,
    NonFiniteError,
    OptionError,
    RandomnessError,
    ShapeError,
    TimestepError,
)


def is_real(v: object) -> bool:
    """A real scalar option: a Python or NumPy int or float (np.float32 too), never a bool.

    (``isinstance(v, int | float)`` would refuse np.float32 and take ``True`` as 1.)
    """
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_integer(v: object) -> bool:
    """An integer option: a Python or NumPy integer, never a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    low, high = (f"{x:g}" if isinstance(x, float) else x for x in (low, high))
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def integer(
    value: object,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    error: type[InputError] = InputError,
) -> int:
    """``value`` as an int: a Python or NumPy integer (never a bool) in [low, high]."""
    if not is_integer(value) or (
        (low is not None and value < low) or (high is not None and value > high)  # type: ignore[operator]
    ):
        raise error(name, f"must be an int{_interval(low, high, False, False)}; got {value!r}")
    return int(value)  # type: ignore[call-overload]


def real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    what: str | None = None,
    error: type[InputError] = InputError,
) -> float:
    """``value`` as a float: a Python or NumPy int or float (never a bool), finite unless
    ``finite=False``, in the interval from ``low`` to ``high`` (open ends where asked; NaN is
    in no interval).  ``what`` replaces the generated description in the message."""
    ok = is_real(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = not (finite and not math.isfinite(v)) and not math.isnan(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        desc = what or (
            ("a finite float" if finite else "a float") + _interval(low, high, low_open, high_open)
        )
        raise error(name, f"must be {desc}; got {value!r}")
    return v


def renamed(new: object, old: object, *, new_name: str, old_name: str, default: object) -> object:
    """The value of keyword ``new_name``, or of its former name ``old_name`` (accepted with a
    DeprecationWarning); ``default`` when neither is given (None stands for "not given")."""
    if old is None:
        return default if new is None else new
    warnings.warn(
        f"the keyword {old_name}= is deprecated; use {new_name}=", DeprecationWarning, stacklevel=3
    )
    if new is not None and new != old:
        raise InputError(new_name, f"give {new_name}= or {old_name}=, not both")
    return old


def as_float_array(x: object, name: str, *, finite: bool = True) -> np.ndarray:
    """``x`` as a float64 array (float32/float16 are promoted, never the reverse).

    Accepts anything with ``__array__`` or DLPack.  Refuses bool, complex, object, str.
    """
    if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        try:
            x = np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError):
            pass
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise DTypeError(name, f"cannot be read as an array ({e})") from None
    if a.dtype.kind not in "fiu":
        raise DTypeError(name, f"dtype {a.dtype} is not a real number type")
    a = a.astype(np.float64, copy=False)
    if finite and a.size and not all_finite(a):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise NonFiniteError(name, f"{bad} of {a.size} values are NaN or Inf")
    return a


# The most float64 elements refdiff allocates for one array (2**31 elements = 16 GiB): larger
# requests are refused with a ShapeError before anything is allocated (docs/reliability.md).
MAX_ELEMENTS = 2**31


def check_size(shape: tuple[int, ...], name: str, *, factor: int = 1) -> None:
    """Refuse to allocate ``factor`` × prod(``shape``) elements when that exceeds MAX_ELEMENTS."""
    n = factor * math.prod(shape)
    if n > MAX_ELEMENTS:
        raise ShapeError(
            name, f"{shape} needs {n:.3g} elements; refdiff allocates at most {MAX_ELEMENTS}"
        )


def all_finite(a: np.ndarray) -> bool:
    """True when no value of the float64 array ``a`` is NaN or ±Inf.

    For large arrays a finite sum proves every value finite (NaN and ±Inf propagate through
    addition) in one pass without a boolean temporary; a non-finite sum (possibly an
    overflow of finite values) is settled by the elementwise test.
    """
    if a.size > 4096:
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(np.add.reduce(a, axis=None)):
                return True
    return bool(np.logical_and.reduce(np.isfinite(a), axis=None))


def as_batch(x: object, name: str) -> np.ndarray:
    """A float64 state of shape (B, *data_shape), B >= 1."""
    a = as_float_array(x, name)
    if a.ndim < 1:
        raise ShapeError(name, f"needs a batch axis; got a scalar (shape {a.shape})")
    if a.size == 0:
        raise ShapeError(name, f"is empty (shape {a.shape})")
    return a


def option(value: object, name: str, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise OptionError(name, value, list(valid))
    return value


def timesteps(t: object, name: str, *, low: int, high: int, batch: int | None = None) -> np.ndarray:
    """Integer timesteps in [low, high], as an int64 array (scalar or shape (B,))."""
    if type(t) is int or (type(t) is np.ndarray and t.ndim == 0 and t.dtype == np.int64):
        # Fast path for one plain integer (every step of a sampling loop): the same checks
        # and the same result as below, without the array reductions (~3 µs a call).
        v = int(t)
        if v < low or v > high:
            raise TimestepError(name, f"value {v} is outside [{low}, {high}]")
        return np.asarray(t, dtype=np.int64)
    try:
        a = np.asarray(t)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise TimestepError(name, f"cannot be read as an array ({e})") from None
    if a.dtype.kind == "f":
        if a.size and not (np.isfinite(a).all() and (a == np.round(a)).all()):
            raise TimestepError(name, f"must be integers; got {a.ravel()[:4]!r}")
        if a.size and float(np.abs(a).max()) > 2.0**62:  # before an overflowing int64 cast
            bad = a.ravel()[np.argmax(np.abs(a))]
            raise TimestepError(name, f"value {bad:.6g} is outside [{low}, {high}]")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise TimestepError(name, f"must be integers; got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > high:  # before a wrapping int64 cast
        raise TimestepError(name, f"value {int(a.max())} is outside [{low}, {high}]")
    a = a.astype(np.int64, copy=False)
    if a.ndim > 1:
        raise TimestepError(name, f"must be a scalar or of shape (B,); got shape {a.shape}")
    if a.ndim == 1 and batch is not None and a.shape[0] not in (1, batch):
        raise ShapeError(name, f"has {a.shape[0]} timesteps for a batch of {batch}")
    if a.size and (a.min() < low or a.max() > high):
        bad = a[(a < low) | (a > high)].ravel()[0]
        raise TimestepError(name, f"value {int(bad)} is outside [{low}, {high}]")
    return a


def per_sample(values: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a scalar or (B,) coefficient so it broadcasts against a (B, ...) array."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (ndim - 1))


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ShapeError(name_b, f"shape {b.shape} does not match {name_a} shape {a.shape}")


def noise_or_rng(
    noise: object, rng: object, shape: tuple[int, ...], name: str = "noise"
) -> np.ndarray:
    """The injected ``noise`` (checked against ``shape``), or a draw from ``rng``."""
    if noise is not None:
        z = as_float_array(noise, name)
        if z.shape != shape:
            raise ShapeError(name, f"shape {z.shape} does not match the state shape {shape}")
        return z
    if not isinstance(rng, np.random.Generator):
        raise RandomnessError(
            "rng", f"pass injected {name}= or a numpy.random.Generator; got {type(rng).__name__}"
        )
    return rng.standard_normal(shape)


def state_and_t(schedule, x: object, t: object, name: str = "x", *, allow_zero: bool = False):
    """Validate a (B, ...) state and its timesteps against ``schedule``; returns (x, t)."""
    xa = as_batch(x, name)
    ta = timesteps(t, "t", low=0 if allow_zero else 1, high=schedule.T, batch=xa.shape[0])
    return xa, ta


def gather(values: np.ndarray, t: np.ndarray, ndim: int) -> np.ndarray:
    """values[t] shaped to broadcast against a (B, ...) array of ``ndim`` dimensions."""
    return per_sample(values[t], ndim)


def state_shape(shape: object) -> tuple[int, ...]:
    """A state shape: a non-empty tuple of positive ints, at most MAX_ELEMENTS in all."""
    try:
        out = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise ShapeError("shape", f"must be a tuple of ints; got {shape!r}") from None
    if len(out) < 1 or min(out) < 1:
        raise ShapeError("shape", f"needs a batch axis and positive sizes; got {out}")
    check_size(out, "shape")
    return out


def initial_state(
    shape: object, x_T: object, step_noise: object, rng: object, steps: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """A sampler's start (docs/math.md §8): (x_T, step_noise).

    x_T as given (checked against ``shape`` when both are given), or ``scale`` · z with z
    drawn from ``rng`` in the state shape; ``step_noise``, when given, must be (steps, *state).
    """
    if x_T is not None:
        x = as_batch(x_T, "x_T")
        if shape is not None and state_shape(shape) != x.shape:
            raise ShapeError("shape", f"{tuple(shape)} does not match x_T shape {x.shape}")
    else:
        if shape is None:
            raise InputError("shape", "give shape= or x_T=")
        shape = state_shape(shape)
        if not isinstance(rng, np.random.Generator):
            raise RandomnessError("rng", "pass x_T= (and step_noise=) or a numpy.random.Generator")
        x = rng.standard_normal(shape)
        if scale != 1.0:
            x *= scale
    if step_noise is not None:
        step_noise = as_float_array(step_noise, "step_noise")
        if step_noise.shape != (steps, *x.shape):
            msg = f"shape {step_noise.shape} is not ({steps} steps, *{x.shape})"
            raise ShapeError("step_noise", msg)
    return x, step_noise
