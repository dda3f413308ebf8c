"""Host noise of the ONNX samplers: per-step, per-row-block streams (docs/deploy.md).

Any piece of the noise is derivable on its own, without drawing what comes before it, so a
sampler holds one step's noise at a time (bounded memory for any number of steps) and a
batch split across processes draws exactly the rows it owns (bit-identical to one process
with the same seed).

Layout (docs/math.md (8.3)).  Stream ``s`` is 0 for x_T and ``k + 1`` for the noise of step
k (0-based, the k-th step taken).  Rows (samples) are cut into blocks of :data:`ROW_BLOCK`
consecutive rows; block ``r`` holds rows ``[r·ROW_BLOCK, (r + 1)·ROW_BLOCK)``.  The values of
stream ``s``, block ``r`` are those of the counter-based Philox generator keyed by the seed
and the (stream, block) pair, counter from 0::

    numpy.random.Generator(numpy.random.Philox(key=[seed, s · 2**32 + r]))
        .standard_normal((rows_in_block, *S), dtype=float32)

in C order (seed < 2**64, s and r < 2**32).  ``standard_normal`` fills its output value by
value, so a block cut short by the end of the batch holds the first values of the full
block: the noise of sample i never depends on the batch size.  The values are float32
(exact in float64, so the float64 reference fed the same arrays sees the same noise, not a
rounded copy).

:func:`refdiff.sampling.ddpm_sample` with ``rng=`` keeps its own layout (one stream, x_T then
step after step); :func:`host_noise` gives this layout's arrays to inject into it.
"""

from __future__ import annotations

import threading

import numpy as np

from refdiff.errors import InputError

__all__ = ["ROW_BLOCK", "fill_noise", "host_noise", "new_seed", "NoiseStream"]

#: Rows per block of the host-noise layout (fixed: changing it changes every sample).
ROW_BLOCK = 16


_LIMITS = {"seed": 2**64, "stream": 2**32}
_LOCAL = threading.local()  # one Philox per thread, re-keyed per block (cheap: no hashing)


def _check(seed: object, stream: object) -> tuple[int, int]:
    for name, v in (("seed", seed), ("stream", stream)):
        if (
            isinstance(v, bool)
            or not isinstance(v, int | np.integer)
            or not 0 <= int(v) < _LIMITS[name]
        ):
            raise InputError(name, f"must be an int in [0, {_LIMITS[name]}); got {v!r}")
    return int(seed), int(stream)


def new_seed() -> int:
    """A fresh 64-bit seed from the operating system's entropy."""
    return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])


def _generator(seed: int, stream: int, block: int) -> np.random.Generator:
    """``Generator(Philox(key=[seed, stream·2³² + block]))``, counter 0 (the same draws as a
    fresh one; re-keying this thread's Philox skips the construction)."""
    if block >= 2**32:
        raise InputError("shape", "more than 2**32 row blocks")
    if not hasattr(_LOCAL, "g"):
        _LOCAL.bg = np.random.Philox(0)
        _LOCAL.g = np.random.Generator(_LOCAL.bg)
        _LOCAL.zero = np.zeros(4, np.uint64)
    z = _LOCAL.zero
    _LOCAL.bg.state = {
        "bit_generator": "Philox",
        "state": {"counter": z, "key": np.array([seed, (stream << 32) | block], np.uint64)},
        "buffer": z,
        "buffer_pos": 4,
        "has_uint32": 0,
        "uinteger": 0,
    }
    return _LOCAL.g


def fill_noise(out: np.ndarray, seed: int, stream: int, row_start: int = 0) -> np.ndarray:
    """Fill float32 ``out`` (n, *S) with rows ``[row_start, row_start + n)`` of a stream.

    ``stream``: 0 for x_T, k + 1 for step k.  Rows need not start on a block boundary (the
    covering blocks are drawn and the wanted rows kept).  Returns ``out``.
    """
    seed, stream = _check(seed, stream)
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.ndim < 1:
        raise InputError("out", "must be a C-contiguous float32 array (n, *S)")
    n, sample = out.shape[0], out.shape[1:]
    if isinstance(row_start, bool) or int(row_start) < 0:
        raise InputError("row_start", f"must be an int >= 0; got {row_start!r}")
    row = int(row_start)
    end = row + n
    while row < end:
        r = row // ROW_BLOCK
        lo, hi = r * ROW_BLOCK, min((r + 1) * ROW_BLOCK, end)
        g = _generator(seed, stream, r)
        dst = out[row - row_start : hi - row_start]
        if lo == row:  # aligned: draw straight into the output
            g.standard_normal(dtype=np.float32, out=dst)
        else:  # draw the block's first rows up to hi and keep [row, hi)
            tmp = g.standard_normal((hi - lo, *sample), dtype=np.float32)
            dst[...] = tmp[row - lo :]
        row = hi
    return out


def host_noise(
    seed: int, num_steps: int, shape: tuple[int, ...], rows: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(x_T (B, *S), step_noise (N, B, *S)) of the layout, float32, as whole arrays.

    For tests and for injecting into :mod:`refdiff.sampling` (the samplers never build the
    (N, B, *S) array).  ``rows=(a, b)``: only samples a..b−1 of the batch (``shape[0]`` is
    then b − a).
    """
    shape = tuple(int(s) for s in shape)
    a = 0 if rows is None else int(rows[0])
    x_T = fill_noise(np.empty(shape, np.float32), seed, 0, a)
    z = np.empty((int(num_steps), *shape), np.float32)
    for k in range(int(num_steps)):
        fill_noise(z[k], seed, k + 1, a)
    return x_T, z


class NoiseStream:
    """One step's noise at a time into a reused float32 buffer (the samplers' host noise)."""

    def __init__(self, seed: int, shape: tuple[int, ...], row_start: int = 0):
        self.seed, _ = _check(seed, 0)
        self.row_start = int(row_start)
        self.buffer = np.empty(tuple(shape), np.float32)

    def x_T(self) -> np.ndarray:
        """A fresh array holding x_T."""
        return fill_noise(np.empty_like(self.buffer), self.seed, 0, self.row_start)

    def step(self, k: int, out: np.ndarray | None = None) -> np.ndarray:
        """The noise of step k written into ``out`` (default: the shared buffer)."""
        return fill_noise(self.buffer if out is None else out, self.seed, k + 1, self.row_start)
