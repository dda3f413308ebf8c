"""Convergence orders of the σ-view samplers against the exact solution (docs/math.md §19.5).

Gaussian data, the exact denoiser, Karras σ from σ_max = 80 to σ_min = 0.02 (no final 0, so
every step is a regular step; ``lower_order_final=False``, which is moot at these n ≥ 32).

- ODE samplers (strong error): the max-abs error of x(σ_min) against the closed-form PF-ODE
  solution (eq. 19.12) from the same x_T, as n doubles.  The measured order
  log₂(e(n)/e(2n)) at the stated n must be within ±0.3 of the theoretical order:
  Euler 1, flow Euler 1, Heun 2, DPM-2 2, DPM-Solver++(2M) 2 (both 2M-SDE forms at η = 0), UniPC-p
  p + 1 with its corrector (UniC raises the order by one; p without), LMS 4 (the first-order
  start costs O(h²)·c with c ∝ D'' ~ S/σ_max³, negligible here), DPM-Solver++(3M) 3 with the
  Taylor coefficient and 2 with the published one (its d₂ term is half the Taylor term,
  eq. 19.7 note; the test that the published form is *not* third order is part of the spec).
- SDE samplers (weak error): the max-abs error of the exact output law's mean and covariance
  (exact_sigma.sampler_law, eq. 19.14), started from the exact marginal N(m, S + σ_max² I),
  against the exact marginal N(m, S + σ_min² I) that the reverse SDE preserves: Euler-churn 1,
  Euler ancestral 1, Heun-churn 2, DPM-2-churn 2, DPM-Solver++(2M) SDE (midpoint and Heun) 2,
  DPM-Solver++(3M) SDE 2, and diffusers' third-order sde-dpmsolver++ (``diffusers_sde_d2``) 1:
  its d₂ coefficient is off by −1, an O(h²) local error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import exact_sigma as X
from refdiff import flow as F
from refdiff import sigma as S
from refdiff import solvers
from refdiff.exact import Gaussian

SIGMA_MAX, SIGMA_MIN = 80.0, 0.02
TOL = 0.3


def _data() -> Gaussian:
    rng = np.random.default_rng(20221)
    A = rng.standard_normal((3, 3))
    return Gaussian(np.array([0.5, -1.0, 2.0]), A @ A.T / 3 + 0.05 * np.eye(3))


G = _data()
X_T = np.random.default_rng(7).standard_normal((4, 3)) * SIGMA_MAX


def ode_error(sampler: str, n: int, **options) -> float:
    sig = S.karras(n, SIGMA_MIN, SIGMA_MAX, final_sigma="none")
    x = solvers.sample(X.denoiser(G), sig, sampler=sampler, x_T=X_T, **options)
    return float(np.abs(x - X.ode_solution(G, X_T, SIGMA_MAX, SIGMA_MIN)).max())


def flow_error(n: int) -> float:
    sig = np.linspace(1.0, SIGMA_MIN, n + 1)
    z = X_T / SIGMA_MAX
    x = solvers.flow_euler(X.velocity(G), sig, x_T=z)
    return float(np.abs(x - X.flow_ode_solution(G, z, 1.0, SIGMA_MIN)).max())


def weak_error(sampler: str, n: int, **options) -> float:
    sig = S.karras(n, SIGMA_MIN, SIGMA_MAX, final_sigma="none")
    law = X.sampler_law(sampler, G, sig, start=X.marginal(G, SIGMA_MAX), **options)
    want = X.marginal(G, SIGMA_MIN)
    return float(np.abs(law.cov - want.cov).max() + np.abs(law.mean - want.mean).max())


def order(err, n: int) -> float:
    return math.log2(err(n) / err(2 * n))


LOF = {"lower_order_final": False}
# (sampler, options, n, theoretical order)
ODE_CASES = {
    "euler": ("euler", {}, 32, 1),
    "heun": ("heun", {}, 64, 2),
    "dpm_2": ("dpm_2", {}, 64, 2),
    "lms": ("lms", {}, 128, 4),
    "dpmpp_2m": ("dpmpp_2m", LOF, 64, 2),
    "dpmpp_2m_sde eta=0 heun": ("dpmpp_2m_sde", {**LOF, "eta": 0.0, "solver_type": "heun"}, 64, 2),
    "dpmpp_3m eta=0 published": ("dpmpp_3m_sde", {**LOF, "eta": 0.0}, 128, 2),
    "dpmpp_3m eta=0 taylor_d2": ("dpmpp_3m_sde", {**LOF, "eta": 0.0, "taylor_d2": True}, 64, 3),
    "unipc-1": ("unipc", {**LOF, "order": 1}, 64, 2),
    "unipc-2": ("unipc", {**LOF, "order": 2}, 64, 3),
    "unipc-2 bh1": ("unipc", {**LOF, "order": 2, "solver_type": "bh1"}, 64, 3),
    "unipc-3": ("unipc", {**LOF, "order": 3}, 64, 4),
    "unipc-3 no corrector": ("unipc", {**LOF, "order": 3, "corrector": False}, 64, 3),
}
SDE_CASES = {
    "euler churn": ("euler", {"s_churn": 5.0}, 128, 1),
    "euler_ancestral": ("euler_ancestral", {}, 128, 1),
    "heun churn": ("heun", {"s_churn": 5.0}, 64, 2),
    "dpm_2 churn": ("dpm_2", {"s_churn": 5.0}, 64, 2),
    "dpmpp_2m_sde midpoint": ("dpmpp_2m_sde", LOF, 64, 2),
    "dpmpp_2m_sde heun": ("dpmpp_2m_sde", {**LOF, "solver_type": "heun"}, 64, 2),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", LOF, 128, 2),
    "dpmpp_3m_sde diffusers_sde_d2": ("dpmpp_3m_sde", {**LOF, "diffusers_sde_d2": True}, 128, 1),
}


@pytest.mark.parametrize("case", list(ODE_CASES))
def test_ode_convergence_order(case):
    sampler, options, n, p = ODE_CASES[case]
    measured = order(lambda k: ode_error(sampler, k, **options), n)
    assert abs(measured - p) <= TOL, f"{case}: order {measured:.2f}, theory {p}"


def test_flow_euler_convergence_order():
    measured = order(flow_error, 32)
    assert abs(measured - 1) <= TOL, f"flow Euler: order {measured:.2f}, theory 1"


@pytest.mark.parametrize("case", list(SDE_CASES))
def test_sde_weak_convergence_order(case):
    sampler, options, n, p = SDE_CASES[case]
    measured = order(lambda k: weak_error(sampler, k, **options), n)
    assert abs(measured - p) <= TOL, f"{case}: weak order {measured:.2f}, theory {p}"


# -- parameterless catchers (for tests/mutants.py) ----------------------------------------------
def test_orders_of_the_multistep_solvers():
    """DPM-Solver++(2M) 2, 3M (Taylor) 3, UniPC-3 4, LMS 4: one pass, fails at the first."""
    for case in ("dpmpp_2m", "dpmpp_3m eta=0 taylor_d2", "unipc-3", "unipc-2 bh1", "lms"):
        test_ode_convergence_order(case)


def test_orders_of_the_karras_solvers():
    for case in ("euler", "heun"):
        test_ode_convergence_order(case)
    for case in ("heun churn", "euler churn", "euler_ancestral", "dpmpp_2m_sde midpoint"):
        test_sde_weak_convergence_order(case)


def test_flow_grid_shift_is_consistent_with_the_ode():
    """A shifted flow grid (eq. 18.6) still converges to the same exact ODE solution."""
    z = X_T / SIGMA_MAX
    want = X.flow_ode_solution(G, z, 1.0, 0.0)
    errs = []
    for n in (32, 64):
        sig = F.flow_sigmas(n, shift_factor=3.0, sigma_min=0.3 / n)
        errs.append(np.abs(solvers.flow_euler(X.velocity(G), sig, x_T=z) - want).max())
    assert errs[1] < errs[0] * 0.6
