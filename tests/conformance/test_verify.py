"""refdiff verify: planted bugs fail with a message that names them; correct implementations
pass at their stated tolerance; the protocol's edges; the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from refdiff import cli, verify
from refdiff.testing import Setting, Tolerance

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import planted_bugs as bugs  # noqa: E402
from numpy_scheduler import NumpyScheduler  # noqa: E402

FULL = Setting("linear", 1000)
LEADING = Setting("linear", 1000, 30, "leading")
TRAILING = Setting("cosine", 1000, 30, "trailing")
LINSPACE = Setting("linear", 1000, 30, "linspace")
OFFSET = Setting("scaled_linear", 1000, 30, "leading", 1)


def _items(op, settings, option_sets):
    return [verify.Item(op, s, o, verify._step_times(s)) for s in settings for o in option_sets]


DDPM = [
    {"prediction_type": p, "variance_type": v}
    for p in ("epsilon", "v")
    for v in ("fixed_small", "fixed_large", "learned_range")
]
DDIM = [
    {"prediction_type": p, "eta": e, "final_alpha_bar": f}
    for p in ("epsilon", "x0")
    for e in (0.0, 1.0)
    for f in ("one", "first")
]
Q = [verify.Item("q_sample", Setting(n, 1000), {}, (1, 2, 500, 1000)) for n in ("linear", "cosine")]

PLANTED = {
    "off-by-one index": (
        bugs.OffByOne,
        _items("ddpm_step", [FULL, LEADING], DDPM) + Q,
        "looks like an off-by-one time index",
    ),
    "beta for beta-tilde": (
        bugs.BetaForBetaTilde,
        _items("ddpm_step", [FULL, TRAILING], DDPM),
        "looks like β used instead of β̃",
    ),
    "missing sqrt (DDPM noise)": (
        bugs.MissingSqrt,
        _items("ddpm_step", [LEADING], DDPM),
        "looks like a missing sqrt (σ² z added instead of σ z)",
    ),
    "missing sqrt (q_sample)": (bugs.QSampleMissingSqrt, Q, "looks like a missing sqrt (ᾱ x0"),
    "wrong DDIM sigma": (
        bugs.WrongDDIMSigma,
        _items("ddim_step", [FULL, LEADING], DDIM),
        "looks like a wrong DDIM σ: missing sqrt",
    ),
    "set_alpha_to_one flipped": (
        bugs.AlphaToOneFlipped,
        _items("ddim_step", [OFFSET], DDIM),
        "looks like set_alpha_to_one flipped",
    ),
    "DDIM prev-step stride": (
        bugs.DDIMStride,
        _items("ddim_step", [TRAILING, LINSPACE], DDIM),
        "previous step taken as t − T//N",
    ),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_bug_fails_with_a_message_naming_it(name):
    cls, items, phrase = PLANTED[name]
    rep = verify.run(cls(), items)
    assert not rep.passed
    lines = rep.failure_summary()
    assert lines and all(phrase in line for line in lines), "\n".join(lines)
    # every message carries the option set, the time (both conventions) and both errors
    assert all("max abs err" in ln and "max rel err" in ln and "refdiff t=" in ln for ln in lines)


def test_planted_bugs_do_not_fail_unrelated_options():
    """The stride bug is invisible with leading spacing, β-for-β̃ with fixed_large: the
    verifier blames only the options that are wrong."""
    rep = verify.run(bugs.DDIMStride(), _items("ddim_step", [LEADING, OFFSET], DDIM))
    assert rep.passed, rep.failure_summary()
    o = [{"prediction_type": "epsilon", "variance_type": "fixed_large"}]
    assert verify.run(bugs.BetaForBetaTilde(), _items("ddpm_step", [FULL], o)).passed


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_correct_implementation_passes_the_quick_grid(dtype):
    items = verify.plan(quick=True)
    if dtype == "float64":  # every op, a third of the grid
        items = items[::3]
    rep = verify.run(NumpyScheduler(dtype), items)
    assert rep.passed, "\n".join(rep.failure_summary())
    n = rep.counts()
    assert n["ok"] > (900 if dtype == "float32" else 300) and "FAIL" not in n
    # worst error is well inside the stated tolerance, not at its edge
    assert max(c.ratio for c in rep.checks if c.status == "ok") < 0.5


def test_float16_implementation_passes_at_float16_tolerance_only():
    items = [
        i
        for i in verify.plan(quick=True, ops=["q_sample", "ddim_step", "ddpm_step"])
        if i.setting.schedule != "cosine"
    ][::3]
    assert verify.run(NumpyScheduler("float16"), items).passed
    rep32 = verify.run(NumpyScheduler("float16"), items, tolerance=Tolerance("float32"))
    assert not rep32.passed


class _OneBased:
    """A refdiff-convention (1-based) implementation of q_sample and DDIM only."""

    index_base = 1
    dtype = "float64"

    def __init__(self):
        self._inner = NumpyScheduler("float64")

    def q_sample(self, alpha_bar, x0, t, noise):
        return self._inner.q_sample(alpha_bar, x0, t - 1, noise)

    def ddim_step(self, alpha_bar, timesteps, t, *a, **kw):
        return self._inner.ddim_step(alpha_bar, np.asarray(timesteps) - 1, t - 1, *a, **kw)


def test_one_based_protocol_and_unsupported_ops():
    rep = verify.run(_OneBased(), quick=True)
    assert rep.passed
    n = rep.counts()
    assert n["unsupported"] > 0 and n["ok"] > 100  # alpha_bar, posterior, ddpm: not provided
    assert {c.op for c in rep.checks if c.status == "ok"} == {"q_sample", "ddim_step"}
    assert "index_base=1" in rep.table()


def test_unknown_option_keyword_is_unsupported_not_failed():
    class NoClip:
        index_base, dtype = 0, "float64"

        def __init__(self):
            self._i = NumpyScheduler()

        def ddim_step(
            self, alpha_bar, timesteps, t, x_t, m, z, *, prediction_type, eta, final_alpha_bar="one"
        ):
            return self._i.ddim_step(
                alpha_bar,
                timesteps,
                t,
                x_t,
                m,
                z,
                eta=eta,
                prediction_type=prediction_type,
                final_alpha_bar=final_alpha_bar,
            )

    rep = verify.run(NoClip(), quick=True, ops=["ddim_step"])
    assert rep.passed
    assert any(
        c.status == "unsupported" and "threshold_ratio" in (c.problem or "") for c in rep.checks
    )


def test_nothing_verified_is_not_a_pass():
    class Empty:
        pass

    rep = verify.run(Empty(), quick=True)
    assert not rep.passed and set(rep.counts()) == {"unsupported"}


# -- the command line ---------------------------------------------------------------------------
def test_cli_reports_a_planted_bug(tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = cli.main(
        [
            "verify",
            f"{ROOT}/examples/planted_bugs.py:BetaForBetaTilde",
            "--ops",
            "ddpm_step",
            "--quick",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in text and "looks like β used instead of β̃" in text
    assert "variance_type=fixed_small" in text and "result: FAIL" in text
    data = json.loads(out.read_text())
    assert data["passed"] is False and any(c["status"] == "FAIL" for c in data["checks"])


def test_cli_passes_a_correct_implementation(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc = cli.main(
        [
            "verify",
            "examples.numpy_scheduler:Float32Scheduler",
            "--ops",
            "alpha_bar,timesteps,q_sample,posterior",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "tolerance: float32 states, float32 schedule, K=8" in text
    assert "result: PASS" in text


@pytest.mark.parametrize("argv", [["nope:Thing"], ["examples/none.py:X"], ["no_colon"], []])
def test_cli_bad_targets_exit_2(argv, capsys):
    assert cli.main(["verify", *argv]) == 2
    assert "refdiff verify" in capsys.readouterr().err


def test_plan_former_keyword_kinds_warns():
    with pytest.warns(DeprecationWarning, match="kinds="):
        old = verify.plan(kinds={"ddim"}, quick=True, ops=["ddim_step"])
    assert old == verify.plan({"ddim"}, quick=True, ops=["ddim_step"]) and old
