"""Golden vectors: write the reference's inputs and outputs to a directory, read them back,
check another implementation's outputs against them (docs/verify.md §Golden vectors).

The code lives in :mod:`refdiff.conformance.vectors`; this module is its public face
(``python -m refdiff.vectors`` runs its command).
"""

from __future__ import annotations

from .conformance.vectors import (
    ARRAYS,
    CONFIG_DOC,
    FORMAT,
    GRIDS,
    INDEX_CONVENTION,
    SCHEMA_VERSION,
    STATE,
    CaseResult,
    VectorCase,
    array_sha256,
    check,
    check_case,
    grid,
    main,
    make_case,
    read,
    table,
    write,
)

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "ARRAYS",
    "array_sha256",
    "grid",
    "make_case",
    "write",
    "read",
    "check",
    "main",
]

# Names that are public here too, beyond the original list above.
__all__ += [
    "CONFIG_DOC",
    "GRIDS",
    "INDEX_CONVENTION",
    "STATE",
    "CaseResult",
    "VectorCase",
    "check_case",
    "table",
]

if __name__ == "__main__":
    raise SystemExit(main())
