"""``refdiff verify``: check an implementation, option by option, against the reference.

Targets (docs/verify.md):

- a Python object following the **protocol** (:class:`ProtocolTarget`): methods
  ``alpha_bar``, ``timesteps``, ``q_sample``, ``posterior``, ``ddpm_step``, ``ddim_step``
  (any subset), attributes ``index_base``, ``dtype``, ``conventions``;
- a **diffusers-style scheduler** (class, factory or instance with ``set_timesteps``,
  ``step``, ``alphas_cumprod``) through :class:`refdiff.adapters.DiffusersTarget`.

Every comparison injects the same noise into the implementation and the reference, and uses
the tolerance of :mod:`refdiff.testing` for the implementation's precision.  A failing
comparison is *diagnosed*: the reference is re-run with each of a list of known bugs planted
(off-by-one time index, β for β̃, a missing square root, the DDIM previous-step stride,
``set_alpha_to_one`` flipped, …) and a bug that reproduces the implementation's output within
tolerance is named in the message.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import posterior, reverse
from .adapters import DiffusersTarget, Unsupported, looks_like_diffusers_scheduler, to_numpy
from .errors import InputError, OptionError, UndefinedError
from .respacing import SPACINGS
from .schedule import Schedule, respace
from .testing import (
    UNIT_ROUNDOFF,
    Case,
    Check,
    Setting,
    Tolerance,
    _ddim_abp,
    _fast_schedule,
    compare,
    compare_alpha_bar,
    compare_timesteps,
    expected,
    make_inputs,
    options_label,
    tolerance_array,
    with_options,
)

__all__ = [
    "ProtocolTarget",
    "Item",
    "plan",
    "run",
    "Report",
    "diagnose",
    "diagnosis_for",
    "explained_by",
    "load_target",
    "main",
]

CONVENTION_KEYS = {"ddpm_step": ("log_variance_clipping",), "ddim_step": ("final_step_noise",)}


# -- the protocol -------------------------------------------------------------------------------
class ProtocolTarget:
    """Wraps an object following the verify protocol (docs/verify.md §Protocol).

    Methods (each optional; a missing one is reported as unsupported):

    - ``alpha_bar(schedule: str, T: int[, zero_terminal_snr=True]) -> (T,)``
    - ``timesteps(T, num_steps, spacing, steps_offset) -> kept indices`` (any order)
    - ``q_sample(alpha_bar, x0, t, noise) -> x_t``
    - ``posterior(alpha_bar, x0, x_t, t) -> (mean, variance)``
    - ``ddpm_step(alpha_bar, timesteps, t, x_t, model_output, noise, **options) -> x_prev``
    - ``ddim_step(alpha_bar, timesteps, t, x_t, model_output, noise, **options) -> x_prev``

    ``alpha_bar`` is the reference's float64 (T,) array (index i = step i+1), ``timesteps``
    the kept steps in descending order and ``t`` one of them, both in the object's
    ``index_base`` (0: diffusers / improved-diffusion; 1: refdiff).  Attributes: ``index_base``
    (default 0), ``dtype`` (default "float64": the precision that sets the tolerance),
    ``conventions`` (refdiff option values where peers differ, e.g.
    ``{"log_variance_clipping": "floor", "final_step_noise": True}``).
    """

    def __init__(self, obj: Any, name: str | None = None):
        self.obj = obj
        self.name = name or type(obj).__name__
        self.index_base = int(getattr(obj, "index_base", 0))
        if self.index_base not in (0, 1):
            raise InputError("index_base", f"must be 0 or 1; got {self.index_base!r}")
        self.dtype = getattr(obj, "dtype", "float64")
        self.conventions = dict(getattr(obj, "conventions", None) or {})
        self.kinds = {k for k in ("ddpm", "ddim") if callable(getattr(obj, f"{k}_step", None))}

    def _method(self, name: str) -> Callable:
        f = getattr(self.obj, name, None)
        if not callable(f):
            raise Unsupported(f"no {name} method")
        return f

    def _t(self, base_t: int) -> int:
        return int(base_t) - 1 + self.index_base

    def alpha_bar(self, setting: Setting):
        f = self._method("alpha_bar")
        if setting.zero_terminal_snr:
            return f(setting.schedule, setting.T, zero_terminal_snr=True)
        return f(setting.schedule, setting.T)

    def timesteps(self, setting: Setting):
        f = self._method("timesteps")
        ts = to_numpy(f(setting.T, setting.N, setting.spacing, setting.steps_offset))
        return np.sort(np.asarray(ts).astype(np.int64).ravel()) + 1 - self.index_base

    def _ab(self, setting: Setting) -> np.ndarray:
        return np.array(setting.base().alpha_bar[1:])

    def _desc(self, setting: Setting) -> np.ndarray:
        return (setting.times()[::-1] - 1 + self.index_base).astype(np.int64)

    def q_sample(self, setting, x0, base_t, noise):
        return self._method("q_sample")(self._ab(setting), x0, self._t(base_t), noise)

    def posterior(self, setting, x0, x_t, base_t):
        return self._method("posterior")(self._ab(setting), x0, x_t, self._t(base_t))

    def ddpm_step(self, setting, base_t, x_t, model_output, noise, options, model_variance=None):
        kw = _impl_options("ddpm_step", options)
        if model_variance is not None:
            kw["model_variance"] = model_variance
        f = self._method("ddpm_step")
        return f(
            self._ab(setting), self._desc(setting), self._t(base_t), x_t, model_output, noise, **kw
        )

    def ddim_step(self, setting, base_t, x_t, model_output, noise, options):
        kw = _impl_options("ddim_step", options)
        f = self._method("ddim_step")
        return f(
            self._ab(setting), self._desc(setting), self._t(base_t), x_t, model_output, noise, **kw
        )


def _impl_options(op: str, options: Mapping[str, object]) -> dict:
    """The options handed to a protocol implementation: conventions and inactive defaults
    stripped, so a minimal implementation only sees what it must honour."""
    o = {k: v for k, v in options.items() if k not in CONVENTION_KEYS.get(op, ())}
    restricted = o.get("clip") is not None or o.get("threshold_ratio") is not None
    for k, default in (("clip", None), ("threshold_ratio", None)):
        if o.get(k, default) is default:
            o.pop(k, None)
    if o.get("threshold_ratio") is None:
        o.pop("threshold_max", None)
    if op == "ddim_step" and not restricted:
        o.pop("rederive_eps", None)
    return o


# -- the plan: which checks to run ---------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One (op, setting, options) to check at ``times`` (refdiff times on the op's schedule)."""

    op: str
    setting: Setting
    options: Mapping[str, object] = field(default_factory=dict)
    times: tuple[int, ...] = ()


