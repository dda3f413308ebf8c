"""Analytic ground truth for Gaussian and Gaussian-mixture data (docs/math.md §11; docs/stats.md).

Data laws are :class:`Gaussian` N(m, S) and :class:`GaussianMixture` Σ_k w_k N(m_k, S_k) on
R^D.  Under the forward process x_t = √ᾱ x_0 + √(1−ᾱ) ε (docs/math.md eq. 3.2):

- the marginal of x_t is Σ_k w_k N(√ᾱ m_k, C_k), C_k = ᾱ S_k + (1−ᾱ) I (:func:`marginal`,
  eq. 11.1);
- given x_t, component k has posterior weight r_k(x_t) ∝ w_k N(x_t; √ᾱ m_k, C_k) and
  x_0 | x_t, k ~ N(m_k + √ᾱ S_k C_k⁻¹ (x_t − √ᾱ m_k), S_k − ᾱ S_k C_k⁻¹ S_k), so the exact
  denoiser E[x_0|x_t] and the score −Σ r_k C_k⁻¹(x_t − √ᾱ m_k) are closed-form
  (:func:`posterior_mean_x0`, :func:`score`, :func:`denoiser`; eqs. 11.2–11.5);
- the reverse kernel q(x_{t−1}|x_t) is itself a Gaussian mixture (:func:`reverse_kernel`,
  eq. 11.6), so
  an exact reverse chain can be sampled (:func:`reverse_sample`) and every intermediate
  marginal is known;
- for Gaussian data every DDPM or DDIM step run with the exact denoiser is affine,
  x_{t−1} = A x_t + b + σ z, so the sampler's output is exactly Gaussian with mean and
  covariance from m ← A m + b, C ← A C Aᵀ + σ² I (:func:`ddpm_law`, :func:`ddim_law`;
  eqs. 11.7–11.8).

Everything here is derived from ``schedule.alpha_bar`` alone, independently of the formulas
in :mod:`refdiff.posterior`, :mod:`refdiff.parameterization` and :mod:`refdiff.reverse`
(which it is used to test).  Arrays are float64; states are (B, D) (the denoiser also
accepts (B, *shape) with prod(shape) = D).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from ._check import as_batch, as_float_array, check_size, integer, option, real
from .errors import (
    InputError,
    OptionError,
    RandomnessError,
    ShapeError,
    TimestepError,
    UndefinedError,
)
from .schedule import Schedule

__all__ = [
    "Gaussian",
    "GaussianMixture",
    "ReverseKernel",
    "AffineStep",
    "as_mixture",
    "marginal",
    "forward_joint",
    "posterior_mean_x0",
    "score",
    "denoiser",
    "reverse_coefficients",
    "reverse_kernel",
    "reverse_sample",
    "ddpm_affine_steps",
    "ddim_affine_steps",
    "propagate",
    "ddpm_law",
    "ddim_law",
]

PREDICTION_TYPES = ("epsilon", "x0", "v", "score")
FIXED_VARIANCES = ("fixed_small", "fixed_large", "fixed_large_iddpm")
LEARNED_VARIANCES = ("learned", "learned_linear", "learned_range")


# -- data laws ------------------------------------------------------------------------------
def _rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise RandomnessError("rng", f"must be a numpy.random.Generator; got {type(rng).__name__}")
    return rng


def _count(n: object) -> int:
    n = integer(n, "n", low=0)
    check_size((n,), "n")  # before allocating (docs/reliability.md)
    return n


def _psd(c: np.ndarray, name: str) -> np.ndarray:
    """Symmetrised copy of a (…, D, D) covariance; refuses asymmetric or indefinite ones."""
    scale = max(1.0, float(np.abs(c).max())) if c.size else 1.0
    if not np.allclose(c, np.swapaxes(c, -1, -2), rtol=1e-10, atol=1e-12 * scale):
        raise InputError(name, "must be symmetric")
    c = 0.5 * (c + np.swapaxes(c, -1, -2))
    if c.size and np.linalg.eigvalsh(c).min() < -1e-10 * scale:
        raise InputError(name, "must be positive semi-definite")
    return c


def _sqrt_factor(c: np.ndarray) -> np.ndarray:
    """L with L Lᵀ = c for a PSD (D, D) c (Cholesky, or eigen-decomposition when singular)."""
    try:
        return np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(c)
        return v * np.sqrt(np.maximum(w, 0.0))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _points(x: object, D: int, name: str = "x") -> np.ndarray:
    a = as_float_array(x, name)
    if a.ndim == 1 and D == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != D:
        raise ShapeError(name, f"must have shape (n, {D}); got {a.shape}")
    return a


@dataclass(frozen=True, eq=False)
class Gaussian:
    """N(mean, cov) on R^D: ``mean`` (D,), ``cov`` (D, D) symmetric positive semi-definite.

    A singular ``cov`` (e.g. 0 for a point mass) is allowed for laws; :meth:`log_prob` then
    raises.
    """

    mean: np.ndarray
    cov: np.ndarray

    def __post_init__(self) -> None:
        m = as_float_array(self.mean, "mean")
        if m.ndim != 1:
            raise ShapeError("mean", f"must be 1-D (D,); got shape {m.shape}")
        c = as_float_array(self.cov, "cov")
        if c.ndim == 0 and m.shape[0] == 1:
            c = c.reshape(1, 1)
        if m.shape[0] < 1 or c.shape != (m.shape[0], m.shape[0]):
            raise ShapeError("cov", f"must be (D, D) = {(m.shape[0],) * 2}; got {c.shape}")
        object.__setattr__(self, "mean", _frozen(m.copy()))
        object.__setattr__(self, "cov", _frozen(_psd(c, "cov")))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @cached_property
    def factor(self) -> np.ndarray:
        """(D, D) L with L Lᵀ = cov."""
        return _frozen(_sqrt_factor(self.cov))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n draws, shape (n, D): mean + L z with z standard normal (n, D) from ``rng``."""
        n = _count(n)
        z = _rng(rng).standard_normal((n, self.dim))
        return self.mean + z @ self.factor.T

    def log_prob(self, x) -> np.ndarray:
        """log N(x; mean, cov) for x (n, D) (or (n,) when D = 1): shape (n,)."""
        return _gauss_logpdf(_points(x, self.dim), self.mean, self.cov)

    def to_mixture(self) -> GaussianMixture:
        return GaussianMixture(np.ones(1), self.mean[None], self.cov[None])

    def __repr__(self) -> str:
        return f"Gaussian(mean={self.mean.tolist()}, cov={self.cov.tolist()})"


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Σ_k w_k N(m_k, S_k): ``weights`` (K,) ≥ 0 summing to 1, ``means`` (K, D),
    ``covs`` (K, D, D) positive semi-definite."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    def __post_init__(self) -> None:
        w = as_float_array(self.weights, "weights")
        mu = as_float_array(self.means, "means")
        cv = as_float_array(self.covs, "covs")
        if w.ndim != 1 or w.shape[0] < 1:
            raise ShapeError("weights", f"must be (K,), K >= 1; got {w.shape}")
        K = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] < 1:
            raise ShapeError("means", f"must be (K={K}, D); got {mu.shape}")
        D = mu.shape[1]
        if cv.shape != (K, D, D):
            raise ShapeError("covs", f"must be (K, D, D) = {(K, D, D)}; got {cv.shape}")
        if np.any(w < 0) or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-9):
            raise InputError("weights", f"must be >= 0 and sum to 1; got sum {w.sum()!r}")
        object.__setattr__(self, "weights", _frozen(w / w.sum()))
        object.__setattr__(self, "means", _frozen(mu.copy()))
        object.__setattr__(self, "covs", _frozen(_psd(cv, "covs")))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def K(self) -> int:
        return self.weights.shape[0]

    @cached_property
    def factors(self) -> np.ndarray:
        """(K, D, D) L_k with L_k L_kᵀ = S_k."""
        return _frozen(np.stack([_sqrt_factor(c) for c in self.covs]))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n draws (n, D): component k ~ weights (``rng.choice``), then m_k + L_k z."""
        n = _count(n)
        rng = _rng(rng)
        k = rng.choice(self.K, size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        return self.means[k] + np.einsum("nij,nj->ni", self.factors[k], z)

    def component_log_probs(self, x) -> np.ndarray:
        """log w_k + log N(x; m_k, S_k): shape (n, K)."""
        x = _points(x, self.dim)
        with np.errstate(divide="ignore"):
            lw = np.log(self.weights)
        return np.stack(
            [lw[k] + _gauss_logpdf(x, self.means[k], self.covs[k]) for k in range(self.K)], axis=1
        )

    def log_prob(self, x) -> np.ndarray:
        """log Σ_k w_k N(x; m_k, S_k) for x (n, D) (or (n,) when D = 1): shape (n,)."""
        return _logsumexp(self.component_log_probs(x))

    def mean(self) -> np.ndarray:
        """Σ w_k m_k, shape (D,)."""
        return self.weights @ self.means

    def to_mixture(self) -> GaussianMixture:
        return self

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, D={self.dim}, weights={self.weights.tolist()})"


Law = Gaussian | GaussianMixture


def as_mixture(data: object) -> GaussianMixture:
    """A :class:`GaussianMixture` view of ``data`` (a Gaussian is the K = 1 mixture)."""
    if isinstance(data, Gaussian | GaussianMixture):
        return data.to_mixture()
    raise InputError("data", f"must be a Gaussian or GaussianMixture; got {type(data).__name__}")


def _gauss_logpdf(x: np.ndarray, m: np.ndarray, c: np.ndarray) -> np.ndarray:
    try:
        chol = np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        raise UndefinedError("cov", "the density of a singular Gaussian is undefined") from None
    z = np.linalg.solve(chol, (x - m).T)
    D = m.shape[0]
    logdet = 2.0 * np.log(np.diag(chol)).sum()
    return -0.5 * (np.einsum("dn,dn->n", z, z) + logdet + D * math.log(2.0 * math.pi))


# -- the forward marginal ---------------------------------------------------------------------
def _alpha_bar_value(schedule_or_alpha_bar: object, t: object) -> float:
    if isinstance(schedule_or_alpha_bar, Schedule):
        if t is None:
            raise InputError("t", "is required with a Schedule")
        tt = schedule_or_alpha_bar.check_t(t, allow_zero=True)
        if tt.ndim != 0:
            raise TimestepError("t", "must be a single int here")
        return float(schedule_or_alpha_bar.alpha_bar[int(tt)])
    what = "a Schedule or ᾱ in [0, 1]"
    return real(schedule_or_alpha_bar, "schedule_or_alpha_bar", low=0.0, high=1.0, what=what)


def marginal(data: Law, schedule_or_alpha_bar: Schedule | float, t: int | None = None) -> Law:
    """The law of x_t = √ᾱ x_0 + √(1−ᾱ) ε for x_0 ~ ``data`` (same type as ``data``).

    ᾱ is ``schedule.alpha_bar[t]`` (t ∈ [0, T] of that schedule, respaced or not) or the
    float given directly.  Component k becomes N(√ᾱ m_k, ᾱ S_k + (1−ᾱ) I) (eq. 3.2).
    """
    ab = _alpha_bar_value(schedule_or_alpha_bar, t)
    a = math.sqrt(ab)
    if isinstance(data, Gaussian):
        return Gaussian(a * data.mean, ab * data.cov + (1.0 - ab) * np.eye(data.dim))
    mix = as_mixture(data)
    return GaussianMixture(mix.weights, a * mix.means, ab * mix.covs + (1.0 - ab) * np.eye(mix.dim))


def forward_joint(data: Law, alpha_bars) -> Gaussian:
    """The joint law of (x_{τ_1}, …, x_{τ_k}) of one forward trajectory, stacked to (k·D,).

    ``alpha_bars``: ᾱ at the k times, non-increasing (ᾱ = 1 is x_0 itself).  For Gaussian
    data N(m, S): block i has mean √ᾱ_i m and, for i ≤ j, Cov(x_i, x_j) =
    √(ᾱ_j/ᾱ_i) (ᾱ_i S + (1−ᾱ_i) I), since x_j = √(ᾱ_j/ᾱ_i) x_i + independent noise (eq. 3.3).
    """
    g = _gaussian(data, "forward_joint")
    ab = as_float_array(alpha_bars, "alpha_bars").reshape(-1)
    if ab.size < 1 or np.any(ab < 0) or np.any(ab > 1) or np.any(np.diff(ab) > 0):
        raise InputError("alpha_bars", f"must be non-increasing values in [0, 1]; got {ab}")
    if np.any(ab[:-1] == 0.0):
        raise InputError("alpha_bars", "ᾱ = 0 can only be the last time")
    D, k = g.dim, ab.size
    mean = np.concatenate([math.sqrt(a) * g.mean for a in ab])
    cov = np.empty((k * D, k * D))
    for i in range(k):
        ci = ab[i] * g.cov + (1.0 - ab[i]) * np.eye(D)
        for j in range(i, k):
            block = math.sqrt(ab[j] / ab[i]) * ci
            cov[i * D : (i + 1) * D, j * D : (j + 1) * D] = block
            cov[j * D : (j + 1) * D, i * D : (i + 1) * D] = block.T
    return Gaussian(mean, cov)


# -- the posterior of x_0 given x_t -------------------------------------------------------------
class _Posterior(NamedTuple):
    resp: list[np.ndarray]  # K × (B,) posterior component weights r_k(x_t)
    means: list[np.ndarray]  # K × (B, D) E[x_0 | x_t, k]
    covs: list[np.ndarray]  # K × (D, D) Cov[x_0 | x_t, k]
    scores: list[np.ndarray]  # K × (B, D) −C_k⁻¹ (x_t − √ᾱ m_k)

    def mix(self, parts: list[np.ndarray]) -> np.ndarray:
        """Σ_k r_k parts[k] for parts K × (B, D): shape (B, D)."""
        out = self.resp[0][:, None] * parts[0]
        for r, p in zip(self.resp[1:], parts[1:]):
            out += r[:, None] * p
        return out


def _posterior(mix: GaussianMixture, x: np.ndarray, ab: float) -> _Posterior:
    """Component posteriors of x_0 given x (B, D) at one ᾱ (joint-Gaussian conditioning).

    Component k: C = ᾱ S + (1−ᾱ) I, E[x_0|x,k] = m + √ᾱ S C⁻¹ (x − √ᾱ m),
    Cov[x_0|x,k] = S − ᾱ S C⁻¹ S, log r_k = log w_k + log N(x; √ᾱ m, C) − log p(x).
    """
    a, D = math.sqrt(ab), mix.dim
    eye = np.eye(D)
    B, K = x.shape[0], mix.K
    logp, means, covs, scores = [], [], [], []
    with np.errstate(divide="ignore"):
        lw = np.log(mix.weights)
    for k in range(K):
        S, m = mix.covs[k], mix.means[k]
        C = ab * S + (1.0 - ab) * eye
        chol = np.linalg.cholesky(C)
        cinv = np.linalg.solve(chol.T, np.linalg.solve(chol, eye))
        cinv = 0.5 * (cinv + cinv.T)
        d = x - a * m  # (B, D)
        cd = _right_mul(d, cinv)  # rows C⁻¹ d
        if K > 1:
            logdet = 2.0 * np.log(np.diag(chol)).sum()
            quad = (d * cd).sum(axis=1) if D > 1 else (d * cd)[:, 0]
            logp.append(lw[k] - 0.5 * (quad + logdet + D * math.log(2.0 * math.pi)))
        means.append(m + a * _right_mul(cd, S))  # m + √ᾱ S C⁻¹ d (S symmetric)
        post = S - ab * S @ cinv @ S
        covs.append(0.5 * (post + post.T))
        scores.append(-cd)
    if K == 1:
        resp = [np.ones(B)]
    else:
        mx = logp[0].copy()
        for lp in logp[1:]:
            np.maximum(mx, lp, out=mx)
        mx[~np.isfinite(mx)] = 0.0
        ex = [np.exp(lp - mx) for lp in logp]
        tot = ex[0].copy()
        for e in ex[1:]:
            tot += e
        resp = [e / tot for e in ex]
    return _Posterior(resp, means, covs, scores)


def _right_mul(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """x @ M for (B, D) x and a small (D, D) M, column by column (faster than BLAS here)."""
    D = M.shape[0]
    if D > 4:
        return x @ M
    out = np.empty_like(x)
    for j in range(D):
        col = x[:, 0] * M[0, j]
        for i in range(1, D):
            col += x[:, i] * M[i, j]
        out[:, j] = col
    return out


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ_k exp(a[:, k]) for (B, K): shape (B,)."""
    mx = np.max(a, axis=1)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return mx + np.log(np.exp(a - mx[:, None]).sum(axis=1))


