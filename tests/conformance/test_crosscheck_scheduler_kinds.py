"""Cross-check tier: every diffusers scheduler reaches a verdict (docs/verify.md §Scheduler
kinds): a pass, findings that are named, or a clean refusal with its reason — never
"unsupported: TypeError" from another scheduler's options injected into its constructor.

Run alone:
    .venv/bin/python -m pytest -q -m crosscheck tests/conformance/test_crosscheck_scheduler_kinds.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from refdiff import verify  # noqa: E402
from refdiff.conformance.adapters import DiffusersTarget  # noqa: E402
from refdiff.conformance.runner import EXIT_CODES  # noqa: E402

pytestmark = pytest.mark.crosscheck
ROOT = Path(__file__).resolve().parents[2]

# (class, constructor keywords, expected verdict, words the scheduler line must contain)
SCHEDULERS = {
    "DDPM": ("DDPMScheduler", {}, "FAIL", "DDPM"),
    "DDIM": ("DDIMScheduler", {}, "FAIL", "DDIM"),
    "Euler": ("EulerDiscreteScheduler", {}, "PASS", "σ-view Euler, linspace σ"),
    "Euler-karras": (
        "EulerDiscreteScheduler",
        {"use_karras_sigmas": True},
        "PASS",
        "σ-view Euler, Karras σ",
    ),
    "EulerAncestral": ("EulerAncestralDiscreteScheduler", {}, "PASS", "Euler ancestral"),
    "Heun": ("HeunDiscreteScheduler", {}, "PASS", "σ-view Heun"),
    "LMS": ("LMSDiscreteScheduler", {}, "PASS", "linear multistep"),
    "DPM++2M": ("DPMSolverMultistepScheduler", {}, "PASS", "DPM-Solver++ 2M"),
    "DPM++2M-karras": (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True},
        "PASS",
        "DPM-Solver++ 2M, Karras σ",
    ),
    "Heun-karras": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, "PASS", "Heun, Karras σ"),
    "UniPC-3": ("UniPCMultistepScheduler", {"solver_order": 3}, "PASS", "UniPC bh2 order 3"),
    "SDE-DPM++2M": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
        "PASS",
        "SDE-DPM-Solver++ 2M",
    ),
    "SDE-DPM++3M-heun": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"},
        "PASS",
        "SDE-DPM-Solver++ 3M",
    ),
    "DPM++3M-heun": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 3, "solver_type": "heun"},
        "PASS",
        "DPM-Solver++ 3M",
    ),
    "SDE-DPM++3M-midpoint": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        "REFUSED",
        "SDE-DPM-Solver++ 3M",
    ),
    "DPM-Solver": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        "REFUSED",
        "DPM-Solver 2M",
    ),
    "SDE-DPM-Solver": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
        "REFUSED",
        "SDE-DPM-Solver 2M",
    ),
    "DPMSinglestep": ("DPMSolverSinglestepScheduler", {}, "REFUSED", "DPMSolverSinglestep"),
    "UniPC": ("UniPCMultistepScheduler", {}, "PASS", "UniPC bh2 order 2"),
    "FlowMatchEuler": (
        "FlowMatchEulerDiscreteScheduler",
        {"shift": 3.0},
        "PASS",
        "flow matching Euler, shift 3",
    ),
    "DDIMInverse": ("DDIMInverseScheduler", {}, "FAIL", "DDIM inversion"),
    "PNDM": ("PNDMScheduler", {}, "REFUSED", "PNDM"),
    "LCM": ("LCMScheduler", {}, "REFUSED", "LCM"),
    "TCD": ("TCDScheduler", {}, "REFUSED", "TCD"),
}


def _target(case: str) -> DiffusersTarget:
    cls, kw, _, _ = SCHEDULERS[case]
    obj = getattr(diffusers, cls)
    return DiffusersTarget(obj(**kw) if kw else obj, name=case)


@pytest.fixture(scope="module")
def reports():
    return {}


def _report(reports, case):
    if case not in reports:
        reports[case] = verify.run(_target(case), quick=True)
    return reports[case]


@pytest.mark.parametrize("case", list(SCHEDULERS))
def test_every_scheduler_reaches_a_verdict(reports, case):
    """The kind is said, the verdict is the expected one, no row is a TypeError, and every
    failure carries a name (a diagnosis) — the σ grids and trajectories included."""
    rep = _report(reports, case)
    _, _, verdict, words = SCHEDULERS[case]
    assert words in rep.kind
    assert rep.verdict == verdict, rep.table() + "\n" + "\n".join(rep.failure_summary())
    bad = [c for c in rep.checks if c.problem and "TypeError" in c.problem]
    assert not bad, bad[0].message()
    assert any(c.status == "ok" for c in rep.checks)  # the schedule-level checks ran
    for line in rep.failure_summary(100):
        assert "looks like" in line or "closest known bug" in line, line
    if verdict == "REFUSED":
        assert rep.refused and "refdiff" in rep.refused


def test_sigma_view_steps_are_checked_along_whole_trajectories(reports):
    """A multistep sampler is compared state by state over a whole run with injected noise."""
    rep = _report(reports, "SDE-DPM++2M")
    traj = [c for c in rep.checks if c.op == "trajectory"]
    assert traj and all(c.status == "ok" for c in traj)
    assert traj[0].options["sampler"] == "dpmpp_2m_sde"
    assert traj[0].actual.shape[0] == traj[0].setting.N  # every state, not the last one


def test_a_wrong_option_is_caught_and_named_on_a_trajectory():
    """Checking diffusers' DPM++ 3M run without lower-order final steps as if it had them
    fails, and the diagnosis names the missing lower-order final (planted: the claim, not
    the scheduler; with a final σ = 0 the 2M's last step is first order either way)."""
    from dataclasses import replace

    from refdiff.conformance.sigmaview import compare_trajectory
    from refdiff.conformance.tolerance import Tolerance
    from refdiff.testing import Setting

    sched = diffusers.DPMSolverMultistepScheduler(
        solver_order=3, solver_type="heun", lower_order_final=False
    )
    tgt = DiffusersTarget(sched)
    tgt.kind_info = replace(
        tgt.kind_info, options={**tgt.kind_info.options, "lower_order_final": True}
    )
    c = compare_trajectory(tgt, Setting("linear", 1000, 12, "linspace"), Tolerance("float32"))
    assert c.status == "FAIL"
    assert "lower-order final steps missing" in c.diagnosis


def test_ddim_inversion_stride_is_named(reports):
    rep = _report(reports, "DDIMInverse")
    bad = [c for c in rep.checks if c.status == "FAIL"]
    assert bad and all(c.op == "ddim_inverse_step" for c in bad)
    assert all("diffusers#11347" in (c.diagnosis or "") for c in bad)
    assert all(c.setting.spacing != "leading" for c in bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refdiff.cli", "verify", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_cli_names_11347_with_cause_and_reference():
    p = _cli("diffusers:DDIMScheduler", "--quick", "--ops", "ddim_step")
    assert p.returncode == EXIT_CODES["FAIL"], p.stderr
    assert "scheduler: DDIM" in p.stdout
    lines = [ln for ln in p.stdout.splitlines() if "diffusers#11347" in ln]
    assert lines and all("previous step taken as t − T//N" in ln for ln in lines)
    assert "ᾱ_prev read one step late" not in p.stdout  # refuted by the passing steps


def test_cli_names_14569_with_cause_and_reference():
    p = _cli("diffusers:DDPMScheduler", "--quick", "--ops", "ddpm_step")
    assert p.returncode == EXIT_CODES["FAIL"], p.stderr
    lines = [ln for ln in p.stdout.splitlines() if "diffusers#14569" in ln]
    assert lines and all("√ of a log-variance" in ln for ln in lines)
    assert all("fixed_large_log" in ln for ln in lines)


def test_cli_refusal_has_its_own_exit_code():
    p = _cli("diffusers:PNDMScheduler", "--quick")
    assert p.returncode == EXIT_CODES["REFUSED"] == 3, p.stdout + p.stderr
    assert "result: REFUSED" in p.stdout and "PNDM" in p.stdout
