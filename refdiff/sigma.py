"""The σ (VE / EDM) view of a VP schedule, the denoiser D(x; σ), and σ schedules.

docs/math.md §15-§18.  A VP state x_vp = √ᾱ x_0 + √(1−ᾱ) ε divided by √ᾱ is the VE state

    x = x_vp / √ᾱ = x_0 + σ ε,   σ = √((1−ᾱ)/ᾱ),   ᾱ = 1/(1+σ²)         (15.1)-(15.2)

and every σ-view sampler of :mod:`refdiff.solvers` runs on it with the *denoiser*
``D(x, sigma) -> x̂_0``: ``x`` float64 (B, *data_shape) VE states, ``sigma`` float64 (B,),
the output x̂_0 = E[x_0 | x] of the state's shape (eq. 15.3).  :func:`denoiser_from_model`
wraps a refdiff/diffusers model ``f(x_vp, t)`` (ε, x̂_0, v or score prediction) into one.

Conversions among ε / x̂_0 / v / score / flow velocity at any σ: :func:`to_denoised`,
:func:`from_denoised` (eqs. 18.9-18.13).  EDM preconditioning: :func:`edm_preconditioning`
(eq. 16.2).  σ schedules (all float64, descending; §17): :func:`karras`,
:func:`exponential`, :func:`beta_sigmas`, :func:`from_schedule`; ``final_sigma`` names what
is appended: ``"zero"`` (both peers' default), ``"sigma_min"`` (diffusers'
``final_sigmas_type="sigma_min"``), ``"none"``, or a float.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._check import as_batch, as_float_array, is_real, option
from .errors import InputError, ScheduleError, UndefinedError
from .schedule import Schedule

__all__ = [
    "PREDICTION_TYPES",
    "SigmaDenoiser",
    "sigma_from_alpha_bar",
    "alpha_bar_from_sigma",
    "to_vp",
    "to_ve",
    "to_denoised",
    "from_denoised",
    "edm_preconditioning",
    "sigma_to_t",
    "t_to_sigma",
    "denoiser_from_model",
    "karras",
    "exponential",
    "beta_sigmas",
    "from_schedule",
    "append_final",
]

#: What a network may predict, in the σ view (``"flow"``: the rectified-flow velocity ε − x_0).
PREDICTION_TYPES = ("epsilon", "x0", "v", "score", "flow")

#: D(x, sigma) -> x̂_0: x (B, *shape) VE states, sigma (B,), output shaped as x (eq. 15.3).
SigmaDenoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _sig(sigma: object, name: str = "sigma") -> np.ndarray:
    s = as_float_array(sigma, name, finite=False)
    if np.any(np.isnan(s)) or np.any(s < 0):
        raise InputError(name, "must be >= 0 (inf allowed)")
    return s


def _per(s: np.ndarray, ndim: int) -> np.ndarray:
    return s.reshape(s.shape + (1,) * (ndim - s.ndim)) if s.ndim else s


def sigma_from_alpha_bar(alpha_bar: object) -> np.ndarray:
    """σ = √((1−ᾱ)/ᾱ) (eq. 15.1); +inf where ᾱ = 0.  Shape as ``alpha_bar``."""
    ab = as_float_array(alpha_bar, "alpha_bar")
    if np.any(ab < 0) or np.any(ab > 1):
        raise InputError("alpha_bar", "must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - ab) / ab)


def alpha_bar_from_sigma(sigma: object) -> np.ndarray:
    """ᾱ = 1/(1+σ²) (eq. 15.1); 0 at σ = inf."""
    return 1.0 / (1.0 + _sig(sigma) ** 2)


def to_vp(x: object, sigma: object) -> np.ndarray:
    """VE state → VP state, x_vp = x/√(1+σ²) (eq. 15.2; diffusers' ``scale_model_input``).

    ``sigma`` scalar or (B,) against x (B, ...)."""
    xa = as_batch(x, "x")
    return xa / _per(np.sqrt(1.0 + _sig(sigma) ** 2), xa.ndim)


def to_ve(x_vp: object, sigma: object) -> np.ndarray:
    """VP state → VE state, x = x_vp √(1+σ²) (eq. 15.2)."""
    xa = as_batch(x_vp, "x_vp")
    return xa * _per(np.sqrt(1.0 + _sig(sigma) ** 2), xa.ndim)


def to_denoised(prediction: object, x: object, sigma: object, prediction_type: str) -> np.ndarray:
    """x̂_0 = D(x; σ) from a ``prediction_type`` prediction at the VE state x (eqs. 18.9-18.13).

    ``epsilon``: x − σε̂.  ``x0``: itself.  ``v`` (of the VP state, Salimans & Ho):
    x/(1+σ²) − σ v/√(1+σ²).  ``score`` (∇ log p_σ(x)): x + σ² s.  ``flow`` (velocity ε − x_0
    of the flow state x_f = x/(1+σ), at t = σ/(1+σ)): (x − σ u)/(1+σ).
    ``x`` (B, ...), ``prediction`` as x, ``sigma`` scalar or (B,) (finite, > 0 except for x0).
    """
    option(prediction_type, "prediction_type", PREDICTION_TYPES)
    xa = as_batch(x, "x")
    p = as_batch(prediction, "prediction")
    s = _per(_sig(sigma), xa.ndim)
    if np.any(np.isinf(s)) and prediction_type != "v":
        raise UndefinedError("sigma", f"{prediction_type} → x̂_0 is undefined at σ = inf")
    if prediction_type == "epsilon":
        return xa - s * p
    if prediction_type == "x0":
        return p.copy()
    if prediction_type == "v":
        with np.errstate(invalid="ignore", divide="ignore"):
            c = 1.0 / np.sqrt(1.0 + s**2)
            out = c * c * xa - np.where(np.isinf(s), 1.0, s * c) * p
        return out
    if prediction_type == "score":
        return xa + s**2 * p
    return (xa - s * p) / (1.0 + s)


def from_denoised(denoised: object, x: object, sigma: object, prediction_type: str) -> np.ndarray:
    """The ``prediction_type`` prediction equivalent to x̂_0 = ``denoised`` at (x, σ).

    Inverse of :func:`to_denoised` (eqs. 18.9-18.13); ε and the score need σ > 0.
    """
    option(prediction_type, "prediction_type", PREDICTION_TYPES)
    xa = as_batch(x, "x")
    d = as_batch(denoised, "denoised")
    s = _per(_sig(sigma), xa.ndim)
    if prediction_type == "x0":
        return d.copy()
    if np.any(s == 0) or np.any(np.isinf(s)):
        raise UndefinedError("sigma", f"x̂_0 → {prediction_type} needs 0 < σ < inf")
    eps = (xa - d) / s
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v":  # v = √ᾱ ε − √(1−ᾱ) x̂_0
        c = 1.0 / np.sqrt(1.0 + s**2)
        return c * eps - s * c * d
    if prediction_type == "score":
        return (d - xa) / s**2
    return eps - d


def edm_preconditioning(
    sigma: object, sigma_data: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 (eq. 16.2).

    D(x; σ) = c_skip x + c_out F(c_in x; c_noise) with c_skip = σ_d²/(σ²+σ_d²),
    c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ¼ ln σ.  Shapes as ``sigma``.
    """
    s = _sig(sigma)
    if not (is_real(sigma_data) and sigma_data > 0 and math.isfinite(sigma_data)):
        raise InputError("sigma_data", f"must be a finite float > 0; got {sigma_data!r}")
    sd2 = float(sigma_data) ** 2
    r = np.sqrt(s**2 + sd2)
    with np.errstate(divide="ignore"):
        c_noise = 0.25 * np.log(s)
    return sd2 / (s**2 + sd2), s * sigma_data / r, 1.0 / r, c_noise


# -- σ ↔ t on a discrete schedule (eqs. 17.4-17.5) -------------------------------------------
def _train_sigmas(schedule: Schedule) -> np.ndarray:
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    s = schedule.sigma[1:]
    if not np.isfinite(s).all():
        raise UndefinedError("schedule", "σ_T is infinite (zero terminal SNR): no σ view there")
    return s


def sigma_to_t(schedule: Schedule, sigma: object) -> np.ndarray:
    """Fractional 1-based time t of each σ, linear in log σ between grid points (eq. 17.4).

    diffusers' ``_sigma_to_t`` (+1 for refdiff's 1-based time): clamped to [1, T].
    ``sigma`` > 0, any shape; returns float64 of the same shape.
    """
    ls = np.log(_train_sigmas(schedule))
    s = _sig(sigma)
    if np.any(s == 0):
        raise UndefinedError("sigma", "σ = 0 has no time on the schedule (t = 0 is the data)")
    return np.interp(np.log(s), ls, np.arange(1, ls.shape[0] + 1, dtype=np.float64))


def t_to_sigma(schedule: Schedule, t: object, interpolation: str = "log_linear") -> np.ndarray:
    """σ at fractional 1-based times t ∈ [1, T] (eqs. 17.4-17.5).

    ``interpolation``: ``"log_linear"`` (k-diffusion's ``t_to_sigma``: linear in log σ) or
    ``"linear"`` (diffusers' ``np.interp`` in σ, EulerDiscrete's default).
    """
    option(interpolation, "interpolation", ("log_linear", "linear"))
    sig = _train_sigmas(schedule)
    tt = as_float_array(t, "t")
    if np.any(tt < 1) or np.any(tt > sig.shape[0]):
        raise InputError("t", f"must lie in [1, T={sig.shape[0]}]")
    grid = np.arange(1, sig.shape[0] + 1, dtype=np.float64)
    if interpolation == "linear":
        return np.interp(tt, grid, sig)
    return np.exp(np.interp(tt, grid, np.log(sig)))


def denoiser_from_model(
    model: Callable[[np.ndarray, np.ndarray], np.ndarray],
    schedule: Schedule,
    prediction_type: str = "epsilon",
    *,
    timestep: str = "continuous",
    scale_model_input: bool = True,
) -> SigmaDenoiser:
    """D(x, σ) from a model ``f(x_in, t)`` trained on ``schedule`` (eqs. 15.2, 17.4, 18.9-18.12).

    ``x_in`` = x/√(1+σ²) when ``scale_model_input`` (diffusers' ``scale_model_input``; the
    VP state a DDPM model was trained on), else x.  ``t`` (B,) is the 1-based time of σ:
    ``"continuous"`` float64 (eq. 17.4), ``"round"`` int64 rounded to the nearest step
    (diffusers' DPM-Solver/UniPC with Karras σ), ``"nearest"`` the step whose log σ is
    nearest (k-diffusion's ``quantize``).  The output of ``prediction_type`` is read as the
    prediction for the VP state and converted with :func:`to_denoised`.
    """
    option(prediction_type, "prediction_type", ("epsilon", "x0", "v", "score"))
    option(timestep, "timestep", ("continuous", "round", "nearest"))
    if not callable(model):
        raise InputError("model", f"must be callable f(x, t); got {type(model).__name__}")
    ls = np.log(_train_sigmas(schedule))

    def D(x, sigma):
        xa = as_batch(x, "x")
        s = np.broadcast_to(_sig(sigma), (xa.shape[0],))
        t = sigma_to_t(schedule, s)
        if timestep == "round":
            t = np.round(t).astype(np.int64)
        elif timestep == "nearest":
            t = np.argmin(np.abs(np.log(s)[:, None] - ls[None, :]), axis=1).astype(np.int64) + 1
        c = _per(np.sqrt(1.0 + s**2), xa.ndim)
        out = as_float_array(model(xa / c if scale_model_input else xa, t), "model output")
        if prediction_type == "score":  # the VP score ∇_{x_vp} = √(1+σ²) ∇_x
            return xa + _per(s, xa.ndim) ** 2 * out / c
        if prediction_type == "v":
            return to_denoised(out, xa, s, "v")
        return to_denoised(out, xa, s, prediction_type)

    return D


# -- σ schedules (§17) ------------------------------------------------------------------------
def _n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError("n", f"must be an int >= 1; got {n!r}")
    return int(n)


def _range(sigma_min: object, sigma_max: object) -> tuple[float, float]:
    for nm, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not (is_real(v) and math.isfinite(v) and v > 0):
            raise ScheduleError(nm, f"must be a finite float > 0; got {v!r}")
    if not sigma_min < sigma_max:
        raise ScheduleError("sigma_min", f"must be < sigma_max; got {sigma_min} >= {sigma_max}")
    return float(sigma_min), float(sigma_max)


def append_final(sigmas: object, final_sigma: str | float = "zero", sigma_min=None) -> np.ndarray:
    """``sigmas`` with the final σ appended: ``"zero"`` → 0, ``"sigma_min"`` → ``sigma_min``
    (diffusers' ``final_sigmas_type``; default the last σ), ``"none"`` → nothing, a float →
    that value.  Returns float64 (n+1,) or (n,)."""
    s = as_float_array(sigmas, "sigmas")
    if isinstance(final_sigma, str):
        option(final_sigma, "final_sigma", ("zero", "sigma_min", "none"))
        if final_sigma == "none":
            return s.copy()
        last = 0.0 if final_sigma == "zero" else float(s[-1] if sigma_min is None else sigma_min)
    elif is_real(final_sigma) and 0 <= final_sigma < s[-1]:
        last = float(final_sigma)
    else:
        msg = f"must be 'zero', 'sigma_min', 'none' or a float in [0, σ_last); got {final_sigma!r}"
        raise InputError("final_sigma", msg)
    return np.concatenate([s, [last]])


def karras(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    *,
    final_sigma: str | float = "zero",
) -> np.ndarray:
    """Karras et al. 2022 eq. 5 (our 17.1): σ_i = (σ_max^{1/ρ} + i/(n−1)(σ_min^{1/ρ} −
    σ_max^{1/ρ}))^ρ, i = 0..n−1, then the final σ (:func:`append_final`)."""
    n = _n(n)
    lo, hi = _range(sigma_min, sigma_max)
    if not (is_real(rho) and rho > 0 and math.isfinite(rho)):
        raise ScheduleError("rho", f"must be a finite float > 0; got {rho!r}")
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    a, b = hi ** (1.0 / rho), lo ** (1.0 / rho)
    return append_final((a + ramp * (b - a)) ** rho, final_sigma, lo)


def exponential(
    n: int, sigma_min: float, sigma_max: float, *, final_sigma: str | float = "zero"
) -> np.ndarray:
    """Log-uniform σ (eq. 17.2): exp(linspace(log σ_max, log σ_min, n)), then the final σ."""
    n = _n(n)
    lo, hi = _range(sigma_min, sigma_max)
    return append_final(np.exp(np.linspace(math.log(hi), math.log(lo), n)), final_sigma, lo)


def beta_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    alpha: float = 0.6,
    beta: float = 0.6,
    *,
    final_sigma: str | float = "zero",
) -> np.ndarray:
    """Beta σ (Lee et al. 2024; diffusers' ``use_beta_sigmas``; eq. 17.3):
    σ_i = σ_min + F⁻¹_{Beta(α,β)}(1 − i/(n−1)) (σ_max − σ_min), then the final σ."""
    from scipy.stats import beta as beta_dist

    n = _n(n)
    lo, hi = _range(sigma_min, sigma_max)
    q = 1.0 - (np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1))
    return append_final(lo + beta_dist.ppf(q, alpha, beta) * (hi - lo), final_sigma, lo)


