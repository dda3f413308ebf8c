"""Training losses and the variational bound (docs/math.md §9).

- targets and the "simple" MSE loss for ε / x0 / v prediction (Ho et al. 2020 eq. 14;
  Salimans & Ho 2022), eqs. 9.1–9.2;
- the VLB terms of Nichol & Dhariwal 2021 in bits per dimension: L_T = KL(q(x_T|x_0) ‖ N(0, I)),
  L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t)) for t ≥ 2, and the discretized-Gaussian
  decoder L_0 = −log p(x_0|x_1) for data in [−1, 1] on 256 levels (eqs. 9.3–9.7).
States are float64 (B, *data_shape); per-example results are (B,).
"""

from __future__ import annotations

import numpy as np

from ._check import (
    as_batch,
    as_float_array,
    noise_or_rng,
    option,
    per_sample,
    same_shape,
    state_and_t,
)
from .errors import InputError, ShapeError
from .forward import q_mean_var, q_sample
from .parameterization import PREDICTION_TYPES, from_x0_eps
from .posterior import LOG_VARIANCE_CLIPPINGS, posterior_log_variance, posterior_mean_var
from .schedule import Schedule

__all__ = [
    "training_target",
    "mse_loss",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "prior_bpd",
    "vlb_term_bpd",
    "vlb_bpd",
]

LN2 = np.log(2.0)


def _mean_flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1).mean(axis=1)


def training_target(
    schedule: Schedule, x0, t, noise, prediction_type: str = "epsilon"
) -> np.ndarray:
    """What the denoiser should output at x_t = q_sample(x0, t, noise): ε, x_0 or v (eq. 9.1)."""
    option(prediction_type, "prediction_type", PREDICTION_TYPES)
    x, t = state_and_t(schedule, x0, t, "x0")
    z = as_batch(noise, "noise")
    same_shape(x, z, "x0", "noise")
    return from_x0_eps(x, z, per_sample(schedule.alpha_bar[t], x.ndim), prediction_type)


def mse_loss(
    schedule: Schedule, prediction, x0, t, noise, prediction_type: str = "epsilon"
) -> np.ndarray:
    """Mean over data axes of (prediction − target)², shape (B,) (eq. 9.2)."""
    target = training_target(schedule, x0, t, noise, prediction_type)
    p = as_batch(prediction, "prediction")
    same_shape(target, p, "x0", "prediction")
    return _mean_flat((p - target) ** 2)


def normal_kl(mean1, logvar1, mean2, logvar2) -> np.ndarray:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats (eq. 9.3)."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + np.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * np.exp(-logvar2)
    )


def approx_standard_normal_cdf(x) -> np.ndarray:
    """The tanh approximation of Φ used by the DDPM decoder: ½(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    # tanh is exactly ±1 in float64 beyond |x| ≈ 7, so clipping at ±1e3 changes no value and
    # keeps x³ from overflowing (docs/reliability.md)
    x = np.clip(np.asarray(x, dtype=np.float64), -1e3, 1e3)
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> np.ndarray:
    """log-prob. of the 256-level bin of x ∈ [−1, 1] under N(means, e^{2·log_scales}) (9.6).

    Bins have half-width 1/255; the edge bins take the whole tail; logs are floored at 1e-12.
    Elementwise, in nats.
    """
    x = np.asarray(x, dtype=np.float64)
    centered = x - means
    inv_stdv = np.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    log_delta = np.log(np.maximum(cdf_plus - cdf_min, 1e-12))
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def prior_bpd(schedule: Schedule, x0) -> np.ndarray:
    """L_T = KL(q(x_T|x_0) ‖ N(0, I)) in bits per dimension, shape (B,) (eq. 9.4)."""
    x = as_batch(x0, "x0")
    mean, var = q_mean_var(schedule, x, schedule.T)
    with np.errstate(divide="ignore"):
        kl = normal_kl(mean, np.log(var), 0.0, 0.0)
    return _mean_flat(np.broadcast_to(kl, x.shape)) / LN2


def vlb_term_bpd(
    schedule: Schedule,
    x0,
    x_t,
    t,
    model_mean,
    model_log_variance,
    *,
    log_variance_clipping: str = "next",
) -> np.ndarray:
    """L_{t−1} in bits/dim, shape (B,): the KL for t ≥ 2, the decoder NLL at t = 1 (9.5).

    ``model_mean`` (state shape) and ``model_log_variance`` (broadcastable) describe
    p(x_{t−1}|x_t), e.g. from :func:`refdiff.reverse.ddpm_parts`.
    """
    option(log_variance_clipping, "log_variance_clipping", LOG_VARIANCE_CLIPPINGS)
    xt, t = state_and_t(schedule, x_t, t, "x_t")
    x0 = as_batch(x0, "x0")
    mean, _ = posterior_mean_var(schedule, x0, xt, t)
    true_lv = per_sample(posterior_log_variance(schedule, t, log_variance_clipping), xt.ndim)
    m = as_batch(model_mean, "model_mean")
    same_shape(xt, m, "x_t", "model_mean")
    lv = as_float_array(model_log_variance, "model_log_variance")
    try:
        lv = np.broadcast_to(lv, xt.shape)
    except ValueError:
        msg = f"shape {lv.shape} does not broadcast to {xt.shape}"
        raise ShapeError("model_log_variance", msg) from None
    kl = _mean_flat(normal_kl(mean, true_lv, m, lv)) / LN2
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, m, 0.5 * lv)) / LN2
    return np.where(np.broadcast_to(t, kl.shape) == 1, nll, kl)


def vlb_bpd(
    schedule: Schedule,
    x0,
    denoiser,
    *,
    noise=None,
    rng: np.random.Generator | None = None,
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole bound: (total bits/dim (B,), terms (T+1, B)) with terms[0] = L_T (eq. 9.7).

    terms[t] for t ≥ 1 is L_{t−1}, evaluated at x_t = q_sample(x0, t, noise[t−1]).
    ``noise`` has shape (T, *state_shape); ``options`` go to :func:`refdiff.reverse.ddpm_parts`.
    """
    from .reverse import LEARNED, ddpm_parts

    x = as_batch(x0, "x0")
    if not callable(denoiser):
        raise InputError("denoiser", f"must be callable f(x_t, t); got {type(denoiser).__name__}")
    T = schedule.T
    terms = np.empty((T + 1, x.shape[0]))
    terms[0] = prior_bpd(schedule, x)
    learned = options.get("variance_type", "fixed_small") in LEARNED
    if noise is not None:
        noise = as_float_array(noise, "noise")
        if noise.shape != (T, *x.shape):
            raise ShapeError("noise", f"shape {noise.shape} is not (T={T}, *{x.shape})")
    for t in range(1, T + 1):
        z = noise_or_rng(None if noise is None else np.asarray(noise)[t - 1], rng, x.shape)
        xt = q_sample(schedule, x, t, noise=z)
        out = np.asarray(
            denoiser(xt, np.full(x.shape[0], schedule.timesteps[t], dtype=np.int64)),
            dtype=np.float64,
        )
        mv = None
        if learned:
            out, mv = np.split(out, 2, axis=1)
        p = ddpm_parts(schedule, xt, t, out, model_variance=mv, **options)
        terms[t] = vlb_term_bpd(
            schedule,
            x,
            xt,
            t,
            p.mean,
            p.log_variance,
            log_variance_clipping=options.get("log_variance_clipping", "next"),
        )
    return terms.sum(axis=0), terms