def _per_sample_alpha_bar(alpha_bar: object, B: int) -> np.ndarray:
    ab = as_float_array(alpha_bar, "alpha_bar")
    if ab.ndim > 0:
        if ab.shape[0] not in (1, B) or any(s != 1 for s in ab.shape[1:]):
            raise ShapeError(
                "alpha_bar", f"must be a scalar or broadcast as (B={B}, 1); got {ab.shape}"
            )
        ab = ab.reshape(ab.shape[0])
    ab = np.broadcast_to(ab, (B,))
    if np.any(ab < 0) or np.any(ab > 1):
        raise InputError("alpha_bar", "must lie in [0, 1]")
    return ab


def _by_alpha_bar(data: Law, x_t, alpha_bar, fn: Callable[[_Posterior], np.ndarray]) -> np.ndarray:
    mix = as_mixture(data)
    x = _points(x_t, mix.dim, "x_t")
    ab = _per_sample_alpha_bar(alpha_bar, x.shape[0])
    if ab.size and np.all(ab == ab[0]):
        return fn(_posterior(mix, x, float(ab[0])))
    out = None
    for v in np.unique(ab):
        idx = np.flatnonzero(ab == v)
        part = fn(_posterior(mix, x[idx], float(v)))
        if out is None:
            out = np.empty((x.shape[0], *part.shape[1:]))
        out[idx] = part
    return out


