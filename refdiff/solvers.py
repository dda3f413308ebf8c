"""σ-view ODE/SDE samplers and flow-matching Euler (docs/math.md §19; API: docs/samplers.md).

Every sampler is one short function over a descending σ grid ``sigmas`` (n+1,) float64
(σ_0 > … > σ_n ≥ 0, only σ_n may be 0; build it with :mod:`refdiff.sigma` or
:func:`refdiff.flow.flow_sigmas`).  It runs on the VE state x = x_0 + σ ε (eq. 15.2) with
a *denoiser* ``D(x, sigma) -> x̂_0`` (x (B, *shape) float64, sigma (B,) float64; eq. 15.3),
except :func:`flow_euler`, which runs on the flow state x = (1−σ) x_0 + σ ε with a
*velocity* ``u(x, sigma) -> ε̂ − x̂_0`` (eq. 18.3).

Noise layout (the same for every sampler, as in :mod:`refdiff.sampling`): ``x_T`` is the
initial state (shape (B, *data_shape)); ``step_noise`` has shape (n, *state_shape) of unit
normals and ``step_noise[i]`` is used by step i (from σ_i to σ_{i+1}); a stochastic sampler
uses one slice per step (steps that add no noise ignore theirs), a deterministic one none.
With ``rng`` instead, x_T = σ_0 z (flow: z) is drawn first, then one slice per step of a
stochastic sampler, in order: ``f(rng=Generator(s))`` equals
``f(*draw_noise(Generator(s), sigmas, shape, sampler))``.

``callback(i, sigma_next, x)`` runs after step i landed on σ_{i+1} with state x.  Returns
x (state shape) or, with ``return_trajectory``, (x, trajectory) with trajectory (n+1, *shape),
trajectory[0] = x_T.  The choice of sampler is the option ``sampler`` of :func:`sample`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._check import (
    as_float_array,
    check_size,
    initial_state,
    is_real,
    option,
    state_shape,
)
from .errors import InputError, RandomnessError, ScheduleError, ShapeError

__all__ = [
    "SAMPLERS",
    "STOCHASTIC",
    "sample",
    "draw_noise",
    "needs_noise",
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "lms",
    "lms_coefficients",
    "linear_coefficients",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "unipc",
    "flow_euler",
]

Model = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: callback(i, sigma_next, x) after step i.
Callback = Callable[[int, float, np.ndarray], None]


# -- the shared loop plumbing ----------------------------------------------------------------
def _sigmas(sigmas: object, flow: bool) -> np.ndarray:
    s = as_float_array(sigmas, "sigmas")
    if s.ndim != 1 or s.shape[0] < 2:
        raise ScheduleError("sigmas", f"must be 1-D with n+1 >= 2 entries; got shape {s.shape}")
    if np.any(np.diff(s) >= 0) or s[-1] < 0:
        raise ScheduleError("sigmas", "must decrease strictly to a last value >= 0")
    if flow and s[0] > 1:
        raise ScheduleError("sigmas", f"flow σ must lie in [0, 1]; got σ_0 = {s[0]}")
    return s


class _Loop:
    """Validated inputs of one sampler run, its noise supply, trajectory and callback."""

    def __init__(self, model, sigmas, shape, x_T, step_noise, rng, noisy, callback, traj, flow):
        if not callable(model):
            raise InputError("model", f"must be callable f(x, sigma); got {type(model).__name__}")
        self.model, self.sigmas, self.rng = model, _sigmas(sigmas, flow), rng
        self.n = self.sigmas.shape[0] - 1
        scale = 1.0 if flow else self.sigmas[0]
        x, step_noise = initial_state(shape, x_T, step_noise, rng, self.n, scale)
        if step_noise is None and noisy and not isinstance(rng, np.random.Generator):
            raise RandomnessError("rng", "a stochastic sampler needs step_noise= or rng=")
        self.x0, self.step_noise, self.noisy = x, step_noise, noisy
        self.callback, self.traj = callback, [x] if traj else None

    def D(self, x: np.ndarray, sigma: float) -> np.ndarray:
        out = as_float_array(self.model(x, np.full(x.shape[0], sigma)), "model output")
        if out.shape != x.shape:
            raise ShapeError("model output", f"shape {out.shape} is not the state's {x.shape}")
        return out

    def noise(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        if self.step_noise is not None:
            return self.step_noise[i]
        return self.rng.standard_normal(shape)

    def done(self, i: int, x: np.ndarray) -> None:
        if self.traj is not None:
            self.traj.append(x)
        if self.callback is not None:
            self.callback(i, float(self.sigmas[i + 1]), x)

    def result(self, x: np.ndarray):
        return (x, np.stack(self.traj)) if self.traj is not None else x


def _real(v: object, name: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if not (is_real(v) and lo <= v <= hi) or math.isnan(v):
        raise InputError(name, f"must be a float in [{lo}, {hi}]; got {v!r}")
    return float(v)


def _gamma(s, n, s_churn, s_tmin, s_tmax) -> float:
    """γ_i = min(S_churn/n, √2 − 1) for σ_i in [S_tmin, S_tmax], else 0 (eq. 19.1)."""
    return min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= s <= s_tmax else 0.0


def _churn(loop: _Loop, i: int, x, s_churn, s_tmin, s_tmax, s_noise) -> tuple[np.ndarray, float]:
    """Karras' churn before step i (eq. 19.1): (x̂, σ̂) with σ̂ = σ_i(1 + γ_i) and
    x̂ = x + S_noise √(σ̂² − σ_i²) z_i (z_i drawn whenever the loop is noisy)."""
    s = loop.sigmas[i]
    z = loop.noise(i, x.shape) if loop.noisy else None
    gamma = _gamma(s, loop.n, s_churn, s_tmin, s_tmax)
    s_hat = s * (1.0 + gamma)
    if gamma > 0:
        x = x + s_noise * math.sqrt(s_hat**2 - s**2) * z
    return x, s_hat


def _order_here(i: int, n: int, history: int, lower_order_final: bool, order: int) -> int:
    """The order a multistep solver uses at step i: limited by the history (eq. 19.5) and,
    with ``lower_order_final`` and n < 15, by the steps left (diffusers' rule)."""
    p = min(order, history + 1)
    if lower_order_final and n < 15:
        p = min(p, n - i)
    return p


# -- Karras et al. 2022: Euler, Heun (Alg. 1/2), ancestral, DPM-2 -----------------------------
def euler(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    churn_model_input: str = "churned",
):
    """Euler on the PF-ODE dx/dσ = (x − D)/σ with Karras' churn (Alg. 2, Euler form; eq. 19.1).

    σ̂ = σ_i(1+γ_i), x̂ = x + s_noise √(σ̂² − σ_i²) z_i, x_{i+1} = x̂ + (σ_{i+1} − σ̂)(x̂ − D)/σ̂.
    ``churn_model_input``: ``"churned"`` D(x̂; σ̂) (Karras, k-diffusion) or ``"unchurned"``
    (diffusers' EulerDiscrete: ε̂ = (x − D(x; σ_i))/σ_i from the state before the churn,
    x_{i+1} = x̂ + (σ_{i+1} − σ̂) ε̂).  Noise: one slice per step iff s_churn > 0.
    """
    option(churn_model_input, "churn_model_input", ("churned", "unchurned"))
    s_churn, s_noise = _real(s_churn, "s_churn"), _real(s_noise, "s_noise")
    loop = _Loop(
        denoiser,
        sigmas,
        shape,
        x_T,
        step_noise,
        rng,
        s_churn > 0,
        callback,
        return_trajectory,
        False,
    )
    x, sig = loop.x0, loop.sigmas
    for i in range(loop.n):
        s, s_next = sig[i], sig[i + 1]
        z = loop.noise(i, x.shape) if loop.noisy else None
        gamma = _gamma(s, loop.n, s_churn, s_tmin, s_tmax)
        s_hat = s * (1.0 + gamma)
        if churn_model_input == "unchurned":
            d = (x - loop.D(x, s)) / s
        if gamma > 0:
            x = x + s_noise * math.sqrt(s_hat**2 - s**2) * z
        if churn_model_input == "churned":
            d = (x - loop.D(x, s_hat)) / s_hat
        x = x + (s_next - s_hat) * d
        loop.done(i, x)
    return loop.result(x)


def euler_ancestral(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
):
    """Euler ancestral (eq. 19.2): Euler to σ_down, then add σ_up z_i.

    σ_up = min(σ_{i+1}, η √(σ_{i+1}²(σ_i² − σ_{i+1}²)/σ_i²)), σ_down = √(σ_{i+1}² − σ_up²);
    x_{i+1} = x + (σ_down − σ_i)(x − D(x; σ_i))/σ_i + s_noise σ_up z_i (no noise to σ = 0).
    η = 1 is diffusers' EulerAncestralDiscrete.  Noise: one slice per step iff η > 0.
    """
    eta, s_noise = _real(eta, "eta"), _real(s_noise, "s_noise")
    loop = _Loop(
        denoiser, sigmas, shape, x_T, step_noise, rng, eta > 0, callback, return_trajectory, False
    )
    x, sig = loop.x0, loop.sigmas
    for i in range(loop.n):
        s, s_next = sig[i], sig[i + 1]
        z = loop.noise(i, x.shape) if loop.noisy else None
        s_up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        s_down = math.sqrt(s_next**2 - s_up**2)
        x = x + (s_down - s) * (x - loop.D(x, s)) / s
        if s_next > 0 and s_up > 0:
            x = x + s_noise * s_up * z
        loop.done(i, x)
    return loop.result(x)


def heun(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
):
    """Heun's 2nd-order method (Karras et al. 2022 Alg. 1; with churn Alg. 2; eq. 19.3).

    Churn as :func:`euler`; d = (x̂ − D(x̂; σ̂))/σ̂, x' = x̂ + (σ_{i+1} − σ̂) d; if σ_{i+1} > 0,
    d' = (x' − D(x'; σ_{i+1}))/σ_{i+1} and x_{i+1} = x̂ + (σ_{i+1} − σ̂)(d + d')/2, else x'.
    2n − 1 denoiser calls when σ_n = 0.  Noise: one slice per step iff s_churn > 0.
    """
    s_churn, s_noise = _real(s_churn, "s_churn"), _real(s_noise, "s_noise")
    loop = _Loop(
        denoiser,
        sigmas,
        shape,
        x_T,
        step_noise,
        rng,
        s_churn > 0,
        callback,
        return_trajectory,
        False,
    )
    x, sig = loop.x0, loop.sigmas
    for i in range(loop.n):
        s_next = sig[i + 1]
        x, s_hat = _churn(loop, i, x, s_churn, s_tmin, s_tmax, s_noise)
        d = (x - loop.D(x, s_hat)) / s_hat
        x_pred = x + (s_next - s_hat) * d
        if s_next > 0:
            d2 = (x_pred - loop.D(x_pred, s_next)) / s_next
            x_pred = x + (s_next - s_hat) * 0.5 * (d + d2)
        x = x_pred
        loop.done(i, x)
    return loop.result(x)


def dpm_2(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
):
    """DPM-2 (k-diffusion's ``sample_dpm_2``; Karras et al. 2022 Alg. 2 with its second slope
    taken at the geometric midpoint; eq. 19.15).

    Churn as :func:`euler`; d = (x̂ − D(x̂; σ̂))/σ̂; if σ_{i+1} > 0, σ_m = √(σ̂ σ_{i+1})
    (the midpoint in log σ), x' = x̂ + (σ_m − σ̂) d, d' = (x' − D(x'; σ_m))/σ_m and
    x_{i+1} = x̂ + (σ_{i+1} − σ̂) d'; into σ_{i+1} = 0 the Euler step x̂ + (0 − σ̂) d.
    2n − 1 denoiser calls when σ_n = 0.  Noise: one slice per step iff s_churn > 0.
    """
    s_churn, s_noise = _real(s_churn, "s_churn"), _real(s_noise, "s_noise")
    loop = _Loop(
        denoiser,
        sigmas,
        shape,
        x_T,
        step_noise,
        rng,
        s_churn > 0,
        callback,
        return_trajectory,
        False,
    )
    x, sig = loop.x0, loop.sigmas
    for i in range(loop.n):
        s_next = sig[i + 1]
        x, s_hat = _churn(loop, i, x, s_churn, s_tmin, s_tmax, s_noise)
        d = (x - loop.D(x, s_hat)) / s_hat
        if s_next > 0:
            s_mid = math.sqrt(s_hat * s_next)
            x_mid = x + (s_mid - s_hat) * d
            d = (x_mid - loop.D(x_mid, s_mid)) / s_mid
        x = x + (s_next - s_hat) * d
        loop.done(i, x)
    return loop.result(x)


# -- linear multistep in σ ---------------------------------------------------------------------
def lms_coefficients(sigmas, i: int, order: int) -> np.ndarray:
    """c_j = ∫_{σ_i}^{σ_{i+1}} ∏_{k≠j} (τ − σ_{i−k})/(σ_{i−j} − σ_{i−k}) dτ, j = 0..p−1,
    p = min(i+1, order) (eq. 19.4); exact polynomial integration.  Shape (p,)."""
    sig = as_float_array(sigmas, "sigmas")
    p = min(i + 1, order)
    nodes = sig[i - np.arange(p)]
    out = np.empty(p)
    for j in range(p):
        poly = np.polynomial.Polynomial([1.0])
        for k in range(p):
            if k != j:
                poly = poly * np.polynomial.Polynomial([-nodes[k], 1.0]) / (nodes[j] - nodes[k])
        prim = poly.integ()
        out[j] = prim(sig[i + 1]) - prim(sig[i])
    return out


def lms(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    order: int = 4,
):
    """Linear multistep (Adams-Bashforth in σ, variable step; eq. 19.4):
    x_{i+1} = x_i + Σ_j c_j d_{i−j}, d = (x − D(x; σ))/σ, with :func:`lms_coefficients`.
    k-diffusion's ``sample_lms`` and diffusers' LMSDiscrete (both integrate with
    ``scipy.integrate.quad``; here exactly)."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise InputError("order", f"must be an int >= 1; got {order!r}")
    loop = _Loop(
        denoiser, sigmas, shape, x_T, step_noise, rng, False, callback, return_trajectory, False
    )
    x, sig = loop.x0, loop.sigmas
    ds: list[np.ndarray] = []
    for i in range(loop.n):
        ds.insert(0, (x - loop.D(x, sig[i])) / sig[i])
        del ds[order:]
        c = lms_coefficients(sig, i, order)
        x = x + sum(cj * dj for cj, dj in zip(c, ds))
        loop.done(i, x)
    return loop.result(x)


# -- DPM-Solver++ (Lu et al. 2022b) --------------------------------------------------------------
def dpmpp_2m(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    lower_order_final: bool = True,
):
    """DPM-Solver++(2M), Lu et al. 2022b Alg. 2 (eq. 19.5), λ = −log σ, h = λ_{i+1} − λ_i:

    x_{i+1} = (σ_{i+1}/σ_i) x_i − (e^{−h} − 1) D̄,  D̄ = (1 + 1/(2r)) D_i − D_{i−1}/(2r),
    r = h_{i−1}/h_i; D̄ = D_i on the first step, on a step to σ = 0 (x_{i+1} = D_i), and with
    ``lower_order_final`` (diffusers' default) on the last step when n < 15.
    """
    loop = _Loop(
        denoiser, sigmas, shape, x_T, step_noise, rng, False, callback, return_trajectory, False
    )
    x, sig = loop.x0, loop.sigmas
    old, h_last = None, None
    for i in range(loop.n):
        s, s_next = sig[i], sig[i + 1]
        m = loop.D(x, s)
        if s_next == 0:
            x = m
        else:
            h = math.log(s / s_next)
            p = _order_here(i, loop.n, 0 if old is None else 1, lower_order_final, 2)
            dbar = m if p == 1 else (1 + 1 / (2 * (h_last / h))) * m - old / (2 * (h_last / h))
            x = (s_next / s) * x - math.expm1(-h) * dbar
            h_last = h
        old = m
        loop.done(i, x)
    return loop.result(x)


def dpmpp_2m_sde(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b §5; eq. 19.6), h = log(σ_i/σ_{i+1}), ĥ = (1+η)h:

    x_{i+1} = (σ_{i+1}/σ_i) e^{−ηh} x_i + (1 − e^{−ĥ}) D_i + c (D_i − D_{i−1})/r
              + s_noise σ_{i+1} √(1 − e^{−2ηh}) z_i,
    c = ½(1 − e^{−ĥ}) (``"midpoint"``) or (1 − e^{−ĥ})/(−ĥ) + 1 (``"heun"``), r = h_{i−1}/h;
    the D_{i−1} term is dropped as in :func:`dpmpp_2m`; x_{i+1} = D_i on a step to σ = 0.
    η = 0 is the ODE solver (midpoint: :func:`dpmpp_2m`).  Noise: one slice per step iff η > 0.
    """
    option(solver_type, "solver_type", ("midpoint", "heun"))
    eta, s_noise = _real(eta, "eta"), _real(s_noise, "s_noise")
    loop = _Loop(
        denoiser, sigmas, shape, x_T, step_noise, rng, eta > 0, callback, return_trajectory, False
    )
    x, sig = loop.x0, loop.sigmas
    old, h_last = None, None
    for i in range(loop.n):
        s, s_next = sig[i], sig[i + 1]
        z = loop.noise(i, x.shape) if loop.noisy else None
        m = loop.D(x, s)
        if s_next == 0:
            x = m
        else:
            h = math.log(s / s_next)
            hh = (1.0 + eta) * h
            x = (s_next / s) * math.exp(-eta * h) * x - math.expm1(-hh) * m
            if _order_here(i, loop.n, 0 if old is None else 1, lower_order_final, 2) == 2:
                mid = solver_type == "midpoint"
                c = -0.5 * math.expm1(-hh) if mid else math.expm1(-hh) / hh + 1.0
                x = x + c * (m - old) / (h_last / h)
            if eta > 0:
                x = x + s_noise * s_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * z
            h_last = h
        old = m
        loop.done(i, x)
    return loop.result(x)


def dpmpp_3m_sde(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    lower_order_final: bool = True,
    taylor_d2: bool = False,
    diffusers_sde_d2: bool = False,
):
    """DPM-Solver++(3M) SDE (eq. 19.7), h = log(σ_i/σ_{i+1}), ĥ = (1+η)h,
    φ₂ = (e^{−ĥ} − 1)/ĥ + 1, φ₃ = φ₂/ĥ − ½:

    x_{i+1} = e^{−ĥ} x_i + (1 − e^{−ĥ}) D_i + φ₂ d₁ − φ₃ d₂ + s_noise σ_{i+1} √(1 − e^{−2ηh}) z_i,
    r₀ = h_{i−1}/h, r₁ = h_{i−2}/h, d₁⁰ = (D_i − D_{i−1})/r₀, d₁¹ = (D_{i−1} − D_{i−2})/r₁,
    d₁ = d₁⁰ + r₀(d₁⁰ − d₁¹)/(r₀+r₁), d₂ = (d₁⁰ − d₁¹)/(r₀+r₁); with one past output only
    φ₂ d₁⁰ (2nd order), with none neither (1st order); orders lowered at the end as in
    :func:`dpmpp_2m`; x_{i+1} = D_i on a step to σ = 0.  η = 0: the 3M ODE solver.

    d₂ ≈ h²D''/2, and the Taylor term of the exponential integral is −2φ₃ d₂: the published
    −φ₃ d₂ (Lu et al.'s code, k-diffusion, diffusers; the default) leaves an O(h³) local error,
    so the solver is globally second order; ``taylor_d2=True`` uses −2φ₃ d₂ (third order;
    eq. 19.7 and the note under it).  ``diffusers_sde_d2=True`` reproduces diffusers'
    third-order ``sde-dpmsolver++`` step, whose d₂ coefficient (1 − e^{−2h} − 2h)/(2h)² − ½ is
    −φ₃ − 1 at η = 1: one d₂ more than the published form, an O(h²) local error (weak order 1,
    measured; a peer bug).
    """
    if taylor_d2 and diffusers_sde_d2:
        raise InputError("diffusers_sde_d2", "cannot be combined with taylor_d2")
    eta, s_noise = _real(eta, "eta"), _real(s_noise, "s_noise")
    loop = _Loop(
        denoiser, sigmas, shape, x_T, step_noise, rng, eta > 0, callback, return_trajectory, False
    )
    x, sig = loop.x0, loop.sigmas
    ms: list[np.ndarray] = []  # D_{i−1}, D_{i−2}
    hs: list[float] = []  # h_{i−1}, h_{i−2}
    for i in range(loop.n):
        s, s_next = sig[i], sig[i + 1]
        z = loop.noise(i, x.shape) if loop.noisy else None
        m = loop.D(x, s)
        if s_next == 0:
            x = m
        else:
            h = math.log(s / s_next)
            hh = (1.0 + eta) * h
            x = math.exp(-hh) * x - math.expm1(-hh) * m
            p = _order_here(i, loop.n, len(ms), lower_order_final, 3)
            phi2 = math.expm1(-hh) / hh + 1.0
            if p == 3:
                r0, r1 = hs[0] / h, hs[1] / h
                d10, d11 = (m - ms[0]) / r0, (ms[0] - ms[1]) / r1
                d1 = d10 + (d10 - d11) * r0 / (r0 + r1)
                d2 = (d10 - d11) / (r0 + r1)
                k = 2.0 if taylor_d2 else 1.0
                x = x + phi2 * d1 - k * (phi2 / hh - 0.5) * d2 - (d2 if diffusers_sde_d2 else 0.0)
            elif p == 2:
                x = x + phi2 * (m - ms[0]) / (hs[0] / h)
            if eta > 0:
                x = x + s_noise * s_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * z
            hs = [h, *hs][:2]
        ms = [m, *ms][:2]
        loop.done(i, x)
    return loop.result(x)


# -- UniPC (Zhao et al. 2023) ------------------------------------------------------------------
def _unipc(x, m0, past_ms, past_sigmas, s0, t, p, variant, m_t=None):
    """One UniP-p predictor (``m_t`` None) or UniC-p corrector step from σ=s0 to σ=t (eqs.
    19.8-19.9), data prediction, VE state: x_t = (t/s0) x − φ m0 − B(h)(Σ ρ_k D_k [+ ρ_p D_t]),
    h = log(s0/t), φ = e^{−h} − 1, B = −h (bh1) or e^{−h} − 1 (bh2), D_k = (m_k − m0)/r_k,
    r_k = (λ_k − λ_0)/h, D_t = m_t − m0; ρ solves R ρ = b (R_{jk} = r_k^{j−1}, b_j = j! g_j/B,
    g_1 = φ/(−h) − 1, g_{j+1} = g_j/(−h) − 1/(j+1)!) on the first p−1 rows (predictor; ρ = ½
    at p = 2) or on all p rows (corrector; ρ = ½ at p = 1)."""
    h = math.log(s0 / t)
    hh = -h
    phi = math.expm1(hh)
    B = hh if variant == "bh1" else phi
    rks = [math.log(s0 / sk) / h for sk in past_sigmas[: p - 1]] + [1.0]
    Ds = [(mk - m0) / rk for mk, rk in zip(past_ms[: p - 1], rks)]
    R = np.array([[rk**j for rk in rks] for j in range(p)])
    b, g, fact = [], phi / hh - 1.0, 1.0
    for j in range(1, p + 1):
        b.append(g * fact / B)
        fact *= j + 1
        g = g / hh - 1.0 / fact
    b = np.array(b)
    out = (t / s0) * x - phi * m0
    if m_t is None:
        if p == 1:
            return out
        rho = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        return out - B * sum(r * d for r, d in zip(rho, Ds))
    rho = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
    res = sum((r * d for r, d in zip(rho[:-1], Ds)), rho[-1] * (m_t - m0))
    return out - B * res


def unipc(
    denoiser: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    order: int = 2,
    solver_type: str = "bh2",
    corrector: bool = True,
    disable_corrector: tuple[int, ...] = (),
    lower_order_final: bool = True,
):
    """UniPC (Zhao et al. 2023; eqs. 19.8-19.9), data prediction, as diffusers'
    UniPCMultistepScheduler: at step i, D_i = D(x_i; σ_i); if i > 0, ``corrector`` and
    i − 1 ∉ ``disable_corrector``, UniC-p (p: the previous predictor order) corrects x_i
    with D_i (D_i is not re-evaluated); then UniP-p to σ_{i+1}, p = min(order, i+1) and, with
    ``lower_order_final``, ≤ n − i.  A step to σ = 0 is x_{i+1} = D_i.  ``solver_type``:
    B(h) ``"bh1"`` or ``"bh2"``.  ``order`` in 1..3."""
    option(solver_type, "solver_type", ("bh1", "bh2"))
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise InputError("order", f"must be 1, 2 or 3; got {order!r}")
    loop = _Loop(
        denoiser, sigmas, shape, x_T, step_noise, rng, False, callback, return_trajectory, False
    )
    x, sig = loop.x0, loop.sigmas
    ms: list[np.ndarray] = []  # D_{i−1}, D_{i−2}, … newest first
    x_prev, p_prev = None, 0
    for i in range(loop.n):
        s, s_next = sig[i], sig[i + 1]
        m = loop.D(x, s)
        if i > 0 and corrector and (i - 1) not in disable_corrector:
            x = _unipc(
                x_prev,
                ms[0],
                ms[1:],
                sig[i - 2 :: -1] if i >= 2 else [],
                sig[i - 1],
                s,
                p_prev,
                solver_type,
                m_t=m,
            )
        ms = [m, *ms][:order]
        p = min(order, i + 1)
        if lower_order_final:
            p = min(p, loop.n - i)
        x_prev, p_prev = x, p
        if s_next == 0:
            x = m
        else:
            x = _unipc(x, m, ms[1:], sig[i - 1 :: -1] if i >= 1 else [], s, s_next, p, solver_type)
        loop.done(i, x)
    return loop.result(x)


# -- flow matching -------------------------------------------------------------------------------
def flow_euler(
    velocity: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    stochastic: bool = False,
):
    """Flow-matching Euler (eq. 19.10) on x = (1−σ) x_0 + σ ε, σ ∈ [0, 1] (the flow time):
    x_{i+1} = x_i + (σ_{i+1} − σ_i) u(x_i, σ_i).  ``stochastic`` (diffusers'
    ``stochastic_sampling``): x̂_0 = x_i − σ_i u, x_{i+1} = (1 − σ_{i+1}) x̂_0 + σ_{i+1} z_i
    (one noise slice per step).  With ``rng``, x_T = z (unscaled)."""
    loop = _Loop(
        velocity,
        sigmas,
        shape,
        x_T,
        step_noise,
        rng,
        bool(stochastic),
        callback,
        return_trajectory,
        True,
    )
    x, sig = loop.x0, loop.sigmas
    for i in range(loop.n):
        s, s_next = sig[i], sig[i + 1]
        z = loop.noise(i, x.shape) if loop.noisy else None
        u = loop.D(x, s)
        if stochastic:
            x = (1.0 - s_next) * (x - s * u) + s_next * z
        else:
            x = x + (s_next - s) * u
        loop.done(i, x)
    return loop.result(x)


# -- coefficient tables (for graphs and fast loops) ------------------------------------------------
def linear_coefficients(sampler: str, sigmas, **options) -> np.ndarray:
    """(n, 3) float64 rows (a_i, b_i, c_i) with x_{i+1} = a_i x_i + b_i M_i + c_i M_{i−1} for
    the deterministic samplers whose step is linear in (x_i, M_i, M_{i−1}); M = D (σ view) or
    the velocity u (flow).  ``"euler"`` (no churn; eq. 19.1): a = σ_{i+1}/σ_i, b = 1 − a,
    c = 0.  ``"dpmpp_2m"`` (eq. 19.5, with ``lower_order_final``): a = σ_{i+1}/σ_i,
    b = −(e^{−h}−1)(1 + 1/(2r)), c = (e^{−h}−1)/(2r) (c = 0 on first-order steps; on a step to
    σ = 0, a = 0, b = 1).  ``"flow_euler"`` (eq. 19.10): a = 1, b = σ_{i+1} − σ_i, c = 0.
    The tables reproduce :func:`euler`, :func:`dpmpp_2m` and :func:`flow_euler` (tested)."""
    option(sampler, "sampler", ("euler", "dpmpp_2m", "flow_euler"))
    flow = sampler == "flow_euler"
    sig = _sigmas(sigmas, flow)
    n = sig.shape[0] - 1
    allowed = {"euler": (), "dpmpp_2m": ("lower_order_final",), "flow_euler": ()}[sampler]
    for k in options:
        if k not in allowed:
            raise InputError("options", f"{sampler}: no option {k!r} in a linear table")
    out = np.zeros((n, 3))
    h_last = None
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        if flow:
            out[i] = (1.0, s_next - s, 0.0)
        elif sampler == "euler":
            out[i] = (s_next / s, 1.0 - s_next / s, 0.0)
        elif s_next == 0:
            out[i] = (0.0, 1.0, 0.0)
        else:
            h = math.log(s / s_next)
            lof = options.get("lower_order_final", True)
            p = _order_here(i, n, 0 if i == 0 else 1, lof, 2)
            e = math.expm1(-h)
            if p == 1:
                out[i] = (s_next / s, -e, 0.0)
            else:
                r = h_last / h
                out[i] = (s_next / s, -e * (1 + 1 / (2 * r)), e / (2 * r))
            h_last = h
    return out


# -- dispatch ----------------------------------------------------------------------------------
SAMPLERS: dict[str, Callable] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "lms": lms,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "unipc": unipc,
    "flow_euler": flow_euler,
}

#: The option that makes each sampler stochastic (one noise slice per step), and its default.
STOCHASTIC = {
    "euler": ("s_churn", 0.0),
    "heun": ("s_churn", 0.0),
    "dpm_2": ("s_churn", 0.0),
    "euler_ancestral": ("eta", 1.0),
    "dpmpp_2m_sde": ("eta", 1.0),
    "dpmpp_3m_sde": ("eta", 1.0),
    "flow_euler": ("stochastic", False),
}


def needs_noise(sampler: str, **options) -> bool:
    """Whether ``sampler`` with ``options`` uses step noise (one slice per step)."""
    option(sampler, "sampler", list(SAMPLERS))
    if sampler not in STOCHASTIC:
        return False
    key, default = STOCHASTIC[sampler]
    return bool(options.get(key, default))


def draw_noise(
    rng: np.random.Generator, sigmas, shape: tuple[int, ...], sampler: str = "euler", **options
) -> tuple[np.ndarray, np.ndarray | None]:
    """(x_T, step_noise) drawn as ``sampler`` draws them from ``rng``: x_T = σ_0 z (flow: z),
    then step_noise (n, *shape) if the sampler is stochastic with ``options``, else None."""
    if not isinstance(rng, np.random.Generator):
        raise RandomnessError("rng", f"must be a numpy Generator; got {type(rng).__name__}")
    flow = option(sampler, "sampler", list(SAMPLERS)) == "flow_euler"
    sig = _sigmas(sigmas, flow)
    shape = state_shape(shape)
    check_size(shape, "shape", factor=sig.shape[0])
    x_T = rng.standard_normal(shape) * (1.0 if flow else sig[0])
    noisy = needs_noise(sampler, **options)
    return x_T, rng.standard_normal((sig.shape[0] - 1, *shape)) if noisy else None


def sample(
    model: Model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    sampler: str = "euler",
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    **options,
):
    """Run ``sampler`` (a key of :data:`SAMPLERS`) with its ``options``; see the module doc.

    ``model`` is the denoiser D(x, σ), or the velocity u(x, σ) for ``"flow_euler"``.
    """
    fn = SAMPLERS[option(sampler, "sampler", list(SAMPLERS))]
    try:
        return fn(
            model,
            sigmas,
            shape,
            x_T=x_T,
            step_noise=step_noise,
            rng=rng,
            return_trajectory=return_trajectory,
            callback=callback,
            **options,
        )
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise InputError("options", f"{sampler}: {e}") from None
        raise
