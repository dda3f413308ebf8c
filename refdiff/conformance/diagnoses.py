"""Diagnoses: a registry of known bugs, one small function each (docs/verify.md §Diagnoses).

A failing comparison is *diagnosed* by re-running the reference with each known bug planted
and naming the bugs that reproduce the implementation's output within tolerance.  Each bug
is one function registered with :func:`known_bug`: it returns what the reference gives with
the bug planted, and its registration states

- ``message``: what the failure line says (a string, or a function of the case);
- ``reference``: where the correct formula is (docs/math.md) or where the bug was seen;
- ``example``: the planted-bug reproduction it is tested with — an (op, setting, options, t)
  on which the bug changes the output (tests/conformance/test_diagnoses.py plants the bug's
  output there and checks that :func:`diagnose` names it);
- ``planted``: the class of examples/planted_bugs.py that carries the bug inside a whole
  implementation, where there is one (tests/conformance/test_verify.py runs those).

Adding a known bug is adding one function here.  The order of the registry is the order in
which simultaneous matches are named ("… or …").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from .. import posterior, reverse
from ..errors import InputError, UndefinedError
from ..schedule import Schedule, respace
from .cases import Case, Setting, expected, make_inputs, with_options
from .comparison import Comparison
from .tolerance import UNIT_ROUNDOFF, Tolerance, alpha_bar_tolerance, tolerance_array

__all__ = [
    "Hypothesis",
    "KnownBug",
    "AlphaBarBug",
    "REGISTRY",
    "ALPHA_BAR_BUGS",
    "EXPLAINED",
    "known_bug",
    "alpha_bar_bug",
    "hypotheses",
    "example_case",
    "diagnose",
    "diagnose_all",
    "precision_diagnosis",
    "nan_cause",
    "explained_by",
    "diagnose_alpha_bar",
    "diagnosis_for",
    "group_causes",
    "CONVENTION",
]

STEPS = ("ddpm_step", "ddim_step")
# a diagnosis ending with this names a peer's documented convention: reported, not failed
CONVENTION = ": a documented convention, not a bug"
ALL_OPS = ("q_sample", "posterior_mean", "posterior_variance", *STEPS)


@dataclass(frozen=True)
class Hypothesis:
    """A known bug at one case: ``output(case)`` is what the reference gives with the bug
    planted; ``description`` is the message naming it."""

    description: str
    output: Callable[[Case], np.ndarray]


@dataclass(frozen=True)
class KnownBug:
    """One registered bug (see the module docstring for the fields)."""

    name: str
    ops: tuple[str, ...]
    output: Callable[[Case], np.ndarray]
    message: Callable[[Case], str]
    reference: str
    example: Mapping[str, object]
    applies: Callable[[Case], bool]
    planted: str = ""

    def at(self, case: Case) -> Hypothesis | None:
        """The bug as a :class:`Hypothesis` for ``case``, or None where it cannot occur."""
        if case.op not in self.ops or not self.applies(case):
            return None
        return Hypothesis(self.message(case), self.output)


REGISTRY: dict[str, KnownBug] = {}


def known_bug(
    *ops: str,
    message: str | Callable[[Case], str],
    reference: str,
    example: Mapping[str, object],
    applies: Callable[[Case], bool] | None = None,
    planted: str = "",
) -> Callable[[Callable[[Case], np.ndarray]], Callable[[Case], np.ndarray]]:
    """Register the decorated function ``f(case) -> buggy output`` as a known bug of ``ops``.

    ``example``: keywords of :func:`example_case` (``op``, ``setting``, ``options``, ``t``).
    """

    def register(fn: Callable[[Case], np.ndarray]) -> Callable[[Case], np.ndarray]:
        msg = message if callable(message) else (lambda _c, m=message: m)
        REGISTRY[fn.__name__] = KnownBug(
            fn.__name__, ops, fn, msg, reference, example, applies or (lambda _c: True), planted
        )
        return fn

    return register


def example_case(
    op: str,
    setting: Setting,
    options: Mapping[str, object] | None = None,
    t: int = 1,
    seed: int = 0,
) -> Case:
    """The case of a bug's ``example``: inputs drawn by :func:`~.cases.make_inputs`."""
    options = dict(options or {})
    s = setting.respaced() if op in STEPS else setting.base()
    inputs = make_inputs(op, s, t, options, np.random.default_rng(seed))
    return Case(op, setting, t, options, inputs)


def hypotheses(case: Case) -> list[Hypothesis]:
    """The registered bugs that can occur at ``case``, in registry order."""
    return [h for bug in REGISTRY.values() if (h := bug.at(case)) is not None]


# -- helpers the bugs share --------------------------------------------------------------------
def _ab(c: Case) -> float:
    return float(c.schedule.alpha_bar[c.t])


def _opt(c: Case, key: str, default: object = None) -> object:
    return c.options.get(key, default)


def _restricted(c: Case) -> bool:
    return _opt(c, "clip") is not None or _opt(c, "threshold_ratio") is not None


def _eta(c: Case) -> float:
    return float(_opt(c, "eta", 0.0))  # type: ignore[arg-type]


def _shifted_schedule(case: Case, delta: int) -> Schedule:
    """The base schedule with every ᾱ taken one step later (δ=+1) or earlier (δ=−1), respaced
    like the case (not a valid schedule in general: built without validation)."""
    base = case.setting.base()
    T = base.T
    ab = base.alpha_bar
    if delta > 0:
        last = ab[T] * ab[T] / ab[T - 1] if ab[T - 1] > 0 else 0.0
        ab2 = np.concatenate([ab[:1], ab[2:], [last]])
    else:
        ab2 = np.concatenate([ab[:1], ab[:-1]])
    idx = np.arange(T + 1)
    if case.op in STEPS and case.setting.num_steps is not None:
        idx = np.concatenate([[0], case.setting.times()])
    a = ab2[idx].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.concatenate([[0.0], 1.0 - a[1:] / a[:-1]])
    beta[~np.isfinite(beta)] = 1.0
    return Schedule.unchecked(beta, a, idx.astype(np.int64), float(ab2[1]), f"shift{delta:+d}")


