"""Running a verification: the plan (which checks), the run, and the :class:`Report`."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import reverse
from .._check import renamed
from ..errors import InputError, OptionError, UndefinedError
from ..respacing import SPACINGS
from .adapters import DiffusersTarget, Unsupported, looks_like_diffusers_scheduler, to_numpy
from .cases import Case, Setting, expected, make_inputs, options_label
from .comparison import Comparison, compare, compare_alpha_bar, compare_timesteps
from .diagnoses import CONVENTION, diagnosis_for, group_causes
from .protocol import CONVENTION_KEYS, ProtocolTarget
from .tolerance import Tolerance

__all__ = [
    "Item",
    "step_times",
    "ddpm_option_sets",
    "ddim_option_sets",
    "step_settings",
    "plan",
    "run",
    "as_target",
    "Report",
    "short_label",
    "kind_plan",
    "KIND_OPS",
    "EXIT_CODES",
]

# The exit codes of ``refdiff verify`` (docs/verify.md §Exit codes).
EXIT_CODES = {
    "PASS": 0,
    "FAIL": 1,
    "usage": 2,
    "REFUSED": 3,  # refdiff cannot check this sampler's steps; schedule-level checks passed
}


# -- the plan: which checks to run ---------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One (op, setting, options) to check at ``times`` (refdiff times on the op's schedule)."""

    op: str
    setting: Setting
    options: Mapping[str, object] = field(default_factory=dict)
    times: tuple[int, ...] = ()


