"""Conformance testing for other implementations, importable into any pytest suite (docs/verify.md).

Three layers:

1. **Checks against the reference** with injected noise: ``assert_alpha_bar_close``,
   ``assert_q_sample_close``, ``assert_posterior_close``, ``assert_ddpm_step_close``,
   ``assert_ddim_step_close`` (and ``check_*`` twins that return :class:`Comparison` results
   instead of raising).  The user's function takes NumPy float64 arrays and returns anything
   array-like (NumPy, ``__array__``, DLPack, ``.numpy()``); its time argument follows the
   user's ``index_base`` (0: the diffusers / improved-diffusion index, 1: refdiff's time).
2. **Tolerances** (:class:`Tolerance`) stated per precision and derived from the magnitudes
   involved — see :func:`tolerance_array` and docs/verify.md §Tolerances.
3. **A statistical form** for whole samplers whose noise cannot be injected:
   :func:`assert_sampler_law` compares their output on Gaussian data, driven by the exact
   denoiser, with the exact law (refdiff.exact, refdiff.stats).

Plus Hypothesis strategies (:func:`settings`, :func:`schedules`, :func:`timesteps`,
:func:`states`, :func:`ddpm_options`, :func:`ddim_options`); Hypothesis is imported only when
a strategy is built.

Operations (``op``), each compared elementwise with the reference of docs/math.md:

=================== ============================================  =========================
op                  the user's function                           reference (docs/math.md)
=================== ============================================  =========================
alpha_bar           an array (T,) of ᾱ at index 0..T−1             eq. 2.2 (§2)
q_sample            fn(x0, t, noise) → x_t                         eq. 3.2
posterior           fn(x0, x_t, t) → (mean, variance)             eqs. 4.1–4.2
ddpm_step           fn(x_t, t, model_output, noise) → x_{t−1}      eqs. 7.3–7.8
ddim_step           fn(x_t, t, model_output, noise) → x_{t−1}      eqs. 7.9–7.10
=================== ============================================  =========================

The code lives in :mod:`refdiff.conformance`; this module is its public face.
"""

from __future__ import annotations

from .conformance.cases import (
    OPS,
    STATE_SHAPE,
    Case,
    Setting,
    expected,
    magnitude,
    make_inputs,
    options_label,
    with_options,
)
from .conformance.checks import (
    assert_alpha_bar_close,
    assert_checks,
    assert_ddim_step_close,
    assert_ddpm_step_close,
    assert_posterior_close,
    assert_q_sample_close,
    assert_sampler_law,
    check_alpha_bar,
    check_ddim_step,
    check_ddpm_step,
    check_posterior,
    check_q_sample,
)
from .conformance.comparison import Check, Comparison, compare, compare_alpha_bar, compare_timesteps
from .conformance.strategies import (
    ddim_options,
    ddpm_options,
    schedules,
    settings,
    states,
    timesteps,
)
from .conformance.tolerance import (
    UNIT_ROUNDOFF,
    Tolerance,
    alpha_bar_tolerance,
    schedule_sensitivity,
    tolerance_array,
)

__all__ = [
    "UNIT_ROUNDOFF",
    "Tolerance",
    "Setting",
    "Case",
    "Check",
    "OPS",
    "make_inputs",
    "expected",
    "magnitude",
    "tolerance_array",
    "compare",
    "compare_alpha_bar",
    "compare_timesteps",
    "options_label",
    "check_alpha_bar",
    "check_q_sample",
    "check_posterior",
    "check_ddpm_step",
    "check_ddim_step",
    "assert_alpha_bar_close",
    "assert_q_sample_close",
    "assert_posterior_close",
    "assert_ddpm_step_close",
    "assert_ddim_step_close",
    "assert_checks",
    "assert_sampler_law",
    "settings",
    "schedules",
    "timesteps",
    "states",
    "ddpm_options",
    "ddim_options",
]

# Names that are public here too, beyond the original list above.
__all__ += [
    "Comparison",
    "STATE_SHAPE",
    "with_options",
    "alpha_bar_tolerance",
    "schedule_sensitivity",
]
