"""Which timesteps a sampler visits (docs/math.md §6): the peers' spacing rules, named.

Every function returns the kept times in refdiff's convention: ascending int64 times in
[1, T] (time t = diffusers index + 1).  Feed them to :func:`refdiff.schedule.respace`.
"""

from __future__ import annotations

import operator

import numpy as np

from ._check import integer, option
from .errors import InputError
from .schedule import check_T

__all__ = ["SPACINGS", "spaced_times", "space_timesteps"]

SPACINGS = ("leading", "trailing", "linspace")


def _check_n(T: int, n: object, name: str = "num_steps") -> int:
    return integer(n, name, low=1, high=T)


def spaced_times(
    T: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """diffusers' ``timestep_spacing`` rules (eqs. 6.1–6.3), as ascending refdiff times.

    - ``leading``:  index = k·(T // N) + steps_offset, k = 0..N−1;
    - ``trailing``: index = round(T − k·T/N) − 1, k = 0..N−1 (round half to even);
    - ``linspace``: index = round(k·(T−1)/(N−1)), k = 0..N−1.

    ``steps_offset`` applies to ``leading`` only (diffusers ignores it elsewhere).  With
    ``steps_offset=1`` and N = T the last index is T, out of range: an InputError (the
    crash of diffusers#10003).
    """
    T = check_T(T)
    N = _check_n(T, num_steps)
    option(spacing, "spacing", SPACINGS)
    integer(steps_offset, "steps_offset")
    if abs(int(steps_offset)) > T:
        raise InputError("steps_offset", f"must be in [0, T={T}]; got {steps_offset!r}")
    if steps_offset and spacing != "leading":
        raise InputError("steps_offset", f"applies to 'leading' spacing only, not {spacing!r}")
    if spacing == "leading":
        idx = np.arange(N, dtype=np.int64) * (T // N) + int(steps_offset)
    elif spacing == "trailing":
        # diffusers' float arange sometimes yields an (N+1)-th value ≈ 0 (e.g. T=15, N=13);
        # the first N values are the intended ones, computed exactly as arange does.
        idx = np.round(np.arange(T, 0, -T / N)[:N]).astype(np.int64) - 1
    else:
        idx = np.linspace(0, T - 1, N).round().astype(np.int64)
    if idx.min() < 0 or idx.max() > T - 1:
        raise InputError(
            "steps_offset",
            f"{spacing} spacing with offset {steps_offset} reaches index {idx.max()} >= T={T}",
        )
    times = np.unique(idx) + 1
    if times.size != N:
        raise InputError(
            "num_steps", f"{spacing} spacing gives repeated timesteps for N={N}, T={T}"
        )
    return times


def space_timesteps(T: int, sections: str | list[int]) -> np.ndarray:
    """improved-diffusion's ``space_timesteps`` (eq. 6.4), as ascending refdiff times.

    ``sections`` is ``"ddimN"`` (the smallest integer stride s with |range(0, T, s)| = N),
    a comma string ``"10,15,20"`` or a list of counts: the T steps are cut into equal
    sections (the first T mod K one longer) and each section takes ``count`` steps at a
    fractional stride (size−1)/(count−1) *accumulated* and rounded half to even, which is
    not the same as rounding k·stride at half-integers (e.g. T=1000, "21": 499 vs 500).
    """
    T = check_T(T)
    if isinstance(sections, str):
        if sections.startswith("ddim"):
            try:
                want = int(sections[4:])
            except ValueError:
                raise InputError("sections", f"bad 'ddimN' string {sections!r}") from None
            if not 1 <= want <= T:
                raise InputError("sections", f"{sections!r} asks for {want} of T={T} steps")
            for stride in range(1, T):
                if len(range(0, T, stride)) == want:
                    return np.arange(0, T, stride, dtype=np.int64) + 1
            raise InputError("sections", f"no integer stride gives exactly {want} of {T} steps")
        try:
            counts = [int(c) for c in sections.split(",")]
        except ValueError:
            raise InputError("sections", f"bad section string {sections!r}") from None
    else:
        try:
            counts = [operator.index(c) for c in sections]
        except TypeError:
            msg = f"must be 'ddimN', 'a,b,…' or a list of ints; got {sections!r}"
            raise InputError("sections", msg) from None
    if not counts or any(c < 0 for c in counts):
        raise InputError("sections", f"needs non-negative counts; got {sections!r}")
    size_per, extra = divmod(T, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise InputError("sections", f"section {i} has {size} steps, cannot take {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    if not kept:
        raise InputError("sections", f"keeps no timestep: {sections!r}")
    return np.array(sorted(set(kept)), dtype=np.int64) + 1
