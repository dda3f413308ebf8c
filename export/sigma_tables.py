"""Coefficient tables of the σ-view samplers (docs/math.md §19; API docs/samplers.md).

The reference samplers of :mod:`refdiff.solvers` that are linear in the state x, the model
output o, the previous step's x̂_0 (m, multistep) and the noise z, step by step, compile to
the tables of :class:`refdiff.export.tables.StepTables`:

    D_i     = Dx_i x + Do_i o                    x̂_0 of the VE state (eqs. 18.9-18.13)
    x_{i+1} = A_i x + B_i o + H_i m + S_i z,     m_{i+1} = D_i

with the model called on c_in,i x (x/√(1+σ_i²), the VP state it was trained on) at its time
for σ_i (eq. 17.4: ``timestep`` "round" | "nearest" | "continuous", as
:func:`refdiff.sigma.denoiser_from_model`).  ``flow_euler`` calls a velocity model on the
flow state itself at time σ_i · ``flow_time_scale`` (diffusers' flow-matching timesteps:
σ · 1000).  ``euler``, ``dpmpp_2m`` and deterministic ``flow_euler`` read their (a, b, c)
rows off :func:`refdiff.solvers.linear_coefficients` (x_{i+1} = a x + b D_i + c D_{i−1}) and
compose them with the conversion: A = a + b Dx, B = b Do, H = c.
Supported: ``euler`` (without churn), ``euler_ancestral``, ``dpmpp_2m``,
``flow_euler`` (deterministic or ``stochastic``).  The initial state is x_T = σ_0 z (flow: z).
"""

from __future__ import annotations

import numpy as np

from refdiff._check import as_float_array, real
from refdiff.errors import InputError, OptionError, ScheduleError
from refdiff.schedule import Schedule
from refdiff.solvers import linear_coefficients

__all__ = ["SIGMA_SAMPLERS", "sigma_step_tables"]

SIGMA_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "flow_euler")
_OPTIONS = {
    "euler": ("sigmas", "timestep", "s_churn", "s_tmin", "s_tmax", "s_noise", "churn_model_input"),
    "euler_ancestral": ("sigmas", "timestep", "eta", "s_noise"),
    "dpmpp_2m": ("sigmas", "timestep", "lower_order_final"),
    "flow_euler": ("sigmas", "stochastic", "flow_time_scale"),
}


def _sigmas(options: dict, flow: bool) -> np.ndarray:
    if options.get("sigmas") is None:
        how = "flow.flow_sigmas(n)" if flow else "sigma.from_schedule(schedule, n) or sigma.karras"
        raise InputError("sigmas", f"the σ-view samplers need the σ grid: pass sigmas= ({how})")
    s = as_float_array(options["sigmas"], "sigmas")  # the rule of refdiff.solvers' grids
    if s.ndim != 1 or s.shape[0] < 2:
        raise ScheduleError("sigmas", f"must be 1-D with n+1 >= 2 entries; got shape {s.shape}")
    if np.any(np.diff(s) >= 0) or s[-1] < 0 or (flow and s[0] > 1):
        raise ScheduleError("sigmas", "must decrease strictly to a last value >= 0 (flow: ≤ 1)")
    return s


def _conversion(schedule: Schedule, sig: np.ndarray, prediction_type: str, timestep: str):
    """(Dx, Do, c_in, t) at each σ_i, i < n, read off refdiff.sigma.denoiser_from_model."""
    from refdiff.sigma import denoiser_from_model

    seen = {}

    def model(x, t):  # records the time; returns the basis output o = seen["o"]
        seen["t"] = np.asarray(t)
        return np.full_like(x, seen["o"])

    D = denoiser_from_model(model, schedule, prediction_type, timestep=timestep)
    n = sig.shape[0] - 1
    Dx, Do, t = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        s = np.array([sig[i]])
        seen["o"] = 0.0
        Dx[i] = D(np.ones((1, 1)), s)[0, 0]
        seen["o"] = 1.0
        Do[i] = D(np.zeros((1, 1)), s)[0, 0]
        t[i] = float(seen["t"][0])
    return Dx, Do, 1.0 / np.sqrt(1.0 + sig[:n] ** 2), t


