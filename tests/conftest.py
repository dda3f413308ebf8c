"""Session-wide test configuration: Hypothesis profiles, seed salt, the statistical error budget.

Profiles (``HYPOTHESIS_PROFILE`` selects one explicitly; otherwise ``ci`` when ``CI`` is set,
``mutant`` when ``REFDIFF_MUTANT`` is set, else ``dev``):

- ``ci``        derandomized (the same examples every run), no database, no deadline;
- ``dev``       Hypothesis' random examples and example database, no deadline;
- ``thorough``  10× the examples (statistical tests split their α accordingly), fresh seeds;
- ``mutant``    ``ci`` without shrinking: a negative-control run wants the first failure fast.

``REFDIFF_SEED_SALT`` (int or string) re-rolls every seed the statistical suite derives.
``REFDIFF_MUTANT=<name>`` plants one of the bugs of ``tests/mutants.py`` before refdiff is
imported (``python -m tests.mutants`` drives this).

Error budget: every :mod:`refdiff.stats` assertion records its false-failure rate α in
``refdiff.stats.LEDGER``.  At the end of the session the terminal summary prints the number of
statistical assertions, Σα and their detectable discrepancies, and the run FAILS if
Σα > 1e-4 (docs/stats.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # `from tests.… import …` also under a bare `pytest`
    sys.path.insert(0, _ROOT)

if os.environ.get("REFDIFF_MUTANT"):  # must run before anything imports refdiff
    from tests.mutants import install as _install_mutant

    _install_mutant(os.environ["REFDIFF_MUTANT"])

import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from refdiff import stats  # noqa: E402
from tests._suite import BUDGET, CALIBRATION_REPORT, SALT, profile_name  # noqa: E402

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, suppress_health_check=_QUIET
)
settings.register_profile("dev", deadline=None, suppress_health_check=_QUIET)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, database=None, suppress_health_check=_QUIET
)
settings.register_profile(
    "mutant",
    parent=settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
)
settings.load_profile(profile_name())


def pytest_report_header(config: pytest.Config) -> str:
    mutant = os.environ.get("REFDIFF_MUTANT")
    return (
        f"refdiff: hypothesis profile {profile_name()!r}, seed salt {SALT}"
        + (f", MUTANT {mutant!r}" if mutant else "")
        + f", statistical budget Σα ≤ {BUDGET:g}"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    stats.reset_ledger()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    total = stats.ledger_total()
    session.config._refdiff_budget = (len(stats.LEDGER), total)  # type: ignore[attr-defined]
    if total > BUDGET and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    count, total = getattr(config, "_refdiff_budget", (len(stats.LEDGER), stats.ledger_total()))
    tr = terminalreporter
    if CALIBRATION_REPORT:
        tr.write_sep("-", "calibration: false-failure rates at α = 0.05")
        for line in CALIBRATION_REPORT:
            tr.write_line(line)
    tr.write_sep("-", "statistical error budget")
    for line in stats.ledger_summary():
        tr.write_line(line)
    if total > BUDGET:
        tr.write_line(
            f"FAILED: the statistical assertions spent Σα = {total:.3g} > budget {BUDGET:g}: "
            "lower their false_fail_rate or make fewer of them",
            red=True,
            bold=True,
        )
    else:
        tr.write_line(f"budget ok: Σα = {total:.3g} <= {BUDGET:g} over {count} assertions")