def _mini_prev(case: Case, prev_base: int) -> tuple[Schedule, int]:
    """A schedule on which the step at ``case``'s time has ``prev_base`` as previous time."""
    base = case.setting.base()
    b = case.base_time
    if prev_base >= 1:
        return respace(base, [prev_base, b]), 2
    return respace(base, [b]), 1


def _stride_prev(case: Case) -> tuple[int, int]:
    """(the previous base time t − T//N, the previous kept base time; 0 for none)."""
    st = case.setting
    prev_b = case.base_time - st.T // st.N
    true_prev = int(case.schedule.timesteps[case.t - 1]) if case.t > 1 else 0
    return prev_b, true_prev


def _ddim_custom(case: Case, *, sigma_fn=None, direction_ignores_sigma=False) -> np.ndarray:
    """The DDIM step of eq. 7.9 with σ from ``sigma_fn(ᾱ_t, ᾱ_prev, η)`` (default: the
    reference's) and, optionally, the direction term without −σ²."""
    s, t, i, o = case.schedule, case.t, case.inputs, dict(case.options)
    fsn = bool(o.pop("final_step_noise", False))
    p = reverse.ddim_parts(s, i["x_t"], t, i["model_output"], **o)
    ab = float(s.alpha_bar[t])
    abp = float(reverse.ddim_alpha_bar_prev(s, t, o.get("final_alpha_bar", "one")))
    eta = float(o.get("eta", 0.0))
    sig = float(np.sqrt(np.max(p.variance))) if sigma_fn is None else sigma_fn(ab, abp, eta)
    d = 1.0 - abp if direction_ignores_sigma else 1.0 - abp - sig**2
    x = math.sqrt(abp) * p.x0 + math.sqrt(max(d, 0.0)) * p.eps
    if eta > 0 and (t > 1 or fsn):
        x = x + sig * i["noise"]
    return x


def _ddpm_parts(c: Case) -> reverse.StepParts:
    i = c.inputs
    mv = i.get("model_variance")
    return reverse.ddpm_parts(
        c.schedule,
        i["x_t"],
        c.t,
        i["model_output"],
        **({"model_variance": mv} if mv is not None else {}),
        **dict(c.options),
    )


def _with_variance_type(c: Case, alt: str) -> np.ndarray:
    """The reference with the fixed variance type ``alt`` (the learned output dropped)."""
    i = {k: v for k, v in c.inputs.items() if k != "model_variance"}
    return expected(replace(with_options(c, variance_type=alt), inputs=i))


_FULL = Setting("linear", 1000)
_LEADING = Setting("linear", 1000, 30, "leading")
_TRAILING = Setting("cosine", 1000, 30, "trailing")
_OFFSET = Setting("scaled_linear", 1000, 30, "leading", 1)
_EPS = {"prediction_type": "epsilon"}


# -- every op -------------------------------------------------------------------------------
@known_bug(
    *ALL_OPS,
    message="looks like an off-by-one time index (ᾱ of the next step used: the 0-based index "
    "taken as the time, or ᾱ[t] for ᾱ[t−1])",
    reference="docs/math.md §2 (1-based time; peers index ᾱ from 0)",
    example={"op": "q_sample", "setting": _FULL, "t": 500},
    planted="OffByOne",
)
def off_by_one_next(c: Case) -> np.ndarray:
    """ᾱ of the next step used everywhere (a 0-based index taken as the time)."""
    return expected(c, _shifted_schedule(c, +1))


@known_bug(
    *ALL_OPS,
    message="looks like an off-by-one time index (ᾱ of the previous step used)",
    reference="docs/math.md §2 (1-based time; peers index ᾱ from 0)",
    example={"op": "q_sample", "setting": _FULL, "t": 500},
)
def off_by_one_previous(c: Case) -> np.ndarray:
    """ᾱ of the previous step used everywhere."""
    return expected(c, _shifted_schedule(c, -1))


# -- q_sample -------------------------------------------------------------------------------
@known_bug(
    "q_sample",
    message="looks like a missing sqrt (ᾱ x0 + (1−ᾱ) ε instead of √ᾱ x0 + √(1−ᾱ) ε)",
    reference="docs/math.md eq. 3.2",
    example={"op": "q_sample", "setting": _FULL, "t": 500},
    planted="QSampleMissingSqrt",
)
def q_sample_missing_sqrt(c: Case) -> np.ndarray:
    """ᾱ x0 + (1 − ᾱ) ε instead of eq. 3.2."""
    return _ab(c) * c.inputs["x0"] + (1 - _ab(c)) * c.inputs["noise"]


@known_bug(
    "q_sample",
    message="looks like a missing sqrt on the noise scale ((1−ᾱ) ε)",
    reference="docs/math.md eq. 3.2",
    example={"op": "q_sample", "setting": _FULL, "t": 500},
)
def q_sample_missing_noise_sqrt(c: Case) -> np.ndarray:
    """√ᾱ x0 + (1 − ᾱ) ε instead of eq. 3.2."""
    return math.sqrt(_ab(c)) * c.inputs["x0"] + (1 - _ab(c)) * c.inputs["noise"]


