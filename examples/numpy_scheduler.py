"""A small DDPM/DDIM scheduler written against the `refdiff verify` protocol (docs/verify.md).

It is written the way most ports are — 0-based indices (diffusers / improved-diffusion style),
the schedule and the states in one chosen precision — and independently of refdiff's code.
Verify it with

    refdiff verify examples/numpy_scheduler.py:NumpyScheduler          # float64
    refdiff verify examples/numpy_scheduler.py:Float32Scheduler        # float32 tolerance

The planted-bug variants used by tests/conformance/test_verify.py subclass it.
"""

from __future__ import annotations

import math

import numpy as np


class NumpyScheduler:
    index_base = 0  # t is the 0-based training index
    # Where the peers differ, this implementation follows diffusers for learned_range's t = 1
    # log-variance floor and improved-diffusion for DDIM's last step (no noise).
    conventions = {"log_variance_clipping": "floor", "final_step_noise": False}

    def __init__(self, dtype: str = "float64"):
        self.dtype = dtype
        self.f = np.dtype(dtype)
        # the schedule is never kept in half precision: ᾱ_1 would round to 1
        self.sf = np.dtype("float32") if self.f.itemsize < 4 else self.f

    # -- schedule ---------------------------------------------------------------------------
    def alpha_bar(self, schedule: str, T: int, zero_terminal_snr: bool = False) -> np.ndarray:
        sf = self.sf
        if schedule == "linear":
            betas = np.linspace(1e-4, 0.02, T, dtype=sf)
        elif schedule == "scaled_linear":
            betas = np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=sf) ** 2
        elif schedule == "cosine":

            def f(u):
                return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = np.array(
                [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=sf
            )
        elif schedule == "sigmoid":
            x = np.linspace(-6, 6, T, dtype=sf)
            betas = (1 / (1 + np.exp(-x)) * (0.02 - 1e-4) + 1e-4).astype(sf)
        else:
            raise NotImplementedError(schedule)
        ab = np.cumprod((1 - betas).astype(sf), dtype=sf)
        if zero_terminal_snr:  # Lin et al. 2023, Algorithm 1
            s = np.sqrt(ab)
            s0, sT = s[0], s[-1]
            s = (s - sT) * s0 / (s0 - sT)
            ab = (s * s).astype(sf)
        return ab

    def timesteps(self, T: int, N: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
        if spacing == "leading":
            ts = np.arange(N) * (T // N) + steps_offset
        elif spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
        else:
            ts = np.linspace(0, T - 1, N).round().astype(np.int64)
        return np.sort(ts)[::-1]

    # -- helpers ----------------------------------------------------------------------------
    def _c(self, v) -> np.ndarray:
        """A schedule quantity (computed in sf) as a state-precision scalar."""
        return np.asarray(v, dtype=self.sf).astype(self.f)

    def _x(self, a) -> np.ndarray:
        return np.asarray(a).astype(self.f)

    def _prev(self, timesteps, t: int) -> int:
        ts = [int(v) for v in timesteps]
        k = ts.index(int(t))
        return ts[k + 1] if k + 1 < len(ts) else -1

    def _x0_eps(self, ab, x_t, out, prediction_type):
        sa, s1 = self._c(np.sqrt(ab)), self._c(np.sqrt(1 - ab))
        if prediction_type == "epsilon":
            return (x_t - s1 * out) / sa, out
        if prediction_type == "x0":
            return out, (x_t - sa * out) / s1
        if prediction_type == "v":
            return sa * x_t - s1 * out, sa * out + s1 * x_t
        raise NotImplementedError(prediction_type)

    def _restrict(self, x0, clip, threshold_ratio, threshold_max):
        if clip is not None:
            return np.clip(x0, -clip, clip)
        if threshold_ratio is not None:
            flat = np.abs(x0).reshape(x0.shape[0], -1).astype(np.promote_types(self.f, np.float32))
            s = np.clip(np.quantile(flat, threshold_ratio, axis=1), 1.0, threshold_max)
            s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(self.f)
            return np.clip(x0, -s, s) / s
        return x0

    # -- the protocol -----------------------------------------------------------------------
    def q_sample(self, alpha_bar, x0, t, noise):
        ab = np.asarray(alpha_bar, dtype=self.sf)[t]
        return self._c(np.sqrt(ab)) * self._x(x0) + self._c(np.sqrt(1 - ab)) * self._x(noise)

    def posterior(self, alpha_bar, x0, x_t, t):
        A = np.asarray(alpha_bar, dtype=self.sf)
        ab, abp = A[t], (A[t - 1] if t > 0 else self.sf.type(1))
        alpha = ab / abp  # √α from the ratio itself: 1 − β cancels when β ≈ 1
        beta = 1 - alpha
        c0 = self._c(beta * np.sqrt(abp) / (1 - ab))
        ct = self._c((1 - abp) * np.sqrt(alpha) / (1 - ab))
        var = self._c(beta * (1 - abp) / (1 - ab))
        return c0 * self._x(x0) + ct * self._x(x_t), var

    def ddpm_step(
        self,
        alpha_bar,
        timesteps,
        t,
        x_t,
        model_output,
        noise,
        *,
        prediction_type="epsilon",
        variance_type="fixed_small",
        model_variance=None,
        clip=None,
        threshold_ratio=None,
        threshold_max=1.0,
    ):
        A = np.asarray(alpha_bar, dtype=self.sf)
        prev = self._prev(timesteps, t)
        ab, abp = A[t], (A[prev] if prev >= 0 else self.sf.type(1))
        alpha = ab / abp
        beta = 1 - alpha
        x_t, out, z = self._x(x_t), self._x(model_output), self._x(noise)
        x0, _ = self._x0_eps(ab, x_t, out, prediction_type)
        x0 = self._restrict(x0, clip, threshold_ratio, threshold_max)
        c0 = self._c(beta * np.sqrt(abp) / (1 - ab))
        ct = self._c((1 - abp) * np.sqrt(alpha) / (1 - ab))
        mean = c0 * x0 + ct * x_t
        if prev < 0:
            return mean
        small = beta * (1 - abp) / (1 - ab)
        if variance_type == "fixed_small":
            std = self._c(np.sqrt(small))
        elif variance_type in ("fixed_large", "fixed_large_iddpm"):
            std = self._c(np.sqrt(beta))
        elif variance_type == "learned":
            std = np.exp(0.5 * self._x(model_variance))
        elif variance_type == "learned_linear":
            std = np.sqrt(self._x(model_variance))
        elif variance_type == "learned_range":
            frac = (self._x(model_variance) + 1) / 2
            lo = self._c(np.log(max(small, 1e-20)))
            std = np.exp(0.5 * (frac * self._c(np.log(beta)) + (1 - frac) * lo))
        else:
            raise NotImplementedError(variance_type)
        return mean + std * z

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
        A = np.asarray(alpha_bar, dtype=self.sf)
        prev = self._prev(timesteps, t)
        ab = A[t]
        if prev >= 0:
            abp = A[prev]
        else:
            abp = self.sf.type(1) if final_alpha_bar == "one" else A[0]
        x_t, out, z = self._x(x_t), self._x(model_output), self._x(noise)
        x0, eps = self._x0_eps(ab, x_t, out, prediction_type)
        x0 = self._restrict(x0, clip, threshold_ratio, threshold_max)
        if rederive_eps:
            eps = (x_t - self._c(np.sqrt(ab)) * x0) / self._c(np.sqrt(1 - ab))
        var = eta**2 * (1 - abp) / (1 - ab) * (1 - ab / abp)
        x = self._c(np.sqrt(abp)) * x0 + self._c(np.sqrt(max(1 - abp - var, 0))) * eps
        if eta > 0 and prev >= 0:
            x = x + self._c(np.sqrt(var)) * z
        return x


class Float32Scheduler(NumpyScheduler):
    def __init__(self):
        super().__init__("float32")


class Float16Scheduler(NumpyScheduler):
    def __init__(self):
        super().__init__("float16")
