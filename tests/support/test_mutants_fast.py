"""Negative controls inside ``make test``: every planted bug of tests/mutants.py is caught.

Each mutant is planted into fresh copies of refdiff and of its ``fast`` catchers' test modules
(in this process, restored afterwards) and must make one of them fail.  ``python -m
tests.mutants`` runs the wider suite against each mutant in subprocesses and prints which
tests catch what.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import mutants as MU

pytestmark = pytest.mark.mutants


def test_every_mutant_applies_to_the_current_source():
    """Each snippet occurs exactly once, and the mutated module still compiles."""
    for m in MU.MUTANTS:
        src = MU.mutate_source(m, MU.module_path(m.module).read_text(encoding="utf-8"))
        compile(src, str(MU.module_path(m.module)), "exec")


def test_the_catalogue():
    names = [m.name for m in MU.MUTANTS]
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert all(m.fast and m.old != m.new for m in MU.MUTANTS)
    with pytest.raises(MU.MutantError):
        MU.install("no_such_mutant")


def test_every_mutant_is_caught_by_its_fast_catchers():
    """In-process: each mutant is planted into fresh copies of refdiff and of the catching test
    modules (the session's own modules are restored afterwards)."""
    outcomes = [MU.run_in_process(m, m.fast) for m in MU.MUTANTS]
    escaped = [
        f"{o.mutant.name}: {o.detail or 'no catcher failed'}" for o in outcomes if not o.caught
    ]
    assert not escaped, "mutants NOT caught:\n" + "\n".join(escaped)


def test_planting_leaves_the_session_untouched():
    import refdiff.schedule

    before = refdiff.schedule.cosine(10).alpha_bar.copy()
    with MU.planted(MU.BY_NAME["cosine_offset_dropped"]):
        import refdiff.schedule as mutated

        assert not np.allclose(mutated.cosine(10).alpha_bar, before)
    import refdiff.schedule as again

    assert again is refdiff.schedule
    np.testing.assert_array_equal(again.cosine(10).alpha_bar, before)
