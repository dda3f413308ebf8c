"""Flow matching / rectified flow: the straight path, its velocity, shifted σ (docs/math.md §18).

    x_t = (1 − t) x_0 + t ε,  t ∈ [0, 1]                 (18.1)
    u = ε − x_0, the target velocity; dx/dt = u(x, t)    (18.2)-(18.3)
    u(x, t) = (x − D)/t with D = E[x_0 | x_t = x]        (18.4)

The flow state at t is the VE state at σ = t/(1−t), scaled by 1 − t (eq. 18.5), so a flow
model is a σ-view denoiser (:func:`denoiser_from_velocity`) and vice versa
(:func:`velocity_from_denoiser`).  In diffusers and here the flow "σ" is t itself.

Shifts (eqs. 18.6-18.8): :func:`shift` σ' = sσ/(1 + (s−1)σ) (SD3); :func:`time_shift`,
resolution dependent (Flux): e^μ/(e^μ + (1/σ − 1)) with μ = :func:`flux_mu` (seq_len).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._check import as_batch, as_float_array, is_real, option
from .errors import InputError

__all__ = [
    "Velocity",
    "interpolate",
    "velocity_target",
    "shift",
    "unshift",
    "time_shift",
    "flux_mu",
    "flow_sigmas",
    "ve_sigma",
    "flow_t",
    "denoiser_from_velocity",
    "velocity_from_denoiser",
]

#: u(x, t) -> velocity: x (B, *shape) flow states, t (B,) float64 in (0, 1]; output as x.
Velocity = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _t(t: object, name: str = "t") -> np.ndarray:
    a = as_float_array(t, name)
    if np.any(a < 0) or np.any(a > 1):
        raise InputError(name, "must lie in [0, 1]")
    return a


def _per(s: np.ndarray, ndim: int) -> np.ndarray:
    return s.reshape(s.shape + (1,) * (ndim - s.ndim)) if s.ndim else s


def interpolate(x0: object, eps: object, t: object) -> np.ndarray:
    """x_t = (1 − t) x_0 + t ε (eq. 18.1); x0, eps (B, ...), t scalar or (B,)."""
    a, e = as_batch(x0, "x0"), as_batch(eps, "eps")
    tt = _per(_t(t), a.ndim)
    return (1.0 - tt) * a + tt * e


def velocity_target(x0: object, eps: object) -> np.ndarray:
    """u = ε − x_0 (eq. 18.2), the conditional velocity of the straight path."""
    return as_batch(eps, "eps") - as_batch(x0, "x0")


def _shift_factor(s: object, name: str = "s") -> float:
    if not (is_real(s) and math.isfinite(s) and s > 0):
        raise InputError(name, f"must be a finite float > 0; got {s!r}")
    return float(s)


def shift(sigma: object, s: float) -> np.ndarray:
    """σ' = sσ/(1 + (s−1)σ) (Esser et al. 2024; eq. 18.6); maps [0, 1] onto itself.

    Composition: shift(shift(σ, a), b) = shift(σ, ab)."""
    sf = _shift_factor(s)
    g = _t(sigma, "sigma")
    return sf * g / (1.0 + (sf - 1.0) * g)


def unshift(sigma: object, s: float) -> np.ndarray:
    """The inverse of :func:`shift`: shift(σ, 1/s)."""
    return shift(sigma, 1.0 / _shift_factor(s))


def time_shift(sigma: object, mu: float, kind: str = "exponential") -> np.ndarray:
    """Resolution-dependent shift (eq. 18.7): ``"exponential"`` e^μ/(e^μ + (1/σ − 1)) (the
    shift of eq. 18.6 with s = e^μ), ``"linear"`` μ/(μ + (1/σ − 1)); σ = 0 stays 0."""
    option(kind, "kind", ("exponential", "linear"))
    if not (is_real(mu) and math.isfinite(mu)):
        raise InputError("mu", f"must be a finite float; got {mu!r}")
    k = math.exp(mu) if kind == "exponential" else float(mu)
    if k <= 0:
        raise InputError("mu", f"the linear time shift needs mu > 0; got {mu!r}")
    return shift(sigma, k)


def flux_mu(
    seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """μ = m·seq_len + b through (base_seq_len, base_shift) and (max_seq_len, max_shift)
    (Flux; eq. 18.8)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise InputError("seq_len", f"must be an int >= 1; got {seq_len!r}")
    if not max_seq_len > base_seq_len:
        raise InputError("max_seq_len", "must exceed base_seq_len")
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(m * seq_len + base_shift - m * base_seq_len)