def step_times(s: Setting) -> tuple[int, ...]:
    """The kept-step times a step op is checked at: the first three, middle, last two."""
    n = s.N
    return tuple(sorted({1, 2, 3, n // 2, n - 1, n} & set(range(1, n + 1))))


def ddpm_option_sets(quick: bool = False) -> list[dict]:
    """The DDPM option sets of the default plan (``quick``: without clipping)."""
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
    """The DDIM option sets of the default plan (``quick``: without clipping)."""
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
    """The six settings the step ops are checked on (all steps, and N kept steps with each
    spacing)."""
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
# the ops of the other scheduler kinds (kind_plan)
KIND_OPS = ("sigmas", "trajectory", "ddim_inverse_step")


def plan(
    samplers: Iterable[str] | None = None,
    *,
    T: int = 1000,
    steps: int = 30,
    quick: bool = False,
    ops: Iterable[str] | None = None,
    kinds: Iterable[str] | None = None,
) -> list[Item]:
    """The default grid: schedules, spacings, and for each of ``samplers`` (default both
    "ddpm" and "ddim"; ``kinds=``, the former keyword, works with a DeprecationWarning) every
    prediction type × variance type (DDPM) or η × final ᾱ (DDIM) × clipping/thresholding, at
    the first, middle and last steps of six settings (all steps, and N = ``steps`` kept with
    each spacing)."""
    want = set(ops) if ops is not None else None
    for op in sorted(want or ()):
        if op not in PLAN_OPS:
            raise OptionError("ops", op, list(PLAN_OPS))
    chosen = renamed(
        samplers, kinds, new_name="samplers", old_name="kinds", default=("ddpm", "ddim")
    )
    kinds = set(chosen)  # type: ignore[arg-type]
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
                add(Item("ddpm_step", s, o, step_times(s)))
    if "ddim" in kinds:
        for o in ddim_option_sets(quick):
            for s in ssets:
                add(Item("ddim_step", s, o, step_times(s)))
    return items


def native_variance_items(
    target: Any, samplers, *, T: int = 1000, steps: int = 30, quick: bool = False, ops=None
) -> list[Item]:
    """DDPM steps with the target's own other names for a fixed variance type
    (``target.native_variances``, e.g. diffusers' ``fixed_large_log`` for ``fixed_large``)."""
    names = getattr(target, "native_variances", None) or {}
    if "ddpm" not in samplers or (ops is not None and "ddpm_step" not in ops):
        return []
    out = []
    ssets = step_settings(T, min(steps, T))
    for native, vt in names.items():
        o = {"prediction_type": "epsilon", "variance_type": vt, "native_variance": native}
        for s in ssets[:2] if quick else ssets:
            out.append(Item("ddpm_step", s, o, step_times(s)))
    return out


def kind_plan(
    target: Any, *, T: int = 1000, steps: int = 30, quick: bool = False, ops=None
) -> list[Item]:
    """The plan for a scheduler that is not a DDPM/DDIM one (``target.family``): the
    schedule-level checks (ᾱ, timesteps, add_noise) with only the schedule's keywords, the σ
    grid, and whole trajectories for σ-view and flow schedulers."""
    fam = getattr(target, "family", "ddpm")
    want = set(ops) if ops is not None else None
    base = [
        i
        for i in plan(set(), T=T, steps=steps, quick=quick)
        if i.op in ("alpha_bar", "timesteps", "q_sample")
    ]
    items = [] if fam in ("flow", "ksampler") else base
    N = min(steps, T)
    if fam == "ksampler":
        from .sigmaview import TRAJECTORY_STEPS

        n = min(TRAJECTORY_STEPS, T)
        items = [Item("trajectory", Setting(sch, T, n, "linspace")) for sch in ("linear",)]
        if not quick:
            items.append(Item("trajectory", Setting("scaled_linear", T, n, "linspace")))
    if fam == "ddim_inverse":
        for st in step_settings(T, N)[1:5]:
            items.append(
                Item("ddim_inverse_step", st, {"prediction_type": "epsilon"}, step_times(st))
            )
    if fam in ("sigma", "flow"):
        for sp in ("linspace", "leading", "trailing"):
            items.append(Item("sigmas", Setting("linear", T, N, sp)))
        if fam == "flow":
            items = [Item("sigmas", Setting("linear", T, N, "linspace"))]
        from .sigmaview import TRAJECTORY_STEPS

        n = min(TRAJECTORY_STEPS, T)
        spacings = ("linspace",) if fam == "flow" or quick else ("linspace", "leading", "trailing")
        for sp in spacings:
            items.append(Item("trajectory", Setting("linear", T, n, sp)))
    return [i for i in items if want is None or i.op in want]


# -- running ----------------------------------------------------------------------------------
def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _unsupported(
    item: Item, t: int, base_t: int, why: str, tol, ib, status="unsupported"
) -> Comparison:
    return Comparison(
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


def _why(e: BaseException) -> str:
    """The reason of an unsupported/error row (the scheduler's own words for Unsupported)."""
    return str(e) if isinstance(e, Unsupported) else f"{type(e).__name__}: {e}"


def _is_unsupported(e: BaseException) -> bool:
    if isinstance(e, Unsupported | NotImplementedError):
        return True
    return isinstance(e, TypeError) and "unexpected keyword argument" in str(e)


def _reference_options(op: str, options: Mapping[str, object], conventions: Mapping) -> dict:
    o = {k: v for k, v in options.items() if v is not None and k != "native_variance"}
    for k in CONVENTION_KEYS.get(op, ()):
        if k in conventions:
            o.setdefault(k, conventions[k])
    return o


def _run_item(target, item: Item, tol: Tolerance) -> list[Comparison]:
    ib = int(getattr(target, "index_base", 0))
    conv = getattr(target, "conventions", {}) or {}
    s = item.setting
    if item.op == "alpha_bar":
        try:
            a = target.alpha_bar(s)
        except Exception as e:  # noqa: BLE001 - reported per check
            st = "unsupported" if _is_unsupported(e) else "error"
            return [_unsupported(item, s.T, s.T, _why(e), tol, ib, st)]
        return [replace(compare_alpha_bar(s, a, tol), index_base=ib)]
    if item.op == "timesteps":
        try:
            a = target.timesteps(s)
        except Exception as e:  # noqa: BLE001
            st = "unsupported" if _is_unsupported(e) else "error"
            return [_unsupported(item, s.N, s.N, _why(e), tol, ib, st)]
        return [replace(compare_timesteps(s, a), index_base=ib, tolerance=tol)]
    if item.op == "ddim_inverse_step":
        from .inversion import compare_ddim_inverse

        out = []
        for k in item.times:
            try:
                out.append(compare_ddim_inverse(target, s, k, tol))
            except Exception as e:  # noqa: BLE001
                st = "unsupported" if _is_unsupported(e) else "error"
                out.append(_unsupported(item, k, k, _why(e), tol, ib, st))
        return out
    if item.op in ("sigmas", "trajectory"):
        from .sigmaview import compare_sigmas, compare_trajectory

        try:
            if item.op == "trajectory":
                return [compare_trajectory(target, s, tol)]
            got = target.sigmas(s)
            sched = target._build(
                target._schedule_config(s) if target.family == "sigma" else {}, s.N
            )
            cfg = dict(getattr(sched, "config", {}) or {})
            own_t = np.asarray(to_numpy(sched.timesteps), dtype=np.float64)
            keep = np.concatenate([[True], own_t[1:] != own_t[:-1]])  # Heun repeats each t
            own_t = own_t[keep]
            vp = target.kind_info.state == "vp"
            return [replace(compare_sigmas(s, got, cfg, tol, own_t, vp), index_base=ib)]
        except Exception as e:  # noqa: BLE001
            st = "unsupported" if _is_unsupported(e) else "error"
            return [_unsupported(item, s.N, s.N, _why(e), tol, ib, st)]
    out: list[Comparison] = []
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
            nv = item.options.get("native_variance")
            got = _call(
                target, item.op, s, base_t, inputs, {**opts, "native_variance": nv} if nv else opts
            )
        except Exception as e:  # noqa: BLE001
            st = "unsupported" if _is_unsupported(e) else "error"
            out.append(_unsupported(item, t, base_t, _why(e), tol, ib, st))
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
    checks: list[Comparison]
    kind: str = ""
    refused: str | None = None

    @property
    def verdict(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"REFUSED"`` (nothing failed, but refdiff cannot check
        the sampler's steps: ``refused`` says why); :data:`EXIT_CODES` maps it to the exit
        status of ``refdiff verify``."""
        if self.failures:
            return "FAIL"
        if self.refused:
            return "REFUSED"
        return "PASS" if self.passed else "FAIL"

    @property
    def failures(self) -> list[Comparison]:
        """The checks that failed or raised."""
        return [c for c in self.checks if c.status in ("FAIL", "error")]

    @property
    def passed(self) -> bool:
        """True when nothing failed and at least one comparison ran."""
        return not self.failures and any(c.status == "ok" for c in self.checks)

    def counts(self) -> dict[str, int]:
        """How many checks have each status."""
        out: dict[str, int] = {}
        for c in self.checks:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def groups(self) -> list[tuple[str, str, list[Comparison]]]:
        """(op, label, checks) rows: per setting for alpha_bar/timesteps, else per option set."""
        rows: dict[tuple[str, str], list[Comparison]] = {}
        for c in self.checks:
            label = (
                c.setting.label() if c.op in ("alpha_bar", "timesteps") else short_label(c.options)
            )
            rows.setdefault((c.op, label), []).append(c)
        return [(op, lab, cs) for (op, lab), cs in rows.items()]

    def table(self) -> str:
        """The report as a text table, one row per op and option set (or setting)."""
        lines = [f"refdiff verify: {self.name}"]
        if self.kind:
            lines.append(f"  scheduler: {self.kind}")
        if self.refused:
            lines.append(f"  steps not checked: {self.refused} (schedule-level checks only)")
        lines += [
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
                f"{n[k]} {k}"
                for k in ("ok", "convention", "FAIL", "error", "unsupported", "undefined")
                if k in n
            )
        )
        return "\n".join(lines)

    def failure_summary(self, limit: int = 30) -> list[str]:
        """One line per (op, setting, cause): how many option sets fail that way, and the
        worst example's message.  The cause of an (op, options, setting) group is named from
        all its checks together (:func:`~.diagnoses.group_causes`: the known bug that
        explains every failing step and that no passing step refutes; else every distinct
        cause), else from the worst check."""
        groups: dict[tuple[str, str, str], list[Comparison]] = {}
        for c in self.checks:
            lab = "" if c.op in ("alpha_bar", "timesteps") else short_label(c.options)
            groups.setdefault((c.op, lab, c.setting.label()), []).append(c)
        buckets: dict[tuple[str, str, str], list[Comparison]] = {}
        for (op, _lab, sl), cs in groups.items():
            bad = [c for c in cs if c.status in ("FAIL", "error")]
            if not bad:
                continue
            w = max(bad, key=lambda c: (c.status == "error", c.ratio))
            causes = group_causes(cs) if op not in ("alpha_bar", "timesteps") else None
            d = replace(w, diagnosis=causes) if causes else diagnosis_for(w)
            key = (op, sl, d.diagnosis or d.problem or "")
            buckets.setdefault(key, []).append(d)
        out = []
        for _key, cs in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            ex = max(cs, key=lambda c: c.ratio)
            out.append(f"[{len(cs)} option set(s)] {ex.message()}")
        return out[:limit] + ([f"… {len(out) - limit} more"] if len(out) > limit else [])

    def notes(self) -> list[str]:
        """One line per peer convention found (status ``convention``): where and what."""
        seen: dict[str, list[str]] = {}
        for c in self.checks:
            if c.status == "convention":
                seen.setdefault(c.diagnosis or "", []).append(f"{c.op} [{c.setting.label()}]")
        return [f"{d.removeprefix('looks like ')} — in {', '.join(w)}" for d, w in seen.items()]

    def to_json(self) -> list[dict]:
        """Every comparison as a JSON-ready dict."""
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
    "native_variance": "as",
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


def _row(op: str, label: str, cs: Sequence[Comparison]) -> str:
    done = [c for c in cs if c.status in ("ok", "FAIL")]
    bad = [c for c in cs if c.status in ("FAIL", "error")]
    uns = [c for c in cs if c.status == "unsupported"]
    und = [c for c in cs if c.status == "undefined"]
    conv = [c for c in cs if c.status == "convention"]
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
        extra = [f"{len(conv)} convention"] if conv else []
        extra += [f"{len(uns)} unsupported"] if uns else []
        extra += [f"{len(und)} undefined"] if und else []
        if extra:
            res += f" ({', '.join(extra)})"
    elif conv:
        res = "convention (see notes)"
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
    native_variances: bool = False,
    **plan_kw: Any,
) -> Report:
    """Run ``items`` (default :func:`plan`) against ``target`` (a protocol object, a
    :class:`ProtocolTarget`, a :class:`~refdiff.adapters.DiffusersTarget`, or a
    diffusers-style scheduler).  ``native_variances``: also check the target's own other
    names for a variance type (diffusers' ``fixed_small_log``/``fixed_large_log``; on by
    default in the command line)."""
    tgt = as_target(target)
    tol = tolerance or getattr(tgt, "tolerance", None)
    tol = tol or Tolerance.for_dtype(getattr(tgt, "dtype", None) or "float64")
    fam = getattr(tgt, "family", None)
    if items is None:
        if fam is not None and fam not in ("ddpm", "ddim"):
            items = kind_plan(tgt, **plan_kw)
        else:
            if plan_kw.get("ops") is not None:
                plan_kw = {**plan_kw, "ops": [o for o in plan_kw["ops"] if o in PLAN_OPS]}
            samplers = getattr(tgt, "samplers", None) or getattr(tgt, "kinds", None)
            samplers = samplers or {getattr(tgt, "sampler", "ddpm")}
            items = plan(samplers, **plan_kw)
            if native_variances:
                items += native_variance_items(tgt, samplers, **plan_kw)
    checks: list[Comparison] = []
    for it in items:
        checks += _run_item(tgt, it, tol)
    checks = [_convention(c) for c in checks]
    info = getattr(tgt, "kind_info", None)
    refused = None
    if info is not None and info.refused:
        refused = info.refused
    elif fam == "ddim_inverse":
        refused = getattr(tgt, "steps_refused", None)
    return Report(
        name or getattr(tgt, "name", type(target).__name__),
        tol,
        int(getattr(tgt, "index_base", 0)),
        dict(getattr(tgt, "conventions", {}) or {}),
        checks,
        kind=info.label if info is not None else "",
        refused=refused,
    )


def _convention(c: Comparison) -> Comparison:
    """A schedule-level failure explained by a peer's documented convention is reported with
    status ``convention`` (not a failure)."""
    if c.status != "FAIL" or c.op not in ("alpha_bar", "q_sample"):
        return c
    d = diagnosis_for(c)
    if d.diagnosis and CONVENTION in d.diagnosis:
        return replace(d, status="convention", passed=True)
    return c


def as_target(obj: Any):
    """``obj`` as a verify target (protocol wrapper or diffusers adapter)."""
    if isinstance(obj, ProtocolTarget | DiffusersTarget) or hasattr(obj, "kind_info"):
        return obj
    if looks_like_diffusers_scheduler(obj):
        return DiffusersTarget(obj)
    from .peers import as_peer_target

    peer = as_peer_target(obj)
    if peer is not None:
        return peer
    if isinstance(obj, type):
        obj = obj()
    return ProtocolTarget(obj)
