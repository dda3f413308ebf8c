"""Refuse a sampling run before allocating when its estimated peak does not fit in memory.

The estimate counts the model's weights and the sampler's float32 states (docs/deploy.md,
"Memory"); the denoiser's own activations are not known ahead and are not counted.  The
limit is ``memory_limit=`` when given, else ``MemAvailable`` of ``/proc/meminfo`` (Linux);
where neither is known nothing is refused.
"""

from __future__ import annotations

from refdiff.errors import InputError

__all__ = ["MemoryLimitError", "available_memory", "check_memory", "human"]


class MemoryLimitError(InputError, MemoryError):
    """The run would need more memory than is available; ``.needed`` and ``.limit`` in bytes."""

    def __init__(self, argument: str, needed: int, limit: int, what: str):
        self.needed, self.limit = int(needed), int(limit)
        super().__init__(
            argument,
            f"{what} needs about {human(needed)}, more than the {human(limit)} available; "
            "use a smaller batch, or pass memory_limit= to override",
        )


def human(n: float) -> str:
    """Bytes as a short string (1.5 GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def available_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(needed: int, what: str, *, limit: int | None = None, argument: str = "shape"):
    """Raise :class:`MemoryLimitError` when ``needed`` bytes exceed ``limit`` (default: the
    memory available now)."""
    if limit is None:
        limit = available_memory()
    if limit is not None and needed > limit:
        raise MemoryLimitError(argument, needed, limit, what)