def posterior_mean_x0(data: Law, x_t, alpha_bar) -> np.ndarray:
    """The exact denoiser E[x_0 | x_t] = Σ_k r_k(x_t) E[x_0 | x_t, k]; shape (B, D).

    ``x_t`` (B, D); ``alpha_bar`` a scalar or per sample, broadcastable as (B, 1).
    """
    return _by_alpha_bar(data, x_t, alpha_bar, lambda p: p.mix(p.means))


def score(data: Law, x_t, alpha_bar) -> np.ndarray:
    """∇ log p_t(x_t) = −Σ_k r_k(x_t) C_k⁻¹ (x_t − √ᾱ m_k), C_k = ᾱ S_k + (1−ᾱ) I; (B, D).

    Tweedie's formula E[x_0|x_t] = (x_t + (1−ᾱ) ∇ log p_t(x_t)) / √ᾱ (eq. 11.4) links it to
    :func:`posterior_mean_x0` (tested, not used: the two come from separate formulas).
    """
    return _by_alpha_bar(data, x_t, alpha_bar, lambda p: p.mix(p.scores))


def _base_alpha_bar(schedule: Schedule, t: np.ndarray) -> np.ndarray:
    """ᾱ at *base* times t (the denoiser's argument), looked up through ``schedule.timesteps``."""
    ts = schedule.timesteps
    pos = np.searchsorted(ts, t)
    ok = (t >= 1) & (pos < ts.shape[0])
    ok[ok] = ts[pos[ok]] == t[ok]
    if not ok.all():
        bad = int(t[~ok][0])
        raise TimestepError("t", f"base time {bad} is not a step (>= 1) of {schedule!r}")
    return schedule.alpha_bar[pos]


