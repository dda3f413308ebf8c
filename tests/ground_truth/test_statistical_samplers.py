"""DDPM and DDIM, run with the exact denoiser, against their exact output laws.

For Gaussian data every step is affine in x_t, so the output of refdiff.sampling's loops is
exactly Gaussian with the mean and covariance of refdiff.exact.ddpm_law / ddim_law.
Hypothesis draws the schedule (short big-step schedules, named schedules respaced by every
peer rule, zero terminal SNR), the data law, the prediction type, the variance type, η, the
final ᾱ, final-step noise and the seed.  One assertion per example at α = alpha().

Two checks do not go through ddpm_law at all: where theory says the sampler is exact
(Ho et al. 2020 §3.2, Song et al. 2021) its states must have the data's forward marginals;
and with 1000 steps DDPM on Gaussian-mixture data lands within a stated KS tolerance of the
data law (its discretisation bias, bounded in tests/ground_truth/test_calibration.py).
"""

from __future__ import annotations

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from refdiff import exact as EX
from refdiff import sampling, stats
from refdiff import schedule as S
from refdiff.schedule import Schedule
from tests._suite import (
    alpha,
    ddim_options,
    ddpm_options,
    examples,
    gaussians,
    mixtures,
    rng_for,
    sampler_schedules,
    seeds,
)

N = 50_000
#: KS distance (per projection) within which 1000-step DDPM with the exact denoiser
#: reproduces the mixtures drawn below (component std ≥ 0.2, weights ≥ 0.1 before
#: normalising, means in [−3, 3]): its discretisation bias.  Measured on 16 extreme members of
#: the family at n = 2e5: KS ≤ 0.0064 (narrow, far apart, weights 0.09/0.91, linear,
#: fixed_small); tests/ground_truth/test_calibration.py bounds it below this with
#: confidence 1 − 1e-3.
DDPM_MIXTURE_TOLERANCE = 0.02
N_MIXTURE = 20_000


def ddpm_check(
    base: Schedule, sch: Schedule, data: EX.Gaussian, options: dict, rng, a: float, n: int = N
):
    den = EX.denoiser(data, base, options.get("prediction_type", "epsilon"))
    x = sampling.ddpm_sample(den, sch, (n, data.dim), rng=rng, **options)
    law = EX.ddpm_law(data, sch, **options)
    return stats.check_gaussian(x, law.mean, law.cov, false_fail_rate=a, name="ddpm.exact_law")


def ddim_check(
    base: Schedule, sch: Schedule, data: EX.Gaussian, options: dict, rng, a: float, n: int = N
):
    den = EX.denoiser(data, base, options.get("prediction_type", "epsilon"))
    x = sampling.ddim_sample(den, sch, (n, data.dim), rng=rng, **options)
    law = EX.ddim_law(data, sch, **options)
    return stats.check_gaussian(x, law.mean, law.cov, false_fail_rate=a, name="ddim.exact_law")


CASES = {
    # (sampler, data covariance scale, options, last state exact?)
    "ddpm fixed_large, N(m, I)": ("ddpm", 1.0, {"variance_type": "fixed_large"}, False),
    "ddpm fixed_small, point mass": ("ddpm", 0.0, {"variance_type": "fixed_small"}, True),
    "ddim eta=0, point mass": ("ddim", 0.0, {"eta": 0.0}, True),
    "ddim eta=1, point mass": ("ddim", 0.0, {"eta": 1.0}, True),
}


