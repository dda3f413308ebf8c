"""What a denoiser predicts, and how to turn one prediction into another (docs/math.md §5).

With x_t = √ᾱ x_0 + √(1−ᾱ) ε (eq. 3.2):

    x̂_0  = (x_t − √(1−ᾱ) ε̂) / √ᾱ                   (eq. 5.1)
    ε̂    = (x_t − √ᾱ x̂_0) / √(1−ᾱ)                  (eq. 5.2)
    v    = √ᾱ ε − √(1−ᾱ) x_0                         (eq. 5.3, Salimans & Ho 2022)
    x̂_0  = √ᾱ x_t − √(1−ᾱ) v,  ε̂ = √ᾱ v + √(1−ᾱ) x_t (eq. 5.4)
    score = ∇ log q(x_t) ≈ −ε̂ / √(1−ᾱ)               (eq. 5.5, Tweedie)

ε → x̂_0 divides by √ᾱ: undefined where ᾱ = 0 (zero terminal SNR; diffusers#3851), which
raises :class:`~refdiff.errors.UndefinedError` instead of returning Inf.
"""

from __future__ import annotations

import numpy as np

from ._check import as_batch, option, per_sample, same_shape, state_and_t
from .errors import UndefinedError
from .schedule import Schedule

__all__ = ["PREDICTION_TYPES", "convert", "to_x0_eps", "from_x0_eps"]

PREDICTION_TYPES = ("epsilon", "x0", "v", "score")


def to_x0_eps(
    prediction: np.ndarray, x_t: np.ndarray, alpha_bar: np.ndarray, prediction_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """(x̂_0, ε̂) from a prediction of ``prediction_type`` (eqs. 5.1–5.5).

    ``alpha_bar`` broadcasts against ``x_t`` (see :func:`refdiff._check.per_sample`).
    """
    sa, s1 = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    if prediction_type == "v":
        return sa * x_t - s1 * prediction, sa * prediction + s1 * x_t
    if prediction_type == "x0":
        if np.any(alpha_bar == 1.0):
            raise UndefinedError("t", "ε̂ from x̂_0 is undefined at ᾱ = 1 (t = 0)")
        return prediction, (x_t - sa * prediction) / s1
    if prediction_type == "score":
        prediction = -s1 * prediction
    if np.any(alpha_bar == 0.0):
        raise UndefinedError(
            "prediction_type",
            f"{prediction_type}-prediction cannot give x̂_0 where ᾱ_t = 0 (zero terminal SNR); "
            "use v-prediction",
        )
    return (x_t - s1 * prediction) / sa, prediction


def from_x0_eps(
    x0: np.ndarray, eps: np.ndarray, alpha_bar: np.ndarray, prediction_type: str
) -> np.ndarray:
    """The prediction of ``prediction_type`` that corresponds to (x_0, ε) (eqs. 5.3, 5.5)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        return np.sqrt(alpha_bar) * eps - np.sqrt(1.0 - alpha_bar) * x0
    if np.any(alpha_bar == 1.0):
        raise UndefinedError("t", "the score is undefined at ᾱ = 1 (t = 0)")
    return -eps / np.sqrt(1.0 - alpha_bar)


def convert(schedule: Schedule, x_t, t, prediction, source: str, target: str) -> np.ndarray:
    """Convert a ``source`` prediction at (x_t, t) into a ``target`` one; shapes as x_t.

    ``source``/``target`` ∈ :data:`PREDICTION_TYPES`; t ∈ [1, T], scalar or (B,).
    """
    option(source, "source", PREDICTION_TYPES)
    option(target, "target", PREDICTION_TYPES)
    xt, t = state_and_t(schedule, x_t, t, "x_t")
    p = as_batch(prediction, "prediction")
    same_shape(xt, p, "x_t", "prediction")
    ab = per_sample(schedule.alpha_bar[t], xt.ndim)
    if source == target:
        return p.copy()
    x0, eps = to_x0_eps(p, xt, ab, source)
    return from_x0_eps(x0, eps, ab, target)
