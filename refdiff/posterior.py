"""The forward posterior q(x_{t−1} | x_t, x_0) (docs/math.md §4).

    mean  = c0_t · x_0 + ct_t · x_t,   c0_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t),
                                       ct_t = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)      (eq. 4.1)
    var   = β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)                                  (eq. 4.2)

On a respaced schedule "t−1" is the previous kept step and β is the respaced β′, so the
same formulas give q(x_s | x_t, x_0) for any s < t.  β̃_1 = 0: the log-variance at t = 1 is
a convention (``log_variance_clipping``, eq. 4.3):

- ``"next"``  (improved-diffusion, DDPM v2): log β̃_1 := log β̃_2;
- ``"floor"`` (diffusers, DDPM v1):           log max(β̃_t, 1e-20).
"""

from __future__ import annotations

import numpy as np

from ._check import as_batch, option, per_sample, same_shape, state_and_t
from .schedule import Schedule

__all__ = [
    "LOG_VARIANCE_CLIPPINGS",
    "posterior_coefficients",
    "posterior_variance",
    "posterior_log_variance",
    "posterior_mean_var",
    "posterior_mean_var_logvar",
    "posterior_sample",
]

LOG_VARIANCE_CLIPPINGS = ("next", "floor")
VARIANCE_FLOOR = 1e-20


def posterior_coefficients(schedule: Schedule, t) -> tuple[np.ndarray, np.ndarray]:
    """(c0_t, ct_t) of eq. 4.1 for int t in [1, T] (scalar or (B,)); float64."""
    t = schedule.check_t(t)
    ab, abp, b = schedule.alpha_bar[t], schedule.alpha_bar_prev[t], schedule.beta[t]
    # √α_t as √(ᾱ_t/ᾱ_{t−1}), not √(1 − β_t): on a respaced schedule β′ can be 1 − 1e-6
    # (cosine's last step) and 1 − β′ would lose ten digits.
    return b * np.sqrt(abp) / (1.0 - ab), (1.0 - abp) * np.sqrt(ab / abp) / (1.0 - ab)


def posterior_variance(schedule: Schedule, t) -> np.ndarray:
    """β̃_t of eq. 4.2 (0 at t = 1), float64, t scalar or (B,)."""
    t = schedule.check_t(t)
    return schedule.beta[t] * (1.0 - schedule.alpha_bar_prev[t]) / (1.0 - schedule.alpha_bar[t])


def posterior_log_variance(
    schedule: Schedule, t, log_variance_clipping: str = "next"
) -> np.ndarray:
    """log β̃_t with the t = 1 convention of eq. 4.3 (``"next"`` or ``"floor"``)."""
    option(log_variance_clipping, "log_variance_clipping", LOG_VARIANCE_CLIPPINGS)
    t = schedule.check_t(t)
    if log_variance_clipping == "floor":
        return np.log(np.maximum(posterior_variance(schedule, t), VARIANCE_FLOOR))
    if schedule.T < 2:
        return np.log(np.maximum(posterior_variance(schedule, t), VARIANCE_FLOOR))
    return np.log(posterior_variance(schedule, np.maximum(t, 2)))


def posterior_mean_var(schedule: Schedule, x0, x_t, t) -> tuple[np.ndarray, np.ndarray]:
    """Mean (state shape) and variance (broadcastable) of q(x_{t−1}|x_t, x_0) (eqs. 4.1–4.2)."""
    xt, t = state_and_t(schedule, x_t, t, "x_t")
    x0 = as_batch(x0, "x0")
    same_shape(xt, x0, "x_t", "x0")
    c0, ct = posterior_coefficients(schedule, t)
    n = xt.ndim
    mean = per_sample(c0, n) * x0 + per_sample(ct, n) * xt
    return mean, per_sample(posterior_variance(schedule, t), n)


def posterior_mean_var_logvar(
    schedule: Schedule, x0, x_t, t, log_variance_clipping: str = "next"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, variance, log-variance) of q(x_{t−1}|x_t, x_0) in one call (eqs. 4.1–4.3):
    mean of the state's shape (B, ...), variance and log-variance both (B, 1, …, 1) — the
    same broadcastable shape (improved-diffusion's ``q_posterior_mean_variance``).  The
    log-variance follows ``log_variance_clipping`` at t = 1 (eq. 4.3), float64."""
    mean, var = posterior_mean_var(schedule, x0, x_t, t)
    _, tt = state_and_t(schedule, x_t, t, "x_t")
    logv = per_sample(posterior_log_variance(schedule, tt, log_variance_clipping), mean.ndim)
    return mean, var, logv


def posterior_sample(schedule: Schedule, x0, x_t, t, *, noise=None, rng=None) -> np.ndarray:
    """x_{t−1} = mean + √β̃_t z (eqs. 4.1–4.2)."""
    from ._check import noise_or_rng

    mean, var = posterior_mean_var(schedule, x0, x_t, t)
    return mean + np.sqrt(var) * noise_or_rng(noise, rng, mean.shape)