@known_bug(
    "q_sample",
    message="looks like the two scales swapped (√(1−ᾱ) x0 + √ᾱ ε)",
    reference="docs/math.md eq. 3.2",
    example={"op": "q_sample", "setting": _FULL, "t": 100},
)
def q_sample_scales_swapped(c: Case) -> np.ndarray:
    """√(1 − ᾱ) x0 + √ᾱ ε instead of eq. 3.2."""
    return math.sqrt(1 - _ab(c)) * c.inputs["x0"] + math.sqrt(_ab(c)) * c.inputs["noise"]


@known_bug(
    "q_sample",
    message="looks like ᾱ_T = 2⁻²⁴ instead of 0 at zero terminal SNR (diffusers' σ-view "
    "schedulers keep σ_T finite that way" + CONVENTION + ")",
    reference="docs/math.md eq. 2.4 (zero terminal SNR: ᾱ_T = 0)",
    example={
        "op": "q_sample",
        "setting": Setting("scaled_linear", 1000, zero_terminal_snr=True),
        "t": 1000,
    },
    applies=lambda c: c.setting.zero_terminal_snr and c.t == c.schedule.T,
)
def zsnr_alpha_bar_floor(c: Case) -> np.ndarray:
    """q_sample at t = T with ᾱ_T = 2⁻²⁴ instead of 0."""
    ab = 2.0**-24
    return math.sqrt(ab) * c.inputs["x0"] + math.sqrt(1 - ab) * c.inputs["noise"]


# -- posterior ------------------------------------------------------------------------------
@known_bug(
    "posterior_variance",
    message="looks like β used instead of β̃ (posterior variance)",
    reference="docs/math.md eq. 4.2",
    example={"op": "posterior_variance", "setting": _FULL, "t": 2},
)
def posterior_beta_for_beta_tilde(c: Case) -> np.ndarray:
    """β_t as the posterior variance instead of β̃_t (eq. 4.2)."""
    return np.broadcast_to(c.schedule.beta[c.t], c.inputs["x_t"].shape)


@known_bug(
    "posterior_mean",
    message="looks like the posterior coefficients swapped (x0 ↔ x_t)",
    reference="docs/math.md eq. 4.1",
    example={"op": "posterior_mean", "setting": _FULL, "t": 500},
)
def posterior_coefficients_swapped(c: Case) -> np.ndarray:
    """The two posterior-mean coefficients of eq. 4.1 swapped."""
    c0, ct = posterior.posterior_coefficients(c.schedule, c.t)
    return float(ct) * c.inputs["x0"] + float(c0) * c.inputs["x_t"]


# -- both steps -----------------------------------------------------------------------------
@known_bug(
    *STEPS,
    message="looks like the opposite v sign convention (v = √(1−ᾱ) x0 − √ᾱ ε)",
    reference="docs/math.md eq. 5.3",
    example={"op": "ddpm_step", "setting": _FULL, "options": {"prediction_type": "v"}, "t": 500},
    applies=lambda c: _opt(c, "prediction_type") == "v",
)
def v_sign_flipped(c: Case) -> np.ndarray:
    """The v-prediction read with the opposite sign (eq. 5.3)."""
    return expected(replace(c, inputs={**c.inputs, "model_output": -c.inputs["model_output"]}))


@known_bug(
    *STEPS,
    message="looks like x̂0 not clipped/thresholded",
    reference="docs/math.md eqs. 5.5–5.6",
    example={"op": "ddim_step", "setting": _FULL, "options": {**_EPS, "clip": 1.0}, "t": 10},
    applies=_restricted,
)
def x0_not_clipped(c: Case) -> np.ndarray:
    """x̂0 neither clipped nor thresholded (eqs. 5.5–5.6)."""
    return expected(with_options(c, clip=None, threshold_ratio=None))


def _stride_applies(c: Case) -> bool:
    if c.setting.num_steps is None:
        return False
    prev_b, true_prev = _stride_prev(c)
    return (prev_b if prev_b >= 1 else 0) != true_prev


def _stride_message(c: Case) -> str:
    stride = c.setting.T // c.setting.N
    _, true_prev = _stride_prev(c)
    return (
        "looks like the previous step taken as t − T//N = "
        f"{c.base_time - 1 - stride} "
        f"instead of the previous kept step {true_prev - 1} (0-based; the DDIM "
        "prev-step stride bug, diffusers#11347/#12633)"
    )


@known_bug(
    *STEPS,
    message=_stride_message,
    reference="docs/math.md §6 (the previous step of a respaced schedule is the previous "
    "kept one); diffusers#11347, #12633",
    example={"op": "ddim_step", "setting": _TRAILING, "options": _EPS, "t": 14},
    applies=_stride_applies,
    planted="DDIMStride",
)
def previous_step_stride(c: Case) -> np.ndarray:
    """The previous step taken as t − T//N instead of the previous kept step."""
    s2, t2 = _mini_prev(c, _stride_prev(c)[0])
    return expected(replace(c, t=t2), s2)


# -- DDPM -----------------------------------------------------------------------------------
def _variance_type(*types: str) -> Callable[[Case], bool]:
    return lambda c: _opt(c, "variance_type") in types


@known_bug(
    "ddpm_step",
    message="looks like β used instead of β̃ (fixed_large variance for fixed_small)",
    reference="docs/math.md eqs. 4.2, 7.4",
    example={
        "op": "ddpm_step",
        "setting": _FULL,
        "options": {**_EPS, "variance_type": "fixed_small"},
        "t": 2,
    },
    applies=_variance_type("fixed_small"),
    planted="BetaForBetaTilde",
)
def beta_for_beta_tilde(c: Case) -> np.ndarray:
    """DDPM fixed_small drawn with β_t instead of β̃_t."""
    return _with_variance_type(c, "fixed_large")


