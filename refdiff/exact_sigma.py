"""Exact ground truth for the σ-view and flow samplers (docs/math.md §19.5).

For data x_0 ~ N(m, S), S = U diag(s) Uᵀ, the VE marginal at σ is N(m, S + σ² I) and the
exact denoiser is affine, D(x; σ) = m + U diag(s/(s+σ²)) Uᵀ (x − m) (eq. 19.11).  Then:

- the probability-flow ODE dx/dσ = (x − D)/σ has the closed-form flow map
  x(σ₁) = m + U diag(√((s+σ₁²)/(s+σ₀²))) Uᵀ (x(σ₀) − m) (eq. 19.12; :func:`ode_map`,
  :func:`ode_solution`), and in flow coordinates (eq. 19.13; :func:`flow_ode_solution`);
- every sampler of :mod:`refdiff.solvers` run with this denoiser is affine in
  (x_T, z_0, …, z_{n−1}), so its output is exactly Gaussian: :func:`sampler_law` reads the
  affine map off the sampler by probing (one run on a batch holding the baseline and one unit
  vector per input coordinate; Monte-Carlo-free, exact to rounding) (eq. 19.14).

Gaussian-mixture data: :func:`denoiser` is the exact mixture posterior mean (through
:func:`refdiff.exact.posterior_mean_x0`, eq. 11.2), :func:`marginal` the exact law at σ.
States are (B, D) float64 (the denoisers also take (B, *shape) with prod(shape) = D).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import exact
from ._check import as_batch, as_float_array
from .errors import InputError, ShapeError
from .exact import Gaussian, GaussianMixture

__all__ = [
    "denoiser",
    "velocity",
    "marginal",
    "ode_map",
    "ode_solution",
    "flow_ode_solution",
    "sampler_law",
]


def _law(data: object) -> Gaussian | GaussianMixture:
    if not isinstance(data, Gaussian | GaussianMixture):
        raise InputError("data", f"must be a Gaussian or GaussianMixture; got {type(data)}")
    return data


def _flat(x: object, D: int, name: str = "x") -> np.ndarray:
    xa = as_batch(x, name)
    flat = xa.reshape(xa.shape[0], -1)
    if flat.shape[1] != D:
        raise ShapeError(name, f"holds {flat.shape[1]} values per sample; the data has D={D}")
    return flat


def denoiser(data: Gaussian | GaussianMixture) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The exact D(x, σ) = E[x_0 | x_0 + σε = x] (eqs. 15.3, 19.11) for :mod:`refdiff.solvers`.

    x (B, D) or (B, *shape); σ scalar or (B,), > 0.  Gaussian data: in the eigenbasis of S;
    mixtures: :func:`refdiff.exact.posterior_mean_x0` at x/√(1+σ²), ᾱ = 1/(1+σ²).
    """
    law = _law(data)
    if isinstance(law, Gaussian):
        w, U = np.linalg.eigh(law.cov)
        w = np.maximum(w, 0.0)

    def D(x, sigma):
        xa = as_batch(x, "x")
        flat = _flat(xa, law.dim)
        s = np.broadcast_to(as_float_array(sigma, "sigma"), (flat.shape[0],))
        if np.any(s <= 0):
            raise InputError("sigma", "the denoiser is called at σ > 0 only")
        if isinstance(law, Gaussian):
            out = np.empty_like(flat)
            for v in np.unique(s):
                idx = s == v
                y = (flat[idx] - law.mean) @ U
                out[idx] = law.mean + (y * (w / (w + v * v))) @ U.T
        else:
            c = np.sqrt(1.0 + s * s)[:, None]
            out = exact.posterior_mean_x0(law, flat / c, 1.0 / c**2)
        return out.reshape(xa.shape)

    return D


