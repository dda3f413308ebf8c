"""Negative controls: bugs planted in the reference, and a runner showing the suite catches them.

Each :class:`Mutant` replaces one exact snippet of one refdiff module's source.  With
``REFDIFF_MUTANT=<name>`` in the environment, ``tests/conftest.py`` calls :func:`install`
before anything imports refdiff: an import hook compiles the mutated source in place of the
module (nothing on disk changes; a snippet that no longer occurs exactly once is an error,
so the catalogue cannot silently rot when the core is edited).

    python -m tests.mutants                 # every mutant against the test files of its
                                            # fast catchers (whole files): a table
    python -m tests.mutants --scope spec    # against the spec tests
    python -m tests.mutants --scope all     # against the whole suite (not slow)
    python -m tests.mutants --only v_sign_error --scope mine
    python -m tests.mutants --list

Exit status 0 iff every mutant is caught.  tests/support/test_mutants_fast.py runs each mutant
against its ``fast`` catchers inside ``make test``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import importlib
import importlib.abc
import importlib.machinery
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_EXACT = "tests/ground_truth/test_exact.py::"
AFFINE_DDPM = _EXACT + "test_ddpm_sample_is_the_exact_affine_recursion"
AFFINE_DDIM = _EXACT + "test_ddim_sample_is_the_exact_affine_recursion"
COEFFS = _EXACT + "test_reverse_coefficients_match_the_posterior_module"
NAMED = _EXACT + "test_named_schedules_have_their_published_alpha_bar"
RATIO = _EXACT + "test_beta_is_the_alpha_bar_ratio"
AFFINE_RNG = "tests/spec/test_affine.py::test_affine_step_draws_what_the_reference_step_draws"
AFFINE_LARGE = "tests/spec/test_affine.py::test_large_states_are_stepped_block_by_block"
_FWD = "tests/ground_truth/test_statistical_forward.py::"
CHAIN = _FWD + "test_chained_forward_steps_have_the_closed_form_law"
TRANSITION = _FWD + "test_transition_composes_with_the_closed_form"
POSTERIOR = _FWD + "test_posterior_is_consistent_with_the_forward_process"
_HAND = "tests/spec/test_solvers_by_hand.py::"
_SIGMA = "tests/spec/test_sigma.py::"
_FLOW = "tests/spec/test_flow.py::"
_CONV = "tests/ground_truth/test_solvers_convergence.py::"


@dataclass(frozen=True)
class Mutant:
    """One planted bug: in ``module``'s source, ``old`` (occurring exactly once) becomes ``new``.

    ``fast``: test node ids expected to catch it within seconds (run by test_mutants_fast).
    """

    name: str
    module: str
    old: str
    new: str
    description: str
    fast: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "forward_alpha_bar_off_by_one",
        "refdiff.forward",
        "gather(schedule.sqrt_alpha_bar, t, x.ndim) * x,\n"
        "        gather(1.0 - schedule.alpha_bar, t, x.ndim),",
        "gather(np.sqrt(schedule.alpha_bar_prev), t, x.ndim) * x,\n"
        "        gather(1.0 - schedule.alpha_bar_prev, t, x.ndim),",
        "q(x_t|x_0) uses ᾱ_{t−1} instead of ᾱ_t (off-by-one in ᾱ)",
        (POSTERIOR, TRANSITION),
    ),
    Mutant(
        "q_step_missing_sqrt",
        "refdiff.forward",
        "mean, var = q_step_mean_var(schedule, x_prev, t)\n"
        "    return mean + np.sqrt(var) * noise_or_rng(noise, rng, mean.shape)",
        "mean, var = q_step_mean_var(schedule, x_prev, t)\n"
        "    return mean + var * noise_or_rng(noise, rng, mean.shape)",
        "one forward step adds β_t z instead of √β_t z (missing square root)",
        (CHAIN,),
    ),
    Mutant(
        "q_transition_missing_sqrt",
        "refdiff.forward",
        "return np.sqrt(r) * x, 1.0 - r",
        "return r * x, 1.0 - r",
        "q(x_t|x_s) scales x_s by ᾱ_t/ᾱ_s instead of its square root",
        (TRANSITION,),
    ),
    Mutant(
        "posterior_beta_for_beta_tilde",
        "refdiff.posterior",
        "return schedule.beta[t] * (1.0 - schedule.alpha_bar_prev[t])"
        " / (1.0 - schedule.alpha_bar[t])",
        "return schedule.beta[t] * 1.0",
        "posterior variance β_t instead of β̃_t",
        (COEFFS,),
    ),
    Mutant(
        "posterior_coefficients_swapped",
        "refdiff.posterior",
        "c0, ct = posterior_coefficients(schedule, t)",
        "ct, c0 = posterior_coefficients(schedule, t)",
        "q(x_{t−1}|x_t, x_0): the coefficients of x_0 and x_t swapped",
        (POSTERIOR,),
    ),
    Mutant(
        "ddpm_coefficients_swapped",
        "refdiff.reverse",
        "c0, ct = posterior_coefficients(schedule, t)",
        "ct, c0 = posterior_coefficients(schedule, t)",
        "the DDPM step mean swaps the posterior coefficients of x̂_0 and x_t",
        (AFFINE_DDPM,),
    ),
    Mutant(
        "posterior_sqrt_alpha_bar_for_sqrt_alpha",
        "refdiff.posterior",
        "np.sqrt(ab / abp) / (1.0 - ab)",
        "np.sqrt(ab) / (1.0 - ab)",
        "posterior x_t coefficient uses √ᾱ_t instead of √α_t",
        (COEFFS,),
    ),
    Mutant(
        "ddim_sigma_missing_factor",
        "refdiff.reverse",
        "var = eta**2 * (1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp)",
        "var = eta**2 * (1.0 - abp) / (1.0 - ab)",
        "DDIM σ_t² drops the factor (1 − ᾱ_t/ᾱ_{t−1}) (wrong DDIM σ)",
        (AFFINE_DDIM,),
    ),
    Mutant(
        "ddim_direction_ignores_sigma",
        "refdiff.reverse",
        "np.sqrt(np.maximum(1.0 - abp - var, 0.0)) * eps",
        "np.sqrt(1.0 - abp) * eps",
        "DDIM direction term √(1 − ᾱ_{t−1} − σ²) ε̂ loses its −σ²",
        (AFFINE_DDIM,),
    ),
    Mutant(
        "ddim_final_alpha_bar_ignored",
        "refdiff.reverse",
        "return np.where(t == 1, final, prev)",
        "return prev",
        "DDIM ignores the final-ᾱ option (always set_alpha_to_one)",
        (AFFINE_DDIM,),
    ),
    Mutant(
        "v_sign_error",
        "refdiff.parameterization",
        "return sa * x_t - s1 * prediction, sa * prediction + s1 * x_t",
        "return sa * x_t + s1 * prediction, sa * prediction + s1 * x_t",
        "x̂_0 = √ᾱ x_t + √(1−ᾱ) v (sign error in v-prediction)",
        (AFFINE_DDPM, AFFINE_DDIM),
    ),
    Mutant(
        "eps_to_x0_missing_sqrt",
        "refdiff.parameterization",
        "return (x_t - s1 * prediction) / sa, prediction",
        "return (x_t - s1 * prediction) / alpha_bar, prediction",
        "x̂_0 = (x_t − √(1−ᾱ) ε̂)/ᾱ instead of /√ᾱ (missing square root)",
        (AFFINE_DDPM, AFFINE_DDIM),
    ),
    Mutant(
        "cosine_offset_dropped",
        "refdiff.schedule",
        "(u + s) / (1.0 + s)",
        "u / (1.0 + s)",
        "cosine schedule without the offset s (wrong cosine offset)",
        (NAMED,),
    ),
    Mutant(
        "linear_betas_off_by_one",
        "refdiff.schedule",
        "np.linspace(beta_start, beta_end, T)",
        "np.linspace(beta_start, beta_end, T + 1)[1:]",
        "linear β_1..β_T taken from a grid of T+1 points (β_1 ≠ beta_start)",
        (NAMED,),
    ),
    Mutant(
        "respace_keeps_base_betas",
        "refdiff.schedule",
        "beta = np.concatenate([[0.0], 1.0 - ab[1:] / ab[:-1]])",
        "beta = schedule.beta[idx].copy()",
        "respacing keeps the base β_τ instead of 1 − ᾱ_{τ_k}/ᾱ_{τ_{k−1}} (diffusers PR #3006)",
        (RATIO,),
    ),
    Mutant(
        "no_noise_at_t2",
        "refdiff.reverse",
        "return per_sample((t > 1).astype(np.float64), ndim)",
        "return per_sample((t > 2).astype(np.float64), ndim)",
        "reverse steps skip the noise at t = 2 as well as t = 1",
        (AFFINE_DDPM,),
    ),
    Mutant(
        "fixed_large_uses_beta_tilde",
        "refdiff.reverse",
        "var, log_var = beta, np.log(beta)",
        "var = per_sample(posterior_variance(schedule, t), n); log_var = np.log(var)",
        "variance_type fixed_large samples with β̃_t instead of β_t",
        (AFFINE_DDPM,),
    ),
    Mutant(
        "denoiser_time_zero_based",
        "refdiff.sampling",
        "out = _call(denoiser, x, int(schedule.timesteps[t]))",
        "out = _call(denoiser, x, max(int(schedule.timesteps[t]) - 1, 1))",
        "the samplers call the denoiser with the 0-based index t − 1 (time-convention mix-up)",
        (AFFINE_DDIM,),
    ),
    Mutant(
        "step_noise_reversed",
        "refdiff.sampling",
        "z = step_noise[k]",
        "z = step_noise[N - 1 - k]",
        "the samplers consume the injected step noise in reverse order",
        (AFFINE_DDPM,),
    ),
    Mutant(
        "affine_noise_unscaled",
        "refdiff.affine",
        "            y *= scale\n        for v, c in terms:\n            y += v * c",
        "            y *= 1.0\n        for v, c in terms:\n            y += v * c",
        "the affine step adds its drawn noise without the factor s_t",
        (AFFINE_RNG,),
    ),
    Mutant(
        "affine_last_block_short",
        "refdiff.affine",
        "hi = min(lo + BLOCK, n)",
        "hi = min(lo + BLOCK, n - 1)",
        "the blocked update of a large state leaves its last element unstepped",
        (AFFINE_LARGE,),
    ),
    # the σ-view samplers, σ schedules and flow matching (docs/math.md §15-§19)
    Mutant(
        "karras_rho_wrong",
        "refdiff.sigma",
        "a, b = hi ** (1.0 / rho), lo ** (1.0 / rho)",
        "a, b = hi ** (1.0 / (rho + 1)), lo ** (1.0 / (rho + 1))",
        "Karras σ interpolate σ^{1/(ρ+1)} but raise to ρ (the endpoints move)",
        (_SIGMA + "test_karras_by_hand",),
    ),
    Mutant(
        "sigma_t_interp_linear_not_log",
        "refdiff.sigma",
        "return np.exp(np.interp(tt, grid, np.log(sig)))",
        "return np.interp(tt, grid, sig)",
        "t → σ interpolates σ linearly where log-linear was asked (k-diffusion's t_to_sigma)",
        (_SIGMA + "test_sigma_interpolation_by_hand",),
    ),
    Mutant(
        "v_to_denoised_wrong_skip",
        "refdiff.sigma",
        "out = c * c * xa - np.where(np.isinf(s), 1.0, s * c) * p",
        "out = c * xa - np.where(np.isinf(s), 1.0, s * c) * p",
        "v → x̂_0 in the σ view scales x by 1/√(1+σ²) instead of 1/(1+σ²)",
        (_SIGMA + "test_conversions_by_hand",),
    ),
    Mutant(
        "flow_shift_applied_twice",
        "refdiff.flow",
        "s = time_shift(s, mu) if mu is not None else shift(s, shift_factor)",
        "s = time_shift(s, mu) if mu is not None else shift(shift(s, shift_factor), shift_factor)",
        "the flow σ grid is shifted twice (σ' = shift(shift(σ, s), s) = shift(σ, s²))",
        (_FLOW + "test_path_and_shift_by_hand",),
    ),
    Mutant(
        "churn_gamma_wrong",
        "refdiff.solvers",
        "return min(s_churn / n, math.sqrt(2.0) - 1.0)",
        "return min(s_churn / (n + 1), math.sqrt(2.0) - 1.0)",
        "Karras churn γ = S_churn/(n+1) instead of S_churn/n",
        (_HAND + "test_euler_churn_by_hand",),
    ),
    Mutant(
        "ancestral_up_down_swapped",
        "refdiff.solvers",
        "s_down = math.sqrt(s_next**2 - s_up**2)",
        "s_up, s_down = math.sqrt(s_next**2 - s_up**2), s_up",
        "Euler ancestral: σ_up and σ_down swapped",
        (_HAND + "test_euler_ancestral_by_hand",),
    ),
    Mutant(
        "heun_correction_dropped",
        "refdiff.solvers",
        "x_pred = x + (s_next - s_hat) * 0.5 * (d + d2)",
        "x_pred = x + (s_next - s_hat) * d",
        "Heun evaluates the second slope but takes the Euler step",
        (_HAND + "test_heun_by_hand", _CONV + "test_orders_of_the_karras_solvers"),
    ),
    Mutant(
        "lms_nodes_off_by_one",
        "refdiff.solvers",
        "nodes = sig[i - np.arange(p)]",
        "nodes = sig[i + 1 - np.arange(p)]",
        "LMS builds its Lagrange basis on the σ nodes shifted by one step",
        (_HAND + "test_lms_by_hand",),
    ),
    Mutant(
        "dpmpp_step_ratio_inverted",
        "refdiff.solvers",
        "dbar = m if p == 1 else (1 + 1 / (2 * (h_last / h))) * m - old / (2 * (h_last / h))",
        "dbar = m if p == 1 else (1 + 1 / (2 * (h / h_last))) * m - old / (2 * (h / h_last))",
        "DPM-Solver++(2M): r = h_i/h_{i−1} instead of h_{i−1}/h_i (identical on uniform λ steps)",
        (_HAND + "test_dpmpp_2m_by_hand",),
    ),
    Mutant(
        "lower_order_final_missing",
        "refdiff.solvers",
        "    if lower_order_final and n < 15:",
        "    if False:",
        "DPM-Solver++ ignores lower_order_final (diffusers' first-order last step when n < 15)",
        (_HAND + "test_dpmpp_2m_by_hand",),
    ),
    Mutant(
        "dpmpp_sde_noise_variance_for_std",
        "refdiff.solvers",
        "                x = x + c * (m - old) / (h_last / h)\n"
        "            if eta > 0:\n"
        "                x = x + s_noise * s_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * z",
        "                x = x + c * (m - old) / (h_last / h)\n"
        "            if eta > 0:\n"
        "                x = x + s_noise * s_next * -math.expm1(-2.0 * eta * h) * z",
        "DPM-Solver++(2M) SDE adds σ(1 − e^{−2ηh}) z instead of σ√(1 − e^{−2ηh}) z",
        (_HAND + "test_dpmpp_2m_sde_by_hand",),
    ),
    Mutant(
        "dpmpp_3m_d2_taylor_ignored",
        "refdiff.solvers",
        "k = 2.0 if taylor_d2 else 1.0",
        "k = 1.0 if taylor_d2 else 1.0",
        "DPM-Solver++(3M) taylor_d2=True still uses the published −φ₃ d₂ (second order)",
        (_HAND + "test_dpmpp_3m_sde_by_hand", _CONV + "test_orders_of_the_multistep_solvers"),
    ),
    Mutant(
        "unipc_bh_variant_swapped",
        "refdiff.solvers",
        'B = hh if variant == "bh1" else phi',
        'B = phi if variant == "bh1" else hh',
        "UniPC: B(h) of bh1 and bh2 swapped",
        (_HAND + "test_unipc_by_hand",),
    ),
    Mutant(
        "unipc_corrector_from_predicted_state",
        "refdiff.solvers",
        "            x = _unipc(\n                x_prev,",
        "            x = _unipc(\n                x,",
        "UniC corrects from the predicted x_i instead of the previous state x_{i−1}",
        (_HAND + "test_unipc_by_hand",),
    ),
    Mutant(
        "exact_ode_map_missing_sqrt",
        "refdiff.exact_sigma",
        "f = np.sqrt((w + sigma_to**2) / (w + sigma_from**2))",
        "f = (w + sigma_to**2) / (w + sigma_from**2)",
        "the closed-form PF-ODE map scales by the variance ratio, not its square root",
        (_CONV + "test_orders_of_the_karras_solvers",),
    ),
    # -- classifier-free guidance (refdiff/guidance.py) --------------------------------
    Mutant(
        "guidance_rescale_by_uncond",
        "refdiff.guidance",
        "ratio = np.divide(_std(c), sg,",
        "ratio = np.divide(_std(u), sg,",
        "guidance rescale matches the deviation of o_u instead of o_c (20.3)",
        ("tests/export/test_export_guidance.py::test_guide_formulas_by_hand",),
    ),
    Mutant(
        "guidance_scale_on_uncond",
        "refdiff.guidance",
        "g = u + scale * (c - u)",
        "g = c + scale * (c - u)",
        "the guided output starts from o_c instead of o_u (20.1)",
        ("tests/export/test_export_guidance.py::test_guide_formulas_by_hand",),
    ),
    # the O(d²) statistics, the loops' fixed cost, the σ-samplers' affine programs
    Mutant(
        "stats_scatter_uncentred",
        "refdiff.stats",
        "np.subtract(x[blk], centre, out=b)",
        "np.copyto(b, x[blk])",
        "the covariance check's scatter matrix is taken around 0 instead of the mean",
        (
            "tests/ground_truth/test_stats.py::"
            "test_scatter_matrix_covariance_statistic_equals_the_projection_statistic",
        ),
    ),
    Mutant(
        "stats_mvn_distances_unsorted",
        "refdiff.stats",
        "    r2.sort()\n",
        "",
        "the Mahalanobis distances go to the KS statistic unsorted",
        (
            "tests/ground_truth/test_stats.py::test_blocked_statistics_equal_the_whole_array_formulas",
        ),
    ),
    Mutant(
        "affine_cache_key_without_options",
        "refdiff.affine",
        "        key.append((name, type(v), repr(v)))\n",
        "        pass\n",
        "the coefficient-table cache keys on the schedule and sampler only, not the options",
        (
            "tests/spec/test_loop_fixed_cost.py::test_tables_are_read_off_once_per_schedule_and_options",
        ),
    ),
    Mutant(
        "sampling_keeps_x_T",
        "refdiff.sampling",
        "x = state.pop()",
        "x = state[0]",
        "the sampling loops keep x_T alive (a fourth state of peak memory)",
        ("tests/spec/test_loop_fixed_cost.py::test_peak_memory_is_three_states",),
    ),
    Mutant(
        "sigma_affine_history_reversed",
        "refdiff.sigma_affine",
        "hist = (mine[::-1] + hist)[:keep]",
        "hist = (hist + mine[::-1])[:keep]",
        "the affine σ-sampler run keeps its model outputs oldest first",
        ("tests/spec/test_sigma_affine.py::test_fast_run_is_the_specification",),
    ),
    # verify's per-setting causes, σ-view trajectories and golden vectors for a port
    Mutant(
        "verify_causes_not_refuted_by_passing_steps",
        "refdiff.conformance.diagnoses",
        "    names = [n for n in names if not _refuted(n, passing)]",
        "    names = list(names)",
        "a bug is named even where a passing step refutes it (ᾱ_prev off by one taken for the "
        "stride bug)",
        (
            "tests/conformance/test_bug_catalogue.py::"
            "test_each_signature_is_named_on_its_planted_bug[DDIMStride]",
        ),
    ),
    Mutant(
        "verify_trajectory_compared_one_state_early",
        "refdiff.conformance.sigmaview",
        "    ref = ref[1 : 1 + got.shape[0]]",
        "    ref = ref[: got.shape[0]]",
        "the scheduler's state after step i is compared with the reference's before it",
        ("tests/conformance/test_bug_catalogue.py::test_correct_sigma_sampler_passes",),
    ),
    Mutant(
        "vectors_no_effect_inverted",
        "refdiff.conformance.vectors",
        "        if same:\n            out[k] =",
        "        if not same:\n            out[k] =",
        "options that change the outputs are marked as without effect",
        ("tests/conformance/test_vectors_port.py::test_options_without_effect_are_marked",),
    ),
    # DPM-2 (k-diffusion's sample_dpm_2)
    Mutant(
        "dpm_2_arithmetic_midpoint",
        "refdiff.solvers",
        "s_mid = math.sqrt(s_hat * s_next)",
        "s_mid = 0.5 * (s_hat + s_next)",
        "DPM-2 takes its second slope at the arithmetic midpoint in σ instead of the log-σ one "
        "(second order in general; on the Gaussian convergence problem it measures 3.03)",
        (_HAND + "test_dpm_2_by_hand",),
    ),
    # the ONNX per-step loop's in-place state (export/_graph.py)
    Mutant(
        "may_alias_ignores_late_readers",
        "refdiff.export._graph",
        "    return readers <= ancestors - {producer[target]}",
        "    return bool(readers)",
        "the sampler state is overwritten in place although a later node still reads it "
        "(a multistep sampler's m_next)",
        (
            "tests/export/test_export_memory.py::test_may_alias_needs_every_read_of_the_input_before_the_output",
        ),
    ),
    Mutant(
        "graph_in_place_skips_the_body_check",
        "refdiff.export.runtime",
        "    return may_alias(body, body.input[0].name, body.output[0].name)",
        "    return True",
        "a graph run writes x_0 over x_T although its Scan body reads x_k after writing x_next "
        "(a multistep sampler's m_next)",
        (
            "tests/export/test_export_sampler_graph.py::test_host_noise_graph_runs_write_x_0_over_x_T",
        ),
    ),
)

BY_NAME = {m.name: m for m in MUTANTS}
#: The control run: the same tests, nothing planted.  They must pass, or a "catch" means nothing.
BASELINE = Mutant("(no mutant)", "", "", "", "the unmodified reference: must pass", ())


# -- applying a mutant -----------------------------------------------------------------------
class MutantError(RuntimeError):
    """A mutant that cannot be applied (unknown name, or its snippet is not there exactly once)."""


def mutate_source(mutant: Mutant, source: str) -> str:
    count = source.count(mutant.old)
    if count != 1:
        raise MutantError(
            f"mutant {mutant.name!r}: the snippet occurs {count} times in {mutant.module} "
            f"(needs exactly 1); update tests/mutants.py:\n{mutant.old}"
        )
    return source.replace(mutant.old, mutant.new)


def module_path(module: str) -> Path:
    rel = module.split(".")[1:]
    if rel[:1] == ["export"]:  # refdiff.export is the top-level export/ package
        return ROOT.joinpath(*rel).with_suffix(".py")
    return ROOT / "refdiff" / Path(*rel).with_suffix(".py")


class _Loader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, mutant: Mutant):
        super().__init__(fullname, path)
        self.mutant = mutant

    def get_code(self, fullname: str):  # never the cached bytecode, never written back
        source = self.get_data(self.path).decode("utf-8")
        return compile(mutate_source(self.mutant, source), self.path, "exec", dont_inherit=True)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, mutant: Mutant):
        self.mutant = mutant

    def find_spec(self, fullname, path, target=None):
        if fullname != self.mutant.module:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            raise MutantError(f"cannot find the source of {fullname}")
        spec.loader = _Loader(fullname, spec.origin, self.mutant)
        return spec


def install(name: str) -> Mutant:
    """Plant mutant ``name``: every later import of its module compiles the mutated source."""
    if name not in BY_NAME:
        raise MutantError(f"unknown mutant {name!r}; known: {', '.join(BY_NAME)}")
    mutant = BY_NAME[name]
    mutate_source(mutant, module_path(mutant.module).read_text(encoding="utf-8"))  # fail early
    for mod in [m for m in sys.modules if m == "refdiff" or m.startswith("refdiff.")]:
        del sys.modules[mod]
    sys.meta_path.insert(0, _Finder(mutant))
    return mutant


# -- in-process: plant a mutant into fresh copies of refdiff and the test modules ---------------
def _planted_module(name: str) -> bool:
    if name in ("tests", "tests.mutants", "tests.conftest"):
        return False
    return name == "refdiff" or name.startswith(("refdiff.", "tests."))


@contextmanager
def planted(mutant: Mutant) -> Iterator[None]:
    """Within the block, importing refdiff (or a tests.* module) gives fresh mutated copies.

    The modules already loaded are set aside and restored afterwards, so the rest of the test
    session (and its statistical ledger) never sees the mutant.  Hypothesis runs with the
    ``mutant`` profile (registered by tests/conftest.py) while test modules are re-imported.
    """
    from hypothesis import settings

    from tests._suite import profile_name

    current = profile_name()
    saved = {k: v for k, v in sys.modules.items() if _planted_module(k)}
    for k in saved:
        del sys.modules[k]
    finder = _Finder(mutant)
    sys.meta_path.insert(0, finder)
    settings.load_profile("mutant")
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if _planted_module(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        settings.load_profile(current)


def run_in_process(mutant: Mutant, catchers: Sequence[str]) -> Outcome:
    """Run the test functions ``catchers`` ("tests/x.py::test_f", no parameters) against a
    planted ``mutant`` in this process; stop at the first one that fails."""
    from _pytest.outcomes import Skipped

    failed: list[str] = []
    notes: list[str] = []
    t0 = time.perf_counter()
    with planted(mutant):
        for c in catchers:
            path, func = c.split("::")
            try:
                getattr(importlib.import_module(path[:-3].replace("/", ".")), func)()
            except Skipped as e:
                notes.append(f"{c} skipped: {e}")
            except Exception as e:  # any failure of a catcher is a catch
                failed.append(c)
                notes.append(f"{c}: {type(e).__name__}: {str(e)[:300]}")
                break
    return Outcome(
        mutant, 1 if failed else 0, failed, time.perf_counter() - t0, detail="\n".join(notes)
    )


# -- running the suite against each mutant ----------------------------------------------------
SCOPES = {
    "mine": ["tests/ground_truth/test_exact.py", "tests/ground_truth/test_statistical_*.py"],
    "spec": [
        "tests/ground_truth/test_exact.py",
        "tests/ground_truth/test_statistical_*.py",
        "tests/spec/test_schedule.py",
        "tests/spec/test_respacing.py",
        "tests/spec/test_forward.py",
        "tests/spec/test_posterior.py",
        "tests/spec/test_parameterization.py",
        "tests/spec/test_reverse.py",
        "tests/spec/test_affine.py",
        "tests/spec/test_sampling.py",
    ],
    "all": ["tests"],
}
EXCLUDE = ["tests/support/test_mutants_fast.py", "tests/ground_truth/test_calibration.py"]
# the σ-view sampler tests live in the rooms tests/spec and tests/ground_truth
SCOPES["spec"] += [
    "tests/spec/test_solvers_*.py",
    "tests/spec/test_sigma.py",
    "tests/spec/test_flow.py",
    "tests/ground_truth/test_solvers_*.py",
]


def _own_files(m: Mutant) -> list[str]:
    """The test files that hold ``m``'s fast catchers: each run in full."""
    return sorted({c.split("::")[0] for c in m.fast})


