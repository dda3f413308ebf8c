"""Cross-check tier: diffusers' DDPMScheduler and DDIMScheduler against the reference.

Every option the duck-typed adapter covers is verified step by step with injected noise
(refdiff.verify's default grid: schedules linear / scaled_linear / squaredcos_cap_v2, spacings
leading / trailing / linspace with steps_offset, prediction types, variance types, clipping,
thresholding, η, set_alpha_to_one, use_clipped_model_output, rescale_betas_zero_snr).  The test
regenerates docs/conformance/diffusers.md (atomically) and asserts that the known findings
still hold — every failing comparison must be explained by one of them.

Run alone:
    .venv/bin/python -m pytest -q -m crosscheck tests/conformance/test_crosscheck_diffusers.py
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from refdiff import _io, verify  # noqa: E402
from refdiff.adapters import DiffusersTarget  # noqa: E402
from refdiff.errors import InputError  # noqa: E402
from refdiff.respacing import spaced_times  # noqa: E402
from refdiff.testing import Setting, Tolerance  # noqa: E402

pytestmark = pytest.mark.crosscheck

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "conformance" / "diffusers.md"
TOL = Tolerance("float32")


@dataclass(frozen=True)
class Known:
    title: str
    explanation: str
    reference: str


KNOWN = {
    "ddim_prev_stride": Known(
        "DDIM previous step = t − T//N",
        "`DDIMScheduler.step` forms the previous index as `timestep − num_train_timesteps // "
        "num_inference_steps`, which is the previous element of `timesteps` only for `leading` "
        "spacing. With `trailing` (when N does not divide T) and `linspace`, ᾱ_prev is read at "
        "the wrong index: every failing comparison is reproduced by the reference with that "
        "previous index planted. (An open PR states trailing is unaffected; that holds only "
        "when N divides T — here N = 30.)",
        "diffusers#11347, #12633 (DDPM twin #9261 fixed by #9384; open PR #14357)",
    ),
    "ddpm_final_step_noise": Known(
        "DDPM adds noise at the last step",
        "`DDPMScheduler.step` adds noise whenever the *training index* t > 0. With `trailing` "
        "spacing or `steps_offset = 1` the last kept index is > 0 (32, resp. 1), so the last "
        "step — which should return the mean — adds σ z: with `fixed_large` σ² = 1 − ᾱ_t "
        "(the whole remaining noise), with `learned`/`learned_range` the model's variance. "
        "`fixed_small` is unaffected in practice (β̃ = 0 there, clamped to 1e-20: σ = 1e-10). "
        "Reproduced exactly by the reference with noise planted at t = 1.",
        "found by refdiff; no matching issue in the diffusers tracker corpus searched",
    ),
    "ddim_zsnr_eta1_nan": Known(
        "DDIM, zero terminal SNR, η = 1: NaN at the first step",
        "At ᾱ_t = 0, σ² = η²(1 − ᾱ_prev) so with η = 1 the direction coefficient "
        "√(1 − ᾱ_prev − σ²) is the square root of an exact zero computed in float32 as "
        "(√var)² subtracted from 1 − ᾱ_prev — a negative rounding residue, hence NaN. The "
        "reference clamps the argument at 0 (docs/math.md §7.2, guards).",
        "diffusers#5969 (open)",
    ),
    "fixed_large_log_nan": Known(
        "`fixed_large_log` returns NaN",
        "`_get_variance` returns log β for `fixed_large_log` and `step` then takes its square "
        "root: NaN for every t > 0. (`fixed_small_log`, which returns a standard deviation, "
        "agrees with refdiff's `fixed_small`.)",
        "diffusers#14569 (PR #14571 open)",
    ),
}


@dataclass
class Run:
    name: str
    report: verify.Report
    finding: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    unexplained: list = field(default_factory=list)


def _classify(check) -> str | None:
    o, s = check.options, check.setting
    if check.op == "ddim_step":
        nan = bool(check.problem and "NaN" in check.problem)
        if nan and s.zero_terminal_snr and o.get("eta") == 1.0 and check.t == s.N:
            return "ddim_zsnr_eta1_nan"
        if s.num_steps is not None and verify.explained_by(
            check, "previous step taken as t − T//N"
        ):
            return "ddim_prev_stride"
    if (
        check.op == "ddpm_step"
        and check.t == 1
        and verify.explained_by(check, "noise added at the last step")
    ):
        return "ddpm_final_step_noise"
    if check.op == "ddpm_step" and check.problem and "NaN" in check.problem:
        if o.get("variance_type") == "fixed_large":
            return "fixed_large_log_nan"  # only reached through the fixed_large_log alias
    return None


def _run(name: str, target, items=None) -> Run:
    rep = verify.run(target, items, tolerance=TOL, name=name)
    r = Run(name, rep)
    for c in rep.failures:
        key = _classify(c)
        (r.finding[key] if key else r.unexplained).append(c)
    return r


def _step_items(kind: str, pred) -> list[verify.Item]:
    return [i for i in verify.plan({kind}, quick=True, ops=[f"{kind}_step"]) if pred(i.options)]


@pytest.fixture(scope="module")
def crosscheck():
    runs = {
        "DDPMScheduler": _run("DDPMScheduler", DiffusersTarget(DDPMScheduler)),
        "DDIMScheduler": _run("DDIMScheduler", DiffusersTarget(DDIMScheduler)),
        "DDPMScheduler (*_log variances)": _run(
            "DDPMScheduler (*_log variances)",
            DiffusersTarget(
                DDPMScheduler,
                variance_aliases={
                    "fixed_small": "fixed_small_log",
                    "fixed_large": "fixed_large_log",
                },
            ),
            _step_items("ddpm", lambda o: o["variance_type"] in ("fixed_small", "fixed_large")),
        ),
    }
    # Conventions: the same scheduler checked against refdiff's *defaults* instead of the
    # conventions the adapter declares for diffusers.
    no_final = DiffusersTarget(DDIMScheduler)
    no_final.conventions = {**no_final.conventions, "final_step_noise": False}
    conv_items = [
        verify.Item(
            "ddim_step",
            s,
            {"prediction_type": "epsilon", "eta": e, "final_alpha_bar": "first"},
            verify._step_times(s),
        )
        for s in (Setting("scaled_linear", 1000, 30, "leading", 1),)
        for e in (0.5, 1.0)
    ]
    conventions = {"final_step_noise": verify.run(no_final, conv_items, tolerance=TOL)}
    log_learned = DiffusersTarget(DDPMScheduler, variance_aliases={"learned": "learned"})
    conventions["learned"] = verify.run(
        log_learned, _step_items("ddpm", lambda o: o["variance_type"] == "learned"), tolerance=TOL
    )
    probes = {"zsnr_epsilon": _probe_zsnr_epsilon(), "offset_full": _probe_offset_full()}
    text = render(runs, conventions, probes)
    _io.write_text(REPORT, text)
    return runs, conventions, probes, text


def _probe_zsnr_epsilon() -> dict:
    """ε-prediction at ᾱ_T = 0 (rescale_betas_zero_snr): the reference refuses it."""
    out = {}
    for clip in (True, False):
        s = DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            rescale_betas_zero_snr=True,
            timestep_spacing="trailing",
            clip_sample=clip,
        )
        s.set_timesteps(30)
        g = torch.Generator().manual_seed(0)
        x, e = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
        y = s.step(e, int(s.timesteps[0]), x).prev_sample.numpy()
        out[clip] = (int(np.isfinite(y).sum()), y.size)
    from refdiff import reverse

    st = Setting("scaled_linear", 1000, 30, "trailing", 0, True).respaced()
    try:
        reverse.ddim_step(st, np.zeros((1, 8)), st.T, np.zeros((1, 8)))
        out["reference"] = "computed"
    except InputError as e:
        out["reference"] = f"{type(e).__name__}: {e}"
    return out


def _probe_offset_full() -> dict:
    """steps_offset = 1 with N = T: the last timestep is T, one past the schedule."""
    s = DDIMScheduler(steps_offset=1, clip_sample=False)
    s.set_timesteps(1000)
    try:
        s.step(torch.zeros(1, 4), int(s.timesteps[0]), torch.zeros(1, 4))
        got = "no error"
    except IndexError as e:
        got = f"IndexError: {e}"
    try:
        spaced_times(1000, 1000, "leading", 1)
        ref = "computed"
    except InputError as e:
        ref = f"{type(e).__name__}: {e}"
    return {"diffusers": got, "reference": ref, "max_timestep": int(s.timesteps.max())}


# -- the report -------------------------------------------------------------------------------
def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "inf"


_ORDER = (
    "prediction_type",
    "variance_type",
    "eta",
    "final_alpha_bar",
    "clip",
    "threshold_ratio",
    "rederive_eps",
)


def _setting_key(st: Setting) -> str:
    return st.label().replace(" T=1000", "")


def _keys(c) -> list[str]:
    if c.op in ("alpha_bar", "timesteps"):
        return [_setting_key(c.setting)]
    keys = ["all"]
    for k in _ORDER:
        v = c.options.get(k)
        if v is not None:
            keys.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    if c.op.endswith("_step"):
        keys.append(f"[{_setting_key(c.setting)}]")
    return keys


def _rank(key: str) -> tuple:
    if key == "all":
        return (0, "")
    if key.startswith("["):
        return (len(_ORDER) + 1, key)
    name = key.split("=")[0]
    return (_ORDER.index(name) + 1 if name in _ORDER else len(_ORDER), key)


def _agreement_rows(name: str, rep: verify.Report) -> list[str]:
    """Comparisons aggregated by op and by each option value and setting: how many agree, the
    largest errors among those, and how many disagree (explained under Discrepancies)."""
    ok: dict[tuple[str, str], list] = defaultdict(list)
    bad: dict[tuple[str, str], int] = defaultdict(int)
    for c in rep.checks:
        if c.status not in ("ok", "FAIL", "error"):
            continue
        for key in _keys(c):
            if c.status == "ok":
                ok[(c.op, key)].append(c)
            else:
                bad[(c.op, key)] += 1
    ops = ("alpha_bar", "timesteps", "q_sample", "ddpm_step", "ddim_step")
    rows = []
    for op, key in sorted(set(ok) | set(bad), key=lambda k: (ops.index(k[0]), _rank(k[1]))):
        cs = ok.get((op, key), [])
        errs = (
            (max(c.max_abs for c in cs), max(c.max_rel for c in cs), max(c.ratio for c in cs))
            if cs
            else None
        )
        e = " | ".join(_g(x) for x in errs) if errs else "— | — | —"
        rows.append(f"| {name} | {op} | {key} | {len(cs)} | {e} | {bad.get((op, key), 0)} |")
    return rows


def _where(checks) -> str:
    settings = sorted({c.setting.label() for c in checks})
    opts: dict[str, set] = defaultdict(set)
    keys = {k for c in checks for k in c.options}
    for c in checks:
        for k in keys:
            v = c.options.get(k)
            opts[k].add("none" if v is None else str(v))
    o = "; ".join(f"{k} ∈ {{{', '.join(sorted(v))}}}" for k, v in sorted(opts.items()))
    return f"{'; '.join(settings)} — {o}"


def render(runs: dict[str, Run], conventions: dict, probes: dict) -> str:
    n_ok = sum(r.report.counts().get("ok", 0) for r in runs.values())
    n_all = sum(len(r.report.checks) for r in runs.values())
    passing = [
        c
        for r in runs.values()
        for c in r.report.checks
        if c.status == "ok" and c.op != "timesteps"
    ]
    steps_ok = [c for c in passing if c.op.endswith("_step")]
    ab = [c for c in passing if c.op == "alpha_bar"]
    L = [
        "# Conformance report: diffusers DDPMScheduler and DDIMScheduler",
        "",
        "Generated by `tests/conformance/test_crosscheck_diffusers.py` (run by `make test`; alone: "
        "`.venv/bin/python -m pytest -q -m crosscheck "
        "tests/conformance/test_crosscheck_diffusers.py`). "
        "Do not edit by hand: the test rewrites this file and asserts its findings.",
        "",
        f"- diffusers {diffusers.__version__}, torch {torch.__version__.split('+')[0]} (CPU), "
        f"numpy {np.__version__}",
        "- method: `refdiff verify` through the duck-typed adapter "
        "(`refdiff.adapters.DiffusersTarget`): one scheduler step at a time, the same inputs and "
        "the same injected noise for diffusers and for the float64 reference "
        "(docs/verify.md). T = 1000; kept steps N = 30 with each spacing, and all 1000 steps; "
        "at each setting the first, middle and last two steps.",
        f"- tolerance: {TOL.describe()} — diffusers keeps β, ᾱ and the states in float32",
        f"- {n_all} comparisons: {n_ok} agree, "
        f"{sum(len(r.report.failures) for r in runs.values())} disagree (all explained below), "
        f"the rest are options diffusers does not have (refdiff's `learned` log-variance, "
        f"`fixed_large_iddpm`; sigmoid for DDIM; a posterior method) or are undefined in the "
        f"reference (ε-prediction at ᾱ = 0).",
        "",
        "## What agrees, and to what precision",
        "",
        f"Everything not listed under *Discrepancies* agrees within the float32 tolerance. "
        "Over all agreeing step comparisons the largest errors are "
        f"{_g(max(c.max_abs for c in steps_ok))} "
        f"absolute and {_g(max(c.max_rel for c in steps_ok))} relative to the magnitude of the "
        f"terms (err/tol ≤ {_g(max(c.ratio for c in steps_ok))}); the float32 schedules "
        f"(`alphas_cumprod`) differ from float64 by at most {_g(max(c.max_rel for c in ab))} "
        f"relative (err/tol ≤ {_g(max(c.ratio for c in ab))}).",
        "",
        "Option names are refdiff's (docs/verify.md maps them: `x0` = `sample`, `v` = "
        "`v_prediction`, `learned_linear` = diffusers `learned`, `final_alpha_bar=first` = "
        "`set_alpha_to_one=False`, `rederive_eps` = `use_clipped_model_output`, "
        "`clip` = `clip_sample_range`, `threshold_*` = dynamic thresholding). `rel` is relative "
        "to the sum of magnitudes of the terms; `fail` counts the disagreeing comparisons with "
        "that option value (explained under *Discrepancies*).",
        "",
        "| scheduler | op | option / setting | agreeing | max abs err | max rel err "
        "| max err/tol | fail |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        L += _agreement_rows(name, r.report)
    L += [
        "",
        "## Discrepancies",
        "",
        "Every disagreeing comparison is attributed to one finding; the attribution is checked "
        "by re-running the reference with the suspected bug planted "
        "(`refdiff.verify.explained_by`).",
        "",
        "| # | scheduler | finding | comparisons | max abs err | where | explanation | reference |",
        "|---|---|---|---:|---:|---|---|---|",
    ]
    k = 0
    for name, r in runs.items():
        for key, checks in r.finding.items():
            k += 1
            kn = KNOWN[key]
            mx = max((c.max_abs for c in checks), default=0.0)
            L.append(
                f"| {k} | {name} | {kn.title} | {len(checks)} | {_g(mx)} | {_where(checks)} | "
                f"{kn.explanation} | {kn.reference} |"
            )
    z, off = probes["zsnr_epsilon"], probes["offset_full"]
    k += 1
    L.append(
        f"| {k} | DDIMScheduler | ε-prediction with zero terminal SNR | probe | — | first step "
        f"(ᾱ_T = 0), trailing N = 30 | x̂0 = (x − √(1−ᾱ) ε)/√ᾱ divides by 0. diffusers returns "
        f"{z[True][0]}/{z[True][1]} finite values with `clip_sample=True` (the clamp turns ±inf "
        f"into ±1 and hides the problem) and {z[False][0]}/{z[False][1]} without it. The "
        f"reference refuses: `{z['reference']}`. | diffusers#3851 |"
    )
    k += 1
    L.append(
        f"| {k} | DDIMScheduler | `steps_offset=1` with N = T | probe | — | leading, N = 1000 | "
        f"`set_timesteps(1000)` yields timestep {off['max_timestep']}, one past the schedule; "
        f"`step` raises `{off['diffusers'][:80]}`. refdiff refuses the setting up front: "
        f"`{off['reference'][:120]}`. | diffusers#10003 |"
    )
    fsn = conventions["final_step_noise"]
    fsn_ok = [c for c in fsn.failures if verify.explained_by(c, "final_step_noise=True")]
    lrn = conventions["learned"]
    nan_learned = sum(1 for c in lrn.failures if c.problem and "NaN" in c.problem)
    L += [
        "",
        "## Conventions (named options in refdiff; diffusers' choice)",
        "",
        "Where the peers disagree, refdiff has a named option; the adapter declares diffusers' "
        "values, so they are *not* counted as discrepancies. Evidence for each:",
        "",
        "| convention | diffusers | refdiff default | evidence |",
        "|---|---|---|---|",
        f"| DDIM noise at the last step | added whenever η > 0 (`final_step_noise=True`) | none "
        f"(improved-diffusion) | against refdiff's default, {len(fsn.failures)} of "
        f"{len(fsn.checks)} comparisons with `set_alpha_to_one=False` and `steps_offset=1` fail, "
        f"all at the last step and all reproduced by `final_step_noise=True` ({len(fsn_ok)}) |",
        f"| learned variance | `learned` is a *variance* (√ taken) = `learned_linear` | "
        f"`learned` = log-variance (improved-diffusion) | `learned_linear` agrees (table "
        f"above); a log-variance fed to diffusers' `learned` gives NaN in {nan_learned} of "
        f"{len(lrn.checks)} comparisons (√ of negative numbers) |",
        "| t = 1 log β̃ | clamp β̃ at 1e-20 (`log_variance_clipping=floor`) | `next` "
        "(improved-diffusion: log β̃_2) | only matters where noise is added at the last step, "
        "i.e. through the DDPM finding above |",
        '| final ᾱ of DDIM | `set_alpha_to_one` | `final_alpha_bar="one"` | both values agree |',
        "| ε̂ after clipping | raw output unless `use_clipped_model_output` | re-derived "
        "(`rederive_eps=True`) | both values agree |",
        "| fixed_large | respaced β′_t at every t | same | agrees |",
        "| schedules | β and ᾱ in float32 | float64 | ᾱ agrees to the float32 tolerance (above) |",
        "",
    ]
    return "\n".join(L)


# -- the tests --------------------------------------------------------------------------------
def test_report_is_generated_with_versions(crosscheck):
    *_, text = crosscheck
    assert REPORT.read_text(encoding="utf-8") == text
    assert f"diffusers {diffusers.__version__}" in text
    assert "## What agrees" in text and "## Discrepancies" in text and "## Conventions" in text


def test_every_disagreement_is_a_known_finding(crosscheck):
    runs, *_ = crosscheck
    for r in runs.values():
        assert not r.unexplained, "\n".join(
            verify.diagnosis_for(c).message() for c in r.unexplained[:5]
        )


def test_known_findings_reproduce(crosscheck):
    """The rows of the discrepancy table.  If one disappears, diffusers changed: update KNOWN
    and the report (say which version fixed it)."""
    runs, conventions, probes, text = crosscheck
    ddpm, ddim = runs["DDPMScheduler"], runs["DDIMScheduler"]
    logv = runs["DDPMScheduler (*_log variances)"]
    assert set(ddim.finding) == {"ddim_prev_stride", "ddim_zsnr_eta1_nan"}
    assert set(ddpm.finding) == {"ddpm_final_step_noise"}
    assert set(logv.finding) == {"fixed_large_log_nan"}
    # the stride bug is exactly the non-leading spacings; leading (± offset) is clean
    spacings = {c.setting.spacing for c in ddim.finding["ddim_prev_stride"]}
    assert spacings == {"trailing", "linspace"}
    # the DDPM last-step noise: trailing and steps_offset, never fixed_small
    f = ddpm.finding["ddpm_final_step_noise"]
    assert {(c.setting.spacing, c.setting.steps_offset) for c in f} == {
        ("trailing", 0),
        ("leading", 1),
    }
    assert {c.options["variance_type"] for c in f} == {
        "fixed_large",
        "learned_linear",
        "learned_range",
    }
    assert all(
        c.options["variance_type"] == "fixed_large" for c in logv.finding["fixed_large_log_nan"]
    )
    assert probes["zsnr_epsilon"][False][0] == 0 and probes["zsnr_epsilon"][True][0] > 0
    assert "UndefinedError" in probes["zsnr_epsilon"]["reference"]
    assert probes["offset_full"]["diffusers"].startswith("IndexError")
    assert "InputError" in probes["offset_full"]["reference"]
    for kn in KNOWN.values():
        assert kn.title in text


def test_everything_else_agrees(crosscheck):
    """What agrees: every option value the adapter maps has agreeing comparisons, and the
    float32 schedules agree with the float64 reference."""
    runs, conventions, *_ = crosscheck
    ddpm, ddim = runs["DDPMScheduler"].report, runs["DDIMScheduler"].report
    ok = [c for c in ddpm.checks + ddim.checks if c.status == "ok"]
    seen = defaultdict(set)
    for c in ok:
        for k, v in c.options.items():
            seen[(c.op, k)].add(v)
    assert seen[("ddpm_step", "prediction_type")] == {"epsilon", "x0", "v"}
    assert seen[("ddpm_step", "variance_type")] == {
        "fixed_small",
        "fixed_large",
        "learned_linear",
        "learned_range",
    }
    assert seen[("ddim_step", "eta")] == {0.0, 0.5, 1.0}
    assert seen[("ddim_step", "final_alpha_bar")] == {"one", "first"}
    assert seen[("ddim_step", "rederive_eps")] == {True, False}
    assert (
        0.9 in seen[("ddim_step", "threshold_ratio")]
        and 0.9 in seen[("ddpm_step", "threshold_ratio")]
    )
    assert {c.setting.schedule for c in ok if c.op == "alpha_bar"} >= {
        "linear",
        "scaled_linear",
        "cosine",
    }
    basics = [
        c for c in ddim.checks + ddpm.checks if c.op in ("alpha_bar", "timesteps", "q_sample")
    ]
    assert all(c.status not in ("FAIL", "error") for c in basics)
    # DDIM with leading spacing (diffusers' default) agrees everywhere
    assert all(c.status != "FAIL" for c in ddim.checks if c.setting.spacing == "leading")
    # the convention runs: every failure is explained by the convention
    fsn = conventions["final_step_noise"]
    assert fsn.failures and all(
        c.t == 1 and verify.explained_by(c, "final_step_noise=True") for c in fsn.failures
    )
