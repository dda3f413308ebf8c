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


def _mean_std(step, z):
    """(mean, σ) of a correct DDPM ``step(noise)``: run it without and with the noise."""
    mean = step(0 * z)
    with np.errstate(all="ignore"):
        return mean, np.where(z != 0, (step(z).astype(np.float64) - mean) / z, 0.0)


class MissingSqrt(Float32):
    """DDPM adds σ² z instead of σ z."""

    def ddpm_step(self, alpha_bar, timesteps, t, x_t, model_output, noise, **kw):
        z = np.asarray(noise, dtype=np.float64)
        step = super().ddpm_step
        mean, std = _mean_std(
            lambda n: step(alpha_bar, timesteps, t, x_t, model_output, n, **kw), z
        )
        return (mean + std**2 * z).astype(np.float32)


class QSampleMissingSqrt(Float32):
    """q_sample scales by ᾱ and 1 − ᾱ instead of their square roots."""

    def q_sample(self, alpha_bar, x0, t, noise):
        ab = np.float32(alpha_bar[t])
        return ab * np.float32(x0) + (1 - ab) * np.float32(noise)


class _DDIMWithSigma(Float32):
    """DDIM whose σ comes from ``_sigma(ᾱ_t, ᾱ_prev, η)`` (the planted bugs override it)."""

    def _sigma(self, ab, abp, eta):
        return eta * np.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))

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
        sigma = self._sigma(ab, abp, eta)
        x = np.sqrt(abp) * x0 + np.sqrt(max(1 - abp - sigma**2, 0)) * eps
        if eta > 0 and prev >= 0:
            x = x + sigma * z
        return x


class WrongDDIMSigma(_DDIMWithSigma):
    """DDIM σ without the square root: σ = η (1−ᾱ_prev)/(1−ᾱ_t) (1 − ᾱ_t/ᾱ_prev)."""

    def _sigma(self, ab, abp, eta):
        return eta * (1 - abp) / (1 - ab) * (1 - ab / abp)  # the bug: no sqrt


class SigmaRatioInverted(_DDIMWithSigma):
    """DDIM σ with the ratio inverted: η √((1−ᾱ_t)/(1−ᾱ_prev)) √(1 − ᾱ_t/ᾱ_prev)."""

    def _sigma(self, ab, abp, eta):
        return eta * np.sqrt((1 - ab) / (1 - abp) * (1 - ab / abp))


class EtaIgnored(Float32):
    """DDIM that ignores η (always deterministic)."""

    def ddim_step(self, *a, eta=0.0, **kw):
        return super().ddim_step(*a, eta=0.0, **kw)


class X0OverAlphaBar(Float32):
    """x̂0 = (x_t − √(1−ᾱ) ε̂)/ᾱ: divided by ᾱ instead of √ᾱ (ε̂ then re-derived from it)."""

    def _x0_eps(self, ab, x_t, out, prediction_type):
        if prediction_type == "epsilon":
            return (x_t - self._c(np.sqrt(1 - ab)) * out) / self._c(ab), out
        return super()._x0_eps(ab, x_t, out, prediction_type)


class AlphaBarPrevOffByOne(Float32):
    """ᾱ_prev read one index late (at the previous kept step + 1), ᾱ_t right: an off-by-one
    on the previous index only — not the stride bug, and it shows with every spacing."""

    def _prev(self, timesteps, t):
        p = super()._prev(timesteps, t)
        return p + 1 if p >= 0 else -1


class SqrtOfLogVariance(Float32):
    """DDPM fixed variances returned as log σ² and then square-rooted (diffusers#14569)."""

    def ddpm_step(self, alpha_bar, timesteps, t, x_t, model_output, noise, **kw):
        z = np.asarray(noise, dtype=np.float64)
        step = super().ddpm_step
        mean, std = _mean_std(
            lambda n: step(alpha_bar, timesteps, t, x_t, model_output, n, **kw), z
        )
        if self._prev(timesteps, t) < 0:
            return mean
        with np.errstate(all="ignore"):
            return (mean + np.sqrt(np.log(std**2)) * z).astype(np.float32)


# -- σ-view samplers: whole trajectories (refdiff.solvers with the bug's options) -----------
class _SigmaSampler:
    """A NumPy σ-view sampler claiming ``claimed`` options and running ``actual`` ones:
    the interface of refdiff verify's trajectory check (``kind_info``, ``sigmas``,
    ``trajectory``)."""

    family = "ksampler"
    index_base = 0
    dtype = "float64"
    conventions: dict = {}
    samplers: set = set()
    sampler = "euler"
    claimed: dict = {}
    actual: dict = {}

    def __init__(self):
        from refdiff.conformance.kinds import SchedulerKind

        self.name = type(self).__name__
        self.kind_info = SchedulerKind(
            "sigma", f"NumPy {self.sampler}", self.sampler, self.claimed, "ve"
        )

    def sigmas(self, setting):
        from refdiff import sigma

        base = setting.base()
        return sigma.karras(setting.N, float(base.sigma[1]), float(base.sigma[base.T]))

    def trajectory(self, setting, denoiser, velocity, x_T, step_noise):
        from refdiff import solvers

        grid = self.sigmas(setting)
        noise = step_noise if solvers.needs_noise(self.sampler, **self.actual) else None
        _, traj = solvers.sample(
            denoiser,
            grid,
            sampler=self.sampler,
            x_T=x_T,
            step_noise=noise,
            return_trajectory=True,
            **self.actual,
        )
        return grid, traj[1:]


class NoLowerOrderFinal(_SigmaSampler):
    """A DPM-Solver++ 3M that ignores lower_order_final (full order to the end)."""

    sampler = "dpmpp_3m_sde"
    claimed = {"eta": 0.0, "lower_order_final": True}
    actual = {"eta": 0.0, "lower_order_final": False}


class EtaMissing(_SigmaSampler):
    """An ancestral Euler that adds no noise (η dropped)."""

    sampler = "euler_ancestral"
    claimed = {"eta": 1.0}
    actual = {"eta": 0.0}


class WrongKarrasRho(_SigmaSampler):
    """Karras σ built with ρ = 5 instead of 7."""

    def sigmas(self, setting):
        from refdiff import sigma

        base = setting.base()
        return sigma.karras(setting.N, float(base.sigma[1]), float(base.sigma[base.T]), rho=5.0)


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