@known_bug(
    "ddpm_step",
    message=lambda c: (
        "looks like β̃ used instead of β (fixed_small variance for fixed_large)"
        if _opt(c, "variance_type") == "fixed_large"
        else "looks like β̃ used instead of β"
    ),
    reference="docs/math.md eq. 7.5",
    example={
        "op": "ddpm_step",
        "setting": _FULL,
        "options": {**_EPS, "variance_type": "fixed_large"},
        "t": 2,
    },
    applies=_variance_type("fixed_large", "fixed_large_iddpm"),
)
def beta_tilde_for_beta(c: Case) -> np.ndarray:
    """DDPM fixed_large drawn with β̃_t instead of β_t."""
    return _with_variance_type(c, "fixed_small")


@known_bug(
    "ddpm_step",
    message="looks like the learned output used as a log-variance, not a variance",
    reference="docs/math.md eq. 7.6",
    example={
        "op": "ddpm_step",
        "setting": _FULL,
        "options": {"variance_type": "learned_linear"},
        "t": 9,
    },
    applies=_variance_type("learned_linear"),
)
def variance_read_as_log_variance(c: Case) -> np.ndarray:
    """A learned_linear variance read as a log-variance (eq. 7.6)."""
    return expected(with_options(c, variance_type="learned"))


@known_bug(
    "ddpm_step",
    message="looks like a missing sqrt (σ² z added instead of σ z)",
    reference="docs/math.md eq. 7.3",
    example={"op": "ddpm_step", "setting": _FULL, "options": _EPS, "t": 500},
    planted="MissingSqrt",
)
def ddpm_noise_missing_sqrt(c: Case) -> np.ndarray:
    """σ² z added instead of σ z (eq. 7.3)."""
    p = _ddpm_parts(c)
    return p.mean + (c.t > 1) * p.variance * c.inputs["noise"]


@known_bug(
    "ddpm_step",
    message="looks like the noise term missing (σ = 0)",
    reference="docs/math.md eq. 7.3",
    example={"op": "ddpm_step", "setting": _FULL, "options": _EPS, "t": 500},
)
def ddpm_noise_missing(c: Case) -> np.ndarray:
    """The DDPM step without its noise term."""
    return _ddpm_parts(c).mean


@known_bug(
    "ddpm_step",
    message="looks like noise added at the last step (diffusers' DDPM adds it whenever the "
    "training index is > 0, e.g. with trailing spacing or steps_offset)",
    reference="docs/math.md eq. 7.3 (no noise at t = 1)",
    example={
        "op": "ddpm_step",
        "setting": _TRAILING,
        "options": {**_EPS, "variance_type": "fixed_large"},
        "t": 1,
    },
    applies=lambda c: c.t == 1,
)
def ddpm_noise_at_last_step(c: Case) -> np.ndarray:
    """Noise added at t = 1 as well (eq. 7.3 adds none)."""
    p = _ddpm_parts(c)
    return p.mean + np.sqrt(p.variance) * c.inputs["noise"]


# -- DDIM -----------------------------------------------------------------------------------
def _flipped_final(c: Case) -> str:
    return "first" if _opt(c, "final_alpha_bar", "one") == "one" else "one"


@known_bug(
    "ddim_step",
    message=lambda c: (
        "looks like set_alpha_to_one flipped "
        f"(final ᾱ = {'ᾱ_1' if _flipped_final(c) == 'first' else '1'}, "
        f"final_alpha_bar={_flipped_final(c)!r})"
    ),
    reference="docs/math.md eq. 7.10 (DDIM final ᾱ)",
    example={"op": "ddim_step", "setting": _OFFSET, "options": _EPS, "t": 1},
    applies=lambda c: c.t == 1 and _opt(c, "final_alpha_bar", "one") in ("one", "first"),
    planted="AlphaToOneFlipped",
)
def set_alpha_to_one_flipped(c: Case) -> np.ndarray:
    """The other final ᾱ at the last DDIM step (eq. 7.10)."""
    return expected(with_options(c, final_alpha_bar=_flipped_final(c)))


def _fsn(c: Case) -> bool:
    return bool(_opt(c, "final_step_noise", False))


@known_bug(
    "ddim_step",
    message=lambda c: (
        f"looks like final_step_noise={not _fsn(c)} "
        f"(noise {'not ' if _fsn(c) else ''}added at the last step)"
    ),
    reference="docs/math.md eq. 7.9 (noise at the final step)",
    example={
        "op": "ddim_step",
        "setting": _OFFSET,
        "options": {**_EPS, "eta": 1.0, "final_alpha_bar": "first"},
        "t": 1,
    },
    applies=lambda c: c.t == 1 and _eta(c) > 0,
)
def final_step_noise_flipped(c: Case) -> np.ndarray:
    """The other final_step_noise convention at the last DDIM step."""
    return expected(with_options(c, final_step_noise=not _fsn(c)))


def _rederive(c: Case) -> bool:
    return bool(_opt(c, "rederive_eps", True))


@known_bug(
    "ddim_step",
    message=lambda c: (
        f"looks like use_clipped_model_output={not _rederive(c)} "
        f"(ε̂ {'not ' if _rederive(c) else ''}re-derived from the clipped x̂0)"
    ),
    reference="docs/math.md eq. 7.9 (rederive_eps)",
    example={"op": "ddim_step", "setting": _FULL, "options": {**_EPS, "clip": 1.0}, "t": 10},
    applies=_restricted,
)
def rederive_eps_flipped(c: Case) -> np.ndarray:
    """The other rederive_eps convention (ε̂ from the clipped x̂0 or not)."""
    return expected(with_options(c, rederive_eps=not _rederive(c)))


_ETA1 = {**_EPS, "eta": 1.0}


