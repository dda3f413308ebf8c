"""One reverse step p(x_{t−1} | x_t) (docs/math.md §7): DDPM ancestral and DDIM.

Both start from the denoiser's output at (x_t, t), turn it into (x̂_0, ε̂) (eqs. 5.1–5.4),
optionally clip or dynamically threshold x̂_0 (eqs. 7.1–7.2), then:

- DDPM:  x_{t−1} = μ̃_t(x̂_0, x_t) + σ_t z,  σ_t² from ``variance_type`` (eqs. 7.3–7.8);
- DDIM:  x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z,
         σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})       (eqs. 7.9–7.10).

No noise is added at the last step (t = 1) unless DDIM's ``final_step_noise`` says so.
States are float64 (B, *data_shape); t is an int in [1, T], scalar or (B,).  On a respaced
schedule, t counts the kept steps and every formula uses the respaced ᾱ and β′.

Named options (the peers disagree; docs/math.md §7 defines them, §13 says who uses which):

``variance_type``
    ``fixed_small``        β̃_t (posterior variance; DDPM paper σ² = β̃) (eq. 7.4)
    ``fixed_large``        β_t at every t (diffusers; respaced β′) (eq. 7.5)
    ``fixed_large_iddpm``  β̃_2 at t = 1, else β_t (eq. 7.6; improved-diffusion's 0-based
                           append(posterior_variance[1], betas[1:]))
    ``learned``            model_variance is a log-variance (improved-diffusion LEARNED; eq. 7.8)
    ``learned_linear``     model_variance is a variance (diffusers "learned"; eq. 7.8)
    ``learned_range``      v ∈ [−1, 1] interpolates log β̃_t … log β_t (eq. 7.7)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._check import as_batch, noise_or_rng, option, per_sample, real, same_shape, state_and_t
from .errors import InputError, NonFiniteError
from .parameterization import PREDICTION_TYPES, to_x0_eps
from .posterior import (
    LOG_VARIANCE_CLIPPINGS,
    posterior_coefficients,
    posterior_log_variance,
    posterior_variance,
)
from .schedule import Schedule

__all__ = [
    "VARIANCE_TYPES",
    "FINAL_ALPHA_BARS",
    "StepParts",
    "predict_x0_eps",
    "dynamic_threshold",
    "ddpm_parts",
    "ddpm_step",
    "ddim_alpha_bar_prev",
    "ddim_parts",
    "ddim_step",
    "ddim_inverse_step",
]

VARIANCE_TYPES = (
    "fixed_small",
    "fixed_large",
    "fixed_large_iddpm",
    "learned",
    "learned_linear",
    "learned_range",
)
LEARNED = ("learned", "learned_linear", "learned_range")
FINAL_ALPHA_BARS = ("one", "first")


class StepParts(NamedTuple):
    """Everything a reverse step computes before it draws noise.

    mean: state shape; variance, log_variance: broadcast against the state ((B, 1, …) or
    scalar); x0, eps: state shape, the (clipped) x̂_0 and the ε̂ the step uses.
    """

    mean: np.ndarray
    variance: np.ndarray
    log_variance: np.ndarray
    x0: np.ndarray
    eps: np.ndarray


def dynamic_threshold(x0: np.ndarray, ratio: float, max_value: float = 1.0) -> np.ndarray:
    """Saharia et al. 2022 dynamic thresholding, per sample (eq. 7.2).

    s = clip(quantile(|x̂_0|, ratio), 1, max_value); x̂_0 ← clip(x̂_0, −s, s) / s.
    """
    x0 = as_batch(x0, "x0")
    ratio = real(ratio, "threshold_ratio", low=0.0, high=1.0, low_open=True)
    max_value = real(max_value, "threshold_max", low=1.0)
    flat = np.abs(x0).reshape(x0.shape[0], -1)
    s = np.clip(np.quantile(flat, ratio, axis=1), 1.0, max_value)
    s = per_sample(s, x0.ndim)
    return np.clip(x0, -s, s) / s


def predict_x0_eps(
    schedule: Schedule,
    x_t,
    t,
    model_output,
    *,
    prediction_type: str = "epsilon",
    clip: float | None = None,
    threshold_ratio: float | None = None,
    threshold_max: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_t, t, ᾱ_t, x̂_0 after clip/threshold, ε̂ from the raw model output).

    ``clip=c`` clamps x̂_0 to [−c, c] (eq. 7.1); ``threshold_ratio`` applies eq. 7.2; at most
    one of the two.
    """
    option(prediction_type, "prediction_type", PREDICTION_TYPES)
    xt, t = state_and_t(schedule, x_t, t, "x_t")
    out = as_batch(model_output, "model_output")
    same_shape(xt, out, "x_t", "model_output")
    ab = per_sample(schedule.alpha_bar[t], xt.ndim)
    x0, eps = to_x0_eps(out, xt, ab, prediction_type)
    if clip is not None and threshold_ratio is not None:
        raise InputError("clip", "give clip or threshold_ratio, not both")
    if clip is not None:
        real(clip, "clip", low=0.0, low_open=True)
        x0 = np.clip(x0, -clip, clip)
    elif threshold_ratio is not None:
        x0 = dynamic_threshold(x0, threshold_ratio, threshold_max)
    return xt, t, ab, x0, eps