def flow_sigmas(
    n: int,
    *,
    shift_factor: float = 1.0,
    mu: float | None = None,
    sigma_min: float | None = None,
    final_sigma: str = "zero",
) -> np.ndarray:
    """n flow σ (= t) from 1 down, shifted, then 0 (eqs. 18.6-18.7).

    σ_i = linspace(1, σ_min, n) (σ_min default 1/n, Flux's grid), then :func:`shift` by
    ``shift_factor`` or, with ``mu``, :func:`time_shift` (exponential), then ``final_sigma``
    ``"zero"`` appends 0 (``"none"``: nothing).  diffusers' FlowMatchEulerDiscrete with a
    static shift starts from its *shifted* σ_min: pass ``sigma_min=shift(1/T, s)`` to match.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError("n", f"must be an int >= 1; got {n!r}")
    lo = 1.0 / n if sigma_min is None else sigma_min
    if not (is_real(lo) and 0 < lo <= 1):
        raise InputError("sigma_min", f"must be in (0, 1]; got {sigma_min!r}")
    option(final_sigma, "final_sigma", ("zero", "none"))
    s = np.linspace(1.0, float(lo), int(n))
    s = time_shift(s, mu) if mu is not None else shift(s, shift_factor)
    return np.concatenate([s, [0.0]]) if final_sigma == "zero" else s


def ve_sigma(t: object) -> np.ndarray:
    """σ_VE = t/(1 − t) (eq. 18.5); inf at t = 1."""
    tt = _t(t)
    with np.errstate(divide="ignore"):
        return tt / (1.0 - tt)


def flow_t(sigma: object) -> np.ndarray:
    """t = σ/(1 + σ), the inverse of :func:`ve_sigma` (1 at σ = inf)."""
    s = as_float_array(sigma, "sigma", finite=False)
    if np.any(np.isnan(s)) or np.any(s < 0):
        raise InputError("sigma", "must be >= 0")
    return np.where(np.isinf(s), 1.0, s / (1.0 + np.where(np.isinf(s), 0.0, s)))


def denoiser_from_velocity(velocity: Velocity) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A σ-view denoiser D(x, σ) from a flow velocity model (eqs. 18.4-18.5):
    x_f = x/(1+σ), t = σ/(1+σ), D = x_f − t u(x_f, t)."""
    if not callable(velocity):
        raise InputError("velocity", "must be callable u(x, t)")

    def D(x, sigma):
        xa = as_batch(x, "x")
        s = np.broadcast_to(as_float_array(sigma, "sigma"), (xa.shape[0],))
        t = s / (1.0 + s)
        xf = xa / _per(1.0 + s, xa.ndim)
        u = as_float_array(velocity(xf, t), "velocity output")
        return xf - _per(t, xa.ndim) * u

    return D


def velocity_from_denoiser(denoiser: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Velocity:
    """A flow velocity u(x, t) from a σ-view denoiser (eqs. 18.4-18.5): σ = t/(1−t),
    u = (x − D(x/(1−t), σ))/t; t in (0, 1)."""
    if not callable(denoiser):
        raise InputError("denoiser", "must be callable D(x, sigma)")

    def u(x, t):
        xa = as_batch(x, "x")
        tt = np.broadcast_to(_t(t), (xa.shape[0],))
        if np.any(tt <= 0) or np.any(tt >= 1):
            raise InputError("t", "the velocity from a denoiser needs 0 < t < 1")
        d = as_float_array(denoiser(xa / _per(1.0 - tt, xa.ndim), tt / (1.0 - tt)), "denoised")
        return (xa - d) / _per(tt, xa.ndim)

    return u