def denoiser(
    data: Law, schedule: Schedule, prediction_type: str = "epsilon"
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The exact denoiser as a callable ``f(x_t, t) -> prediction`` for refdiff's samplers.

    ``t`` are int base (training) times, 1-based, scalar or (B,) — what
    :mod:`refdiff.sampling` passes (``schedule.timesteps[k]``); ᾱ at t is looked up in
    ``schedule`` (base or respaced: a respaced schedule knows ᾱ at its kept base times).
    ``x_t`` is (B, D) or (B, *shape) with prod(shape) = D.  Returns ``prediction_type`` ∈
    {epsilon, x0, v, score} of x̂_0 = E[x_0|x_t], score = ∇ log p_t(x_t),
    ε̂ = −√(1−ᾱ) score (= (x_t − √ᾱ x̂_0)/√(1−ᾱ), without its cancellation at small t),
    v = √ᾱ ε̂ − √(1−ᾱ) x̂_0 (eqs. 5.1–5.5, 11.5).
    """
    mix = as_mixture(data)
    option(prediction_type, "prediction_type", PREDICTION_TYPES)
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")

    def f(x_t, t) -> np.ndarray:
        x = as_batch(x_t, "x_t")
        B = x.shape[0]
        flat = x.reshape(B, -1)
        if flat.shape[1] != mix.dim:
            raise ShapeError(
                "x_t", f"holds {flat.shape[1]} values per sample; the data has D={mix.dim}"
            )
        try:
            tt = np.asarray(t)
        except (TypeError, ValueError) as e:  # ragged nested lists
            raise TimestepError("t", f"cannot be read as an array ({e})") from None
        if tt.dtype.kind not in "iu":
            raise TimestepError("t", f"must be integers; got dtype {tt.dtype}")
        try:
            tt = np.broadcast_to(tt.astype(np.int64), (B,))
        except ValueError:
            raise ShapeError("t", f"shape {tt.shape} does not fit a batch of {B}") from None
        ab = _base_alpha_bar(schedule, tt)[:, None]
        # x̂0 and the score from one pass; ε̂ = −√(1−ᾱ) score (eq. 11.5) avoids the
        # cancellation in x_t − √ᾱ x̂0 at small t.
        both = _by_alpha_bar(mix, flat, ab, lambda p: np.hstack([p.mix(p.means), p.mix(p.scores)]))
        x0, score_ = both[:, : mix.dim], both[:, mix.dim :]
        eps = -np.sqrt(1.0 - ab) * score_
        if prediction_type == "epsilon":
            out = eps
        elif prediction_type == "x0":
            out = x0
        elif prediction_type == "v":
            out = np.sqrt(ab) * eps - np.sqrt(1.0 - ab) * x0
        else:
            out = score_
        return out.reshape(x.shape)

    return f


# -- the exact reverse kernel q(x_{t−1} | x_t) ------------------------------------------------
def reverse_coefficients(schedule: Schedule, t: int) -> tuple[float, float, float]:
    """(c0, ct, v): q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, v I), s = the step before t.

    From the product rule on x_s | x_0 ~ N(√ᾱ_s x_0, 1−ᾱ_s) and x_t | x_s ~ N(√r x_s, 1−r),
    r = ᾱ_t/ᾱ_s: v = (1−ᾱ_s)(1−r)/(1−ᾱ_t), c0 = √ᾱ_s (1−r)/(1−ᾱ_t), ct = √r (1−ᾱ_s)/(1−ᾱ_t).
    """
    t = _step(schedule, t)
    ab_t, ab_s = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t - 1])
    r = ab_t / ab_s
    den = 1.0 - ab_t
    return (
        math.sqrt(ab_s) * (1.0 - r) / den,
        math.sqrt(r) * (1.0 - ab_s) / den,
        (1.0 - ab_s) * (1.0 - r) / den,
    )


def _step(schedule: Schedule, t: object) -> int:
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    tt = schedule.check_t(t)
    if tt.ndim != 0:
        raise TimestepError("t", "must be a single int (one step of the schedule)")
    return int(tt)


@dataclass(frozen=True, eq=False)
class ReverseKernel:
    """Per-sample Gaussian mixtures: sample b is Σ_k weights[b,k] N(means[b,k], covs[k]).

    ``weights`` (B, K), ``means`` (B, K, D), ``covs`` (K, D, D) (the same for every sample).
    """

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One draw per sample, (B, D): component by inverse CDF of a uniform, then m + L z."""
        rng = _rng(rng)
        B, K, D = self.means.shape
        u = rng.random(B)
        k = np.minimum((np.cumsum(self.weights, axis=1) < u[:, None]).sum(axis=1), K - 1)
        z = rng.standard_normal((B, D))
        L = np.stack([_sqrt_factor(c) for c in self.covs])
        return self.means[np.arange(B), k] + np.einsum("bij,bj->bi", L[k], z)

    def log_prob(self, x) -> np.ndarray:
        """log density of x (B, D), each row under its own mixture: shape (B,)."""
        B, K, D = self.means.shape
        x = _points(x, D)
        if x.shape[0] != B:
            raise ShapeError("x", f"needs {B} rows; got {x.shape[0]}")
        with np.errstate(divide="ignore"):
            lw = np.log(self.weights)
        lp = np.stack(
            [lw[:, k] + _rowwise_logpdf(x, self.means[:, k], self.covs[k]) for k in range(K)],
            axis=1,
        )
        return _logsumexp(lp)


