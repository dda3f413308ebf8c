"""A reverse step as an affine map of (x_t, model output, noise) (docs/math.md §7.3).

Without clipping or thresholding of x̂_0 and with a fixed variance, every DDPM step (7.3) and
every DDIM step (7.9) is affine in the state, the model output o and the noise z:

    x_{t−1} = a_t x_t + b_t o + s_t z                                                  (7.12)

with scalars (a_t, b_t, s_t) that depend on the schedule, t and the options only.
:func:`affine_coefficients` reads them off the specification itself — the step of
:mod:`refdiff.reverse` evaluated on unit inputs, for every t at once — so they cannot drift from
it; :func:`affine_step` then costs the noise draw plus two fused passes, which is what the
sampling loops of :mod:`refdiff.sampling` run.  It agrees with the step of
:mod:`refdiff.reverse` up to rounding — the reference rounds x̂_0 = (…)/√ᾱ_t and
ε̂ = (…)/√(1 − ᾱ_t) before combining them, the affine form regroups the products, so they
differ by a few ulp of (|x_t| + |o| + |z|) times at most max(|a_t|, |b_t|, |s_t|, 1/√ᾱ_t,
1/√(1 − ᾱ_t)) (tests/spec/test_affine.py) — and draws the same noise from the same ``rng``.

Non-affine options — ``clip``, ``threshold_ratio`` and the learned variance types — are refused
here (:func:`is_affine` says which); use :mod:`refdiff.reverse` for those.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ._check import as_float_array, option, renamed, timesteps
from .errors import InputError, RandomnessError, ShapeError, TimestepError
from .reverse import LEARNED, ddim_step, ddpm_step
from .schedule import Schedule

__all__ = [
    "SAMPLERS",
    "METHODS",
    "AffineCoefficients",
    "is_affine",
    "affine_coefficients",
    "affine_step",
]

SAMPLERS = ("ddpm", "ddim")
METHODS = SAMPLERS  # the former name

# Elements per block of the fused update: the block's temporary stays in L2, so a large
# state is read once per term instead of also writing and re-reading a full-size temporary.
BLOCK = 1 << 15


class AffineCoefficients(NamedTuple):
    """The coefficients of (7.12) for every t of one schedule and one set of options.

    a, b, s: float64 arrays of shape (T + 1,) indexed by t (entry 0, t = 0, is NaN: there is
    no step from it).  ``draws``: whether the step consumes one noise draw (DDPM always, as
    :func:`refdiff.reverse.ddpm_step` does, even where s_t = 0; DDIM only when η > 0).
    ``sampler``: "ddpm" or "ddim" (also readable as ``method``, its former name).
    """

    a: np.ndarray
    b: np.ndarray
    s: np.ndarray
    draws: bool
    sampler: str

    @property
    def method(self) -> str:
        """The former name of :attr:`sampler`."""
        return self.sampler


def _sampler(sampler: str | None, options: dict, default: str | None = None) -> str:
    """The ``sampler`` keyword (or its former name ``method``, popped from ``options``)."""
    s = renamed(
        sampler, options.pop("method", None), new_name="sampler", old_name="method", default=default
    )
    return option(s, "sampler", SAMPLERS)


def _non_affine(sampler: str, options: dict) -> str | None:
    """The option that makes the step of ``sampler`` non-affine, or None."""
    for name in ("clip", "threshold_ratio"):
        if options.get(name) is not None:
            return name
    if sampler == "ddpm" and options.get("variance_type", "fixed_small") in LEARNED:
        return "variance_type"
    return None


def is_affine(sampler: str | None = None, **options) -> bool:
    """Whether the step of ``sampler`` ("ddpm" or "ddim") with ``options`` is of form (7.12)."""
    sampler = _sampler(sampler, options)
    return _non_affine(sampler, options) is None


def affine_coefficients(
    schedule: Schedule, sampler: str | None = None, **options
) -> AffineCoefficients:
    """(a_t, b_t, s_t) of (7.12) for t = 1 … T, read off the reference step.

    ``sampler``: "ddpm" (the default) or "ddim" (``method=``, the former keyword, still
    works with a DeprecationWarning).  ``options`` are those of
    :func:`refdiff.reverse.ddpm_step` (``sampler="ddpm"``) or :func:`refdiff.reverse.ddim_step`
    (``"ddim"``), checked by them; the non-affine ones (``clip``, ``threshold_ratio``, learned
    variances) raise :class:`InputError`.
    """
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    sampler = _sampler(sampler, options, "ddpm")
    bad = _non_affine(sampler, options)
    if bad is not None:
        raise InputError(bad, f"makes the {sampler} step non-affine; use refdiff.reverse")
    if sampler == "ddpm":
        step, draws = ddpm_step, True
    else:
        step, draws = ddim_step, options.get("eta", 0.0) != 0.0
    T = schedule.T
    t = np.arange(1, T + 1)
    one, zero = np.ones(T), np.zeros(T)
    # The step is linear in (x_t, o, z): its value on a unit input is that input's coefficient.
    # A batch of T one-element states, state b at time b + 1, gives every t in one call.
    coef = [
        np.concatenate(([np.nan], step(schedule, x, t, o, noise=z, **options)))
        for x, o, z in ((one, zero, zero), (zero, one, zero), (zero, zero, one))
    ]
    for c in coef:
        c.setflags(write=False)
    return AffineCoefficients(*coef, draws=draws, sampler=sampler)


# Tables already read off, per schedule (weakly: they go with it) and per (sampler, options),
# the most recent _CACHE_SIZE option sets each.  A Schedule's arrays are read-only, so its
# identity fixes its content (as for its cached properties).
_CACHE: weakref.WeakKeyDictionary[Schedule, OrderedDict] = weakref.WeakKeyDictionary()
_CACHE_SIZE = 16
_CACHE_LOCK = threading.Lock()
_KEY_TYPES = (type(None), bool, int, float, str, np.bool_, np.integer, np.floating)


def _options_key(sampler: object, options: dict) -> tuple | None:
    """A key telling option sets apart exactly (1, 1.0, True and -0.0, 0.0 differ), or None
    when a value is not a plain scalar (such calls are not cached)."""
    key: list = [(type(sampler), repr(sampler))]
    for name in sorted(options):
        v = options[name]
        if not isinstance(v, _KEY_TYPES):
            return None
        key.append((name, type(v), repr(v)))
    return tuple(key)


def cached_coefficients(schedule: Schedule, sampler: str, options: dict) -> AffineCoefficients:
    """:func:`affine_coefficients` ``(schedule, sampler, **options)``, computed once per
    schedule and option set and then reused (the tables are read-only); what the sampling
    loops call, so that a loop does not read the tables off the step again on every call."""
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    key = _options_key(sampler, options)
    if key is not None:
        with _CACHE_LOCK:
            tables = _CACHE.get(schedule)
            if tables is not None and key in tables:
                tables.move_to_end(key)
                return tables[key]
    coef = affine_coefficients(schedule, sampler, **options)
    if key is not None:
        with _CACHE_LOCK:
            tables = _CACHE.setdefault(schedule, OrderedDict())
            tables[key] = coef
            if len(tables) > _CACHE_SIZE:
                tables.popitem(last=False)
    return coef


_F64 = np.dtype(np.float64)


def _array(x: object, name: str) -> np.ndarray:
    if type(x) is np.ndarray and x.dtype is _F64 and x.ndim and x.size:
        return x  # the loop's case: no conversion
    a = as_float_array(x, name, finite=False)
    if a.ndim < 1 or a.size == 0:
        raise ShapeError(name, f"needs a batch axis and at least one value; got shape {a.shape}")
    return a


def affine_step(
    coef: AffineCoefficients,
    x_t,
    t,
    model_output,
    *,
    noise=None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """x_{t−1} = a_t x_t + b_t o + s_t z (7.12): a fresh float64 array of the state shape.

    ``t``: one int in [1, T] for the whole batch.  ``x_t``, ``model_output``: (B, …), the
    same shape.  The noise is ``noise`` (state shape) or drawn from ``rng`` when
    ``coef.draws``, as the reference step draws it (``rng.normal(0, s_t)`` consumes the
    stream exactly like ``standard_normal``).  Inputs are not checked for NaN/Inf (they
    propagate to the result); the sampling loops check the model output.
    """
    if not isinstance(coef, AffineCoefficients):
        raise InputError("coef", f"must be AffineCoefficients; got {type(coef).__name__}")
    T = coef.a.shape[0] - 1
    if type(t) is not int:
        t = timesteps(t, "t", low=1, high=T)
        if t.ndim:
            raise TimestepError("t", f"affine_step takes one t for the batch; got shape {t.shape}")
        t = int(t)
    elif not 1 <= t <= T:
        raise TimestepError("t", f"value {t} is outside [1, {T}]")
    x = _array(x_t, "x_t")
    o = _array(model_output, "model_output")
    if o.shape != x.shape:
        raise ShapeError("model_output", f"shape {o.shape} does not match x_t shape {x.shape}")
    return apply_unchecked(coef, x, t, o, noise, rng)


def apply_unchecked(
    coef: AffineCoefficients,
    x: np.ndarray,
    t: int,
    o: np.ndarray,
    noise: object,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """:func:`affine_step` once ``coef``, ``t`` (an int in [1, T]) and the float64 ``x`` and
    ``o`` of one shape are known good (the sampling loops check them once, not per step)."""
    xo = ((x, coef.a[t]), (o, coef.b[t]))
    if not coef.draws:
        y, scale, terms = None, None, xo
    elif noise is not None:
        z = _array(noise, "noise")
        if z.shape != x.shape:
            raise ShapeError("noise", f"shape {z.shape} does not match the state {x.shape}")
        y, scale, terms = None, None, ((z, coef.s[t]), *xo)
    elif isinstance(rng, np.random.Generator):
        # The draw the reference step makes; scaled below (block by block, while in cache).
        y, scale, terms = rng.standard_normal(x.shape), coef.s[t], xo
    else:
        raise RandomnessError(
            "rng", f"pass injected noise= or a numpy.random.Generator; got {type(rng).__name__}"
        )
    n = x.size
    if n <= BLOCK:  # whole arrays, operator forms: the same IEEE ops, less call overhead
        if scale is None:
            (v, c), *terms = terms
            y = v * c
        else:
            y *= scale
        for v, c in terms:
            y += v * c
        return y
    if y is None:
        y = np.empty(x.shape)
    blocked_combine(y, scale, terms)
    return y


def blocked_combine(y: np.ndarray, scale, terms) -> None:
    """:func:`_combine` over ``y`` (and the ``terms``' arrays, of y's shape) block by block:
    one pass over memory, each block finished while it is in cache."""
    n = y.size
    flat = [(v.reshape(-1), c) for v, c in terms]
    yf, tmp = y.reshape(-1), np.empty(BLOCK)
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        _combine(yf[lo:hi], scale, [(v[lo:hi], c) for v, c in flat], tmp[: hi - lo])


def _combine(y: np.ndarray, scale, terms, tmp: np.ndarray) -> None:
    """y ← scale·y + Σ c·v in place, or Σ c·v into an empty y when ``scale`` is None.

    IEEE multiply then add (no FMA): the same bits on every machine NumPy runs on, and the
    same as the whole-array path of :func:`affine_step`.
    """
    if scale is None:
        (v, c), *terms = terms
        np.multiply(v, c, out=y)
    else:
        y *= scale
    for v, c in terms:
        np.multiply(v, c, out=tmp)
        y += tmp


def __getattr__(name: str) -> object:
    """``AffineStep``: the former name of :class:`AffineCoefficients` (one step of an exact
    law is :class:`refdiff.exact.AffineStep`); still importable, with a DeprecationWarning."""
    if name == "AffineStep":
        warnings.warn(
            "refdiff.affine.AffineStep is now AffineCoefficients",
            DeprecationWarning,
            stacklevel=2,
        )
        return AffineCoefficients
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
