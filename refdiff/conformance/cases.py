"""Cases: which schedule, which step, which inputs, and the reference output (docs/verify.md).

A :class:`Setting` names a base schedule and the steps a sampler keeps; a :class:`Case` is one
comparison (op, setting, time, options, inputs); :func:`expected` is the float64 reference of
docs/math.md and :func:`magnitude` the sum of the magnitudes of the terms it adds up, from
which :mod:`refdiff.conformance.tolerance` derives the tolerance.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from .. import forward, posterior, respacing, reverse
from ..errors import InputError
from ..parameterization import from_x0_eps
from ..schedule import Schedule, make_schedule, respace

__all__ = [
    "OPS",
    "STATE_SHAPE",
    "Setting",
    "Case",
    "options_label",
    "as_setting",
    "make_inputs",
    "expected",
    "magnitude",
    "with_options",
]

OPS = ("q_sample", "posterior_mean", "posterior_variance", "ddpm_step", "ddim_step")
STATE_SHAPE = (3, 2, 4, 4)  # (B, C, H, W): 32 values per sample, enough for quantiles


# -- settings: which schedule and which kept steps --------------------------------------------
@dataclass(frozen=True)
class Setting:
    """A base schedule and the steps a sampler keeps (docs/math.md §2, §6).

    ``num_steps=None`` keeps all T steps.  ``spacing``/``steps_offset`` follow
    :func:`refdiff.respacing.spaced_times`.
    """

    schedule: str = "linear"
    T: int = 1000
    num_steps: int | None = None
    spacing: str = "leading"
    steps_offset: int = 0
    zero_terminal_snr: bool = False

    def base(self) -> Schedule:
        """The base (training) schedule."""
        return _base_schedule(self.schedule, self.T, self.zero_terminal_snr)

    def times(self) -> np.ndarray:
        """Kept base times, ascending, 1-based, shape (N,)."""
        if self.num_steps is None:
            return np.arange(1, self.T + 1, dtype=np.int64)
        return _spaced(self.T, self.num_steps, self.spacing, self.steps_offset)

    def respaced(self) -> Schedule:
        """The schedule of the kept steps (the base schedule when all steps are kept)."""
        if self.num_steps is None:
            return self.base()
        return _respaced(self)

    @property
    def N(self) -> int:
        """The number of kept steps."""
        return self.T if self.num_steps is None else int(self.num_steps)

    def label(self) -> str:
        """A short human-readable label (``linear T=1000 leading N=30``)."""
        s = self.schedule + ("+zsnr" if self.zero_terminal_snr else "")
        if self.num_steps is None:
            return f"{s} T={self.T} all steps"
        off = f"+{self.steps_offset}" if self.steps_offset else ""
        return f"{s} T={self.T} {self.spacing}{off} N={self.num_steps}"


@functools.lru_cache(maxsize=64)
def _base_schedule(name: str, T: int, zsnr: bool) -> Schedule:
    return make_schedule(name, T, zero_terminal_snr=zsnr)


@functools.lru_cache(maxsize=256)
def _spaced(T: int, n: int, spacing: str, offset: int) -> np.ndarray:
    a = respacing.spaced_times(T, n, spacing, offset)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=256)
def _respaced(setting: Setting) -> Schedule:
    return respace(setting.base(), setting.times())


def options_label(options: Mapping[str, object]) -> str:
    """``key=value`` pairs in a stable order; options set to None are left out."""
    order = [k for k in _OPTION_ORDER if k in options] + sorted(set(options) - set(_OPTION_ORDER))
    parts = []
    for k in order:
        v = options[k]
        if v is None:
            continue
        parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


_OPTION_ORDER = (
    "prediction_type",
    "variance_type",
    "eta",
    "final_alpha_bar",
    "clip",
    "threshold_ratio",
    "threshold_max",
    "rederive_eps",
    "log_variance_clipping",
    "final_step_noise",
)


# -- cases ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Case:
    """One comparison: ``op`` at time ``t`` (refdiff time on the schedule the op runs on: the
    base schedule for q_sample/posterior, the respaced one for steps) with ``inputs``."""

    op: str
    setting: Setting
    t: int
    options: Mapping[str, object] = field(default_factory=dict)
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def schedule(self) -> Schedule:
        """The schedule ``op`` runs on: respaced for steps, the base one otherwise."""
        return (
            self.setting.respaced()
            if self.op in ("ddpm_step", "ddim_step")
            else self.setting.base()
        )

    @property
    def base_time(self) -> int:
        """The base (training) time of step ``t``."""
        return int(self.schedule.timesteps[self.t])


def _ab(schedule: Schedule, t: int) -> float:
    return float(schedule.alpha_bar[t])


def make_inputs(
    op: str,
    schedule: Schedule,
    t: int,
    options: Mapping[str, object],
    rng: np.random.Generator,
    shape: tuple[int, ...] = STATE_SHAPE,
) -> dict[str, np.ndarray]:
    """Plausible inputs for ``op`` at ``t``: data x0 ~ N(0, 0.9²) (some beyond ±1, so clipping
    acts), x_t from q(x_t|x0), an imperfect model output (truth + N(0, 0.3²)), noise."""
    x0 = 0.9 * rng.standard_normal(shape)
    eps = rng.standard_normal(shape)
    ab = _ab(schedule, t)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps
    noise = rng.standard_normal(shape)
    if op == "q_sample":
        return {"x0": x0, "noise": noise}
    if op.startswith("posterior"):
        return {"x0": x0, "x_t": x_t}
    pt = str(options.get("prediction_type", "epsilon"))
    truth = from_x0_eps(x0, eps, ab, pt) if pt != "score" else -eps / math.sqrt(1.0 - ab)
    out = {
        "x_t": x_t,
        "model_output": truth + 0.3 * rng.standard_normal(shape),
        "noise": noise,
        "x0": x0,  # the data x_t was noised from (not an input of the step itself)
    }
    vt = options.get("variance_type")
    if vt in reverse.LEARNED:
        beta = float(schedule.beta[t])
        if vt == "learned_range":
            mv = rng.uniform(-1.0, 1.0, shape)
        else:
            mv = math.log(beta) + 0.3 * rng.standard_normal(shape)
            if vt == "learned_linear":
                mv = np.exp(mv)
        out["model_variance"] = mv
    return out


def expected(case: Case, schedule: Schedule | None = None) -> np.ndarray:
    """The reference output of ``case`` (float64), optionally on another ``schedule``.

    Raises :class:`~refdiff.errors.UndefinedError` where the reference is undefined (e.g.
    ε-prediction where ᾱ_t = 0).
    """
    s = case.schedule if schedule is None else schedule
    i, o, t = case.inputs, dict(case.options), case.t
    with np.errstate(all="ignore"):
        if case.op == "q_sample":
            return forward.q_sample(s, i["x0"], t, noise=i["noise"])
        if case.op == "posterior_mean":
            return posterior.posterior_mean_var(s, i["x0"], i["x_t"], t)[0]
        if case.op == "posterior_variance":
            v = posterior.posterior_variance(s, t)
            return np.broadcast_to(np.asarray(v, dtype=np.float64), i["x_t"].shape).copy()
        if case.op == "ddpm_step":
            mv = i.get("model_variance")
            kw = {"model_variance": mv} if mv is not None else {}
            return reverse.ddpm_step(s, i["x_t"], t, i["model_output"], noise=i["noise"], **kw, **o)
        if case.op == "ddim_step":
            return reverse.ddim_step(s, i["x_t"], t, i["model_output"], noise=i["noise"], **o)
    raise InputError("op", f"unknown op {case.op!r}; valid: {', '.join(OPS)}")


def _pred_magnitudes(x_t, m, ab: float, prediction_type: str):
    """Elementwise magnitudes of (x̂0, ε̂) as sums of |terms| of eqs. 5.1–5.4."""
    sa, s1 = math.sqrt(ab), math.sqrt(max(1.0 - ab, 0.0))
    ax, am = np.abs(x_t), np.abs(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction_type == "v":
            return sa * ax + s1 * am, sa * am + s1 * ax
        if prediction_type == "x0":
            return am, (ax + sa * am) / s1
        if prediction_type == "score":
            am = s1 * am
        return (ax + s1 * am) / sa, am


def magnitude(case: Case) -> np.ndarray:
    """M: elementwise sum of the magnitudes of every term the reference formula adds up,
    intermediate results (x̂0, ε̂) included.  Rounding in precision u perturbs each term by
    at most a few u of its size, so a correct implementation's error is O(u·M)."""
    s, t, i, o = case.schedule, case.t, case.inputs, case.options
    ab = _ab(s, t)
    if case.op == "q_sample":
        return math.sqrt(ab) * np.abs(i["x0"]) + math.sqrt(1 - ab) * np.abs(i["noise"])
    if case.op == "posterior_mean":
        c0, ct = posterior.posterior_coefficients(s, t)
        return float(c0) * np.abs(i["x0"]) + float(ct) * np.abs(i["x_t"])
    if case.op == "posterior_variance":
        return np.abs(expected(case))
    x_t, m, z = i["x_t"], i["model_output"], i["noise"]
    mx0, meps = _pred_magnitudes(x_t, m, ab, str(o.get("prediction_type", "epsilon")))
    s1 = math.sqrt(max(1.0 - ab, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        meps_re = (np.abs(x_t) + math.sqrt(ab) * mx0) / s1 if s1 > 0 else meps
    if case.op == "ddpm_step":
        p = reverse.ddpm_parts(
            s, x_t, t, m, model_variance=i.get("model_variance"), **_ddpm_part_opts(o)
        )
        c0, ct = posterior.posterior_coefficients(s, t)
        mag = float(c0) * mx0 + float(ct) * np.abs(x_t)
        if t > 1:
            logs = 0.0
            vt = o.get("variance_type")
            if vt == "learned":
                logs = np.abs(i["model_variance"])
            elif vt == "learned_range":
                logs = np.abs(p.log_variance) + 1.0
            mag = mag + np.sqrt(p.variance) * np.abs(z) * (1.0 + 0.5 * logs)
        return mag
    # ddim
    p = reverse.ddim_parts(s, x_t, t, m, **_ddim_part_opts(o))
    abp = float(reverse.ddim_alpha_bar_prev(s, t, o.get("final_alpha_bar", "one")))
    e = meps_re if o.get("rederive_eps", True) else meps
    d = math.sqrt(max(1.0 - abp - float(np.max(p.variance)), 0.0))
    mag = math.sqrt(abp) * mx0 + d * e
    eta = float(o.get("eta", 0.0))
    if eta > 0 and (t > 1 or o.get("final_step_noise", False)):
        mag = mag + np.sqrt(p.variance) * np.abs(z)
    return mag


def _ddpm_part_opts(o: Mapping[str, object]) -> dict:
    keys = ("prediction_type", "variance_type", "clip", "threshold_ratio", "threshold_max")
    return {k: o[k] for k in (*keys, "log_variance_clipping") if k in o}


def _ddim_part_opts(o: Mapping[str, object]) -> dict:
    return {k: v for k, v in o.items() if k != "final_step_noise"}


def as_setting(setting: Setting | Mapping | None) -> Setting:
    """``setting`` as a :class:`Setting` (None: the default; a dict: its keywords)."""
    if setting is None:
        return Setting()
    if isinstance(setting, Setting):
        return setting
    if isinstance(setting, Mapping):
        return Setting(**setting)
    raise InputError("setting", f"must be a Setting or a dict; got {type(setting).__name__}")


def with_options(case: Case, **options: object) -> Case:
    """``case`` with some options replaced (used by the diagnoses)."""
    return replace(case, options={**case.options, **options})