def _rowwise_logpdf(x: np.ndarray, m: np.ndarray, c: np.ndarray) -> np.ndarray:
    return _gauss_logpdf(x - m, np.zeros(x.shape[1]), c)


def reverse_kernel(data: Law, schedule: Schedule, x_t, t: int) -> ReverseKernel:
    """The exact q(x_{t−1} | x_t) for x_0 ~ ``data``: a Gaussian mixture per sample.

    ``t`` ∈ [1, T] is a step of ``schedule`` (on a respaced schedule, t − 1 is the previous
    kept step).  Component k: weight r_k(x_t), mean c0 E[x_0|x_t,k] + ct x_t, covariance
    c0² Cov[x_0|x_t,k] + v I (:func:`reverse_coefficients`).
    """
    t = _step(schedule, t)
    mix = as_mixture(data)
    x = _points(x_t, mix.dim, "x_t")
    c0, ct, v = reverse_coefficients(schedule, t)
    p = _posterior(mix, x, float(schedule.alpha_bar[t]))
    covs = c0**2 * np.stack(p.covs) + v * np.eye(mix.dim)
    means = np.stack([c0 * m + ct * x for m in p.means], axis=1)
    return ReverseKernel(np.stack(p.resp, axis=1), means, covs)


def reverse_sample(
    data: Law,
    schedule: Schedule,
    n: int,
    *,
    rng: np.random.Generator,
    return_trajectory: bool = False,
):
    """Exact ancestral sampling: x_T ~ :func:`marginal` (T), then x_{t−1} ~ q(x_{t−1}|x_t).

    Every state of the chain has exactly the law ``marginal(data, schedule, t)``.  Returns
    x_0 (n, D), or (x_0, trajectory) with trajectory (T+1, n, D), trajectory[0] = x_T (the
    layout of :func:`refdiff.sampling.ddpm_sample`).
    """
    rng = _rng(rng)
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    x = marginal(data, schedule, schedule.T).sample(rng, n)
    traj = [x] if return_trajectory else None
    for t in range(schedule.T, 0, -1):
        x = reverse_kernel(data, schedule, x, t).sample(rng)
        if traj is not None:
            traj.append(x)
    return (x, np.stack(traj)) if return_trajectory else x


