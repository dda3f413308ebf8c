"""Noise schedules: β_t, α_t, ᾱ_t and what derives from them (docs/math.md §2, eqs. 2.1–2.15).

Time convention (docs/math.md §1): t ∈ {0, 1, …, T}; t = 0 is the data, step t adds the
t-th noise.  Every per-step array of a :class:`Schedule` has length T + 1 and is indexed by t
directly (``alpha_bar[0] == 1``, ``beta[0] == 0``).  diffusers and improved-diffusion index
the same steps 0-based: their index i is our t = i + 1 (:func:`t_from_index`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ._check import as_float_array, integer, real, timesteps
from .errors import InputError, ScheduleError, TimestepError

__all__ = [
    "Schedule",
    "linear",
    "linear_iddpm",
    "scaled_linear",
    "cosine",
    "sigmoid",
    "from_betas",
    "from_alpha_bar",
    "rescale_zero_terminal_snr",
    "respace",
    "make_schedule",
    "SCHEDULES",
    "t_from_index",
    "index_from_t",
]

# Largest T we accept: keeps every per-step array below ~100 MB and refuses absurd sizes
# before anything is allocated.
MAX_T = 10_000_000


def t_from_index(i: object) -> np.ndarray:
    """diffusers / improved-diffusion 0-based step index → refdiff time t = i + 1 (eq. 1.1)."""
    return timesteps(i, "i", low=0, high=MAX_T - 1) + 1


def index_from_t(t: object) -> np.ndarray:
    """refdiff time t ≥ 1 → the 0-based step index used by diffusers and improved-diffusion."""
    t = timesteps(t, "t", low=0, high=MAX_T)
    if t.size and t.min() < 1:
        raise TimestepError("t", "t = 0 is the data and has no step index")
    return t - 1


@dataclass(frozen=True, eq=False)
class Schedule:
    """A variance-preserving noise schedule, indexed by t ∈ {0, …, T} (docs/math.md §2).

    Build it with a constructor (:func:`linear`, :func:`cosine`, :func:`respace`, …).

    Attributes:
        beta: (T+1,) float64, β_t = 1 − ᾱ_t / ᾱ_{t−1}; ``beta[0] = 0``.  For a respaced
            schedule this is the respaced β′ of eq. 2.9.
        alpha_bar: (T+1,) float64, ᾱ_t = ∏_{s≤t} (1 − β_s) (eq. 2.2); ``alpha_bar[0] = 1``.
        timesteps: (T+1,) int64, the time of the *base* (training) schedule that step t of
            this schedule stands for; the identity unless respaced.  A denoiser trained on the
            base schedule is called with ``timesteps[t]``.
        base_alpha_bar_1: ᾱ at base time 1 (the "final ᾱ" option of DDIM, eq. 7.10).
        name: a human-readable description.
    """

    beta: np.ndarray
    alpha_bar: np.ndarray
    timesteps: np.ndarray
    base_alpha_bar_1: float
    name: str = field(default="custom")

    def __post_init__(self) -> None:
        b, ab, ts = self.beta, self.alpha_bar, self.timesteps
        for nm, a in (("beta", b), ("alpha_bar", ab), ("timesteps", ts)):
            if not isinstance(a, np.ndarray) or a.ndim != 1:
                raise ScheduleError(nm, "must be a 1-D numpy array")
            a.setflags(write=False)
        if not (b.shape == ab.shape == ts.shape) or b.shape[0] < 2:
            raise ScheduleError("alpha_bar", f"needs T+1 >= 2 entries; got {ab.shape}, {b.shape}")
        if ab[0] != 1.0 or b[0] != 0.0 or ts[0] != 0:
            raise ScheduleError("alpha_bar", "entry t=0 must be the data (ᾱ=1, β=0, time 0)")
        if np.any(np.diff(ts) <= 0):
            raise ScheduleError("timesteps", "must be strictly increasing")
        # The invariants every formula relies on (docs/reliability.md): finite, ᾱ strictly
        # decreasing in [0, 1] and zero at most at t = T, β_t in (0, 1] for t >= 1.
        if not (np.isfinite(b).all() and np.isfinite(ab).all()):
            raise ScheduleError("alpha_bar", "beta and alpha_bar must be finite")
        if np.any(np.diff(ab) >= 0) or ab[-1] < 0.0 or np.any(ab[1:-1] <= 0.0):
            raise ScheduleError("alpha_bar", "must decrease strictly from 1, zero at most at t=T")
        if np.any(b[1:] <= 0.0) or np.any(b[1:] > 1.0):
            raise ScheduleError("beta", "β_t must be in (0, 1] for t >= 1")
        if not 0.0 < self.base_alpha_bar_1 <= 1.0:
            msg = f"must be in (0, 1]; got {self.base_alpha_bar_1!r}"
            raise ScheduleError("base_alpha_bar_1", msg)

    @classmethod
    def unchecked(
        cls,
        beta: np.ndarray,
        alpha_bar: np.ndarray,
        timesteps: np.ndarray,
        base_alpha_bar_1: float,
        name: str = "custom",
    ) -> Schedule:
        """A Schedule from (T+1,) arrays *without* the checks of ``__post_init__`` above.

        Only for arrays derived from a valid schedule by code that knows what it does: the
        finite differences of the conformance tolerances build thousands of slightly
        perturbed schedules, and the diagnoses build shifted ones that break the invariants
        on purpose (refdiff.conformance.tolerance, refdiff.conformance.diagnoses).  The
        arrays are frozen (made read-only) in place.
        """
        s = object.__new__(cls)
        for k, v in (("beta", beta), ("alpha_bar", alpha_bar), ("timesteps", timesteps)):
            v.setflags(write=False)
            object.__setattr__(s, k, v)
        object.__setattr__(s, "base_alpha_bar_1", float(base_alpha_bar_1))
        object.__setattr__(s, "name", name)
        return s

    # -- sizes ------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        """Number of noising steps."""
        return self.beta.shape[0] - 1

    @property
    def is_respaced(self) -> bool:
        return bool(self.timesteps[-1] != self.T)

    # -- derived per-step arrays, each (T+1,) float64 (docs/math.md eqs. 2.1–2.8) ------------
    @cached_property
    def alpha(self) -> np.ndarray:
        """α_t = 1 − β_t (eq. 2.1)."""
        return _frozen(1.0 - self.beta)

    @cached_property
    def alpha_bar_prev(self) -> np.ndarray:
        """ᾱ_{t−1} (eq. 2.2); entry 0 is 1 by convention (it is never used)."""
        return _frozen(np.concatenate([[1.0], self.alpha_bar[:-1]]))

    @cached_property
    def sqrt_alpha_bar(self) -> np.ndarray:
        """√ᾱ_t, the signal scale of q(x_t|x_0) (eq. 3.2)."""
        return _frozen(np.sqrt(self.alpha_bar))

    @cached_property
    def sqrt_one_minus_alpha_bar(self) -> np.ndarray:
        """√(1 − ᾱ_t), the noise scale of q(x_t|x_0) (eq. 3.2)."""
        return _frozen(np.sqrt(1.0 - self.alpha_bar))

    @cached_property
    def snr(self) -> np.ndarray:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021; eq. 2.5); +inf at t = 0."""
        with np.errstate(divide="ignore"):
            return _frozen(self.alpha_bar / (1.0 - self.alpha_bar))

    @cached_property
    def log_snr(self) -> np.ndarray:
        """λ_t = log SNR(t) = log ᾱ_t − log(1 − ᾱ_t) (eq. 2.6); ±inf at the ends if exact."""
        with np.errstate(divide="ignore"):
            return _frozen(np.log(self.alpha_bar) - np.log1p(-self.alpha_bar))

    @cached_property
    def sigma(self) -> np.ndarray:
        """VE noise level σ_t = √((1 − ᾱ_t)/ᾱ_t) (eq. 2.7); +inf where ᾱ_t = 0."""
        with np.errstate(divide="ignore"):
            return _frozen(np.sqrt((1.0 - self.alpha_bar) / self.alpha_bar))

    def __repr__(self) -> str:
        return (
            f"Schedule({self.name!r}, T={self.T}, alpha_bar[1]={self.alpha_bar[1]:.6g}, "
            f"alpha_bar[T]={self.alpha_bar[-1]:.6g})"
        )

    def check_t(self, t: object, name: str = "t", *, allow_zero: bool = False) -> np.ndarray:
        """Validate timesteps against this schedule: int64 array in [1, T] (or [0, T])."""
        return timesteps(t, name, low=0 if allow_zero else 1, high=self.T)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def check_T(T: object) -> int:
    """The number of steps T: an int (NumPy ints too, never a bool) in [1, MAX_T]."""
    return integer(T, "T", low=1, high=MAX_T)


