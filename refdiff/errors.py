"""Typed errors.  Every error names the argument at fault and the bad value.

All inherit from :class:`RefdiffError`; each also inherits the built-in exception a
caller would expect (``ValueError``, ``TypeError``), so ``except ValueError`` still works.
"""

from __future__ import annotations

__all__ = [
    "RefdiffError",
    "InputError",
    "ScheduleError",
    "TimestepError",
    "ShapeError",
    "DTypeError",
    "OptionError",
    "NonFiniteError",
    "UndefinedError",
    "FileFormatError",
    "RandomnessError",
]


class RefdiffError(Exception):
    """Base class of every error refdiff raises on purpose."""


class InputError(RefdiffError, ValueError):
    """A bad argument value.  ``argument`` holds the argument's name."""

    def __init__(self, argument: str, message: str):
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class ScheduleError(InputError):
    """β outside (0, 1], ᾱ not strictly decreasing, wrong length, …"""


class TimestepError(InputError):
    """A timestep out of range or of the wrong type."""


class ShapeError(InputError):
    """Arrays whose shapes do not fit together."""


class DTypeError(InputError, TypeError):
    """An array of a dtype refdiff will not silently convert (complex, object, bool, …)."""


class OptionError(InputError):
    """An unknown option name; the message lists the valid names."""

    def __init__(self, argument: str, value: object, valid: list[str] | tuple[str, ...]):
        self.value = value
        self.valid = tuple(valid)
        super().__init__(
            argument, f"unknown option {value!r}; valid: {', '.join(map(repr, valid))}"
        )


class NonFiniteError(InputError):
    """NaN or Inf in an input that must be finite."""


class UndefinedError(InputError):
    """The quantity is mathematically undefined for these inputs (e.g. ε-prediction at ᾱ=0)."""


class RandomnessError(InputError, TypeError):
    """Neither injected noise nor a ``numpy.random.Generator`` was given."""


class FileFormatError(RefdiffError, ValueError):
    """A file that is truncated, corrupted, of another format or of an unsupported version."""

    def __init__(self, path: object, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")