def exact_case_check(case: str, base: Schedule, sch: Schedule, m, rng, a: float, n: int = N):
    """Started from the exact marginal of x_T, the states x_{T−1}, …, x_1 follow the data's
    forward marginals (None when there are none, T = 1); x_0 of a point mass is the point."""
    kind, var, options, last_exact = CASES[case]
    data = EX.Gaussian(np.asarray(m, dtype=float), var * np.eye(len(m)))
    x_T = EX.marginal(data, sch, sch.T).sample(rng, n)
    pred = "v" if base.alpha_bar[-1] == 0.0 else "epsilon"
    den = EX.denoiser(data, base, pred)
    run = sampling.ddpm_sample if kind == "ddpm" else sampling.ddim_sample
    _, traj = run(
        den, sch, x_T=x_T, rng=rng, prediction_type=pred, return_trajectory=True, **options
    )
    if last_exact:
        np.testing.assert_allclose(traj[-1], np.broadcast_to(data.mean, traj[-1].shape), atol=1e-8)
    if sch.T < 2:
        return None
    checks = []
    for k in range(1, sch.T):  # the states x_{T−1}, …, x_1
        law = EX.marginal(data, sch, sch.T - k)
        checks.append(
            stats.check_gaussian(
                traj[k], law.mean, law.cov, false_fail_rate=a / (sch.T - 1), name=case
            )
        )
    return stats.combine(checks, name="samplers.exact_cases")


def mixture_ddpm_check(
    data: EX.GaussianMixture,
    base: Schedule,
    variance_type: str,
    rng,
    a: float,
    n: int = N_MIXTURE,
    tolerance: float = DDPM_MIXTURE_TOLERANCE,
):
    x = sampling.ddpm_sample(
        EX.denoiser(data, base), base, (n, data.dim), rng=rng, variance_type=variance_type
    )
    return stats.check_mixture(
        x, data, false_fail_rate=a, tolerance=tolerance, name="ddpm.mixture_1000_steps"
    )


def _events(base: Schedule, sch: Schedule, options: dict) -> None:
    """Coverage notes for ``--hypothesis-show-statistics``."""
    event(f"{sch.T} steps" + (f" of {base.T}" if sch is not base else ""))
    event("zero terminal SNR" if base.alpha_bar[-1] == 0.0 else "ᾱ_T > 0")
    for k, v in options.items():
        event(f"{k}={v if not isinstance(v, float) else round(v, 2)}")


@given(bs=sampler_schedules(), data=gaussians(), seed=seeds, draw=st.data())
@settings(max_examples=examples(6))
def test_ddpm_with_the_exact_denoiser_has_the_exact_law(bs, data, seed, draw):
    base, sch = bs
    options = draw.draw(ddpm_options(base), label="options")
    _events(base, sch, options)
    stats.assert_check(ddpm_check(base, sch, data, options, rng_for(seed), alpha()))


@given(bs=sampler_schedules(), data=gaussians(), seed=seeds, draw=st.data())
@settings(max_examples=examples(6))
def test_ddim_with_the_exact_denoiser_has_the_exact_law(bs, data, seed, draw):
    base, sch = bs
    options = draw.draw(ddim_options(base), label="options")
    _events(base, sch, options)
    stats.assert_check(ddim_check(base, sch, data, options, rng_for(seed), alpha()))


@given(
    case=st.sampled_from(sorted(CASES)),
    bs=sampler_schedules(max_steps=6, min_steps=2),
    m=st.lists(st.floats(-2.0, 2.0), min_size=2, max_size=2),
    seed=seeds,
)
@settings(max_examples=examples(3))
def test_samplers_keep_the_forward_marginals_where_theory_says_they_are_exact(case, bs, m, seed):
    """An independent ground truth: refdiff.exact.marginal only, no sampler law."""
    base, sch = bs
    result = exact_case_check(case, base, sch, m, rng_for(seed), alpha())
    if result is not None:
        stats.assert_check(result)


@given(
    data=mixtures(max_dim=2, min_std=0.2),
    name=st.sampled_from(["linear", "cosine"]),
    variance_type=st.sampled_from(["fixed_small", "fixed_large"]),
    seed=seeds,
)
@settings(max_examples=examples(2))
def test_ddpm_with_many_steps_samples_mixture_data(data, name, variance_type, seed):
    """1000 DDPM steps with the exact denoiser: the output is within DDPM_MIXTURE_TOLERANCE
    (KS, along each projection) of the mixture data law, with false-failure rate α."""
    base = S.make_schedule(name, 1000)
    stats.assert_check(mixture_ddpm_check(data, base, variance_type, rng_for(seed), alpha()))