def _beta_range(beta_start: float, beta_end: float) -> None:
    for nm, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        real(v, nm, low=0.0, high=1.0, low_open=True, error=ScheduleError)


# -- constructors ---------------------------------------------------------------------------
def from_betas(betas: object, *, name: str = "from_betas") -> Schedule:
    """Schedule from β_1..β_T, shape (T,), each in (0, 1]; only β_T may equal 1 (eq. 2.2)."""
    b = as_float_array(betas, "betas")
    if b.ndim != 1 or b.shape[0] < 1:
        raise ScheduleError("betas", f"must be 1-D with T >= 1 entries; got shape {b.shape}")
    check_T(b.shape[0])
    bad = np.flatnonzero(~((b > 0.0) & (b <= 1.0)))
    if bad.size:
        i = int(bad[0])
        raise ScheduleError("betas", f"β_{i + 1} = {b[i]!r} is outside (0, 1]")
    if b.shape[0] > 1 and np.any(b[:-1] == 1.0):
        i = int(np.flatnonzero(b[:-1] == 1.0)[0])
        raise ScheduleError("betas", f"β_{i + 1} = 1 before the last step makes ᾱ zero early")
    if b.shape[0] == 1 and b[0] == 1.0:
        raise ScheduleError("betas", "β_1 = 1 with T = 1 leaves no step with ᾱ > 0")
    beta = np.concatenate([[0.0], b])
    alpha_bar = np.cumprod(1.0 - beta)
    stuck = np.flatnonzero(np.diff(alpha_bar) >= 0)
    if stuck.size:  # 1 − β_t rounds to 1 (β_t < 1.1e-16), or ᾱ underflowed to 0 before t = T
        i = int(stuck[0])
        ab_i, b_i = float(alpha_bar[i]), float(b[i])
        msg = f"ᾱ_{i + 1} = ᾱ_{i} = {ab_i!r} in float64 (β_{i + 1} = {b_i!r})"
        raise ScheduleError("betas", msg)
    T = b.shape[0]
    return Schedule(beta, alpha_bar, np.arange(T + 1, dtype=np.int64), float(alpha_bar[1]), name)