@known_bug(
    "ddim_step",
    message="looks like a wrong DDIM σ: missing sqrt (σ = η (1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev))",
    reference="docs/math.md eq. 7.10",
    example={"op": "ddim_step", "setting": _LEADING, "options": _ETA1, "t": 15},
    applies=lambda c: _eta(c) > 0,
    planted="WrongDDIMSigma",
)
def ddim_sigma_missing_sqrt(c: Case) -> np.ndarray:
    """DDIM σ of eq. 7.10 without its square root."""
    return _ddim_custom(c, sigma_fn=lambda ab, abp, e: e * (1 - abp) / (1 - ab) * (1 - ab / abp))


@known_bug(
    "ddim_step",
    message="looks like a wrong DDIM σ: σ² = η² β_t (the DDPM large variance)",
    reference="docs/math.md eq. 7.10",
    example={"op": "ddim_step", "setting": _LEADING, "options": _ETA1, "t": 15},
    applies=lambda c: _eta(c) > 0,
)
def ddim_sigma_is_beta(c: Case) -> np.ndarray:
    """DDIM σ² = η² β_t (the DDPM large variance)."""
    return _ddim_custom(c, sigma_fn=lambda ab, abp, e: e * math.sqrt(1 - ab / abp))


@known_bug(
    "ddim_step",
    message="looks like a wrong DDIM σ: the direction term ignores σ² (√(1−ᾱ_prev) ε̂)",
    reference="docs/math.md eq. 7.9",
    example={"op": "ddim_step", "setting": _LEADING, "options": _ETA1, "t": 15},
    applies=lambda c: _eta(c) > 0,
)
def ddim_direction_ignores_sigma(c: Case) -> np.ndarray:
    """The DDIM direction term √(1 − ᾱ_prev) ε̂, without −σ²."""
    return _ddim_custom(c, direction_ignores_sigma=True)


@known_bug(
    "ddim_step",
    message="looks like η ignored (σ = 0)",
    reference="docs/math.md eqs. 7.9–7.10",
    example={"op": "ddim_step", "setting": _LEADING, "options": _ETA1, "t": 15},
    applies=lambda c: _eta(c) > 0,
    planted="EtaIgnored",
)
def ddim_eta_ignored(c: Case) -> np.ndarray:
    """DDIM with η taken as 0."""
    return expected(with_options(c, eta=0.0))


def _unrespaced(ab: float, abp: float, e: float, c: Case) -> float:
    beta_b = float(c.setting.base().beta[c.base_time])
    return e * math.sqrt((1 - abp) / (1 - ab) * beta_b)


@known_bug(
    "ddim_step",
    message="looks like a wrong DDIM σ: the unrespaced β_t used in σ",
    reference="docs/math.md eqs. 2.9, 7.10",
    example={"op": "ddim_step", "setting": _LEADING, "options": _ETA1, "t": 15},
    applies=lambda c: _eta(c) > 0 and c.setting.num_steps is not None,
)
def ddim_sigma_unrespaced_beta(c: Case) -> np.ndarray:
    """DDIM σ with the base schedule's β_t on a respaced schedule."""
    return _ddim_custom(c, sigma_fn=lambda ab, abp, e: _unrespaced(ab, abp, e, c))


# -- the catalogue of first-party bug signatures (docs/verify.md §Diagnoses) -------------------
def _eps_only(c: Case) -> bool:
    return str(_opt(c, "prediction_type", "epsilon")) == "epsilon" and not _restricted(c)


def _with_x0(c: Case, x0: np.ndarray) -> np.ndarray:
    """The step with x̂0 replaced by ``x0`` (ε-prediction: ε̂ is the model output)."""
    s, t, i, o = c.schedule, c.t, c.inputs, dict(c.options)
    eps = i["model_output"]
    if c.op == "ddpm_step":
        c0, ct = posterior.posterior_coefficients(s, t)
        p = _ddpm_parts(c)
        mean = float(c0) * x0 + float(ct) * i["x_t"]
        return mean + (t > 1) * np.sqrt(p.variance) * i["noise"]
    o.pop("final_step_noise", None)
    p = reverse.ddim_parts(s, i["x_t"], t, eps, **o)
    abp = float(reverse.ddim_alpha_bar_prev(s, t, o.get("final_alpha_bar", "one")))
    sig2 = float(np.max(p.variance))
    x = math.sqrt(abp) * x0 + math.sqrt(max(1 - abp - sig2, 0.0)) * eps
    if _eta(c) > 0 and (t > 1 or _fsn(c)):
        x = x + math.sqrt(sig2) * i["noise"]
    return x


@known_bug(
    *STEPS,
    message="looks like x̂0 divided by ᾱ_t instead of √ᾱ_t (x̂0 = (x_t − √(1−ᾱ) ε̂)/ᾱ)",
    reference="docs/math.md eq. 5.1",
    example={"op": "ddim_step", "setting": _LEADING, "options": _EPS, "t": 15},
    applies=_eps_only,
    planted="X0OverAlphaBar",
)
def x0_over_alpha_bar(c: Case) -> np.ndarray:
    """x̂0 = (x_t − √(1−ᾱ) ε̂)/ᾱ_t (the square root missing in eq. 5.1)."""
    ab, i = _ab(c), c.inputs
    return _with_x0(c, (i["x_t"] - math.sqrt(1 - ab) * i["model_output"]) / ab)