def sigma_step_tables(schedule, sampler: str, prediction_type: str, options: dict) -> dict:
    """The StepTables fields of a σ-view ``sampler`` (module docstring), as a dict."""
    for k in options:
        if k not in _OPTIONS[sampler]:
            raise OptionError("options", k, list(_OPTIONS[sampler]))
    flow = sampler == "flow_euler"
    sig = _sigmas(options, flow)
    n = sig.shape[0] - 1
    s, s_next = sig[:-1], sig[1:]
    H = Dx = Do = c_in = None
    S = np.zeros(n)
    norm: dict = {"sigmas": [float(v) for v in sig]}
    if flow:
        stochastic = options.get("stochastic", False)
        if not isinstance(stochastic, bool | np.bool_):
            raise InputError("stochastic", f"must be a bool; got {stochastic!r}")
        scale = real(
            options.get("flow_time_scale", 1000.0), "flow_time_scale", low=0.0, low_open=True
        )
        if stochastic:  # x_{i+1} = (1 − σ_{i+1})(x − σ_i u) + σ_{i+1} z (eq. 19.10)
            A, B, S = 1.0 - s_next, -(1.0 - s_next) * s, s_next.copy()
        else:
            abc = linear_coefficients("flow_euler", sig)
            A, B = abc[:, 0], abc[:, 1]
        t = s * scale
        norm.update(stochastic=bool(stochastic), flow_time_scale=scale)
    else:
        if not isinstance(schedule, Schedule):
            raise InputError("schedule", "the σ-view samplers need the training schedule")
        timestep = options.get("timestep", "round")
        if timestep not in ("round", "nearest", "continuous"):
            raise OptionError("timestep", timestep, ["round", "nearest", "continuous"])
        Dx, Do, c_in, t = _conversion(schedule, sig, prediction_type, timestep)
        norm["timestep"] = timestep
        if sampler == "euler_ancestral":
            eta = real(options.get("eta", 1.0), "eta", low=0.0)
            s_noise = real(options.get("s_noise", 1.0), "s_noise", low=0.0)
            up = np.minimum(s_next, eta * np.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
            down = np.sqrt(s_next**2 - up**2)
            g = (down - s) / s
            A, B = 1.0 + g - g * Dx, -g * Do
            S = np.where((s_next > 0) & (up > 0), s_noise * up, 0.0)
            norm.update(eta=eta, s_noise=s_noise)
        else:  # x_{i+1} = a x + b D_i + c D_{i−1} (refdiff.solvers.linear_coefficients)
            lin = {}
            if sampler == "euler" and real(options.get("s_churn", 0.0), "s_churn", low=0.0) != 0.0:
                raise InputError(
                    "s_churn", "churn evaluates the model after adding noise: not in ONNX"
                )
            if sampler == "dpmpp_2m":
                lof = options.get("lower_order_final", True)
                if not isinstance(lof, bool | np.bool_):
                    raise InputError("lower_order_final", f"must be a bool; got {lof!r}")
                lin["lower_order_final"] = norm["lower_order_final"] = bool(lof)
            abc = linear_coefficients(sampler, sig, **lin)
            A, B = abc[:, 0] + abc[:, 1] * Dx, abc[:, 1] * Do
            if sampler == "dpmpp_2m":
                H = abc[:, 2].copy()
    return dict(
        options=norm,
        A=np.asarray(A, np.float64),
        B=np.asarray(B, np.float64),
        C=np.zeros(n),
        S=np.asarray(S, np.float64),
        H=H,
        Dx=Dx,
        Do=Do,
        c_in=c_in,
        model_t=np.asarray(t, np.float64),
        x_T_scale=1.0 if flow else float(sig[0]),
        time_in_model_units=flow,
    )
