"""``refdiff verify``: load a target and print its report (docs/verify.md §Command line)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Any

from .._io import write_json
from ..errors import InputError, OptionError
from .adapters import DiffusersTarget, looks_like_diffusers_scheduler
from .protocol import ProtocolTarget
from .runner import EXIT_CODES, KIND_OPS, PLAN_OPS, run
from .tolerance import UNIT_ROUNDOFF, Tolerance

__all__ = ["load_object", "load_target", "main"]


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


def load_target(spec: str, *, diffusers: bool | None = None, variance_aliases: dict | None = None):
    """A verify target from a ``module:object`` spec (auto-detects diffusers schedulers,
    improved-/guided-diffusion ``GaussianDiffusion`` objects and k-diffusion samplers)."""
    obj = load_object(spec)
    if diffusers or (diffusers is None and looks_like_diffusers_scheduler(obj)):
        return DiffusersTarget(obj, name=spec, variance_aliases=variance_aliases)
    from .peers import as_peer_target

    peer = as_peer_target(obj, name=spec)
    if peer is not None:
        return peer
    if isinstance(obj, type):
        obj = obj()
    elif callable(obj) and not any(hasattr(obj, m) for m in ("ddpm_step", "ddim_step", "q_sample")):
        obj = obj()
    if hasattr(obj, "kind_info") and callable(getattr(obj, "trajectory", None)):
        obj.name = spec  # a σ-view sampler object (docs/verify.md §Your own σ-view sampler)
        return obj
    peer = as_peer_target(obj, name=spec)
    if peer is not None:
        return peer
    return ProtocolTarget(obj, name=spec)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``refdiff verify``; returns the exit status (:data:`EXIT_CODES`: 0 PASS,
    1 FAIL, 2 usage error, 3 REFUSED — refdiff cannot check the sampler's steps and the
    schedule-level checks passed)."""
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
        "--schedule-dtype",
        default=None,
        help="precision of the schedule tables (ᾱ, β and the coefficients built from them) "
        "when it differs from the states': e.g. --dtype float64 --schedule-dtype float32 "
        "for float32 tables with float64 states (mixed tolerance)",
    )
    p.add_argument(
        "--variance-alias",
        action="append",
        default=[],
        metavar="REFDIFF=NATIVE",
        help="check a refdiff variance type through the scheduler's own name for it, e.g. "
        "fixed_large=fixed_large_log (diffusers' *_log variances are checked by default)",
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
        "(alpha_bar,timesteps,q_sample,posterior,ddpm_step,ddim_step; σ-view and inversion "
        "schedulers: sigmas,trajectory,ddim_inverse_step)",
    )
    p.add_argument("--json", default=None, help="write every comparison to this JSON file")
    p.add_argument("--failures", type=int, default=30, help="failure lines to print (30)")
    a = p.parse_args(argv)
    spec = a.diffusers or a.target
    valid_ops = PLAN_OPS + KIND_OPS
    bad = [op for op in (a.ops.split(",") if a.ops else []) if op not in valid_ops]
    sdt = a.schedule_dtype
    if bad or any(d is not None and d not in UNIT_ROUNDOFF for d in (a.dtype, sdt)):
        flag, value, valid = (
            ("--ops", bad[0], valid_ops)
            if bad
            else ("--dtype", a.dtype, UNIT_ROUNDOFF)
            if a.dtype is not None and a.dtype not in UNIT_ROUNDOFF
            else ("--schedule-dtype", sdt, UNIT_ROUNDOFF)
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
    aliases = {}
    for pair in a.variance_alias:
        k, sep, v = pair.partition("=")
        if not sep or not k or not v:
            print(
                f"refdiff verify: --variance-alias wants REFDIFF=NATIVE; got {pair!r}",
                file=sys.stderr,
            )
            return 2
        aliases[k] = v
    try:
        target = load_target(
            spec, diffusers=True if a.diffusers else None, variance_aliases=aliases or None
        )
    except (InputError, ImportError) as e:
        print(f"refdiff verify: {e}", file=sys.stderr)
        return 2
    kw: dict = {}
    if a.factor is not None:
        kw["factor"] = a.factor
    if a.schedule_dtype is not None:
        kw["schedule"] = a.schedule_dtype
    dtype = a.dtype or getattr(target, "dtype", None) or "float64"
    if a.schedule_dtype is None and a.dtype is None and getattr(target, "schedule_dtype", None):
        kw["schedule"] = target.schedule_dtype  # e.g. improved-diffusion's float32 look-ups
    try:
        tol = Tolerance.for_dtype(dtype, **kw)
        ops = a.ops.split(",") if a.ops else None
        rep = run(
            target,
            tolerance=tol,
            T=a.T,
            steps=a.steps,
            quick=a.quick,
            ops=ops,
            native_variances=True,
        )
    except InputError as e:
        print(f"refdiff verify: {e}", file=sys.stderr)
        return 2
    print(rep.table())
    notes = rep.notes()
    if notes:
        print("\nPeer conventions (reported, not failures):")
        for line in notes:
            print("  - " + line)
    fails = rep.failure_summary(a.failures)
    if fails:
        print(
            "\nFailures (worst case per op, setting and likely cause; times are the "
            f"implementation's {'0' if rep.index_base == 0 else '1'}-based index, refdiff's "
            "1-based t in parentheses):"
        )
        for line in fails:
            print("  - " + line)
    if a.json:
        write_json(
            a.json,
            {
                "target": rep.name,
                "tolerance": rep.tolerance.describe(),
                "passed": rep.passed,
                "verdict": rep.verdict,
                "scheduler": rep.kind,
                "refused": rep.refused,
                "checks": rep.to_json(),
            },
        )
    verdict = rep.verdict
    if verdict == "REFUSED":
        print(f"\nresult: REFUSED — {rep.refused}; the schedule-level checks above passed")
    else:
        print("\nresult: " + verdict)
    return EXIT_CODES[verdict]
