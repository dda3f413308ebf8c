"""Statistical tests of the forward process and the posterior against exact Gaussian laws.

Each Hypothesis example makes ONE statistical assertion at α = tests._suite.alpha() (1e-6 in
the ci/dev profiles); its detectable discrepancy is printed in the session's error-budget
summary.  Data are Gaussian N(m, S), so every law here is exactly Gaussian with a known mean
and covariance (refdiff.exact.marginal / forward_joint), and refdiff.stats' Gaussian check
(χ² on the mean, directional χ² on the covariance) is exact.

- chained single steps q(x_t|x_{t−1}) ∘ … ∘ q(x_1|x_0) give the closed form q(x_t|x_0);
- q(x_t|x_s) ∘ q(x_s|x_0): the pair (x_s, x_t) has the forward joint law;
- posterior consistency: x_0 → x_t ~ q(x_t|x_0) → x_{t−1} ~ q(x_{t−1}|x_t, x_0) gives the
  triple (x_0, x_{t−1}, x_t) the joint law of the forward process.

The ``*_check`` functions are the properties; tests/ground_truth/test_calibration.py reruns them at
α = 0.05 to show their false-failure rates are what they claim.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import exact as EX
from refdiff import forward as F
from refdiff import posterior as P
from refdiff import stats
from refdiff.schedule import Schedule
from tests._suite import alpha, examples, forward_schedules, gaussians, rng_for, seeds

N = 50_000


def chain_check(sch: Schedule, data: EX.Gaussian, t: int, rng, a: float, n: int = N):
    x = data.sample(rng, n)
    for s in range(1, t + 1):
        x = F.q_step_sample(sch, x, s, rng=rng)
    law = EX.marginal(data, sch, t)
    return stats.check_gaussian(x, law.mean, law.cov, false_fail_rate=a, name="forward.chain")


def transition_check(sch: Schedule, data: EX.Gaussian, s: int, t: int, rng, a: float, n: int = N):
    x0 = data.sample(rng, n)
    x_s = F.q_sample(sch, x0, s, rng=rng)
    x_t = F.q_transition_sample(sch, x_s, t, s, rng=rng)
    joint = EX.forward_joint(data, [sch.alpha_bar[s], sch.alpha_bar[t]])
    return stats.check_gaussian(
        np.hstack([x_s, x_t]),
        joint.mean,
        joint.cov,
        false_fail_rate=a,
        name="forward.transition_joint",
    )


def posterior_check(sch: Schedule, data: EX.Gaussian, t: int, rng, a: float, n: int = N):
    """None at t = 1 after checking exactly that the posterior returns x_0 itself."""
    x0 = data.sample(rng, n)
    x_t = F.q_sample(sch, x0, t, rng=rng)
    x_prev = P.posterior_sample(sch, x0, x_t, t, rng=rng)
    if sch.alpha_bar[t - 1] == 1.0:  # t = 1: the posterior is the point mass at x_0
        np.testing.assert_allclose(x_prev, x0, rtol=1e-12, atol=1e-12)
        return None
    joint = EX.forward_joint(data, [1.0, sch.alpha_bar[t - 1], sch.alpha_bar[t]])
    return stats.check_gaussian(
        np.hstack([x0, x_prev, x_t]),
        joint.mean,
        joint.cov,
        false_fail_rate=a,
        name="posterior.joint",
    )


@given(sch=forward_schedules(), data=gaussians(), seed=seeds, draw=st.data())
@settings(max_examples=examples(4))
def test_chained_forward_steps_have_the_closed_form_law(sch, data, seed, draw):
    t = draw.draw(st.integers(min_value=1, max_value=sch.T), label="t")
    stats.assert_check(chain_check(sch, data, t, rng_for(seed), alpha()))


@given(sch=forward_schedules(), data=gaussians(), seed=seeds, draw=st.data())
@settings(max_examples=examples(3))
def test_transition_composes_with_the_closed_form(sch, data, seed, draw):
    t = draw.draw(st.integers(min_value=1, max_value=sch.T), label="t")
    s = draw.draw(st.integers(min_value=0, max_value=t - 1), label="s")
    stats.assert_check(transition_check(sch, data, s, t, rng_for(seed), alpha()))


@given(sch=forward_schedules(min_T=2), data=gaussians(), seed=seeds, draw=st.data())
@settings(max_examples=examples(4))
def test_posterior_is_consistent_with_the_forward_process(sch, data, seed, draw):
    t = draw.draw(st.integers(min_value=1, max_value=sch.T).map(lambda t: max(t, 2)), label="t")
    result = posterior_check(sch, data, t, rng_for(seed), alpha())
    if result is not None:
        stats.assert_check(result)