def velocity(data: Gaussian | GaussianMixture) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The exact flow velocity u(x, t) = (x − E[x_0|x_t = x])/t on x_t = (1−t)x_0 + tε
    (eq. 18.4), t in (0, 1] (at t = 1, E[x_0|x_1] is the data mean); x (B, D), t (B,).
    For :func:`refdiff.solvers.flow_euler`."""
    law = _law(data)
    D = denoiser(law)
    mean = law.mean if isinstance(law, Gaussian) else law.mean()

    def u(x, t):
        xa = as_batch(x, "x")
        flat = _flat(xa, law.dim)
        tt = np.broadcast_to(as_float_array(t, "t"), (flat.shape[0],))
        if np.any(tt <= 0) or np.any(tt > 1):
            raise InputError("t", "the exact velocity needs 0 < t <= 1")
        x0 = np.broadcast_to(mean, flat.shape).copy()
        inner = tt < 1
        if inner.any():
            ti = tt[inner][:, None]
            x0[inner] = D(flat[inner] / (1 - ti), tt[inner] / (1 - tt[inner]))
        return ((flat - x0) / tt[:, None]).reshape(xa.shape)

    return u


def marginal(data: Gaussian | GaussianMixture, sigma: float):
    """The law of x = x_0 + σε (eq. 15.2): each component N(m_k, S_k + σ² I)."""
    law = _law(data)
    v = float(sigma) ** 2
    if isinstance(law, Gaussian):
        return Gaussian(law.mean, law.cov + v * np.eye(law.dim))
    return GaussianMixture(law.weights, law.means, law.covs + v * np.eye(law.dim))


def ode_map(data: Gaussian, sigma_from: float, sigma_to: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with x(σ_to) = A x(σ_from) + b, the exact PF-ODE flow map (eq. 19.12).

    σ ≥ 0 finite; A = U diag(√((s+σ_to²)/(s+σ_from²))) Uᵀ, b = (I − A) m."""
    g = exact._gaussian(data, "ode_map")
    w, U = np.linalg.eigh(g.cov)
    w = np.maximum(w, 0.0)
    f = np.sqrt((w + sigma_to**2) / (w + sigma_from**2))
    A = (U * f) @ U.T
    return A, g.mean - A @ g.mean


def ode_solution(data: Gaussian, x, sigma_from: float, sigma_to: float) -> np.ndarray:
    """x(σ_to) of the PF-ODE from states x (B, D) at σ_from (eq. 19.12)."""
    A, b = ode_map(data, sigma_from, sigma_to)
    return _flat(x, A.shape[0]) @ A.T + b


def flow_ode_solution(data: Gaussian, x, t_from: float, t_to: float) -> np.ndarray:
    """x(t_to) of the flow ODE dx/dt = u from states x (B, D) at t_from ∈ [0, 1] (eq. 19.13):
    x(t₁) = (1−t₁) m + U diag(√(((1−t₁)² s + t₁²)/((1−t₀)² s + t₀²))) Uᵀ (x(t₀) − (1−t₀) m)."""
    g = exact._gaussian(data, "flow_ode_solution")
    w, U = np.linalg.eigh(g.cov)
    w = np.maximum(w, 0.0)
    f = np.sqrt(((1 - t_to) ** 2 * w + t_to**2) / ((1 - t_from) ** 2 * w + t_from**2))
    y = _flat(x, g.dim) - (1 - t_from) * g.mean
    return (1 - t_to) * g.mean + ((y @ U) * f) @ U.T


def sampler_law(
    sampler: str,
    data: Gaussian,
    sigmas,
    *,
    start: Gaussian | None = None,
    **options,
) -> Gaussian:
    """The exact law of ``solvers.sample(exact denoiser, sigmas, sampler=…, **options)``
    for Gaussian data (eq. 19.14).

    ``start``: the law of x_T (default what the sampler draws: N(0, σ_0² I), flow N(0, I)).
    The sampler is affine in u = (u_T, z_0, …, z_{n−1}) with x_T = m_start + L u_T; one run
    on the batch [baseline, unit probes] gives x = c + M u exactly, so the law is N(c, M Mᵀ).
    """
    from . import solvers

    g = exact._gaussian(data, "sampler_law")
    sig = as_float_array(sigmas, "sigmas")
    flow = sampler == "flow_euler"
    if start is None:
        start = Gaussian(np.zeros(g.dim), (1.0 if flow else float(sig[0]) ** 2) * np.eye(g.dim))
    if not isinstance(start, Gaussian) or start.dim != g.dim:
        raise InputError("start", f"must be a Gaussian on R^{g.dim}")
    D, n = g.dim, sig.shape[0] - 1
    noisy = solvers.needs_noise(sampler, **options)
    n_in = D + (n * D if noisy else 0)
    u = np.vstack([np.zeros(n_in), np.eye(n_in)])
    x_T = start.mean + u[:, :D] @ start.factor.T
    noise = u[:, D:].reshape(-1, n, D).transpose(1, 0, 2) if noisy else None
    model = velocity(g) if flow else denoiser(g)
    out = solvers.sample(model, sig, sampler=sampler, x_T=x_T, step_noise=noise, **options)
    c, M = out[0], (out[1:] - out[0]).T
    return Gaussian(c, M @ M.T)