def from_schedule(
    schedule: Schedule,
    n: int,
    *,
    spacing: str = "linspace",
    interpolation: str = "linear",
    final_sigma: str | float = "zero",
    steps_offset: int = 0,
) -> np.ndarray:
    """diffusers' default σ grid for a discrete schedule (eqs. 17.5-17.6).

    ``spacing="linspace"``: 1-based t_i = 1 + (T−1)(1 − i/(n−1)), i = 0..n−1 (diffusers'
    ``linspace(0, T−1, n)`` reversed, +1); ``"trailing"``: t_i = round(T − iT/n);
    ``"leading"``: t_i = (n−1−i)⌊T/n⌋ + ``steps_offset`` + 1 (diffusers then starts from
    x_T = √(σ_0² + 1) z, not σ_0 z: pass x_T).  σ at t by
    ``interpolation`` (:func:`t_to_sigma`; diffusers Euler ``"linear"``, k-diffusion
    ``"log_linear"``), then the final σ (``"sigma_min"`` appends σ_1, the smallest training σ).
    """
    T = _train_sigmas(schedule).shape[0]
    n = _n(n)
    option(spacing, "spacing", ("linspace", "trailing", "leading"))
    if spacing == "linspace":
        t = np.linspace(T, 1.0, n) if n > 1 else np.array([float(T)])
    elif spacing == "trailing":
        t = np.round(T - np.arange(n) * (T / n))
    else:
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
            raise InputError("steps_offset", f"must be an int >= 0; got {steps_offset!r}")
        t = (np.arange(n)[::-1] * (T // n) + steps_offset + 1).astype(np.float64)
        if t[0] > T or T // n == 0:
            raise InputError("steps_offset", f"leading spacing of {n} steps leaves [1, T={T}]")
    s = t_to_sigma(schedule, t, interpolation)
    return append_final(s, final_sigma, float(schedule.sigma[1]))
