"""Classifier-free guidance (docs/math.md §20): combine a conditional and an unconditional output.

Ho & Salimans 2022, "Classifier-Free Diffusion Guidance": with o_c = f(x_t, t, c) and
o_u = f(x_t, t, ∅) (the same network, the "empty" condition), the guided output is

    o_g = o_u + s (o_c − o_u)                                        (20.1)

``s = 1`` gives o_c; ``s = 0`` gives o_u.  Guidance rescale (Lin et al. 2023, "Common
Diffusion Noise Schedules and Sample Steps Are Flawed", §3.4) pulls the per-sample standard
deviation of o_g back to that of o_c:

    σ(a) = sqrt(mean over the non-batch axes of (a − mean a)²)       (20.2)
    o_r  = o_g · σ(o_c) / σ(o_g)       (o_r = o_g where σ(o_g) = 0)  (20.3)
    o    = φ o_r + (1 − φ) o_g,   φ ∈ [0, 1]                         (20.4)

applied to the model output whatever it predicts (as diffusers' ``rescale_noise_cfg`` does;
the paper states it for the x̂_0 of a v-prediction model).  Only the ratio of the two
deviations enters, so the population and the sample (n − 1) deviation give the same o_r.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._check import as_float_array, is_real
from .errors import InputError, ShapeError

__all__ = ["guide", "guided_denoiser", "check_guidance"]

Denoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_guidance(scale: object, rescale: object = 0.0) -> tuple[float, float]:
    """(scale, rescale) as floats; scale finite, rescale in [0, 1] (typed errors otherwise)."""
    if not is_real(scale) or not np.isfinite(float(scale)):
        raise InputError("guidance_scale", f"must be a finite float; got {scale!r}")
    if not is_real(rescale) or not 0.0 <= float(rescale) <= 1.0:
        raise InputError("guidance_rescale", f"must be a float in [0, 1]; got {rescale!r}")
    return float(scale), float(rescale)


def _std(a: np.ndarray) -> np.ndarray:
    """Per-sample population standard deviation (20.2), shape (B, 1, …, 1)."""
    axes = tuple(range(1, a.ndim))
    m = a.mean(axis=axes, keepdims=True)
    return np.sqrt(((a - m) ** 2).mean(axis=axes, keepdims=True))


def guide(cond, uncond, scale: float, rescale: float = 0.0) -> np.ndarray:
    """The guided output (20.1), rescaled by (20.3)–(20.4) when ``rescale`` > 0.

    ``cond``, ``uncond``: the model's outputs with and without the condition, float
    (B, *S), B ≥ 1 (the deviation is taken per sample over *S); returns float64 (B, *S).
    """
    scale, rescale = check_guidance(scale, rescale)
    c = as_float_array(cond, "cond")
    u = as_float_array(uncond, "uncond")
    if c.shape != u.shape or c.ndim < 1:
        raise ShapeError("uncond", f"shape {u.shape} differs from cond {c.shape}")
    g = u + scale * (c - u)
    if rescale == 0.0:
        return g
    sg = _std(g)
    ratio = np.divide(_std(c), sg, out=np.ones_like(sg), where=sg != 0.0)
    return rescale * (g * ratio) + (1.0 - rescale) * g


def guided_denoiser(
    cond: Denoiser, uncond: Denoiser, scale: float, rescale: float = 0.0
) -> Denoiser:
    """A denoiser ``f(x, t)`` returning :func:`guide` of two denoisers' outputs.

    ``cond`` and ``uncond`` are ``f(x, t)`` callables with the condition bound (for example
    the same network with its conditioning inputs fixed to c and to ∅); the result plugs into
    :func:`refdiff.sampling.ddpm_sample` / :func:`~refdiff.sampling.ddim_sample`.
    """
    scale, rescale = check_guidance(scale, rescale)
    for name, f in (("cond", cond), ("uncond", uncond)):
        if not callable(f):
            raise InputError(name, f"must be callable f(x_t, t); got {type(f).__name__}")

    def f(x, t):
        return guide(cond(x, t), uncond(x, t), scale, rescale)

    return f
