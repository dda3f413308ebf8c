"""DDPM and DDIM, run with the exact denoiser, against their exact output laws.

For Gaussian data every step is affine in x_t, so the output of refdiff.sampling's loops is
exactly Gaussian with the mean and covariance of refdiff.exact.ddpm_law / ddim_law.
Hypothesis draws the schedule (short big-step schedules, named schedules respaced by every
peer rule, zero terminal SNR), the data law, the prediction type, the variance type, η, the
final ᾱ, final-step noise and the seed.  One assertion per example at α = alpha().

Two checks do not go through ddpm_law at all: where theory says the sampler is exact
(Ho et al. 2020 §3.2, Song et al. 2021) its states must have the data's forward marginals;
and with 1000 steps DDPM on Gaussian-mixture data lands within a stated KS tolerance of the
data law (its discretisation bias, bounded in tests/test_calibration.py).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import exact as E
from refdiff import sampling, stats
from refdiff import schedule as S
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

N = 20_000
#: KS distance within which 1000-step DDPM with the exact denoiser reproduces the mixtures
#: drawn below (component std >= 0.2); measured ≤ 0.005 at n = 1e5, checked in calibration.
DDPM_MIXTURE_TOLERANCE = 0.01
N_MIXTURE = 10_000


@given(bs=sampler_schedules(), data=gaussians(), seed=seeds, draw=st.data())
@settings(max_examples=examples(6))
def test_ddpm_with_the_exact_denoiser_has_the_exact_law(bs, data, seed, draw):
    base, sch = bs
    options = draw.draw(ddpm_options(base), label="options")
    den = E.denoiser(data, base, options["prediction_type"])
    x = sampling.ddpm_sample(den, sch, (N, data.dim), rng=rng_for(seed), **options)
    law = E.ddpm_law(data, sch, **options)
    stats.assert_gaussian(x, law.mean, law.cov, false_fail_rate=alpha(), name="ddpm.exact_law")


@given(bs=sampler_schedules(), data=gaussians(), seed=seeds, draw=st.data())
@settings(max_examples=examples(6))
def test_ddim_with_the_exact_denoiser_has_the_exact_law(bs, data, seed, draw):
    base, sch = bs
    options = draw.draw(ddim_options(base), label="options")
    den = E.denoiser(data, base, options["prediction_type"])
    x = sampling.ddim_sample(den, sch, (N, data.dim), rng=rng_for(seed), **options)
    law = E.ddim_law(data, sch, **options)
    stats.assert_gaussian(x, law.mean, law.cov, false_fail_rate=alpha(), name="ddim.exact_law")


CASES = {
    # (sampler, data covariance, options, last state exact?)
    "ddpm fixed_large, N(m, I)": ("ddpm", 1.0, {"variance_type": "fixed_large"}, False),
    "ddpm fixed_small, point mass": ("ddpm", 0.0, {"variance_type": "fixed_small"}, True),
    "ddim eta=0, point mass": ("ddim", 0.0, {"eta": 0.0}, True),
    "ddim eta=1, point mass": ("ddim", 0.0, {"eta": 1.0}, True),
}


@given(
    case=st.sampled_from(sorted(CASES)),
    bs=sampler_schedules(max_steps=6),
    m=st.lists(st.floats(-2.0, 2.0), min_size=2, max_size=2),
    seed=seeds,
)
@settings(max_examples=examples(3))
def test_samplers_keep_the_forward_marginals_where_theory_says_they_are_exact(case, bs, m, seed):
    """Started from the exact marginal of x_T, every state x_t of the chain follows the data's
    forward marginal q(x_t): an independent ground truth (refdiff.exact.marginal only)."""
    base, sch = bs
    kind, var, options, last_exact = CASES[case]
    data = E.Gaussian(np.array(m), var * np.eye(2))
    rng = rng_for(seed)
    x_T = E.marginal(data, sch, sch.T).sample(rng, N)
    pred = "v" if base.alpha_bar[-1] == 0.0 else "epsilon"
    den = E.denoiser(data, base, pred)
    run = sampling.ddpm_sample if kind == "ddpm" else sampling.ddim_sample
    _, traj = run(
        den, sch, x_T=x_T, rng=rng, prediction_type=pred, return_trajectory=True, **options
    )
    if last_exact:  # x_0 of a point mass is the point itself
        np.testing.assert_allclose(traj[-1], np.broadcast_to(data.mean, traj[-1].shape), atol=1e-8)
    checks = []
    for k in range(1, sch.T):  # the states x_{T−1}, …, x_1
        law = E.marginal(data, sch, sch.T - k)
        checks.append((traj[k], law))
    if checks:
        a = alpha() / len(checks)
        stats.assert_all(
            [
                stats.check_gaussian(x, law.mean, law.cov, false_fail_rate=a, name=case)
                for x, law in checks
            ],
            name="samplers.exact_cases",
        )


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
    x = sampling.ddpm_sample(
        E.denoiser(data, base),
        base,
        (N_MIXTURE, data.dim),
        rng=rng_for(seed),
        variance_type=variance_type,
    )
    stats.assert_mixture(
        x,
        data,
        false_fail_rate=alpha(),
        tolerance=DDPM_MIXTURE_TOLERANCE,
        name="ddpm.mixture_1000_steps",
    )