def _last_step_mask(t: np.ndarray, ndim: int) -> np.ndarray:
    return per_sample((t > 1).astype(np.float64), ndim)


def ddpm_parts(
    schedule: Schedule,
    x_t,
    t,
    model_output,
    *,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    model_variance=None,
    clip: float | None = None,
    threshold_ratio: float | None = None,
    threshold_max: float = 1.0,
    log_variance_clipping: str = "next",
    _mean_var_only: bool = False,
) -> StepParts:
    """Mean and variance of the DDPM step p(x_{t−1}|x_t) (eqs. 7.3–7.8).

    ``model_variance`` (state shape) is required by the learned variance types and refused
    by the fixed ones.  ``log_variance_clipping`` picks the t = 1 convention of eq. 4.3 for
    ``fixed_small`` and ``learned_range``.  (``_mean_var_only``, internal: :func:`ddpm_step`
    needs only mean and variance; ε̂ and, for fixed_small, log_variance are then None.
    Every check still runs.)
    """
    option(variance_type, "variance_type", VARIANCE_TYPES)
    option(log_variance_clipping, "log_variance_clipping", LOG_VARIANCE_CLIPPINGS)
    xt, t, ab, x0, _ = predict_x0_eps(
        schedule,
        x_t,
        t,
        model_output,
        prediction_type=prediction_type,
        clip=clip,
        threshold_ratio=threshold_ratio,
        threshold_max=threshold_max,
    )
    n = xt.ndim
    c0, ct = posterior_coefficients(schedule, t)
    mean = per_sample(c0, n) * x0
    mean += per_sample(ct, n) * xt  # in place: the same value as c0·x̂0 + ct·x_t
    eps = None
    if not _mean_var_only:
        eps = xt - np.sqrt(ab) * x0  # ε̂ consistent with the clipped x̂_0
        eps /= np.sqrt(1.0 - ab)
    if variance_type in LEARNED:
        if model_variance is None:
            raise InputError("model_variance", f"variance_type={variance_type!r} needs it")
        mv = as_batch(model_variance, "model_variance")
        same_shape(xt, mv, "x_t", "model_variance")
    elif model_variance is not None:
        raise InputError("model_variance", f"is not used by variance_type={variance_type!r}")
    beta = per_sample(schedule.beta[t], n)
    if variance_type == "fixed_small":
        var = per_sample(posterior_variance(schedule, t), n)
        log_var = None
        if not _mean_var_only:
            log_var = per_sample(posterior_log_variance(schedule, t, log_variance_clipping), n)
    elif variance_type == "fixed_large":
        var, log_var = beta, np.log(beta)
    elif variance_type == "fixed_large_iddpm":
        first = posterior_variance(schedule, 2) if schedule.T >= 2 else schedule.beta[1]
        var = per_sample(np.where(t == 1, first, schedule.beta[t]), n)
        log_var = np.log(var)
    elif variance_type == "learned":
        log_var = mv
        with np.errstate(over="ignore"):
            var = np.exp(mv)
        if not np.isfinite(var).all():
            raise NonFiniteError("model_variance", "exp(log-variance) overflows float64")
    elif variance_type == "learned_linear":
        if np.any(mv <= 0):
            raise InputError("model_variance", "learned_linear variances must be > 0")
        var, log_var = mv, np.log(mv)
    else:  # learned_range
        frac = (mv + 1.0) / 2.0
        lo = per_sample(posterior_log_variance(schedule, t, log_variance_clipping), n)
        log_var = frac * np.log(beta) + (1.0 - frac) * lo
        with np.errstate(over="ignore"):
            var = np.exp(log_var)
        if not np.isfinite(var).all():
            raise NonFiniteError("model_variance", "the interpolated variance overflows float64")
    return StepParts(mean, var, log_var, x0, eps)


def ddpm_step(
    schedule: Schedule, x_t, t, model_output, *, noise=None, rng=None, **options
) -> np.ndarray:
    """x_{t−1} = mean + √variance · z, no noise at t = 1 (eq. 7.3).

    ``options`` are those of :func:`ddpm_parts`.  Pass the standard-normal ``noise`` (state
    shape) or a Generator ``rng``.
    """
    p = ddpm_parts(schedule, x_t, t, model_output, _mean_var_only=True, **options)
    z = noise_or_rng(noise, rng, p.mean.shape)
    t = schedule.check_t(t)
    mean = p.mean  # a fresh array: accumulate in place (same value as mean + s·z)
    mean += _last_step_mask(t, mean.ndim) * np.sqrt(p.variance) * z
    return mean


