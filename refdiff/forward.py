"""The forward (noising) process (docs/math.md §3).

- one step       q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I)         (eq. 3.1)
- closed form    q(x_t | x_0)     = N(√ᾱ_t x_0, (1−ᾱ_t) I)             (eq. 3.2)
- between times  q(x_t | x_s)     = N(√(ᾱ_t/ᾱ_s) x_s, (1−ᾱ_t/ᾱ_s) I)   (eq. 3.3), s < t

States are float64 arrays of shape (B, *data_shape); ``t`` (and ``s``) are ints, scalar or
shape (B,).  Means have the state's shape; variances are shaped to broadcast against it.
Samplers take the injected standard-normal ``noise`` (same shape as the state) or a
``numpy.random.Generator`` ``rng``.
"""

from __future__ import annotations

import numpy as np

from ._check import gather, noise_or_rng, per_sample, state_and_t, timesteps
from .errors import TimestepError
from .schedule import Schedule

__all__ = [
    "q_step_mean_var",
    "q_step_sample",
    "q_mean_var",
    "q_sample",
    "q_transition_mean_var",
    "q_transition_sample",
    "gaussian_log_prob",
    "q_step_log_prob",
    "q_log_prob",
    "q_transition_log_prob",
]


def q_step_mean_var(schedule: Schedule, x_prev, t) -> tuple[np.ndarray, np.ndarray]:
    """Mean √(1−β_t) x_{t−1} and variance β_t of q(x_t|x_{t−1}) (eq. 3.1)."""
    x, t = state_and_t(schedule, x_prev, t, "x_prev")
    return gather(np.sqrt(schedule.alpha), t, x.ndim) * x, gather(schedule.beta, t, x.ndim)


def q_step_sample(schedule: Schedule, x_prev, t, *, noise=None, rng=None) -> np.ndarray:
    """x_t = √(1−β_t) x_{t−1} + √β_t z (eq. 3.1)."""
    mean, var = q_step_mean_var(schedule, x_prev, t)
    return mean + np.sqrt(var) * noise_or_rng(noise, rng, mean.shape)


def q_mean_var(schedule: Schedule, x0, t) -> tuple[np.ndarray, np.ndarray]:
    """Mean √ᾱ_t x_0 and variance 1 − ᾱ_t of q(x_t|x_0) (eq. 3.2)."""
    x, t = state_and_t(schedule, x0, t, "x0", allow_zero=True)
    return (
        gather(schedule.sqrt_alpha_bar, t, x.ndim) * x,
        gather(1.0 - schedule.alpha_bar, t, x.ndim),
    )


def q_sample(schedule: Schedule, x0, t, *, noise=None, rng=None) -> np.ndarray:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (eq. 3.2)."""
    mean, var = q_mean_var(schedule, x0, t)
    return mean + np.sqrt(var) * noise_or_rng(noise, rng, mean.shape)


def _ratio(schedule: Schedule, x: np.ndarray, t: np.ndarray, s) -> np.ndarray:
    s = timesteps(s, "s", low=0, high=schedule.T, batch=x.shape[0])
    if np.any(s >= t):
        raise TimestepError("s", "must be smaller than t")
    return per_sample(schedule.alpha_bar[t] / schedule.alpha_bar[s], x.ndim)


def q_transition_mean_var(schedule: Schedule, x_s, t, s) -> tuple[np.ndarray, np.ndarray]:
    """Mean √(ᾱ_t/ᾱ_s) x_s and variance 1 − ᾱ_t/ᾱ_s of q(x_t|x_s), s < t (eq. 3.3)."""
    x, t = state_and_t(schedule, x_s, t, "x_s")
    r = _ratio(schedule, x, t, s)
    return np.sqrt(r) * x, 1.0 - r


def q_transition_sample(schedule: Schedule, x_s, t, s, *, noise=None, rng=None) -> np.ndarray:
    """x_t = √(ᾱ_t/ᾱ_s) x_s + √(1−ᾱ_t/ᾱ_s) z (eq. 3.3)."""
    mean, var = q_transition_mean_var(schedule, x_s, t, s)
    return mean + np.sqrt(var) * noise_or_rng(noise, rng, mean.shape)


def gaussian_log_prob(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log N(x; mean, var·I) summed over the data axes: shape (B,) (eq. 3.4)."""
    var = np.broadcast_to(var, x.shape)
    lp = -0.5 * (np.log(2.0 * np.pi * var) + (x - mean) ** 2 / var)
    return lp.reshape(x.shape[0], -1).sum(axis=1)


def q_step_log_prob(schedule: Schedule, x_t, x_prev, t) -> np.ndarray:
    """log q(x_t|x_{t−1}), shape (B,) (eqs. 3.1, 3.4)."""
    mean, var = q_step_mean_var(schedule, x_prev, t)
    return gaussian_log_prob(_same(x_t, mean, "x_t"), mean, var)


def q_log_prob(schedule: Schedule, x_t, x0, t) -> np.ndarray:
    """log q(x_t|x_0), shape (B,) (eqs. 3.2, 3.4); t ≥ 1."""
    x0a, t = state_and_t(schedule, x0, t, "x0")
    mean, var = q_mean_var(schedule, x0a, t)
    return gaussian_log_prob(_same(x_t, mean, "x_t"), mean, var)


def q_transition_log_prob(schedule: Schedule, x_t, x_s, t, s) -> np.ndarray:
    """log q(x_t|x_s), shape (B,) (eqs. 3.3, 3.4)."""
    mean, var = q_transition_mean_var(schedule, x_s, t, s)
    return gaussian_log_prob(_same(x_t, mean, "x_t"), mean, var)


def _same(x, ref: np.ndarray, name: str) -> np.ndarray:
    from ._check import as_batch, same_shape

    a = as_batch(x, name)
    same_shape(ref, a, "the conditioning state", name)
    return a