# -- exact laws of DDPM / DDIM outputs for Gaussian data ---------------------------------------
class AffineStep(NamedTuple):
    """One sampler step with the exact denoiser on Gaussian data: x_{t−1} = A x_t + b + σ z.

    t: the step (from t to t − 1 of the sampled schedule); A (D, D); b (D,); sigma ≥ 0 (0 when
    the step adds no noise).
    """

    t: int
    A: np.ndarray
    b: np.ndarray
    sigma: float


def _gaussian(data: object, fn: str) -> Gaussian:
    if isinstance(data, GaussianMixture) and data.K == 1:
        return Gaussian(data.means[0], data.covs[0])
    if not isinstance(data, Gaussian):
        raise InputError(
            "data", f"{fn} needs Gaussian data (the sampler output is not Gaussian otherwise)"
        )
    return data


def _denoiser_affine(g: Gaussian, ab: float) -> tuple[np.ndarray, np.ndarray]:
    """E[x_0|x_t] = P x_t + p at ᾱ: P = √ᾱ S C⁻¹, p = m − √ᾱ P m."""
    a = math.sqrt(ab)
    C = ab * g.cov + (1.0 - ab) * np.eye(g.dim)
    P = a * np.linalg.solve(C, g.cov).T  # S C⁻¹ = (C⁻¹ S)ᵀ, C and S symmetric
    return P, g.mean - a * P @ g.mean


