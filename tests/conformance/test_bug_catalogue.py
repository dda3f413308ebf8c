"""The catalogue of first-party bug signatures, each named on its planted-bug implementation
(examples/planted_bugs.py) through ``refdiff verify``'s report — the per-setting cause, not
only the per-step guess — plus the σ-view signatures on whole trajectories and σ grids, and
the precision diagnosis (docs/verify.md §Diagnoses)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from refdiff import verify
from refdiff.conformance import diagnoses as DG
from refdiff.conformance.sigmaview import TRAJECTORY_BUGS, compare_sigmas, compare_trajectory
from refdiff.testing import Setting, Tolerance

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import planted_bugs as bugs  # noqa: E402

FULL = Setting("linear", 1000)
LEADING = Setting("linear", 1000, 30, "leading")
TRAILING = Setting("cosine", 1000, 30, "trailing")
LINSPACE = Setting("linear", 1000, 30, "linspace")
EPS_DDIM = [{"prediction_type": "epsilon", "eta": e} for e in (0.0, 1.0)]
EPS_DDPM = [
    {"prediction_type": "epsilon", "variance_type": v} for v in ("fixed_small", "fixed_large")
]


def _items(op, settings, option_sets):
    return [verify.Item(op, s, o, verify.step_times(s)) for s in settings for o in option_sets]


# planted class: (plan items, the phrase every failure line must carry, phrases none may carry)
CATALOGUE = {
    "X0OverAlphaBar": (
        _items("ddim_step", [LEADING, TRAILING], EPS_DDIM) + _items("ddpm_step", [FULL], EPS_DDPM),
        "x̂0 divided by ᾱ_t instead of √ᾱ_t",
        (),
    ),
    "SigmaRatioInverted": (
        _items("ddim_step", [LEADING, FULL], [{"prediction_type": "epsilon", "eta": 1.0}]),
        "the ratio inverted",
        ("missing sqrt",),
    ),
    "AlphaBarPrevOffByOne": (
        _items("ddim_step", [LEADING, TRAILING, LINSPACE], EPS_DDIM),
        "ᾱ_prev read one step late",
        ("T//N", "#11347"),
    ),
    "DDIMStride": (
        _items("ddim_step", [TRAILING, LINSPACE], EPS_DDIM),
        "previous step taken as t − T//N",
        ("ᾱ_prev read one step late",),
    ),
    "EtaIgnored": (
        _items("ddim_step", [LEADING], [{"prediction_type": "epsilon", "eta": 1.0}]),
        "η ignored",
        (),
    ),
    "WrongDDIMSigma": (
        _items("ddim_step", [LEADING], [{"prediction_type": "epsilon", "eta": 1.0}]),
        "missing sqrt",
        (),
    ),
    "MissingSqrt": (
        _items("ddpm_step", [LEADING], EPS_DDPM),
        "missing sqrt (σ² z added instead of σ z)",
        (),
    ),
    "SqrtOfLogVariance": (
        _items("ddpm_step", [FULL, LEADING], EPS_DDPM),
        "√ of a log-variance",
        (),
    ),
}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_each_signature_is_named_on_its_planted_bug(name):
    items, phrase, never = CATALOGUE[name]
    rep = verify.run(getattr(bugs, name)(), items)
    assert rep.verdict == "FAIL"
    lines = rep.failure_summary(100)
    assert lines and all(phrase in ln for ln in lines), "\n".join(lines)
    assert not any(w in ln for ln in lines for w in never), "\n".join(lines)


def test_catalogue_covers_every_planted_step_bug():
    """Every registered bug that names a planted class is in the catalogue above (or in
    tests/conformance/test_verify.py's list)."""
    named = {b.planted for b in DG.REGISTRY.values() if b.planted}
    elsewhere = {"OffByOne", "BetaForBetaTilde", "QSampleMissingSqrt", "AlphaToOneFlipped"}
    assert named - elsewhere <= set(CATALOGUE), sorted(named - elsewhere - set(CATALOGUE))


def test_every_distinct_cause_of_a_setting_is_reported():
    """Two bugs in one implementation, at different steps of the same setting (the last step's
    final ᾱ flipped, σ without its square root elsewhere): the setting's line names both."""

    class Two(bugs.AlphaToOneFlipped, bugs.WrongDDIMSigma):
        pass

    items = _items("ddim_step", [LEADING], [{"prediction_type": "epsilon", "eta": 1.0}])
    lines = verify.run(Two(), items).failure_summary()
    assert len(lines) == 1, lines
    assert "set_alpha_to_one flipped" in lines[0] and "missing sqrt" in lines[0], lines[0]
    assert "; also: " in lines[0]


def test_mixed_tolerance_from_the_cli():
    """--schedule-dtype float32 with float64 states: improved-diffusion's float32 look-ups
    pass; at the plain float64 tolerance they fail with the precision diagnosis."""
    pytest.importorskip("torch")
    import subprocess

    def cli(*extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "refdiff.cli",
                "verify",
                "tests/conformance/iddpm_standin.py:diffusion",
                "--quick",
                "--ops",
                "q_sample",
                "--dtype",
                "float64",
                *extra,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )

    bad = cli()
    assert bad.returncode == 1 and "look float32" in bad.stdout, bad.stdout[-2000:]
    good = cli("--schedule-dtype", "float32")
    assert good.returncode == 0, good.stdout[-2000:]
    assert "float64 states, float32 schedule" in good.stdout


@pytest.mark.parametrize("name", ["NoLowerOrderFinal", "EtaMissing"])
def test_sigma_view_signatures_are_named_on_whole_trajectories(name):
    tgt = getattr(bugs, name)()
    planted = {b.planted: b for b in TRAJECTORY_BUGS.values() if b.planted}
    c = compare_trajectory(tgt, Setting("linear", 1000, 12, "linspace"), Tolerance("float64"))
    assert c.status == "FAIL"
    assert planted[name].message in (c.diagnosis or ""), c.message()
    rep = verify.run(tgt)
    assert rep.verdict == "FAIL" and all(
        planted[name].message in ln for ln in rep.failure_summary()
    )


def test_correct_sigma_sampler_passes():
    class Correct(bugs.EtaMissing):
        actual = {"eta": 1.0}

    assert verify.run(Correct()).verdict == "PASS"


def test_wrong_karras_rho_is_named_with_its_rho():
    s = Setting("linear", 1000, 12, "linspace")
    grid = bugs.WrongKarrasRho().sigmas(s)
    c = compare_sigmas(s, grid, {"use_karras_sigmas": True}, Tolerance("float32"))
    assert c.status == "FAIL"
    assert "wrong Karras ρ" in c.diagnosis and "ρ = 5" in c.diagnosis
    good = compare_sigmas(
        s, bugs.NoLowerOrderFinal().sigmas(s), {"use_karras_sigmas": True}, Tolerance("float32")
    )
    assert good.status == "ok"


def test_precision_diagnosis_names_float32_coefficients():
    """A float32 implementation checked at the float64 tolerance: the diagnosis says its
    coefficients look float32 and names the option for the mixed tolerance."""
    items = _items("ddim_step", [LEADING], [EPS_DDIM[0]])
    rep = verify.run(bugs.Float32(), items, tolerance=Tolerance("float64"))
    lines = rep.failure_summary()
    assert lines and all("look float32" in ln and "float32" in ln for ln in lines), lines
    assert all("--schedule-dtype float32" in ln or "--dtype float32" in ln for ln in lines)
    assert verify.run(bugs.Float32(), items, tolerance=Tolerance("float32")).passed


def test_nan_cause_is_named_without_a_registered_bug():
    case = DG.example_case("ddpm_step", LEADING, EPS_DDPM[1], t=15)
    out = np.where(case.inputs["noise"] != 0, np.nan, 0.0)
    assert "noise scale σ itself is NaN" in DG.nan_cause(case, out)


def test_improved_diffusion_float32_lookups_diagnosed_at_float64_tolerance():
    """improved-diffusion looks its float64 tables up as float32 tensors: at the float64
    tolerance the failures are diagnosed as float32 coefficients (the mixed tolerance the
    built-in adapter uses by default then passes)."""
    pytest.importorskip("torch")
    from tests.conformance.iddpm_standin import create_gaussian_diffusion

    d = create_gaussian_diffusion()
    items = _items("ddpm_step", [FULL], [EPS_DDPM[0]])
    rep = verify.run(d, items, tolerance=Tolerance("float64"))
    lines = rep.failure_summary()
    assert lines and all(
        "coefficients (ᾱ, β and what is built from them) look float32" in ln for ln in lines
    ), lines
    assert verify.run(d, items).passed  # float64 states, float32 schedule: the adapter's own


def test_nan_at_zero_terminal_snr_with_eta_one_is_named():
    zs = Setting("scaled_linear", 1000, 30, "trailing", 0, True)
    case = DG.example_case("ddim_step", zs, {"prediction_type": "v", "eta": 1.0}, t=30)
    assert float(case.schedule.alpha_bar[30]) == 0.0
    why = DG.nan_cause(case, np.full(case.inputs["x_t"].shape, np.nan))
    assert "negative rounding residue" in why and "diffusers#5969" in why


def test_cli_takes_a_sigma_view_sampler_object(capsys):
    from refdiff import cli

    rc = cli.main(["verify", f"{ROOT}/examples/planted_bugs.py:EtaMissing", "--quick"])
    out = capsys.readouterr().out
    assert rc == 1 and "η missing" in out and "scheduler: NumPy euler_ancestral" in out
