"""Deliberately wrong schedulers: what `refdiff verify` says about common bugs.

Each class is examples/numpy_scheduler.py's float32 scheduler with one bug planted:

    refdiff verify examples/planted_bugs.py:OffByOne --ops ddpm_step --quick
    refdiff verify examples/planted_bugs.py:BetaForBetaTilde --ops ddpm_step --quick

tests/conformance/test_verify.py checks that each fails and that the message names the bug.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numpy_scheduler import NumpyScheduler  # noqa: E402


class Float32(NumpyScheduler):
    def __init__(self):
        super().__init__("float32")


def _next_index(alpha_bar):
    """ᾱ shifted by one index: entry i holds ᾱ_{i+1} (what indexing ᾱ with a 1-based t into
    a 0-based array does)."""
    a = np.asarray(alpha_bar, dtype=np.float64)
    return np.append(a[1:], a[-1] * a[-1] / a[-2])


class OffByOne(Float32):
    """Indexes ᾱ one step late everywhere (t used as a 1-based time on a 0-based array)."""

    def q_sample(self, alpha_bar, x0, t, noise):
        return super().q_sample(_next_index(alpha_bar), x0, t, noise)

    def ddpm_step(self, alpha_bar, *a, **kw):
        return super().ddpm_step(_next_index(alpha_bar), *a, **kw)

    def ddim_step(self, alpha_bar, *a, **kw):
        return super().ddim_step(_next_index(alpha_bar), *a, **kw)


class BetaForBetaTilde(Float32):
    """DDPM ``fixed_small`` draws with β_t instead of the posterior variance β̃_t."""

    def ddpm_step(self, *a, variance_type="fixed_small", **kw):
        if variance_type == "fixed_small":
            variance_type = "fixed_large"
        return super().ddpm_step(*a, variance_type=variance_type, **kw)


class MissingSqrt(Float32):
    """DDPM adds σ² z instead of σ z."""

    def ddpm_step(self, alpha_bar, timesteps, t, x_t, model_output, noise, **kw):
        z = np.asarray(noise, dtype=np.float64)
        mean = super().ddpm_step(alpha_bar, timesteps, t, x_t, model_output, 0 * z, **kw)
        full = super().ddpm_step(alpha_bar, timesteps, t, x_t, model_output, z, **kw)
        with np.errstate(all="ignore"):
            std = np.where(z != 0, (full.astype(np.float64) - mean) / z, 0.0)
        return (mean + std**2 * z).astype(np.float32)


class QSampleMissingSqrt(Float32):
    """q_sample scales by ᾱ and 1 − ᾱ instead of their square roots."""

    def q_sample(self, alpha_bar, x0, t, noise):
        ab = np.float32(alpha_bar[t])
        return ab * np.float32(x0) + (1 - ab) * np.float32(noise)


class WrongDDIMSigma(Float32):
    """DDIM σ without the square root: σ = η (1−ᾱ_prev)/(1−ᾱ_t) (1 − ᾱ_t/ᾱ_prev)."""

    def ddim_step(
        self,
        alpha_bar,
        timesteps,
        t,
        x_t,
        model_output,
        noise,
        *,
        prediction_type="epsilon",
        eta=0.0,
        final_alpha_bar="one",
        rederive_eps=True,
        clip=None,
        threshold_ratio=None,
        threshold_max=1.0,
    ):
        A = np.asarray(alpha_bar, dtype=np.float32)
        prev = self._prev(timesteps, t)
        ab = A[t]
        abp = A[prev] if prev >= 0 else (np.float32(1) if final_alpha_bar == "one" else A[0])
        x_t, out, z = self._x(x_t), self._x(model_output), self._x(noise)
        x0, eps = self._x0_eps(ab, x_t, out, prediction_type)
        x0 = self._restrict(x0, clip, threshold_ratio, threshold_max)
        if rederive_eps:
            eps = (x_t - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        sigma = eta * (1 - abp) / (1 - ab) * (1 - ab / abp)  # the bug: no sqrt
        x = np.sqrt(abp) * x0 + np.sqrt(max(1 - abp - sigma**2, 0)) * eps
        if eta > 0 and prev >= 0:
            x = x + sigma * z
        return x


class AlphaToOneFlipped(Float32):
    """DDIM's last step uses the other final ᾱ (set_alpha_to_one flipped)."""

    def ddim_step(self, *a, final_alpha_bar="one", **kw):
        flipped = "first" if final_alpha_bar == "one" else "one"
        return super().ddim_step(*a, final_alpha_bar=flipped, **kw)


class DDIMStride(Float32):
    """DDIM takes the previous step as t − T//N (diffusers#11347) instead of the previous
    kept step: wrong for trailing and linspace spacing."""

    def _prev(self, timesteps, t):
        T_over_N = self._T // len(timesteps)
        p = int(t) - T_over_N
        return p if p >= 0 else -1

    def ddim_step(self, alpha_bar, *a, **kw):
        self._T = len(alpha_bar)
        return super().ddim_step(alpha_bar, *a, **kw)
