"""Compile a DDPM/DDIM sampler of the reference (refdiff.reverse) into per-step coefficient tables.

Every fixed-variance reverse step of :mod:`refdiff.reverse` is, for a given time t, a
piecewise-linear map of the state x_t, the denoiser output o and the standard-normal noise z
(docs/math.md §7, eqs. 7.1, 7.3–7.10):

    x̂_0 = a_x x_t + a_o o                      (eqs. 5.1–5.5; per prediction type)
    x_{t−1} = A x_t + B o + C clip(x̂_0, −c, c) + S z

Without clipping C = 0 and the step is linear.  The scalars (A, B, C, S, a_x, a_o) are
computed here in float64 for each step taken; the ONNX graphs only gather one row per step
and do four multiply-adds, so the float32 graph loses nothing to cancellation in the schedule
arithmetic (it is all done in float64 on the host).

Step k (0-based, the k-th step taken) goes from time t = N − k to N − k − 1 and calls the
denoiser with the base time ``schedule.timesteps[t]`` — the layout of
:mod:`refdiff.sampling`, so ``step_noise[k]`` is the noise of step k.

The σ-view samplers ``euler``, ``euler_ancestral``, ``dpmpp_2m`` and ``flow_euler`` compile
to the same tables plus a multistep term (:mod:`refdiff.export.sigma_tables`).

Supported: DDPM with ``variance_type`` ∈ {fixed_small, fixed_large, fixed_large_iddpm} and
``clip``; DDIM with ``eta``, ``clip``, ``rederive_eps``, ``final_alpha_bar``,
``final_step_noise``.  Not supported in ONNX (a clear :class:`~refdiff.errors.OptionError`):
learned variances (2C-channel outputs) and dynamic thresholding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from refdiff.errors import InputError, OptionError, UndefinedError
from refdiff.parameterization import PREDICTION_TYPES
from refdiff.posterior import LOG_VARIANCE_CLIPPINGS, posterior_coefficients, posterior_variance
from refdiff.reverse import FINAL_ALPHA_BARS
from refdiff.schedule import Schedule

__all__ = [
    "SAMPLERS",
    "ONNX_VARIANCE_TYPES",
    "StepTables",
    "step_tables",
    "conversion_coefficients",
]

SAMPLERS = ("ddpm", "ddim", "euler", "euler_ancestral", "dpmpp_2m", "flow_euler")
ONNX_VARIANCE_TYPES = ("fixed_small", "fixed_large", "fixed_large_iddpm")
_DDPM_OPTIONS = (
    "variance_type",
    "clip",
    "threshold_ratio",
    "threshold_max",
    "log_variance_clipping",
)
_DDIM_OPTIONS = (
    "eta",
    "clip",
    "threshold_ratio",
    "threshold_max",
    "rederive_eps",
    "final_alpha_bar",
    "final_step_noise",
)


@dataclass(frozen=True, eq=False)
class StepTables:
    """Per-step coefficients of a sampler; every array has shape (N,), indexed by step k.

    ``base_t[k]`` is the base (training) time the denoiser is called with at step k (refdiff's
    1-based convention); ``t[k] = N − k`` the schedule time the step starts from.
    ``options`` is the normalised, JSON-serialisable option dict (what the metadata records).
    """

    sampler: str
    prediction_type: str
    options: dict
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    S: np.ndarray
    ax: np.ndarray
    ao: np.ndarray
    t: np.ndarray
    base_t: np.ndarray
    clip: float | None = None
    schedule: Schedule | None = field(default=None, repr=False)
    # σ-view samplers (refdiff.export.sigma_tables): m is the previous step's x̂_0
    H: np.ndarray | None = None  # coefficient of m in x_next
    Dx: np.ndarray | None = None  # m_next = Dx x + Do o
    Do: np.ndarray | None = None
    c_in: np.ndarray | None = None  # the model is called on c_in · x
    model_t: np.ndarray | None = None  # the model's time (1-based, or model units for flow)
    x_T_scale: float = 1.0  # x_T = x_T_scale · z
    time_in_model_units: bool = False

    @property
    def multistep(self) -> bool:
        """Whether the state carries m (the previous x̂_0) beside x."""
        return self.H is not None

    @property
    def N(self) -> int:
        """Number of steps."""
        return int(self.A.shape[0])

    @property
    def noisy(self) -> bool:
        """Whether any step adds noise (DDPM; DDIM with η > 0)."""
        return bool(np.any(self.S != 0.0))

    def x_next(self, k: int, x: np.ndarray, out: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        """The step in float64 NumPy (the same algebra the graphs run); shapes as ``x``."""
        x = np.asarray(x, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        y = self.A[k] * x + self.B[k] * out
        if self.clip is not None:
            y = y + self.C[k] * np.clip(self.ax[k] * x + self.ao[k] * out, -self.clip, self.clip)
        if self.S[k] != 0.0:
            y = y + self.S[k] * np.asarray(z, dtype=np.float64)
        return y

    def model_times(self) -> np.ndarray:
        """(N,) float64: the time each step calls the model with (refdiff's 1-based base time,
        or the model's own units when ``time_in_model_units``)."""
        return self.base_t.astype(np.float64) if self.model_t is None else self.model_t


def conversion_coefficients(alpha_bar: np.ndarray, prediction_type: str):
    """(a_x, a_o, e_x, e_o) with x̂_0 = a_x x + a_o o and ε̂ = e_x x + e_o o (eqs. 5.1–5.5).

    ``alpha_bar``: float64 array of ᾱ_t for t ≥ 1.  ε and score predictions are undefined
    where ᾱ = 0 (zero terminal SNR): :class:`~refdiff.errors.UndefinedError`.
    """
    ab = np.asarray(alpha_bar, dtype=np.float64)
    sa, s1 = np.sqrt(ab), np.sqrt(1.0 - ab)
    one, zero = np.ones_like(ab), np.zeros_like(ab)
    if prediction_type in ("epsilon", "score") and np.any(ab == 0.0):
        raise UndefinedError(
            "prediction_type",
            f"{prediction_type}-prediction cannot give x̂_0 where ᾱ_t = 0 "
            "(zero terminal SNR); use v",
        )
    if prediction_type == "epsilon":
        return 1.0 / sa, -s1 / sa, zero, one
    if prediction_type == "score":  # ε̂ = −√(1−ᾱ) · score
        return 1.0 / sa, (1.0 - ab) / sa, zero, -s1
    if prediction_type == "x0":
        return zero, one, 1.0 / s1, -sa / s1
    return sa, -s1, s1, sa  # v


def _check_options(sampler: str, options: dict) -> None:
    allowed = _DDPM_OPTIONS if sampler == "ddpm" else _DDIM_OPTIONS
    for k in options:
        if k not in allowed:
            raise OptionError("options", k, list(allowed))
    if options.get("threshold_ratio") is not None:
        raise InputError(
            "threshold_ratio",
            "dynamic thresholding is not supported in the ONNX samplers (use clip)",
        )
    clip = options.get("clip")
    if clip is not None and not (
        isinstance(clip, int | float) and math.isfinite(clip) and clip > 0
    ):
        raise InputError("clip", f"must be a finite float > 0; got {clip!r}")


def step_tables(
    schedule: Schedule, sampler: str = "ddpm", *, prediction_type: str = "epsilon", **options
) -> StepTables:
    """Coefficient tables of ``sampler`` over every step of ``schedule`` (respace it first).

    ``options`` are those of :func:`refdiff.reverse.ddpm_step` / :func:`~refdiff.reverse.ddim_step`
    that ONNX supports (see the module docstring).  Raises the typed errors the reference
    raises for the same bad input.
    """
    if not isinstance(schedule, Schedule) and not (sampler == "flow_euler" and schedule is None):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    if sampler not in SAMPLERS:
        raise OptionError("sampler", sampler, list(SAMPLERS))
    if prediction_type not in PREDICTION_TYPES:
        raise OptionError("prediction_type", prediction_type, list(PREDICTION_TYPES))
    if sampler not in ("ddpm", "ddim"):
        from .sigma_tables import sigma_step_tables

        f = sigma_step_tables(schedule, sampler, prediction_type, options)
        n = f["A"].shape[0]
        t = np.arange(n, 0, -1, dtype=np.int64)
        return StepTables(
            sampler=sampler,
            prediction_type=prediction_type,
            t=t,
            base_t=np.zeros(n, np.int64),
            ax=np.zeros(n),
            ao=np.zeros(n),
            schedule=schedule,
            **f,
        )
    _check_options(sampler, options)
    N = schedule.T
    t = np.arange(N, 0, -1, dtype=np.int64)  # t[k] = N − k
    ab = schedule.alpha_bar[t]
    sa, s1 = np.sqrt(ab), np.sqrt(1.0 - ab)
    ax, ao, ex, eo = conversion_coefficients(ab, prediction_type)
    clip = options.get("clip")
    clip = None if clip is None else float(clip)
    not_last = (t > 1).astype(np.float64)
    norm: dict = {"clip": clip}
    if sampler == "ddpm":
        vt = options.get("variance_type", "fixed_small")
        if vt not in ONNX_VARIANCE_TYPES:
            raise OptionError("variance_type", vt, list(ONNX_VARIANCE_TYPES))
        lvc = options.get("log_variance_clipping", "next")
        if lvc not in LOG_VARIANCE_CLIPPINGS:
            raise OptionError("log_variance_clipping", lvc, list(LOG_VARIANCE_CLIPPINGS))
        c0, ct = posterior_coefficients(schedule, t)
        if clip is None:
            A, B, C = ct + c0 * ax, c0 * ao, np.zeros(N)
        else:
            A, B, C = ct.copy(), np.zeros(N), c0.copy()
        if vt == "fixed_small":
            var = posterior_variance(schedule, t)
        else:  # fixed_large, fixed_large_iddpm: β_t (they differ only at t = 1, where z is unused)
            var = schedule.beta[t].copy()
        S = np.sqrt(var) * not_last
        norm.update(variance_type=vt)
    else:
        eta = options.get("eta", 0.0)
        if isinstance(eta, bool) or not (isinstance(eta, int | float) and 0.0 <= eta <= 1.0):
            raise InputError("eta", f"must be a float in [0, 1]; got {eta!r}")
        eta = float(eta)
        rederive = bool(options.get("rederive_eps", True))
        final_step_noise = bool(options.get("final_step_noise", False))
        fab = options.get("final_alpha_bar", "one")
        abp = schedule.alpha_bar_prev[t].copy()
        if isinstance(fab, str):
            if fab not in FINAL_ALPHA_BARS:
                raise OptionError("final_alpha_bar", fab, list(FINAL_ALPHA_BARS))
            if fab == "first":
                abp[t == 1] = schedule.base_alpha_bar_1
        else:
            if isinstance(fab, bool) or not (isinstance(fab, int | float) and 0.0 < fab <= 1.0):
                raise InputError(
                    "final_alpha_bar", f"must be 'one', 'first' or in (0, 1]; got {fab!r}"
                )
            abp[t == 1] = float(fab)
            fab = float(fab)
        var = np.maximum(eta**2 * (1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp), 0.0)
        direction = np.sqrt(np.maximum(1.0 - abp - var, 0.0))
        sp = np.sqrt(abp)
        if clip is None:
            A, B, C = sp * ax + direction * ex, sp * ao + direction * eo, np.zeros(N)
        elif rederive:
            A, B, C = direction / s1, np.zeros(N), sp - direction * sa / s1
        else:
            A, B, C = direction * ex, direction * eo, sp.copy()
        if eta == 0.0:
            S = np.zeros(N)
        else:
            S = np.sqrt(var) * (1.0 if final_step_noise else not_last)
        norm.update(
            eta=eta, rederive_eps=rederive, final_alpha_bar=fab, final_step_noise=final_step_noise
        )
    return StepTables(
        sampler=sampler,
        prediction_type=prediction_type,
        options=norm,
        A=A,
        B=B,
        C=C,
        S=S,
        ax=ax,
        ao=ao,
        t=t,
        base_t=schedule.timesteps[t].astype(np.int64),
        clip=clip,
        schedule=schedule,
    )