def ddim_alpha_bar_prev(
    schedule: Schedule, t: object, final_alpha_bar: str | float = "one"
) -> np.ndarray:
    """ᾱ_prev of the DDIM step at ``t`` (eq. 7.10): ᾱ_{t−1}, except at t = 1, where it is the
    ``final_alpha_bar`` option: ``"one"`` (1), ``"first"`` (ᾱ at base time 1) or a number in
    (0, 1].  ``t``: int or int64 array (B,) in [1, T]; returns float64 of ``t``'s shape.
    """
    t = schedule.check_t(t)
    prev = schedule.alpha_bar_prev[t]
    if isinstance(final_alpha_bar, str):
        option(final_alpha_bar, "final_alpha_bar", FINAL_ALPHA_BARS)
        if final_alpha_bar == "one":
            return prev
        final = schedule.base_alpha_bar_1
    else:
        what = "'one', 'first' or in (0, 1]"
        final = real(
            final_alpha_bar, "final_alpha_bar", low=0.0, high=1.0, low_open=True, what=what
        )
    return np.where(t == 1, final, prev)


def ddim_parts(
    schedule: Schedule,
    x_t,
    t,
    model_output,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    clip: float | None = None,
    threshold_ratio: float | None = None,
    threshold_max: float = 1.0,
    rederive_eps: bool = True,
    final_alpha_bar: str | float = "one",
) -> StepParts:
    """Mean and variance σ_t² of the DDIM step (eqs. 7.9–7.10).

    ``rederive_eps``: True re-derives ε̂ from the clipped x̂_0 (improved-diffusion;
    diffusers ``use_clipped_model_output=True``); False keeps ε̂ of the raw output (diffusers'
    default).  ``final_alpha_bar``: ᾱ after the last step: ``"one"`` (diffusers
    ``set_alpha_to_one=True``, improved-diffusion), ``"first"`` (ᾱ at base time 1;
    ``set_alpha_to_one=False``), or a float.  ``log_variance`` is log σ² (−inf at σ = 0).
    """
    real(eta, "eta", low=0.0, high=1.0)
    xt, t, ab, x0, eps = predict_x0_eps(
        schedule,
        x_t,
        t,
        model_output,
        prediction_type=prediction_type,
        clip=clip,
        threshold_ratio=threshold_ratio,
        threshold_max=threshold_max,
    )
    n = xt.ndim
    if rederive_eps:
        eps = xt - np.sqrt(ab) * x0  # then divided in place: (x_t − √ᾱ x̂0) / √(1 − ᾱ)
        eps /= np.sqrt(1.0 - ab)
    abp = per_sample(ddim_alpha_bar_prev(schedule, t, final_alpha_bar), n)
    var = eta**2 * (1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp)
    var = np.maximum(var, 0.0)
    mean = np.sqrt(abp) * x0
    mean += np.sqrt(np.maximum(1.0 - abp - var, 0.0)) * eps  # in place, same value
    with np.errstate(divide="ignore"):
        log_var = np.log(var)
    return StepParts(mean, var, log_var, x0, eps)


def ddim_step(
    schedule: Schedule,
    x_t,
    t,
    model_output,
    *,
    noise=None,
    rng=None,
    final_step_noise: bool = False,
    **options,
) -> np.ndarray:
    """x_{t−1} of DDIM (eq. 7.9).  ``options`` are those of :func:`ddim_parts`.

    Noise is drawn only when η > 0.  At t = 1 it is added only with ``final_step_noise``
    (diffusers adds it whenever η > 0, which matters with ``final_alpha_bar="first"``).
    """
    p = ddim_parts(schedule, x_t, t, model_output, **options)
    if options.get("eta", 0.0) == 0.0:
        return p.mean
    z = noise_or_rng(noise, rng, p.mean.shape)
    t = schedule.check_t(t)
    mask = 1.0 if final_step_noise else _last_step_mask(t, p.mean.ndim)
    mean = p.mean  # a fresh array: accumulate in place (same value as mean + s·z)
    mean += mask * np.sqrt(p.variance) * z
    return mean


def ddim_inverse_step(
    schedule: Schedule, x_s, s, model_output, *, prediction_type: str = "epsilon"
) -> np.ndarray:
    """Deterministic DDIM inversion x_s → x_{s+1} (η = 0; eq. 7.11), s ∈ [0, T−1].

    The denoiser output is taken at (x_s, s) as improved-diffusion's ``ddim_reverse_sample``
    does; at s = 0 the output must be an ε (x_0 is the state itself).
    """
    option(prediction_type, "prediction_type", PREDICTION_TYPES)
    xs, s = state_and_t(schedule, x_s, s, "x_s", allow_zero=True)
    if np.any(s >= schedule.T):
        raise InputError("s", f"must be < T={schedule.T} to step forward")
    out = as_batch(model_output, "model_output")
    same_shape(xs, out, "x_s", "model_output")
    ab = per_sample(schedule.alpha_bar[s], xs.ndim)
    if np.any(ab == 1.0):
        if prediction_type != "epsilon":
            raise InputError("prediction_type", "at s = 0 only an ε output defines the step")
        x0, eps = xs, out
    else:
        x0, eps = to_x0_eps(out, xs, ab, prediction_type)
    abn = per_sample(schedule.alpha_bar[s + 1], xs.ndim)
    return np.sqrt(abn) * x0 + np.sqrt(1.0 - abn) * eps