def from_alpha_bar(alpha_bar: object, *, name: str = "from_alpha_bar") -> Schedule:
    """Schedule from ᾱ_1..ᾱ_T, shape (T,), via eq. 2.3: strictly decreasing, only ᾱ_T may be 0."""
    ab = as_float_array(alpha_bar, "alpha_bar")
    if ab.ndim != 1 or ab.shape[0] < 1:
        raise ScheduleError("alpha_bar", f"must be 1-D with T >= 1 entries; got {ab.shape}")
    check_T(ab.shape[0])
    full = np.concatenate([[1.0], ab])
    if np.any(np.diff(full) >= 0):
        i = int(np.flatnonzero(np.diff(full) >= 0)[0])
        raise ScheduleError(
            "alpha_bar", f"must be strictly decreasing from ᾱ_0 = 1; ᾱ_{i + 1} = {full[i + 1]!r}"
        )
    if ab[-1] < 0.0:
        raise ScheduleError("alpha_bar", f"ᾱ_T = {ab[-1]!r} is negative")
    if ab[0] == 0.0:
        raise ScheduleError("alpha_bar", "ᾱ_1 = 0 leaves no step with ᾱ > 0")
    beta = np.concatenate([[0.0], 1.0 - full[1:] / full[:-1]])
    T = ab.shape[0]
    return Schedule(beta, full, np.arange(T + 1, dtype=np.int64), float(full[1]), name)


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """β_t linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020; eq. 2.10)."""
    T = check_T(T)
    _beta_range(beta_start, beta_end)
    return from_betas(np.linspace(beta_start, beta_end, T), name=f"linear({beta_start},{beta_end})")


def linear_iddpm(T: int) -> Schedule:
    """improved-diffusion's linear: the T=1000 range scaled by 1000/T (eq. 2.11)."""
    T = check_T(T)
    scale = 1000.0 / T
    if scale * 0.02 > 1.0:
        raise ScheduleError("T", f"T={T} makes β_T = {scale * 0.02} > 1")
    return from_betas(np.linspace(scale * 1e-4, scale * 0.02, T), name="linear_iddpm")