def _refuse_nonlinear(clip, threshold_ratio) -> None:
    if clip is not None:
        raise InputError("clip", "clipping x̂_0 is nonlinear: the sampler output is not Gaussian")
    if threshold_ratio is not None:
        raise InputError(
            "threshold_ratio", "thresholding x̂_0 is nonlinear: the sampler output is not Gaussian"
        )


def _check_prediction(schedule: Schedule, prediction_type: str) -> None:
    option(prediction_type, "prediction_type", PREDICTION_TYPES)
    if prediction_type in ("epsilon", "score") and np.any(schedule.alpha_bar[1:] == 0.0):
        raise UndefinedError(
            "prediction_type",
            f"{prediction_type}-prediction cannot give x̂_0 where ᾱ_t = 0 (zero terminal SNR); "
            "the sampler refuses it, so has no law",
        )


def ddpm_affine_steps(
    data: Law,
    schedule: Schedule,
    *,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    log_variance_clipping: str = "next",
    model_variance=None,
    clip: float | None = None,
    threshold_ratio: float | None = None,
    threshold_max: float = 1.0,
) -> list[AffineStep]:
    """The N steps of :func:`refdiff.sampling.ddpm_sample` with the exact denoiser, in order.

    Step t: x̂_0 = P x_t + p (the exact denoiser at ᾱ_t, whatever ``prediction_type``
    round-trips through), mean = c0 x̂_0 + ct x_t with the coefficients of
    :func:`reverse_coefficients`, σ² = v (``fixed_small``) or 1 − ᾱ_t/ᾱ_{t−1}
    (``fixed_large``, ``fixed_large_iddpm``); no noise at t = 1.  Learned variances, clipping
    and thresholding have no exact Gaussian law and raise :class:`InputError`.
    """
    g = _gaussian(data, "ddpm_law")
    option(variance_type, "variance_type", FIXED_VARIANCES + LEARNED_VARIANCES)
    if variance_type in LEARNED_VARIANCES or model_variance is not None:
        raise InputError(
            "variance_type", f"{variance_type!r}: the exact denoiser predicts no variance"
        )
    option(log_variance_clipping, "log_variance_clipping", ("next", "floor"))
    _refuse_nonlinear(clip, threshold_ratio)
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    _check_prediction(schedule, prediction_type)
    steps = []
    eye = np.eye(g.dim)
    for t in range(schedule.T, 0, -1):
        ab_t, ab_s = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t - 1])
        P, p = _denoiser_affine(g, ab_t)
        c0, ct, v = reverse_coefficients(schedule, t)
        var = v if variance_type == "fixed_small" else 1.0 - ab_t / ab_s
        sigma = math.sqrt(var) if t > 1 else 0.0
        steps.append(AffineStep(t, c0 * P + ct * eye, c0 * p, sigma))
    return steps


def _final_alpha_bar(schedule: Schedule, final_alpha_bar: object) -> float:
    if isinstance(final_alpha_bar, str):
        option(final_alpha_bar, "final_alpha_bar", ("one", "first"))
        return 1.0 if final_alpha_bar == "one" else float(schedule.base_alpha_bar_1)
    what = "'one', 'first' or in (0, 1]"
    return real(final_alpha_bar, "final_alpha_bar", low=0.0, high=1.0, low_open=True, what=what)


