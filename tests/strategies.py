"""Hypothesis strategies and small helpers shared by the reference-core tests.

Randomness for array *values* never comes from Hypothesis' own numpy state: strategies draw
an integer seed and the test builds ``numpy.random.default_rng(seed)`` from it (Hypothesis
does not reset Generator state between examples; docs/stats.md).
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import strategies as st

from refdiff import schedule as S

# The schedule of the hand derivations: β = (0.1, 0.2, 0.5), so
#   α = (0.9, 0.8, 0.5),  ᾱ = (0.9, 0.72, 0.36),  ᾱ_prev = (1, 0.9, 0.72).
HAND_BETAS = (0.1, 0.2, 0.5)


def hand_schedule() -> S.Schedule:
    return S.from_betas(HAND_BETAS)


def examples(base: int) -> int:
    """``max_examples`` for a deterministic property test: ``base``, 10× under ``thorough``."""
    return base * (10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1)


seeds = st.integers(min_value=0, max_value=2**32 - 1)

# β_t log-uniform-ish in [1e-4, 0.9]: covers nearly-deterministic steps and big jumps.
betas_values = st.floats(min_value=-4.0, max_value=np.log10(0.9)).map(lambda e: float(10.0**e))


@st.composite
def betas(draw, min_T: int = 1, max_T: int = 50) -> np.ndarray:
    """β_1..β_T, T in [min_T, max_T], each in [1e-4, 0.9]."""
    T = draw(st.integers(min_value=min_T, max_value=max_T))
    return np.array(draw(st.lists(betas_values, min_size=T, max_size=T)))


@st.composite
def schedules(draw, min_T: int = 1, max_T: int = 50, respaced: bool | None = None) -> S.Schedule:
    """A random schedule from random β; respaced (random subset of times) when asked or drawn."""
    base = S.from_betas(draw(betas(min_T=min_T, max_T=max_T)))
    if respaced is None:
        respaced = draw(st.booleans())
    if not respaced:
        return base
    all_times = list(range(1, base.T + 1))
    kept = draw(
        st.lists(st.sampled_from(all_times), min_size=max(1, min_T), max_size=base.T, unique=True)
        if base.T >= min_T
        else st.just(all_times)
    )
    return S.respace(base, sorted(kept))


# Trailing data shapes: (), (d,), (c, h) …; batch sizes 1..4.
data_shapes = st.lists(st.integers(min_value=1, max_value=3), min_size=0, max_size=2).map(tuple)
batch_sizes = st.integers(min_value=1, max_value=4)


@st.composite
def state_shapes(draw) -> tuple[int, ...]:
    return (draw(batch_sizes), *draw(data_shapes))


@st.composite
def timesteps_for(draw, T: int, B: int, low: int = 1):
    """Either one int t in [low, T] or an int64 array of shape (B,)."""
    if draw(st.booleans()):
        return draw(st.integers(min_value=low, max_value=T))
    return np.array(
        draw(st.lists(st.integers(min_value=low, max_value=T), min_size=B, max_size=B)),
        dtype=np.int64,
    )


def per_sample(values: np.ndarray, ndim: int) -> np.ndarray:
    """A scalar or (B,) coefficient reshaped to broadcast against (B, …) — test-side copy."""
    values = np.asarray(values, dtype=np.float64)
    return values if values.ndim == 0 else values.reshape(values.shape + (1,) * (ndim - 1))


def normal(seed: int, shape: tuple[int, ...], n: int = 1) -> list[np.ndarray]:
    """``n`` standard-normal arrays of ``shape`` from a Generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(n)]
