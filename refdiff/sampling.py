"""Sampling loops (docs/math.md §8): run DDPM or DDIM steps from x_T to x_0.

The denoiser is any callable ``denoiser(x_t, t) -> output`` where ``x_t`` is float64
(B, *data_shape) and ``t`` is an int64 array of shape (B,) holding the *base* (training)
time ``schedule.timesteps[k]`` of the current step k (refdiff's 1-based convention: a
denoiser that expects diffusers' 0-based index should subtract 1).  For the learned
variance types the output stacks [prediction, variance output] along axis 1 (2C
channels), as improved-diffusion and diffusers do.

Noise layout (the same for every sampler, and for the ONNX samplers in refdiff.export):
``x_T`` has the state shape; ``step_noise`` has shape (N, *state_shape), N = schedule.T,
and ``step_noise[k]`` is used by the k-th step taken (from time N − k to N − k − 1).  With
``rng`` instead, x_T is drawn first and then one ``step_noise`` slice per step, in order,
so ``sample(rng=Generator(s))`` equals ``sample(*draw_noise(Generator(s), N, shape))``.

Each step is the affine form (7.12) of :mod:`refdiff.affine` (coefficients read off
:mod:`refdiff.reverse` once per schedule and options, then reused) when the options allow
it — no clip, no threshold, a fixed variance — and the step of :mod:`refdiff.reverse`
otherwise; both agree up to rounding and draw the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._check import (
    as_float_array,
    check_size,
    initial_state,
    integer,
    noise_or_rng,
    option,
)
from ._check import state_shape as _shape
from .affine import (
    affine_step,
    apply_unchecked,
    cached_coefficients,
    is_affine,
)
from .errors import InputError, RandomnessError, ShapeError
from .reverse import LEARNED, VARIANCE_TYPES, ddim_step, ddpm_step
from .schedule import Schedule

__all__ = ["draw_noise", "ddpm_sample", "ddim_sample", "Denoiser"]

Denoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Callback: (k, t, x) after step k (0-based) landed on time t with state x.
Callback = Callable[[int, int, np.ndarray], None]


def draw_noise(
    rng: np.random.Generator, num_steps: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(x_T, step_noise) drawn in the order the samplers draw them; float64."""
    num_steps = integer(num_steps, "num_steps", low=0)
    shape = _shape(shape)
    check_size(shape, "shape", factor=int(num_steps) + 1)
    x_T = noise_or_rng(None, rng, shape)
    return x_T, rng.standard_normal((num_steps, *shape))


def _start(schedule, shape, x_T, step_noise, rng):
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    return initial_state(shape, x_T, step_noise, rng, schedule.T)[0]


_F64 = np.dtype(np.float64)


def _call(denoiser: Denoiser, x: np.ndarray, t_model: int) -> np.ndarray:
    out = denoiser(x, np.full(x.shape[0], t_model, dtype=np.int64))
    if type(out) is np.ndarray and out.dtype is _F64 and _small_finite(out):
        return out  # what as_float_array would return, without its general checks
    return as_float_array(out, "denoiser output")


def _small_finite(a: np.ndarray) -> bool:
    """True for a small array with every value finite (False means: check it in full)."""
    return a.size <= 16 and all(map(math.isfinite, a.flat))


def _loop(
    denoiser, schedule, state, step_noise, rng, needs_noise, step, return_trajectory, callback
):
    """x ← step(x, t, f(x, t), z, rng) for t = N … 1 (z: slice k of step_noise, or None).

    ``state`` is a one-element list holding x_T; the loop takes it out, so that no reference
    keeps x_T alive once the first step is taken (peak memory: x_t, model output, x_{t−1}).
    """
    x = state.pop()
    N = schedule.T
    if needs_noise and step_noise is None and not isinstance(rng, np.random.Generator):
        raise RandomnessError("rng", "x_T was given without step_noise: pass one of them")
    traj = [x] if return_trajectory else None
    draw = rng if needs_noise and step_noise is None else None
    for k in range(N):
        t = N - k
        z = step_noise[k] if step_noise is not None else None
        out = _call(denoiser, x, int(schedule.timesteps[t]))
        x = step(x, t, out, z, draw)
        del out  # not alive during the next denoiser call
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(k, t - 1, x)
    return (x, np.stack(traj)) if return_trajectory else x