def ddim_affine_steps(
    data: Law,
    schedule: Schedule,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    rederive_eps: bool = True,
    final_alpha_bar: str | float = "one",
    final_step_noise: bool = False,
    clip: float | None = None,
    threshold_ratio: float | None = None,
    threshold_max: float = 1.0,
) -> list[AffineStep]:
    """The N steps of :func:`refdiff.sampling.ddim_sample` with the exact denoiser, in order.

    Step t: x̂_0 = P x_t + p, ε̂ = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t) (``rederive_eps`` is moot
    without clipping), x_{t−1} = √ᾱ_p x̂_0 + √(1−ᾱ_p−σ²) ε̂ + σ z with
    σ² = η² (1−ᾱ_p)/(1−ᾱ_t) (1 − ᾱ_t/ᾱ_p) (eq. 7.10) and ᾱ_p = ᾱ_{t−1}, or at t = 1 the
    ``final_alpha_bar`` ("one" → 1, "first" → ᾱ at base time 1, or a float).  Noise only
    when η > 0, and at t = 1 only with ``final_step_noise``.
    """
    g = _gaussian(data, "ddim_law")
    real(eta, "eta", low=0.0, high=1.0)
    _refuse_nonlinear(clip, threshold_ratio)
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    _check_prediction(schedule, prediction_type)
    final = _final_alpha_bar(schedule, final_alpha_bar)
    eye = np.eye(g.dim)
    steps = []
    for t in range(schedule.T, 0, -1):
        ab_t = float(schedule.alpha_bar[t])
        ab_p = float(schedule.alpha_bar[t - 1]) if t > 1 else final
        P, p = _denoiser_affine(g, ab_t)
        var = max(eta**2 * (1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p), 0.0)
        k_eps = math.sqrt(max(1.0 - ab_p - var, 0.0)) / math.sqrt(1.0 - ab_t)
        a_t, a_p = math.sqrt(ab_t), math.sqrt(ab_p)
        # x_{t−1} = a_p (P x + p) + k_eps (x − a_t (P x + p)) + σ z
        A = a_p * P + k_eps * (eye - a_t * P)
        b = (a_p - k_eps * a_t) * p
        noisy = eta > 0 and (t > 1 or final_step_noise)
        steps.append(AffineStep(t, A, b, math.sqrt(var) if noisy else 0.0))
    return steps


def propagate(start: Gaussian, steps: list[AffineStep], *, return_trajectory: bool = False):
    """Push a Gaussian through affine steps: m ← A m + b, C ← A C Aᵀ + σ² I.

    Returns the final :class:`Gaussian`, or the list of laws [start, after step 1, …].
    """
    if not isinstance(start, Gaussian):
        raise InputError("start", f"must be a Gaussian; got {type(start).__name__}")
    m, C = start.mean, start.cov
    laws = [start]
    eye = np.eye(start.dim)
    for s in steps:
        if s.A.shape != (start.dim, start.dim):
            raise ShapeError("steps", f"A has shape {s.A.shape}, the state D={start.dim}")
        m = s.A @ m + s.b
        C = s.A @ C @ s.A.T + s.sigma**2 * eye
        C = 0.5 * (C + C.T)
        if return_trajectory:
            laws.append(Gaussian(m, C))
    return laws if return_trajectory else Gaussian(m, C)


def _check_options(options: dict, fn: Callable) -> None:
    valid = [p for p in inspect.signature(fn).parameters if p not in ("data", "schedule")]
    for k in options:
        if k not in valid:
            raise OptionError("options", k, valid)


def _start(g: Gaussian, start: Gaussian | None) -> Gaussian:
    if start is None:
        return Gaussian(np.zeros(g.dim), np.eye(g.dim))
    if not isinstance(start, Gaussian) or start.dim != g.dim:
        raise InputError("start", f"must be a Gaussian on R^{g.dim}")
    return start


def ddpm_law(
    data: Gaussian,
    schedule: Schedule,
    *,
    start: Gaussian | None = None,
    return_trajectory: bool = False,
    **options,
):
    """The exact law (a :class:`Gaussian`) of ``ddpm_sample(denoiser(data, …), schedule, …)``.

    ``start`` is the law of x_T (default N(0, I), what the sampler draws); ``options`` are
    :func:`ddpm_affine_steps`' (the sampler's own option names).  With
    ``return_trajectory`` the list of laws of x_T, …, x_0.
    """
    g = _gaussian(data, "ddpm_law")
    _check_options(options, ddpm_affine_steps)
    steps = ddpm_affine_steps(g, schedule, **options)
    return propagate(_start(g, start), steps, return_trajectory=return_trajectory)


def ddim_law(
    data: Gaussian,
    schedule: Schedule,
    *,
    start: Gaussian | None = None,
    return_trajectory: bool = False,
    **options,
):
    """The exact law of ``ddim_sample(denoiser(data, …), schedule, …)``; as :func:`ddpm_law`."""
    g = _gaussian(data, "ddim_law")
    _check_options(options, ddim_affine_steps)
    steps = ddim_affine_steps(g, schedule, **options)
    return propagate(_start(g, start), steps, return_trajectory=return_trajectory)
