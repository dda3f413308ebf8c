"""The registry of known bugs: every bug is tested with its planted reproduction.

For each registered bug, its ``example`` case is built, the bug's own output is planted as
the implementation's output, and :func:`refdiff.verify.diagnose` must name the bug.  A bug
added to the registry is tested here without editing this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from refdiff.conformance import diagnoses as DG
from refdiff.testing import Setting, Tolerance, compare, compare_alpha_bar, expected
from refdiff.verify import diagnosis_for

ROOT = Path(__file__).resolve().parents[2]
TOL = Tolerance("float32")


@pytest.mark.parametrize("name", list(DG.REGISTRY))
def test_every_known_bug_is_named_by_its_planted_reproduction(name: str) -> None:
    bug = DG.REGISTRY[name]
    case = DG.example_case(**bug.example)
    assert bug.at(case) is not None, f"{name}: its example is not a case where it can occur"
    planted = np.asarray(bug.output(case), dtype=np.float64)
    check = compare(case, planted, TOL)
    assert check.status == "FAIL", f"{name}: the planted bug is invisible at its example"
    diagnosis = diagnosis_for(check).diagnosis or ""
    assert bug.message(case) in diagnosis, f"{name}: diagnosed as {diagnosis!r}"
    assert bug.reference.startswith("docs/"), f"{name}: reference {bug.reference!r}"


@pytest.mark.parametrize("name", list(DG.ALPHA_BAR_BUGS))
def test_every_known_alpha_bar_bug_is_named(name: str) -> None:
    bug = DG.ALPHA_BAR_BUGS[name]
    zsnr = "zero terminal SNR" in bug.message  # only differs where ᾱ_T = 0
    setting = Setting("linear", 1000, zero_terminal_snr=zsnr)
    check = compare_alpha_bar(setting, bug.output(setting.base()), TOL)
    assert check.status == "FAIL"
    assert diagnosis_for(check).diagnosis == bug.message


def test_the_reference_itself_is_no_known_bug() -> None:
    for name, bug in DG.REGISTRY.items():
        case = DG.example_case(**bug.example)
        assert DG.diagnose(case, expected(case), TOL) is None, name


def test_planted_implementations_exist() -> None:
    """Bugs that name a class of examples/planted_bugs.py: the class is there
    (tests/conformance/test_verify.py runs each through ``refdiff verify``)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import planted_bugs

    named = {b.planted for b in DG.REGISTRY.values() if b.planted}
    assert named, "no bug names its planted implementation"
    assert all(hasattr(planted_bugs, n) for n in named), sorted(named)