def _paths(scope: str) -> list[str]:
    out = []
    for pattern in SCOPES[scope]:
        out += (
            sorted(glob.glob(str(ROOT / pattern)))
            if "*" in pattern or pattern.endswith(".py")
            else [pattern]
        )
    return [os.path.relpath(p, ROOT) for p in out]


@dataclass
class Outcome:
    mutant: Mutant
    returncode: int
    failed: list[str]
    seconds: float
    error: str = ""
    detail: str = ""

    @property
    def caught(self) -> bool:
        return self.returncode != 0 and not self.error


def run_pytest(mutant: Mutant, targets: list[str], extra: list[str], timeout: float) -> Outcome:
    """Run pytest on ``targets`` with ``mutant`` planted (none for :data:`BASELINE`, with the
    same Hypothesis profile); collect the failing test ids."""
    env = dict(os.environ, REFDIFF_MUTANT=mutant.name, PYTHONDONTWRITEBYTECODE="1")
    env.pop("HYPOTHESIS_PROFILE", None)
    if mutant is BASELINE:
        del env["REFDIFF_MUTANT"]
        env["HYPOTHESIS_PROFILE"] = "mutant"
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            f"--junitxml={xml}",
            "-o",
            "junit_family=xunit1",
            *extra,
            *targets,
        ]
        for ex in EXCLUDE:
            cmd += ["--ignore", ex]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return Outcome(
                mutant, -1, [], time.perf_counter() - t0, f"timed out after {timeout:.0f} s"
            )
        secs = time.perf_counter() - t0
        failed = _failures(xml)
        err = ""
        if proc.returncode not in (0, 1):  # 2 interrupted, 3 internal, 4 usage, 5 no tests
            err = f"pytest exit {proc.returncode}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        elif proc.returncode == 1 and not failed:
            err = (
                "pytest failed without a failing test (budget or collection?): "
                + proc.stdout[-1500:]
            )
        return Outcome(mutant, proc.returncode, failed, secs, err)