@known_bug(
    *STEPS,
    message="looks like x̂0 divided by ᾱ_t instead of √ᾱ_t (x̂0 = (x_t − √(1−ᾱ) ε̂)/ᾱ)",
    reference="docs/math.md eq. 5.1",
    example={"op": "ddim_step", "setting": _LEADING, "options": _EPS, "t": 15},
    applies=lambda c: _eps_only(c) and c.op == "ddim_step",
    planted="X0OverAlphaBar",
)
def x0_over_alpha_bar_rederived(c: Case) -> np.ndarray:
    """As :func:`x0_over_alpha_bar`, with ε̂ then re-derived from the wrong x̂0."""
    ab, i = _ab(c), c.inputs
    x0 = (i["x_t"] - math.sqrt(1 - ab) * i["model_output"]) / ab
    eps = (i["x_t"] - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    return _with_x0(replace(c, inputs={**i, "model_output": eps}), x0)


@known_bug(
    "ddim_step",
    message="looks like a wrong DDIM σ: the ratio inverted "
    "(σ = η √((1−ᾱ_t)/(1−ᾱ_prev)) √(1−ᾱ_t/ᾱ_prev))",
    reference="docs/math.md eq. 7.10",
    example={"op": "ddim_step", "setting": _LEADING, "options": _ETA1, "t": 15},
    applies=lambda c: _eta(c) > 0 and c.t > 1,
    planted="SigmaRatioInverted",
)
def ddim_sigma_ratio_inverted(c: Case) -> np.ndarray:
    """DDIM σ with (1−ᾱ_t)/(1−ᾱ_prev) for (1−ᾱ_prev)/(1−ᾱ_t) (eq. 7.10)."""
    return _ddim_custom(
        c, sigma_fn=lambda ab, abp, e: e * math.sqrt((1 - ab) / (1 - abp) * (1 - ab / abp))
    )


def _prev_applies(c: Case) -> bool:
    return c.t > 1 and _stride_prev(c)[1] + 1 < c.base_time


def _prev_off_message(c: Case) -> str:
    _, true_prev = _stride_prev(c)
    return (
        f"looks like ᾱ_prev read one step late (ᾱ at 0-based index {true_prev} for the "
        f"previous step {true_prev - 1}: an off-by-one on the previous index only)"
    )


@known_bug(
    *STEPS,
    message=_prev_off_message,
    reference="docs/math.md eqs. 7.3, 7.10 (ᾱ_prev is ᾱ at the previous kept step)",
    example={"op": "ddim_step", "setting": _LEADING, "options": _EPS, "t": 15},
    applies=_prev_applies,
    planted="AlphaBarPrevOffByOne",
)
def alpha_bar_prev_off_by_one(c: Case) -> np.ndarray:
    """ᾱ_prev read at the next base step (previous kept base time + 1), ᾱ_t right."""
    _, true_prev = _stride_prev(c)
    s2, t2 = _mini_prev(c, true_prev + 1)
    return expected(replace(c, t=t2), s2)


def _log_variance_sqrt(c: Case) -> np.ndarray:
    p = _ddpm_parts(c)
    with np.errstate(all="ignore"):
        return p.mean + (c.t > 1) * np.sqrt(np.log(p.variance)) * c.inputs["noise"]


@known_bug(
    "ddpm_step",
    message="looks like the √ of a log-variance (σ = √(log σ²): NaN wherever log σ² < 0, "
    "i.e. every step that adds noise; diffusers' `fixed_large_log`, diffusers#14569)",
    reference="docs/math.md eq. 7.3 (σ = exp(½ log σ²)); diffusers#14569 (PR #14571)",
    example={
        "op": "ddpm_step",
        "setting": _FULL,
        "options": {**_EPS, "variance_type": "fixed_large"},
        "t": 500,
    },
    applies=lambda c: c.t > 1 and _opt(c, "variance_type") in ("fixed_small", "fixed_large"),
    planted="SqrtOfLogVariance",
)
def sqrt_of_log_variance(c: Case) -> np.ndarray:
    """σ z with σ = √(log σ²) (a log-variance taken for a variance): NaN."""
    return _log_variance_sqrt(c)


# -- naming the bug --------------------------------------------------------------------------
EXPLAINED = 0.01  # a bug "explains" an output it reproduces to 1% of the change it makes


def _agrees(a: np.ndarray, y: np.ndarray, tarr: np.ndarray, gap: np.ndarray) -> bool:
    """``a`` reproduces ``y``: same NaN/Inf pattern, finite values within tolerance (or 1% of
    what the bug changes)."""
    fa, fy = np.isfinite(a), np.isfinite(y)
    if not np.array_equal(fa, fy):
        return False
    with np.errstate(all="ignore"):
        return bool(np.all((np.abs(a - y) <= tarr + EXPLAINED * gap)[fa]))


def diagnose_all(case: Case, actual: np.ndarray, tol: Tolerance) -> list[tuple[str, str]]:
    """Every known bug that reproduces ``actual`` at ``case``: (name, description) pairs in
    registry order.  A NaN/Inf output is reproduced by a bug that gives NaN/Inf at the same
    places (e.g. the √ of a log-variance)."""
    try:
        ref = expected(case)
        tarr = tolerance_array(case, tol)
    except (UndefinedError, InputError):
        return []
    a = np.asarray(actual, dtype=np.float64)
    if a.shape != ref.shape:
        return []
    out = []
    for bug in REGISTRY.values():
        h = bug.at(case)
        if h is None:
            continue
        try:
            with np.errstate(all="ignore"):
                y = np.asarray(h.output(case), dtype=np.float64)
        except (InputError, ValueError, ZeroDivisionError, FloatingPointError):
            continue
        if y.shape != ref.shape:
            continue
        with np.errstate(all="ignore"):
            gap = np.where(np.isfinite(y), np.abs(y - ref), 0.0)
            distinct = (not np.isfinite(y).all()) or float(np.nanmax(gap / tarr)) > 1.0
        if distinct and _agrees(a, y, tarr, gap):
            out.append((bug.name, h.description))
    return out


def diagnose(case: Case, actual: np.ndarray, tol: Tolerance) -> str | None:
    """Name the known bug that reproduces ``actual`` within tolerance, if any (else the one
    that comes much closer than the reference, as 'closest: …'; else a precision or NaN
    diagnosis)."""
    matches = [d for _n, d in diagnose_all(case, actual, tol)]
    if matches:
        return " or ".join(dict.fromkeys(matches))
    try:
        ref = expected(case)
        tarr = tolerance_array(case, tol)
    except (UndefinedError, InputError):
        return None
    a = np.asarray(actual, dtype=np.float64)
    if a.shape != ref.shape:
        return None
    if not np.isfinite(a).all():
        return nan_cause(case, a)
    with np.errstate(all="ignore"):
        ref_ratio = float(np.nanmax(np.abs(a - ref) / tarr))
    closest = []
    for h in hypotheses(case):
        try:
            with np.errstate(all="ignore"):
                y = np.asarray(h.output(case), dtype=np.float64)
        except (InputError, ValueError, ZeroDivisionError, FloatingPointError):
            continue
        if y.shape != ref.shape or not np.isfinite(y).all():
            continue
        with np.errstate(all="ignore"):
            if float(np.nanmax(np.abs(y - ref) / tarr)) <= 1.0:
                continue
            r = float(np.nanmax(np.abs(a - y) / tarr))
        if r < ref_ratio / 100.0:
            closest.append((r, h.description))
    if closest:
        r, d = min(closest)
        return f"closest known bug: {d.removeprefix('looks like ')} (err/tol {r:.3g} under it)"
    return precision_diagnosis(case, a, tol)


def precision_diagnosis(case: Case, actual: np.ndarray, tol: Tolerance) -> str | None:
    """For a failure at a tolerance finer than float32: does ``actual`` agree at the
    tolerance of float32 coefficients (float64 states), or of float32 throughout?"""
    if tol.u_schedule >= UNIT_ROUNDOFF["float32"]:
        return None
    ref = expected(case)
    for t2, what in (
        (
            Tolerance(state=tol.state, schedule="float32", factor=tol.factor),
            "agrees at the float32-coefficient tolerance: your coefficients (ᾱ, β and what "
            f"is built from them) look float32 — verify with --schedule-dtype float32 "
            f"(mixed: {tol.state} states, float32 tables)",
        ),
        (
            Tolerance(state="float32", factor=tol.factor),
            "agrees at the float32 tolerance: the implementation looks float32 throughout — "
            "verify with --dtype float32",
        ),
    ):
        with np.errstate(all="ignore"):
            if float(np.nanmax(np.abs(actual - ref) / tolerance_array(case, t2))) <= 1.0:
                return what
    return None


def nan_cause(case: Case, actual: np.ndarray) -> str | None:
    """Name why an output holds NaN/Inf where the reference is finite, from where they are."""
    bad = ~np.isfinite(actual)
    i = case.inputs
    if case.op == "ddpm_step" and "noise" in i:
        if np.array_equal(bad, i["noise"] != 0):
            return (
                "NaN exactly where noise is added: the noise scale σ itself is NaN — "
                "a square root of a negative number (e.g. the √ of a log-variance, "
                "diffusers#14569) or of a negative variance"
            )
    if case.op == "ddim_step" and float(case.options.get("eta", 0.0)) >= 1.0:
        if float(case.schedule.alpha_bar[case.t]) == 0.0:
            return (
                "NaN at ᾱ_t = 0 (zero terminal SNR) with η = 1: σ² = 1 − ᾱ_prev exactly, so "
                "√(1 − ᾱ_prev − σ²) is the square root of a negative rounding residue — clamp "
                "it at 0 (docs/math.md §7.2; diffusers#5969)"
            )
    if bad.all():
        return "every value NaN/Inf: a coefficient of the step is NaN/Inf (0/0, √ of < 0)"
    for key in ("model_output", "x_t"):
        if key in i and np.array_equal(bad, np.abs(i[key]) > 1e300):
            return f"NaN/Inf where {key} is huge: overflow"
    return None


def explained_by(check: Comparison, phrase: str) -> bool:
    """Does the known bug whose description contains ``phrase`` reproduce this failing
    check's output (within tolerance, or to 1% of the change it makes)?  Cheaper than
    :func:`diagnose` when the suspect is known."""
    case, a = check.case, check.actual
    if case is None or a is None:
        return False
    tol = check.tolerance or Tolerance()
    try:
        ref = expected(case)
        tarr = tolerance_array(case, tol)
    except (UndefinedError, InputError):
        return False
    for h in hypotheses(case):
        if phrase not in h.description:
            continue
        try:
            with np.errstate(all="ignore"):
                y = np.asarray(h.output(case), dtype=np.float64)
        except (InputError, ValueError, ZeroDivisionError):
            return False
        with np.errstate(all="ignore"):
            return bool(np.all(np.abs(a - y) <= tarr + EXPLAINED * np.abs(y - ref)))
    return False


# -- ᾱ tables ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlphaBarBug:
    """A known bug of an ᾱ table: ``output(schedule)`` is the (T,) table with the bug."""

    name: str
    message: str
    reference: str
    output: Callable[[Schedule], np.ndarray] = field(repr=False)


ALPHA_BAR_BUGS: dict[str, AlphaBarBug] = {}


def alpha_bar_bug(
    *, message: str, reference: str
) -> Callable[[Callable[[Schedule], np.ndarray]], Callable[[Schedule], np.ndarray]]:
    """Register the decorated ``f(base schedule) -> (T,) buggy ᾱ`` as a known ᾱ-table bug."""

    def register(fn: Callable[[Schedule], np.ndarray]) -> Callable[[Schedule], np.ndarray]:
        ALPHA_BAR_BUGS[fn.__name__] = AlphaBarBug(fn.__name__, message, reference, fn)
        return fn

    return register


@alpha_bar_bug(
    message="looks like an off-by-one index (entry i holds ᾱ of step i+2)",
    reference="docs/math.md eq. 2.2 (entry i of a 0-based table is ᾱ of step i+1)",
)
def alpha_bar_one_late(s: Schedule) -> np.ndarray:
    """Entry i holds ᾱ of step i + 2."""
    return np.append(s.alpha_bar[2:], s.alpha_bar[-1] * s.alpha[-1])


@alpha_bar_bug(
    message="looks like an off-by-one index (entry i holds ᾱ of step i; ᾱ_0 = 1 first)",
    reference="docs/math.md eq. 2.2 (entry i of a 0-based table is ᾱ of step i+1)",
)
def alpha_bar_one_early(s: Schedule) -> np.ndarray:
    """Entry i holds ᾱ of step i (ᾱ_0 = 1 first)."""
    return s.alpha_bar[:-1]


@alpha_bar_bug(message="looks like √ᾱ instead of ᾱ", reference="docs/math.md eqs. 2.2, 2.3")
def alpha_bar_sqrt(s: Schedule) -> np.ndarray:
    """√ᾱ in place of ᾱ."""
    return np.sqrt(s.alpha_bar[1:])


@alpha_bar_bug(
    message="looks like a cumulative product in float16 (ᾱ rounds to 1 near t = 0)",
    reference="docs/verify.md §Tolerances (diffusers PR #3005)",
)
def alpha_bar_float16(s: Schedule) -> np.ndarray:
    """The cumulative product taken in float16."""
    return np.cumprod((1 - s.beta[1:]).astype(np.float16)).astype(np.float64)


@alpha_bar_bug(
    message="looks like ᾱ_T = 2⁻²⁴ instead of 0 at zero terminal SNR (diffusers' σ-view "
    "schedulers keep σ_T finite that way" + CONVENTION + ")",
    reference="docs/math.md eq. 2.4 (zero terminal SNR: ᾱ_T = 0)",
)
def alpha_bar_zsnr_floor(s: Schedule) -> np.ndarray:
    """ᾱ_T floored at 2⁻²⁴ (only differs from the reference when ᾱ_T = 0)."""
    a = s.alpha_bar[1:].copy()
    if a[-1] == 0:
        a[-1] = 2.0**-24
    return a


def diagnose_alpha_bar(check: Comparison) -> str | None:
    """The known ᾱ-table bug that reproduces a failing ``alpha_bar`` check, if any."""
    a = np.asarray(check.actual, dtype=np.float64).ravel()
    s = check.setting.base()
    if a.shape == (s.T + 1,):
        a = a[1:]
    if a.shape != (s.T,):
        return None
    tol = alpha_bar_tolerance(check.setting, check.tolerance or Tolerance())
    for bug in ALPHA_BAR_BUGS.values():
        y = bug.output(s)
        with np.errstate(all="ignore"):
            if np.nanmax(np.abs(a - y)[:-1] / tol[:-1]) <= 1.0:
                return bug.message
    return None


def diagnosis_for(check: Comparison) -> Comparison:
    """``check`` with its ``diagnosis`` filled in (for a FAIL with a case and an output)."""
    if check.status != "FAIL" or check.diagnosis or check.actual is None:
        return check
    if check.op == "alpha_bar":
        return replace(check, diagnosis=diagnose_alpha_bar(check))
    if check.case is None:
        return check
    return replace(
        check, diagnosis=diagnose(check.case, check.actual, check.tolerance or Tolerance())
    )


def _refuted(name: str, passing: list[Comparison]) -> bool:
    """A bug is refuted by a passing check where it would have changed the output."""
    bug = REGISTRY[name]
    for c in passing:
        case = c.case
        if case is None or bug.at(case) is None:
            continue
        try:
            with np.errstate(all="ignore"):
                y = np.asarray(bug.output(case), dtype=np.float64)
                ref = expected(case)
                tarr = tolerance_array(case, c.tolerance or Tolerance())
        except (InputError, UndefinedError, ValueError, ZeroDivisionError):
            continue
        with np.errstate(all="ignore"):
            if not np.isfinite(y).all() or float(np.nanmax(np.abs(y - ref) / tarr)) > 1.0:
                return True
    return False


def group_causes(checks: list[Comparison]) -> str | None:
    """The causes of the failures of one (op, options, setting) group, named together: the
    known bugs that explain *every* failing check and that no passing check of the group
    refutes (a bug refuted by a passing step — where it would have changed the output — is
    not the cause); when no single bug explains them all, every distinct cause found, each
    once ("; also: …").  None when nothing known explains them."""
    failing = [c for c in checks if c.status == "FAIL" and c.case is not None]
    passing = [c for c in checks if c.status == "ok" and c.case is not None]
    if not failing:
        return None
    per: list[dict[str, str]] = []
    for c in failing:
        if c.actual is None:
            per.append({})
            continue
        per.append(dict(diagnose_all(c.case, c.actual, c.tolerance or Tolerance())))
    names = [n for n in REGISTRY if all(n in d for d in per)]
    names = [n for n in names if not _refuted(n, passing)]
    if names:
        desc = {n: d for m in per for n, d in m.items()}
        return " or ".join(dict.fromkeys(desc[n] for n in names))
    seen: dict[str, str] = {}
    for d in per:
        for n, text in d.items():
            if not _refuted(n, passing):
                seen.setdefault(n, text)
    return "; also: ".join(seen.values()) or None