def _affine_or(schedule, method, options, spec_step):
    """The step the loop runs: (7.12) when the options are affine, else the reference step.

    Both draw the same noise from ``rng`` (one standard-normal draw of the state shape).
    """
    if is_affine(method, **options):
        coef = cached_coefficients(schedule, method, options)  # once per schedule and options

        def affine(x, t, out, z, rng):
            if out.shape != x.shape:  # the only check left per step: t and coef are good
                return affine_step(coef, x, t, out, noise=z, rng=rng)  # raises its ShapeError
            return apply_unchecked(coef, x, t, out, z, rng)

        return affine

    def step(x, t, out, z, rng):
        if z is None and rng is not None:
            z = rng.standard_normal(x.shape)
        return spec_step(x, t, out, z)

    return step


def ddpm_sample(
    denoiser: Denoiser,
    schedule: Schedule,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    **options,
):
    """Ancestral DDPM sampling over every step of ``schedule`` (respace it first).

    ``options`` go to :func:`refdiff.reverse.ddpm_step` (``prediction_type``,
    ``variance_type``, ``clip``, ``threshold_ratio``, ``threshold_max``,
    ``log_variance_clipping``).  Returns x_0, float64 state shape, or (x_0, trajectory)
    with trajectory of shape (N+1, *state_shape), trajectory[0] = x_T.
    """
    if not callable(denoiser):
        raise InputError("denoiser", f"must be callable f(x_t, t); got {type(denoiser).__name__}")
    state = [_start(schedule, shape, x_T, step_noise, rng)]  # handed to _loop (it pops it)
    vt = options.get("variance_type", "fixed_small")
    option(vt, "variance_type", VARIANCE_TYPES)
    learned = vt in LEARNED

    def spec_step(x, t, out, z):
        mv = None
        if learned:
            if out.ndim < 2 or out.shape[1] != 2 * x.shape[1]:
                raise ShapeError(
                    "denoiser output", f"{vt} needs 2C channels on axis 1; got {out.shape}"
                )
            out, mv = np.split(out, 2, axis=1)
        return ddpm_step(schedule, x, t, out, noise=z, model_variance=mv, **options)

    step = _affine_or(schedule, "ddpm", options, spec_step)
    return _loop(
        denoiser, schedule, state, step_noise, rng, True, step, return_trajectory, callback
    )


def ddim_sample(
    denoiser: Denoiser,
    schedule: Schedule,
    shape: tuple[int, ...] | None = None,
    *,
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
    **options,
):
    """DDIM sampling over every step of ``schedule`` (respace it first; eq. 7.9).

    ``options`` go to :func:`refdiff.reverse.ddim_step` (``prediction_type``, ``eta``,
    ``clip``, ``threshold_ratio``, ``threshold_max``, ``rederive_eps``,
    ``final_alpha_bar``, ``final_step_noise``).  With η = 0 no step noise is drawn or used.
    Returns as :func:`ddpm_sample`.
    """
    if not callable(denoiser):
        raise InputError("denoiser", f"must be callable f(x_t, t); got {type(denoiser).__name__}")
    state = [_start(schedule, shape, x_T, step_noise, rng)]  # handed to _loop (it pops it)
    needs_noise = options.get("eta", 0.0) != 0.0

    def spec_step(x, t, out, z):
        return ddim_step(schedule, x, t, out, noise=z, **options)

    step = _affine_or(schedule, "ddim", options, spec_step)
    return _loop(
        denoiser, schedule, state, step_noise, rng, needs_noise, step, return_trajectory, callback
    )
