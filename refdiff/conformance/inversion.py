"""DDIM inversion: the deterministic DDIM step run from t−1 to t (docs/verify.md §Scheduler
kinds; docs/math.md eq. 7.9 with η = 0, read the other way).

On the respaced schedule of kept times t_1 < … < t_N (ᾱ at index 0 is 1), the inversion step
into kept step k takes the state at k−1 to k:

    x̂0 = (x − √(1−ᾱ_{k−1}) ε̂)/√ᾱ_{k−1},   x_k = √ᾱ_k x̂0 + √(1−ᾱ_k) ε̂.

A diffusers-style ``DDIMInverseScheduler`` is checked step by step with ε-prediction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .cases import STATE_SHAPE, Setting
from .comparison import Comparison
from .tolerance import Tolerance

__all__ = ["inverse_step", "compare_ddim_inverse"]


def inverse_step(
    ab_from: float, ab_to: float, x: np.ndarray, eps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(the inversion step's output, the magnitude M of its terms), float64 like ``x``."""
    sf, st = math.sqrt(ab_from), math.sqrt(ab_to)
    x0 = (x - math.sqrt(1 - ab_from) * eps) / sf
    out = st * x0 + math.sqrt(1 - ab_to) * eps
    mag = st * (np.abs(x) + math.sqrt(1 - ab_from) * np.abs(eps)) / sf
    # √(1−ᾱ) from a rounded ᾱ: relative error u·ᾱ/(2(1−ᾱ)), large where 1−ᾱ cancels
    cancel = sum(a / (2 * math.sqrt(1 - a)) for a in (ab_from, ab_to) if a < 1)
    return out, mag + (math.sqrt(1 - ab_to) + cancel) * np.abs(eps)


def compare_ddim_inverse(target: Any, setting: Setting, k: int, tol: Tolerance) -> Comparison:
    """Compare ``target.ddim_inverse_step(setting, k, x, eps)`` (k: 1-based kept step of the
    respaced schedule) with :func:`inverse_step`; a failure reproduced with ᾱ_from read at
    t − T//N is named (the stride bug of diffusers#11347, in the inversion)."""
    s = setting.respaced()
    rng = np.random.default_rng(1000 * k + setting.N)
    x0 = 0.9 * rng.standard_normal(STATE_SHAPE)
    e = rng.standard_normal(STATE_SHAPE)
    ab_from, ab_to = float(s.alpha_bar[k - 1]), float(s.alpha_bar[k])
    x = math.sqrt(ab_from) * x0 + math.sqrt(1 - ab_from) * e
    eps = e + 0.3 * rng.standard_normal(STATE_SHAPE)
    exp, mag = inverse_step(ab_from, ab_to, x, eps)
    base_t = int(s.timesteps[k])
    got = np.asarray(target.ddim_inverse_step(setting, k, x, eps), dtype=np.float64)
    tarr = 4.0 * tol.factor * (tol.u_state + tol.u_schedule) * mag
    err = np.abs(got - exp)
    with np.errstate(all="ignore"):
        ratio = float(np.nanmax(np.where(err == 0, 0.0, err / tarr)))
    ok = bool(np.isfinite(got).all()) and ratio <= 1.0
    diag = None
    if not ok:
        b = setting.base()
        prev_b = base_t - setting.T // setting.N
        alt_from = float(b.alpha_bar[prev_b]) if prev_b >= 1 else 1.0
        alt, _ = inverse_step(alt_from, ab_to, x, eps)
        with np.errstate(all="ignore"):
            if np.all(np.abs(got - alt) <= tarr + 0.01 * np.abs(alt - exp)):
                diag = (
                    f"looks like the step's start taken as t − T//N = {prev_b - 1} instead of "
                    f"the previous kept step {int(s.timesteps[k - 1]) - 1} (0-based; the DDIM "
                    "stride bug of diffusers#11347, in the inversion)"
                )
    return Comparison(
        op="ddim_inverse_step",
        setting=setting,
        t=k,
        base_time=base_t,
        options={"prediction_type": "epsilon"},
        max_abs=float(np.nanmax(err)),
        max_rel=float(np.nanmax(err / np.maximum(mag, 1e-300))),
        ratio=ratio,
        passed=ok,
        status="ok" if ok else "FAIL",
        index_base=0,
        tolerance=tol,
        diagnosis=diag,
        actual=got,
    )