def _step_times(s: Setting) -> tuple[int, ...]:
    n = s.N
    return tuple(sorted({1, 2, 3, n // 2, n - 1, n} & set(range(1, n + 1))))


def ddpm_option_sets(quick: bool = False) -> list[dict]:
    preds = ("epsilon", "x0", "v")
    out = []
    for pt in preds:
        for vt in reverse.VARIANCE_TYPES:
            for clip in (None,) if quick else (None, 1.0):
                out.append({"prediction_type": pt, "variance_type": vt, "clip": clip})
        out.append(
            {
                "prediction_type": pt,
                "variance_type": "fixed_small",
                "clip": None,
                "threshold_ratio": 0.9,
                "threshold_max": 1.5,
            }
        )
    return out


def ddim_option_sets(quick: bool = False) -> list[dict]:
    out = []
    for pt in ("epsilon", "x0", "v"):
        for eta in (0.0, 0.5, 1.0):
            for fab in ("one", "first"):
                out.append(
                    {"prediction_type": pt, "eta": eta, "final_alpha_bar": fab, "clip": None}
                )
                if quick:
                    continue
                for rd in (True, False):
                    out.append(
                        {
                            "prediction_type": pt,
                            "eta": eta,
                            "final_alpha_bar": fab,
                            "clip": 1.0,
                            "rederive_eps": rd,
                        }
                    )
        out.append(
            {
                "prediction_type": pt,
                "eta": 0.5,
                "final_alpha_bar": "one",
                "clip": None,
                "threshold_ratio": 0.9,
                "threshold_max": 1.5,
                "rederive_eps": True,
            }
        )
    return out


def step_settings(T: int = 1000, steps: int = 30) -> list[Setting]:
    N = min(steps, T)
    return [
        Setting("linear", T),
        Setting("linear", T, N, "leading"),
        Setting("scaled_linear", T, N, "leading", 1),
        Setting("cosine", T, N, "trailing"),
        Setting("linear", T, N, "linspace"),
        Setting("scaled_linear", T, N, "trailing", 0, True),
    ]


PLAN_OPS = ("alpha_bar", "timesteps", "q_sample", "posterior", "ddpm_step", "ddim_step")


def plan(
    kinds: Iterable[str] = ("ddpm", "ddim"),
    *,
    T: int = 1000,
    steps: int = 30,
    quick: bool = False,
    ops: Iterable[str] | None = None,
) -> list[Item]:
    """The default grid: schedules, spacings, and for each step kind every prediction type ×
    variance type (DDPM) or η × final ᾱ (DDIM) × clipping/thresholding, at the first, middle
    and last steps of six settings (all steps, and N = ``steps`` kept with each spacing)."""
    want = set(ops) if ops is not None else None
    for op in sorted(want or ()):
        if op not in PLAN_OPS:
            raise OptionError("ops", op, list(PLAN_OPS))
    kinds = set(kinds)
    N = min(steps, T)
    items: list[Item] = []

    def add(item: Item) -> None:
        if want is None or item.op in want:
            items.append(item)

    for name in ("linear", "scaled_linear", "cosine", "sigmoid"):
        add(Item("alpha_bar", Setting(name, T)))
    for name in ("linear", "scaled_linear"):
        add(Item("alpha_bar", Setting(name, T, zero_terminal_snr=True)))
    for sp in SPACINGS:
        add(Item("timesteps", Setting("linear", T, N, sp)))
    add(Item("timesteps", Setting("linear", T, N, "leading", 1)))
    bt = tuple(sorted({1, 2, 3, T // 2, T} & set(range(1, T + 1))))
    for s in (
        Setting("linear", T),
        Setting("cosine", T),
        Setting("scaled_linear", T, zero_terminal_snr=True),
    ):
        add(Item("q_sample", s, {}, bt))
        add(Item("posterior", s, {}, bt))
    ssets = step_settings(T, N)
    if quick:
        ssets = ssets[:2] + ssets[3:5]
    if "ddpm" in kinds:
        for o in ddpm_option_sets(quick):
            for s in ssets:
                add(Item("ddpm_step", s, o, _step_times(s)))
    if "ddim" in kinds:
        for o in ddim_option_sets(quick):
            for s in ssets:
                add(Item("ddim_step", s, o, _step_times(s)))
    return items


# -- running ----------------------------------------------------------------------------------
def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _unsupported(item: Item, t: int, base_t: int, why: str, tol, ib, status="unsupported") -> Check:
    return Check(
        op=item.op,
        setting=item.setting,
        t=t,
        base_time=base_t,
        options=dict(item.options),
        max_abs=0.0,
        max_rel=0.0,
        ratio=0.0,
        passed=status != "error",
        problem=why,
        status=status,
        index_base=ib,
        tolerance=tol,
    )


def _is_unsupported(e: BaseException) -> bool:
    if isinstance(e, Unsupported | NotImplementedError):
        return True
    return isinstance(e, TypeError) and "unexpected keyword argument" in str(e)


def _reference_options(op: str, options: Mapping[str, object], conventions: Mapping) -> dict:
    o = {k: v for k, v in options.items() if v is not None}
    for k in CONVENTION_KEYS.get(op, ()):
        if k in conventions:
            o.setdefault(k, conventions[k])
    return o


def _run_item(target, item: Item, tol: Tolerance) -> list[Check]:
    ib = int(getattr(target, "index_base", 0))
    conv = getattr(target, "conventions", {}) or {}
    s = item.setting
    if item.op == "alpha_bar":
        try:
            a = target.alpha_bar(s)
        except Exception as e:  # noqa: BLE001 - reported per check
            st = "unsupported" if _is_unsupported(e) else "error"
            return [_unsupported(item, s.T, s.T, f"{type(e).__name__}: {e}", tol, ib, st)]
        return [replace(compare_alpha_bar(s, a, tol), index_base=ib)]
    if item.op == "timesteps":
        try:
            a = target.timesteps(s)
        except Exception as e:  # noqa: BLE001
            st = "unsupported" if _is_unsupported(e) else "error"
            return [_unsupported(item, s.N, s.N, f"{type(e).__name__}: {e}", tol, ib, st)]
        return [replace(compare_timesteps(s, a), index_base=ib, tolerance=tol)]
    out: list[Check] = []
    opts = _reference_options(item.op, item.options, conv)
    for t in item.times:
        ops = ("posterior_mean", "posterior_variance") if item.op == "posterior" else (item.op,)
        sched = s.respaced() if item.op.endswith("_step") else s.base()
        base_t = int(sched.timesteps[t])
        rng = np.random.default_rng(_seed(item.op, s.label(), options_label(item.options), t))
        inputs = make_inputs(ops[0], sched, t, opts, rng)
        cases = [Case(op, s, t, opts, inputs) for op in ops]
        exps = []
        try:
            exps = [expected(c) for c in cases]
        except UndefinedError as e:
            out += [
                _unsupported(item, t, base_t, f"reference undefined ({e})", tol, ib, "undefined")
            ]
            continue
        try:
            got = _call(target, item.op, s, base_t, inputs, opts)
        except Exception as e:  # noqa: BLE001
            st = "unsupported" if _is_unsupported(e) else "error"
            out.append(_unsupported(item, t, base_t, f"{type(e).__name__}: {e}", tol, ib, st))
            continue
        if item.op != "posterior":
            got = (got,)
        for c, e_, g in zip(cases, exps, got):
            ch = compare(c, g, tol, index_base=ib, exp=e_)
            out.append(replace(ch, options=dict(item.options)))
    return out


def _call(target, op: str, s: Setting, base_t: int, i: Mapping, opts: Mapping):
    if op == "q_sample":
        return target.q_sample(s, i["x0"], base_t, i["noise"])
    if op == "posterior":
        mean, var = target.posterior(s, i["x0"], i["x_t"], base_t)
        return mean, var
    if op == "ddpm_step":
        return target.ddpm_step(
            s, base_t, i["x_t"], i["model_output"], i["noise"], opts, i.get("model_variance")
        )
    if op == "ddim_step":
        return target.ddim_step(s, base_t, i["x_t"], i["model_output"], i["noise"], opts)
    raise InputError("op", f"unknown op {op!r}")


@dataclass
class Report:
    """The checks of one verify run, with the table and failure summary renderers."""

    name: str
    tolerance: Tolerance
    index_base: int
    conventions: Mapping[str, object]
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status in ("FAIL", "error")]

    @property
    def passed(self) -> bool:
        return not self.failures and any(c.status == "ok" for c in self.checks)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checks:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def groups(self) -> list[tuple[str, str, list[Check]]]:
        """(op, label, checks) rows: per setting for alpha_bar/timesteps, else per option set."""
        rows: dict[tuple[str, str], list[Check]] = {}
        for c in self.checks:
            label = (
                c.setting.label() if c.op in ("alpha_bar", "timesteps") else short_label(c.options)
            )
            rows.setdefault((c.op, label), []).append(c)
        return [(op, lab, cs) for (op, lab), cs in rows.items()]

    def table(self) -> str:
        lines = [
            f"refdiff verify: {self.name}",
            f"  index_base={self.index_base}; tolerance: {self.tolerance.describe()}; "
            f"conventions: {options_label(self.conventions) or 'refdiff defaults'}",
            "",
            f"{'op':<18} {'options / setting':<52} {'cases':>5} {'max abs':>9} {'max rel':>9} "
            f"{'err/tol':>9}  result",
        ]
        for op, lab, cs in self.groups():
            lines.append(_row(op, lab, cs))
        n = self.counts()
        lines.append("")
        lines.append(
            f"{len(self.checks)} comparisons: "
            + ", ".join(
                f"{n[k]} {k}" for k in ("ok", "FAIL", "error", "unsupported", "undefined") if k in n
            )
        )
        return "\n".join(lines)

    def failure_summary(self, limit: int = 30) -> list[str]:
        """One line per (op, setting, diagnosis): how many option sets fail that way, and the
        worst example's message."""
        worst: dict[tuple[str, str, str], Check] = {}
        for op, _lab, cs in self.groups():
            for setting_label in sorted({c.setting.label() for c in cs}):
                bad = [
                    c
                    for c in cs
                    if c.setting.label() == setting_label and c.status in ("FAIL", "error")
                ]
                if not bad:
                    continue
                w = max(bad, key=lambda c: (c.status == "error", c.ratio))
                worst[(op, _lab, setting_label)] = w
        buckets: dict[tuple[str, str, str], list[Check]] = {}
        for (op, _, sl), c in worst.items():
            d = diagnosis_for(c)
            key = (op, sl, d.diagnosis or d.problem or "")
            buckets.setdefault(key, []).append(d)
        out = []
        for _key, cs in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            ex = max(cs, key=lambda c: c.ratio)
            out.append(f"[{len(cs)} option set(s)] {ex.message()}")
        return out[:limit] + ([f"… {len(out) - limit} more"] if len(out) > limit else [])

    def to_json(self) -> list[dict]:
        res = []
        for c in self.checks:
            res.append(
                {
                    "op": c.op,
                    "setting": c.setting.label(),
                    "options": {k: v for k, v in c.options.items()},
                    "t": c.base_time,
                    "index": c.index,
                    "status": c.status,
                    "max_abs": _finite(c.max_abs),
                    "max_rel": _finite(c.max_rel),
                    "err_over_tol": _finite(c.ratio),
                    "problem": c.problem,
                }
            )
        return res


_SHORT = {
    "prediction_type": "pred",
    "variance_type": "var",
    "final_alpha_bar": "final",
    "rederive_eps": "rederive",
    "threshold_ratio": "thr",
    "threshold_max": "thr_max",
    "log_variance_clipping": "logvar",
    "final_step_noise": "final_noise",
}


def short_label(options: Mapping[str, object]) -> str:
    """A compact options label for tables (``pred=v var=fixed_small clip=1``)."""
    full = options_label(options)
    out = []
    for part in full.split():
        k, _, v = part.partition("=")
        out.append(f"{_SHORT.get(k, k)}={'eps' if v == 'epsilon' else v}")
    return " ".join(out)


def _finite(x: float):
    return x if math.isfinite(x) else None


def _fmt(x: float) -> str:
    return f"{x:9.2e}" if math.isfinite(x) else f"{'inf':>9}"


def _row(op: str, label: str, cs: Sequence[Check]) -> str:
    done = [c for c in cs if c.status in ("ok", "FAIL")]
    bad = [c for c in cs if c.status in ("FAIL", "error")]
    uns = [c for c in cs if c.status == "unsupported"]
    und = [c for c in cs if c.status == "undefined"]
    mx = max((c.max_abs for c in done), default=0.0)
    mr = max((c.max_rel for c in done), default=0.0)
    ra = max((c.ratio for c in done), default=0.0)
    if bad:
        fs = sorted({c.setting.label() for c in bad})
        res = f"FAIL {len(bad)}/{len(cs)}" + (
            f" ({'; '.join(fs)})" if op not in ("alpha_bar", "timesteps") else ""
        )
    elif done:
        res = "ok"
        extra = [f"{len(uns)} unsupported"] if uns else []
        extra += [f"{len(und)} undefined"] if und else []
        if extra:
            res += f" ({', '.join(extra)})"
    elif uns:
        res = "unsupported: " + (uns[0].problem or "")[:60]
    else:
        res = "undefined"
    lab = label if len(label) <= 52 else label[:49] + "..."
    return f"{op:<18} {lab:<52} {len(done):>5} {_fmt(mx)} {_fmt(mr)} {_fmt(ra)}  {res}"


def run(
    target: Any,
    items: Sequence[Item] | None = None,
    *,
    tolerance: Tolerance | None = None,
    name: str | None = None,
    **plan_kw: Any,
) -> Report:
    """Run ``items`` (default :func:`plan`) against ``target`` (a protocol object, a
    :class:`ProtocolTarget`, a :class:`~refdiff.adapters.DiffusersTarget`, or a
    diffusers-style scheduler)."""
    tgt = as_target(target)
    tol = tolerance or Tolerance.for_dtype(getattr(tgt, "dtype", None) or "float64")
    if items is None:
        kinds = getattr(tgt, "kinds", None) or {getattr(tgt, "kind", "ddpm")}
        items = plan(kinds, **plan_kw)
    checks: list[Check] = []
    for it in items:
        checks += _run_item(tgt, it, tol)
    return Report(
        name or getattr(tgt, "name", type(target).__name__),
        tol,
        int(getattr(tgt, "index_base", 0)),
        dict(getattr(tgt, "conventions", {}) or {}),
        checks,
    )


def as_target(obj: Any):
    """``obj`` as a verify target (protocol wrapper or diffusers adapter)."""
    if isinstance(obj, ProtocolTarget | DiffusersTarget):
        return obj
    if looks_like_diffusers_scheduler(obj):
        return DiffusersTarget(obj)
    if isinstance(obj, type):
        obj = obj()
    return ProtocolTarget(obj)


# -- diagnoses --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hypothesis:
    """A known bug: ``output(case)`` is what the reference gives with the bug planted."""

    description: str
    output: Callable[[Case], np.ndarray]


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
    if case.op.endswith("_step") and case.setting.num_steps is not None:
        idx = np.concatenate([[0], case.setting.times()])
    a = ab2[idx].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.concatenate([[0.0], 1.0 - a[1:] / a[:-1]])
    beta[~np.isfinite(beta)] = 1.0
    return _fast_schedule(beta, a, idx.astype(np.int64), float(ab2[1]), f"shift{delta:+d}")


def _mini_prev(case: Case, prev_base: int) -> tuple[Schedule, int]:
    """A schedule on which the step at ``case``'s time has ``prev_base`` as previous time."""
    base = case.setting.base()
    b = case.base_time
    if prev_base >= 1:
        return respace(base, [prev_base, b]), 2
    return respace(base, [b]), 1


def _ddim_custom(case: Case, *, sigma_fn=None, direction_ignores_sigma=False) -> np.ndarray:
    s, t, i, o = case.schedule, case.t, case.inputs, dict(case.options)
    fsn = bool(o.pop("final_step_noise", False))
    p = reverse.ddim_parts(s, i["x_t"], t, i["model_output"], **o)
    ab, abp = float(s.alpha_bar[t]), _ddim_abp(s, t, o)
    eta = float(o.get("eta", 0.0))
    sig = float(np.sqrt(np.max(p.variance))) if sigma_fn is None else sigma_fn(ab, abp, eta)
    d = 1.0 - abp if direction_ignores_sigma else 1.0 - abp - sig**2
    x = math.sqrt(abp) * p.x0 + math.sqrt(max(d, 0.0)) * p.eps
    if eta > 0 and (t > 1 or fsn):
        x = x + sig * i["noise"]
    return x


def _hypotheses(case: Case) -> list[Hypothesis]:
    op, o, t = case.op, case.options, case.t
    H: list[Hypothesis] = []

    def ref_on(s: Schedule, tt: int | None = None) -> np.ndarray:
        return expected(replace(case, t=case.t if tt is None else tt), s)

    H.append(
        Hypothesis(
            "looks like an off-by-one time index (ᾱ of the next step used: the 0-based index "
            "taken as the time, or ᾱ[t] for ᾱ[t−1])",
            lambda c: ref_on(_shifted_schedule(c, +1)),
        )
    )
    H.append(
        Hypothesis(
            "looks like an off-by-one time index (ᾱ of the previous step used)",
            lambda c: ref_on(_shifted_schedule(c, -1)),
        )
    )
    if op == "q_sample":
        H += [
            Hypothesis(
                "looks like a missing sqrt (ᾱ x0 + (1−ᾱ) ε instead of √ᾱ x0 + √(1−ᾱ) ε)",
                lambda c: _ab_c(c) * c.inputs["x0"] + (1 - _ab_c(c)) * c.inputs["noise"],
            ),
            Hypothesis(
                "looks like a missing sqrt on the noise scale ((1−ᾱ) ε)",
                lambda c: math.sqrt(_ab_c(c)) * c.inputs["x0"] + (1 - _ab_c(c)) * c.inputs["noise"],
            ),
            Hypothesis(
                "looks like the two scales swapped (√(1−ᾱ) x0 + √ᾱ ε)",
                lambda c: (
                    math.sqrt(1 - _ab_c(c)) * c.inputs["x0"]
                    + math.sqrt(_ab_c(c)) * c.inputs["noise"]
                ),
            ),
        ]
    if op == "posterior_variance":
        H.append(
            Hypothesis(
                "looks like β used instead of β̃ (posterior variance)",
                lambda c: np.broadcast_to(c.schedule.beta[c.t], c.inputs["x_t"].shape),
            )
        )
    if op == "posterior_mean":

        def swapped(c: Case) -> np.ndarray:
            c0, ct = posterior.posterior_coefficients(c.schedule, c.t)
            return float(ct) * c.inputs["x0"] + float(c0) * c.inputs["x_t"]

        H.append(Hypothesis("looks like the posterior coefficients swapped (x0 ↔ x_t)", swapped))
    if op in ("ddpm_step", "ddim_step"):
        if o.get("prediction_type") == "v":
            H.append(
                Hypothesis(
                    "looks like the opposite v sign convention (v = √(1−ᾱ) x0 − √ᾱ ε)",
                    lambda c: expected(
                        replace(c, inputs={**c.inputs, "model_output": -c.inputs["model_output"]})
                    ),
                )
            )
        if o.get("clip") is not None or o.get("threshold_ratio") is not None:
            H.append(
                Hypothesis(
                    "looks like x̂0 not clipped/thresholded",
                    lambda c: expected(with_options(c, clip=None, threshold_ratio=None)),
                )
            )
        if case.setting.num_steps is not None:
            st = case.setting
            stride = st.T // st.N
            prev_b = case.base_time - stride
            true_prev = int(case.schedule.timesteps[t - 1]) if t > 1 else 0
            if (prev_b if prev_b >= 1 else 0) != true_prev:

                def stride_h(c: Case, pb=prev_b) -> np.ndarray:
                    s2, t2 = _mini_prev(c, pb)
                    return expected(replace(c, t=t2), s2)

                H.append(
                    Hypothesis(
                        "looks like the previous step taken as t − T//N = "
                        f"{case.base_time - 1 - stride} "
                        f"instead of the previous kept step {true_prev - 1} (0-based; the DDIM "
                        "prev-step stride bug, diffusers#11347/#12633)",
                        stride_h,
                    )
                )
    if op == "ddpm_step":
        vt = o.get("variance_type")
        swap = {
            "fixed_small": (
                "fixed_large",
                "looks like β used instead of β̃ (fixed_large variance for fixed_small)",
            ),
            "fixed_large": (
                "fixed_small",
                "looks like β̃ used instead of β (fixed_small variance for fixed_large)",
            ),
            "fixed_large_iddpm": ("fixed_small", "looks like β̃ used instead of β"),
            "learned": (
                "learned_linear",
                "looks like the learned output used as a variance, not a log-variance",
            ),
            "learned_linear": (
                "learned",
                "looks like the learned output used as a log-variance, not a variance",
            ),
        }
        if vt in swap:
            alt, desc = swap[vt]
            H.append(Hypothesis(desc, _swap_variance(alt)))
        if vt == "learned_range":
            other = "next" if o.get("log_variance_clipping", "next") == "floor" else "floor"
            H.append(
                Hypothesis(
                    f"looks like log_variance_clipping={other!r} (the t=1 log β̃ convention)",
                    lambda c: expected(with_options(c, log_variance_clipping=other)),
                )
            )

        def parts(c: Case):
            i = c.inputs
            kw = {k: v for k, v in c.options.items()}
            mv = i.get("model_variance")
            return reverse.ddpm_parts(
                c.schedule,
                i["x_t"],
                c.t,
                i["model_output"],
                **({"model_variance": mv} if mv is not None else {}),
                **kw,
            )

        H.append(
            Hypothesis(
                "looks like a missing sqrt (σ² z added instead of σ z)",
                lambda c: (p := parts(c)).mean + (c.t > 1) * p.variance * c.inputs["noise"],
            )
        )
        H.append(Hypothesis("looks like the noise term missing (σ = 0)", lambda c: parts(c).mean))
        if t == 1:
            H.append(
                Hypothesis(
                    "looks like noise added at the last step (diffusers' DDPM adds it whenever the "
                    "training index is > 0, e.g. with trailing spacing or steps_offset)",
                    lambda c: (p := parts(c)).mean + np.sqrt(p.variance) * c.inputs["noise"],
                )
            )
    if op == "ddim_step":
        eta = float(o.get("eta", 0.0))
        if t == 1:
            fab = o.get("final_alpha_bar", "one")
            if fab in ("one", "first"):
                alt = "first" if fab == "one" else "one"
                H.append(
                    Hypothesis(
                        "looks like set_alpha_to_one flipped "
                        f"(final ᾱ = {'ᾱ_1' if alt == 'first' else '1'}, "
                        f"final_alpha_bar={alt!r})",
                        lambda c: expected(with_options(c, final_alpha_bar=alt)),
                    )
                )
            if eta > 0:
                fsn = bool(o.get("final_step_noise", False))
                H.append(
                    Hypothesis(
                        f"looks like final_step_noise={not fsn} "
                        f"(noise {'not ' if fsn else ''}added at the last step)",
                        lambda c: expected(with_options(c, final_step_noise=not fsn)),
                    )
                )
        if o.get("clip") is not None or o.get("threshold_ratio") is not None:
            rd = bool(o.get("rederive_eps", True))
            H.append(
                Hypothesis(
                    f"looks like use_clipped_model_output={not rd} "
                    f"(ε̂ {'not ' if rd else ''}re-derived from the clipped x̂0)",
                    lambda c: expected(with_options(c, rederive_eps=not rd)),
                )
            )
        if eta > 0:
            H += [
                Hypothesis(
                    "looks like a wrong DDIM σ: missing sqrt "
                    "(σ = η (1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev))",
                    lambda c: _ddim_custom(
                        c, sigma_fn=lambda ab, abp, e: e * (1 - abp) / (1 - ab) * (1 - ab / abp)
                    ),
                ),
                Hypothesis(
                    "looks like a wrong DDIM σ: σ² = η² β_t (the DDPM large variance)",
                    lambda c: _ddim_custom(
                        c, sigma_fn=lambda ab, abp, e: e * math.sqrt(1 - ab / abp)
                    ),
                ),
                Hypothesis(
                    "looks like a wrong DDIM σ: the direction term ignores σ² (√(1−ᾱ_prev) ε̂)",
                    lambda c: _ddim_custom(c, direction_ignores_sigma=True),
                ),
                Hypothesis(
                    "looks like η ignored (σ = 0)", lambda c: expected(with_options(c, eta=0.0))
                ),
            ]
            if case.setting.num_steps is not None:

                def unrespaced(ab, abp, e, c=case):
                    b = c.base_time
                    beta_b = float(c.setting.base().beta[b])
                    return e * math.sqrt((1 - abp) / (1 - ab) * beta_b)

                H.append(
                    Hypothesis(
                        "looks like a wrong DDIM σ: the unrespaced β_t used in σ",
                        lambda c: _ddim_custom(c, sigma_fn=unrespaced),
                    )
                )
    return H


def _ab_c(c: Case) -> float:
    return float(c.schedule.alpha_bar[c.t])


def _swap_variance(alt: str) -> Callable[[Case], np.ndarray]:
    def f(c: Case) -> np.ndarray:
        i = dict(c.inputs)
        mv = i.pop("model_variance", None)
        if alt in reverse.LEARNED:
            if mv is None:
                raise UndefinedError("model_variance", "none")
            if alt == "learned_linear":
                mv = np.exp(mv)
            else:
                mv = np.log(np.maximum(mv, 1e-300))
            i["model_variance"] = mv
        return expected(replace(with_options(c, variance_type=alt), inputs=i))

    return f


EXPLAINED = 0.01  # a bug "explains" an output it reproduces to 1% of the change it makes


def diagnose(case: Case, actual: np.ndarray, tol: Tolerance) -> str | None:
    """Name the known bug that reproduces ``actual`` within tolerance, if any (else the one
    that comes much closer than the reference, as 'closest: …')."""
    try:
        ref = expected(case)
        tarr = tolerance_array(case, tol)
    except (UndefinedError, InputError):
        return None
    a = np.asarray(actual, dtype=np.float64)
    with np.errstate(all="ignore"):
        ref_ratio = float(np.nanmax(np.abs(a - ref) / tarr))
    matches, closest = [], []
    for h in _hypotheses(case):
        try:
            with np.errstate(all="ignore"):
                y = np.asarray(h.output(case), dtype=np.float64)
        except (InputError, ValueError, ZeroDivisionError, FloatingPointError):
            continue
        if y.shape != ref.shape or not np.isfinite(y).all():
            continue
        with np.errstate(all="ignore"):
            gap = np.abs(y - ref)
            distinct = float(np.nanmax(gap / tarr)) > 1.0
            resid = np.abs(a - y)
            r = float(np.nanmax(resid / tarr))
            # within tolerance, or within 1% of what the bug changes: the buggy term is itself
            # computed in the implementation's precision, with its own cancellations
            explained = bool(np.all(resid <= tarr + EXPLAINED * gap))
        if not distinct:
            continue
        if explained:
            matches.append(h.description)
        elif r < ref_ratio / 100.0:
            closest.append((r, h.description))
    if matches:
        return " or ".join(dict.fromkeys(matches))
    if closest:
        r, d = min(closest)
        return f"closest known bug: {d.removeprefix('looks like ')} (err/tol {r:.3g} under it)"
    return None


def explained_by(check: Check, phrase: str) -> bool:
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
    for h in _hypotheses(case):
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


def _diagnose_alpha_bar(check: Check) -> str | None:
    a = np.asarray(check.actual, dtype=np.float64).ravel()
    s = check.setting.base()
    ab = s.alpha_bar
    if a.shape == (s.T + 1,):
        a = a[1:]
    if a.shape != (s.T,):
        return None
    from .testing import alpha_bar_tolerance

    tol = alpha_bar_tolerance(check.setting, check.tolerance or Tolerance())
    cands = {
        "looks like an off-by-one index (entry i holds ᾱ of step i+2)": np.append(
            ab[2:], ab[-1] * s.alpha[-1]
        ),
        "looks like an off-by-one index (entry i holds ᾱ of step i; ᾱ_0 = 1 first)": ab[:-1],
        "looks like √ᾱ instead of ᾱ": np.sqrt(ab[1:]),
        "looks like a cumulative product in float16 (ᾱ rounds to 1 near t = 0)": np.cumprod(
            (1 - s.beta[1:]).astype(np.float16)
        ).astype(np.float64),
    }
    for d, y in cands.items():
        with np.errstate(all="ignore"):
            if np.nanmax(np.abs(a - y)[:-1] / tol[:-1]) <= 1.0:
                return d
    return None


def diagnosis_for(check: Check) -> Check:
    """``check`` with its ``diagnosis`` filled in (for a FAIL with a case and an output)."""
    if check.status != "FAIL" or check.diagnosis or check.actual is None:
        return check
    if check.op == "alpha_bar":
        return replace(check, diagnosis=_diagnose_alpha_bar(check))
    if check.case is None:
        return check
    return replace(
        check, diagnosis=diagnose(check.case, check.actual, check.tolerance or Tolerance())
    )


# -- loading targets and the command ------------------------------------------------------------
def load_object(spec: str) -> Any:
    """``module:object`` or ``path/to/file.py:object`` (attribute paths with dots allowed)."""
    if ":" not in spec:
        raise InputError("target", f"expected 'module:object' or 'file.py:object'; got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    if mod_name.endswith(".py") or os.sep in mod_name:
        path = os.path.abspath(mod_name)
        if not os.path.isfile(path):
            raise InputError("target", f"no such file {mod_name!r}")
        name = "_refdiff_verify_" + os.path.splitext(os.path.basename(path))[0]
        spec_ = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec_)  # type: ignore[arg-type]
        sys.modules[name] = mod
        spec_.loader.exec_module(mod)  # type: ignore[union-attr]
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        mod = importlib.import_module(mod_name)
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError("target", f"{mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_target(spec: str, *, diffusers: bool | None = None):
    """A verify target from a ``module:object`` spec (auto-detects diffusers schedulers)."""
    obj = load_object(spec)
    if diffusers or (diffusers is None and looks_like_diffusers_scheduler(obj)):
        return DiffusersTarget(obj, name=spec)
    if isinstance(obj, type):
        obj = obj()
    elif callable(obj) and not any(hasattr(obj, m) for m in ("ddpm_step", "ddim_step", "q_sample")):
        obj = obj()
    return ProtocolTarget(obj, name=spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="refdiff verify",
        description="Verify an implementation against the float64 reference, option by option.",
    )
    p.add_argument(
        "target",
        nargs="?",
        help="module:object or file.py:object (protocol object "
        "or a diffusers-style scheduler, auto-detected)",
    )
    p.add_argument(
        "--diffusers",
        metavar="MODULE:FACTORY",
        help="a diffusers-style scheduler class or factory (forces the adapter)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        help="precision for the tolerance (float64, float32, "
        "float16, bfloat16); default: the target's dtype",
    )
    p.add_argument(
        "--factor", type=float, default=None, help="tolerance safety factor K (default 8)"
    )
    p.add_argument("--T", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument("--steps", type=int, default=30, help="kept steps of the respaced settings (30)")
    p.add_argument("--quick", action="store_true", help="a smaller grid")
    p.add_argument(
        "--ops",
        default=None,
        help="comma list of ops to check "
        "(alpha_bar,timesteps,q_sample,posterior,ddpm_step,ddim_step)",
    )
    p.add_argument("--json", default=None, help="write every comparison to this JSON file")
    p.add_argument("--failures", type=int, default=30, help="failure lines to print (30)")
    a = p.parse_args(argv)
    spec = a.diffusers or a.target
    bad = [op for op in (a.ops.split(",") if a.ops else []) if op not in PLAN_OPS]
    if bad or (a.dtype is not None and a.dtype not in UNIT_ROUNDOFF):
        flag, value, valid = (
            ("--ops", bad[0], PLAN_OPS) if bad else ("--dtype", a.dtype, UNIT_ROUNDOFF)
        )
        print(f"refdiff verify: {OptionError(flag, value, list(valid))}", file=sys.stderr)
        return 2
    if not spec:
        p.print_usage(sys.stderr)
        print(
            "refdiff verify: give a target (module:object) or --diffusers MODULE:FACTORY",
            file=sys.stderr,
        )
        return 2
    try:
        target = load_target(spec, diffusers=True if a.diffusers else None)
    except (InputError, ImportError) as e:
        print(f"refdiff verify: {e}", file=sys.stderr)
        return 2
    kw = {}
    if a.factor is not None:
        kw["factor"] = a.factor
    dtype = a.dtype or getattr(target, "dtype", None) or "float64"
    try:
        tol = Tolerance.for_dtype(dtype, **kw)
        ops = a.ops.split(",") if a.ops else None
        rep = run(target, tolerance=tol, T=a.T, steps=a.steps, quick=a.quick, ops=ops)
    except InputError as e:
        print(f"refdiff verify: {e}", file=sys.stderr)
        return 2
    print(rep.table())
    fails = rep.failure_summary(a.failures)
    if fails:
        print("\nFailures (worst case per op, setting and likely cause):")
        for line in fails:
            print("  - " + line)
    if a.json:
        from ._io import write_json

        write_json(
            a.json,
            {
                "target": rep.name,
                "tolerance": rep.tolerance.describe(),
                "passed": rep.passed,
                "checks": rep.to_json(),
            },
        )
    print("\nresult: " + ("PASS" if rep.passed else "FAIL"))
    return 0 if rep.passed else 1
