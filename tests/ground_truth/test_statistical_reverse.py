"""The exact reverse kernel q(x_{t−1}|x_t) of Gaussian-mixture data reproduces every marginal.

refdiff.exact.reverse_sample draws x_T from the exact marginal and then from the closed-form
mixture kernel at each step; every state x_t of the chain must follow marginal(data, t).
One assertion per example: the KS tests of the closed-form 1-D projections at every visited
time, Bonferroni-combined (refdiff.stats.combine) at α = tests._suite.alpha() in total.
"""

from __future__ import annotations

from hypothesis import given, settings

from refdiff import exact as EX
from refdiff import stats
from refdiff.schedule import Schedule
from tests._suite import alpha, examples, mixtures, rng_for, sampler_schedules, seeds

N = 20_000


def reverse_chain_check(data: EX.GaussianMixture, sch: Schedule, rng, a: float, n: int = N):
    _, traj = EX.reverse_sample(data, sch, n, rng=rng, return_trajectory=True)
    checks = [
        stats.check_mixture(traj[k], EX.marginal(data, sch, sch.T - k), false_fail_rate=a / sch.T)
        for k in range(1, sch.T + 1)
    ]
    return stats.combine(checks, name="exact.reverse_chain_marginals")


@given(data=mixtures(), bs=sampler_schedules(max_steps=6), seed=seeds)
@settings(max_examples=examples(4))
def test_exact_reverse_chain_has_every_marginal(data, bs, seed):
    _, sch = bs
    stats.assert_check(reverse_chain_check(data, sch, rng_for(seed), alpha()))
