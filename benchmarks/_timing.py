"""Timing helpers: interleaved medians, the machine's copy bandwidth, peak memory.

Every comparison in the benchmarks is made *inside one run*: the compared variants are
timed in alternating blocks (round r times every variant once, the order rotating from
round to round), so a noisy neighbour slows all of them alike.  A variant's time is the
median over rounds of (block time / calls per block); a ratio is the median over rounds of
the per-round ratio, which cancels drift that a ratio of medians would keep.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Timing",
    "race",
    "ratio",
    "copy_bandwidth",
    "machine_info",
    "peak_python_bytes",
    "max_rss_bytes",
]


#: The clock every reported time is read from: "wall" (time.perf_counter, the default) or
#: "cpu" (time.process_time: this process's CPU time, all threads).  On a machine shared with
#: other busy processes, CPU time leaves out the time this process waited for a core; it is
#: only meaningful when everything timed runs on the CPU (not with the CUDA provider).
CLOCKS = ("wall", "cpu")
_clock = "wall"


def set_clock(name: str) -> None:
    global _clock
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}; got {name!r}")
    _clock = name


def clock() -> str:
    return _clock


@dataclass
class Timing:
    """Per-call seconds of one variant, one entry per round, on both clocks."""

    name: str
    calls_per_block: int
    per_call_wall: list[float] = field(default_factory=list)
    per_call_cpu: list[float] = field(default_factory=list)

    @property
    def per_call(self) -> list[float]:
        """Per-call seconds on the reported clock (:func:`set_clock`)."""
        return self.per_call_cpu if _clock == "cpu" else self.per_call_wall

    @property
    def median(self) -> float:
        """Median over rounds of seconds per call on the reported clock."""
        return float(np.median(self.per_call))

    @property
    def median_wall(self) -> float:
        return float(np.median(self.per_call_wall))

    @property
    def best(self) -> float:
        """Fastest round: the least disturbed by other processes."""
        return float(np.min(self.per_call))

    @property
    def median_cpu(self) -> float:
        """Median over rounds of this process's CPU seconds per call (all its threads)."""
        return float(np.median(self.per_call_cpu))

    @property
    def spread(self) -> float:
        """(p75 − p25) / median over rounds: how noisy this variant was."""
        q25, q75 = np.percentile(self.per_call, [25, 75])
        return float((q75 - q25) / self.median) if self.median > 0 else 0.0


def _block(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``n`` calls."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _calibrate(fn: Callable[[], object], block_s: float, max_calls: int) -> int:
    """Calls per block so that one block lasts about ``block_s`` of wall time (at least one)."""
    t0 = time.perf_counter()
    fn()  # warm-up: first-call costs (imports, allocations, session setup) stay out
    if time.perf_counter() - t0 >= block_s:  # slow calls: one per block, no further probing
        return 1
    n = 1
    while True:
        dt = _block(fn, n)[0]
        if dt >= block_s / 4 or n >= max_calls:
            break
        n *= 4
    per = dt / n
    return int(min(max_calls, max(1, round(block_s / max(per, 1e-9)))))


def race(
    variants: dict[str, Callable[[], object]],
    *,
    rounds: int = 7,
    block_s: float = 0.02,
    max_calls: int = 100_000,
) -> dict[str, Timing]:
    """Time ``variants`` interleaved: ``rounds`` rounds, each runs every variant for a block.

    The order rotates each round (round r starts with variant r mod k).  The garbage
    collector is paused inside blocks.  Returns name → :class:`Timing`.
    """
    names = list(variants)
    out = {nm: Timing(nm, _calibrate(variants[nm], block_s, max_calls)) for nm in names}
    was = gc.isenabled()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for nm in order:
                gc.collect()
                gc.disable()
                dt, cpu = _block(variants[nm], out[nm].calls_per_block)
                if was:
                    gc.enable()
                out[nm].per_call_wall.append(dt / out[nm].calls_per_block)
                out[nm].per_call_cpu.append(cpu / out[nm].calls_per_block)
    finally:
        if was:
            gc.enable()
    return out


def ratio(a: Timing, b: Timing) -> float:
    """Median over rounds of a/b (the rounds were interleaved, so each pair is adjacent)."""
    n = min(len(a.per_call), len(b.per_call))
    return float(np.median(np.asarray(a.per_call[:n]) / np.asarray(b.per_call[:n])))


def copy_bandwidth(nbytes: int = 256 * 2**20, rounds: int = 7) -> float:
    """Bytes per second of a large ``numpy.copyto`` (bytes read + bytes written).

    The arrays (``nbytes`` each, default 256 MiB) are far larger than the last-level
    cache, so this is the memory bandwidth a streaming step can reach from NumPy.
    """
    n = nbytes // 8
    src = np.random.default_rng(0).standard_normal(n)
    buf = np.empty(n + 1024)  # dst half a page from src modulo 4 KiB: no 4K aliasing
    off = ((src.ctypes.data + 2048 - buf.ctypes.data) % 4096) // 8
    dst = buf[off : off + n]
    np.copyto(dst, src)  # fault the pages in
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2.0 * src.nbytes / float(np.median(times))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """CPU model, core count, memory, library versions (what is installed, not imported)."""
    info: dict[str, object] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        info["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    except (ValueError, OSError, AttributeError):
        pass
    from importlib import metadata

    for dist in ("torch", "diffusers", "onnxruntime", "onnxruntime-gpu", "onnx", "scipy"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def peak_python_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated through Python's and NumPy's allocators while ``fn()`` runs.

    NumPy reports its array buffers to :mod:`tracemalloc`, so this is the peak of the
    reference code's temporaries (not of onnxruntime, which allocates on its own).
    """
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak - base)


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark to its current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int | None:
    """Current resident set (``VmRSS``), None where /proc is unavailable."""
    v = _status_kib("VmRSS")
    return None if v is None else 1024 * v


def max_rss_bytes() -> int:
    """The resident-set high-water mark of this process image.

    ``VmHWM`` where /proc has it (it belongs to the current image and can be reset with
    :func:`reset_peak_rss`); else ``ru_maxrss``, which on Linux also counts the parent's
    memory before ``exec`` and so cannot measure a child's own peak.
    """
    v = _status_kib("VmHWM")
    if v is not None:
        return 1024 * v
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
