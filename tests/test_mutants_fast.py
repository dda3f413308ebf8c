"""Negative controls inside ``make test``: every planted bug of tests/mutants.py is caught.

Each mutant runs in its own pytest subprocess (the bug is planted at import time) against its
``fast`` catchers only, two at a time; ``python -m tests.mutants`` runs the wider suite
against each and prints which tests catch what.
"""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from tests import mutants as M

pytestmark = pytest.mark.mutants


def test_every_mutant_applies_to_the_current_source():
    """Each snippet occurs exactly once, and the mutated module still compiles."""
    for m in M.MUTANTS:
        src = M.mutate_source(m, M.module_path(m.module).read_text(encoding="utf-8"))
        compile(src, str(M.module_path(m.module)), "exec")


def test_the_catalogue():
    names = [m.name for m in M.MUTANTS]
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert all(m.fast and m.old != m.new for m in M.MUTANTS)
    with pytest.raises(M.MutantError):
        M.install("no_such_mutant")


def test_every_mutant_is_caught_by_its_fast_catchers():
    with cf.ThreadPoolExecutor(2) as pool:
        outcomes = list(
            pool.map(lambda m: M.run_pytest(m, list(m.fast), ["-x"], timeout=300), M.MUTANTS)
        )
    escaped = [
        f"{o.mutant.name}: rc={o.returncode} {o.error or 'no failing test'}"
        for o in outcomes
        if not o.caught
    ]
    assert not escaped, "mutants NOT caught:\n" + "\n".join(escaped)
    for o in outcomes:  # the failure is in a catcher, not somewhere unexpected
        assert o.failed and all(any(f.startswith(c) for c in o.mutant.fast) for f in o.failed), (
            o.mutant.name,
            o.failed,
        )