def scaled_linear(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """√β_t linear (Stable Diffusion's "scaled_linear"; eq. 2.12)."""
    T = check_T(T)
    _beta_range(beta_start, beta_end)
    b = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T) ** 2
    return from_betas(b, name=f"scaled_linear({beta_start},{beta_end})")


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Cosine schedule of Nichol & Dhariwal 2021 (eq. 2.13).

    f(u) = cos²((u + s)/(1 + s) · π/2), β_t = min(1 − f(t/T)/f((t−1)/T), max_beta).
    """
    T = check_T(T)
    s = real(s, "s", low=0.0, error=ScheduleError)
    max_beta = real(max_beta, "max_beta", low=0.0, high=1.0, low_open=True, error=ScheduleError)
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((u + s) / (1.0 + s) * (math.pi / 2.0)) ** 2
    b = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return from_betas(b, name=f"cosine(s={s},max_beta={max_beta})")


def sigmoid(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """β_t = sigmoid(linspace(−6, 6, T)) · (beta_end − beta_start) + beta_start (eq. 2.14)."""
    T = check_T(T)
    _beta_range(beta_start, beta_end)
    x = np.linspace(-6.0, 6.0, T)
    b = (1.0 / (1.0 + np.exp(-x))) * (beta_end - beta_start) + beta_start
    return from_betas(b, name=f"sigmoid({beta_start},{beta_end})")


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Lin et al. 2023, Alg. 1 (eq. 2.15): shift and scale √ᾱ so that ᾱ_T = 0, ᾱ_1 unchanged.

    The last β becomes exactly 1; ε-prediction is then undefined at t = T (see
    :func:`refdiff.parameterization.x0_from_eps`).
    """
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    if schedule.is_respaced:
        raise ScheduleError("schedule", "rescale the base schedule, then respace it")
    if schedule.T < 2:
        raise ScheduleError("schedule", "needs T >= 2 (ᾱ_1 is kept, ᾱ_T becomes 0)")
    s = np.sqrt(schedule.alpha_bar[1:])
    s0, sT = s[0], s[-1]
    s = (s - sT) * s0 / (s0 - sT)
    ab = s**2
    ab[-1] = 0.0  # exact, not a rounding residue
    out = from_alpha_bar(ab, name=f"zero_snr({schedule.name})")
    beta = out.beta.copy()
    beta[-1] = 1.0
    return Schedule(beta, out.alpha_bar, out.timesteps, out.base_alpha_bar_1, out.name)


def respace(schedule: Schedule, times: object) -> Schedule:
    """Keep the steps at ``times`` (ascending ints in [1, T]) and re-derive β (eq. 2.9).

    β′_k = 1 − ᾱ_{τ_k}/ᾱ_{τ_{k−1}}, τ_0 = 0.  ``timesteps`` of the result maps each new step
    back to the base schedule (composing when ``schedule`` is itself respaced).
    """
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    tau = schedule.check_t(times, "times")
    if tau.ndim != 1 or tau.size == 0:
        raise ScheduleError("times", "must be a non-empty 1-D sequence of timesteps")
    if np.any(np.diff(tau) <= 0):
        raise ScheduleError("times", "must be strictly increasing (no repeats)")
    idx = np.concatenate([[0], tau])
    ab = schedule.alpha_bar[idx].copy()
    beta = np.concatenate([[0.0], 1.0 - ab[1:] / ab[:-1]])
    return Schedule(
        beta,
        ab,
        schedule.timesteps[idx].copy(),
        schedule.base_alpha_bar_1,
        f"{schedule.name}[{tau.size} of {schedule.T}]",
    )


SCHEDULES = {
    "linear": linear,
    "linear_iddpm": linear_iddpm,
    "scaled_linear": scaled_linear,
    "cosine": cosine,
    "sigmoid": sigmoid,
}


def make_schedule(name: str, T: int, *, zero_terminal_snr: bool = False, **kwargs) -> Schedule:
    """A named schedule: one of :data:`SCHEDULES`; keyword arguments go to its constructor."""
    from ._check import option

    option(name, "name", list(SCHEDULES))
    try:
        s = SCHEDULES[name](T, **kwargs)
    except TypeError as e:  # an unknown keyword: name it
        raise InputError("kwargs", f"{name}: {e}") from None
    return rescale_zero_terminal_snr(s) if zero_terminal_snr else s