def _failures(xml: Path) -> list[str]:
    if not xml.exists():
        return []
    out = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            f = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
            name = case.get("name", "").split("[")[0]
            nid = f"{f}::{name}"
            if nid not in out:
                out.append(nid)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--scope",
        choices=["own", *sorted(SCOPES)],
        default="own",
        help="which tests to run: own (default) = every test in the files of the mutant's fast "
        "catchers; or a fixed set of files",
    )
    ap.add_argument("--only", action="append", default=[], help="run only this mutant (repeatable)")
    ap.add_argument(
        "--fast", action="store_true", help="run each mutant against its fast catchers only"
    )
    ap.add_argument("-j", "--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (default 600)")
    ap.add_argument(
        "--maxfail", type=int, default=0, help="stop each run after N failures (0: never)"
    )
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument(
        "--no-baseline", action="store_true", help="skip the control run without a mutant"
    )
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:42s} {m.module:26s} {m.description}")
        return 0
    chosen = [BY_NAME[n] for n in args.only] if args.only else list(MUTANTS)
    extra = [f"--maxfail={args.maxfail}"] if args.maxfail else []
    t0 = time.perf_counter()
    jobs = max(1, args.jobs)
    print(
        f"{len(chosen)} mutants, scope {'fast catchers' if args.fast else args.scope}, "
        f"{jobs} at a time"
    )
    runs = ([] if args.fast or args.no_baseline else [BASELINE]) + chosen

    def tests_for(m: Mutant) -> list[str]:
        if args.fast:
            return list(m.fast)
        if args.scope != "own":
            return _paths(args.scope)
        if m is BASELINE:  # the control runs every file any chosen mutant will run
            return sorted({f for c in chosen for f in _own_files(c)})
        return _own_files(m)

    with cf.ThreadPoolExecutor(jobs) as pool:
        futs = [pool.submit(run_pytest, m, tests_for(m), extra, args.timeout) for m in runs]
        outcomes = [f.result() for f in futs]
    if runs[0] is BASELINE:
        base, outcomes = outcomes[0], outcomes[1:]
        if base.returncode != 0:
            print(f"\nthe UNMUTATED tests fail ({base.error or ', '.join(base.failed)}):")
            print("fix them first; a mutant 'caught' by a failing suite means nothing")
            return 2
        print(f"baseline: the unmutated tests pass ({base.seconds:.0f} s)")
    width = max(len(m.name) for m in chosen)
    print(f"\n{'mutant':{width}s}  caught  secs  catching tests")
    for o in outcomes:
        mark = "yes" if o.caught else "NO"
        print(f"{o.mutant.name:{width}s}  {mark:6s} {o.seconds:5.0f}  ({o.mutant.description})")
        for t in o.failed:
            print(f"{'':{width + 16}s}{t.split('/')[-1]}")
        if o.error or not o.failed:
            print(f"{'':{width + 16}s}{o.error or '-'}")
    missed = [o.mutant.name for o in outcomes if not o.caught]
    print(
        f"\n{len(outcomes) - len(missed)}/{len(outcomes)} mutants caught in "
        f"{time.perf_counter() - t0:.0f} s"
        + (f"; NOT caught: {', '.join(missed)}" if missed else "")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
