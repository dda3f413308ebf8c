"""Arrays across frameworks and diffusers-style schedulers as verify targets (docs/verify.md).

The code lives in :mod:`refdiff.conformance.adapters`; this module is its public face.
"""

from __future__ import annotations

from .conformance.adapters import (
    DIFFUSERS_CONVENTIONS,
    DIFFUSERS_SCHEDULES,
    DiffusersTarget,
    Unsupported,
    from_numpy_like,
    looks_like_diffusers_scheduler,
    to_numpy,
)

__all__ = [
    "to_numpy",
    "from_numpy_like",
    "looks_like_diffusers_scheduler",
    "DiffusersTarget",
    "DIFFUSERS_SCHEDULES",
    "DIFFUSERS_CONVENTIONS",
]

# Names that are public here too, beyond the original list above.
__all__ += [
    "Unsupported",
]
