"""Properties of the σ-view samplers that hold exactly, driven by Hypothesis.

- The first-order exponential integrators are the DDPM/DDIM steps of refdiff.sampling in VE
  coordinates (Lu et al. 2022a §4.1, 2022b §5): UniP-1 without corrector ≡ DDIM η = 0, and
  SDE-DPM-Solver++-1 (dpmpp_2m_sde at η = 1 with only first-order steps) ≡ DDPM with β̃
  (``fixed_small``), with the same injected noise (docs/math.md (15.8)-(15.9), §7).
- With Gaussian data every sampler is affine in (x_T, z): affine combinations of inputs map to
  the same combinations of outputs (the premise of exact_sigma.sampler_law, eq. 19.14).
- Point-mass data: every step is exact on any grid (§19.5).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import exact as E
from refdiff import exact_sigma as X
from refdiff import flow as F
from refdiff import respacing as R
from refdiff import sampling, solvers
from refdiff import schedule as Sch
from tests.strategies import examples, seeds

OPTIONS = {
    "euler": [{}, {"s_churn": 1.5}, {"s_churn": 0.7, "churn_model_input": "unchurned"}],
    "euler_ancestral": [{}, {"eta": 0.3, "s_noise": 1.2}],
    "heun": [{}, {"s_churn": 2.0, "s_tmin": 0.5}],
    "dpm_2": [{}, {"s_churn": 2.0, "s_tmax": 5.0}],
    "lms": [{}, {"order": 2}],
    "dpmpp_2m": [{}, {"lower_order_final": False}],
    "dpmpp_2m_sde": [{}, {"solver_type": "heun", "eta": 0.6}],
    "dpmpp_3m_sde": [{}, {"taylor_d2": True, "lower_order_final": False}],
    "unipc": [{"order": 3}, {"order": 2, "solver_type": "bh1", "disable_corrector": (1,)}],
    "flow_euler": [{}, {"stochastic": True}],
}
CASES = [(s, i) for s, opts in OPTIONS.items() for i in range(len(opts))]


@st.composite
def grids(draw, flow: bool):
    """A strictly decreasing σ grid of 1-8 steps, ending at 0 or not."""
    n = draw(st.integers(1, 8))
    hi = 1.0 if flow else draw(st.floats(1.0, 100.0))
    u = draw(st.lists(st.floats(0.01, 0.99), min_size=n, max_size=n))
    inner = sorted({hi * (1 - v) for v in u} - {hi}, reverse=True)  # strictly descending
    end = [0.0] if draw(st.booleans()) else []
    g = np.array([hi, *inner, *end])
    return g[: max(2, len(g))]


@st.composite
def gaussian2(draw):
    m = draw(st.lists(st.floats(-2, 2), min_size=2, max_size=2))
    a, b, c = draw(st.floats(0.05, 2)), draw(st.floats(0.05, 2)), draw(st.floats(-0.9, 0.9))
    cov = np.array([[a, c * np.sqrt(a * b)], [c * np.sqrt(a * b), b]])
    return E.Gaussian(np.array(m), cov)


@settings(max_examples=examples(60), deadline=None)
@given(st.sampled_from(CASES), st.data(), seeds)
def test_samplers_are_affine_in_their_inputs(case, data, seed):
    sampler, k = case
    opts = OPTIONS[sampler][k]
    flow = sampler == "flow_euler"
    sig = data.draw(grids(flow))
    g = data.draw(gaussian2())
    model = X.velocity(g) if flow else X.denoiser(g)
    rng = np.random.default_rng(seed)
    x_T, z = solvers.draw_noise(rng, sig, (2, 2), sampler, **opts)
    a = float(rng.uniform(-1, 2))
    # rows: u1, u2, a u1 + (1 − a) u2
    xs = np.stack([x_T[0], x_T[1], a * x_T[0] + (1 - a) * x_T[1]])
    zs = None if z is None else np.stack([z[:, 0], z[:, 1], a * z[:, 0] + (1 - a) * z[:, 1]], 1)
    out = solvers.sample(model, sig, sampler=sampler, x_T=xs, step_noise=zs, **opts)
    np.testing.assert_allclose(out[2], a * out[0] + (1 - a) * out[1], rtol=1e-9, atol=1e-9)


@settings(max_examples=examples(60), deadline=None)
@given(st.sampled_from(CASES), st.data())
def test_point_mass_is_exact_on_any_grid(case, data):
    sampler, k = case
    opts = OPTIONS[sampler][k]
    if opts.get("churn_model_input") == "unchurned":
        return  # not marginal-preserving (tests/ground_truth/test_solvers_exact_law.py)
    flow = sampler == "flow_euler"
    sig = data.draw(grids(flow))
    m = np.array([0.4, -1.1])
    point = E.Gaussian(m, np.zeros((2, 2)))
    s0, s1 = float(sig[0]), float(sig[-1])
    if flow:
        law = X.sampler_law(sampler, point, sig, **opts)
        np.testing.assert_allclose(law.mean, (1 - s1) * m, atol=1e-10)
    else:
        law = X.sampler_law(sampler, point, sig, start=E.Gaussian(m, s0**2 * np.eye(2)), **opts)
        np.testing.assert_allclose(law.mean, m, atol=1e-10)
    scale = opts.get("s_noise", 1.0) if sampler in ("euler_ancestral",) else 1.0
    if scale == 1.0:
        np.testing.assert_allclose(law.cov, s1**2 * np.eye(2), atol=1e-9 * max(1.0, s0**2))


def _vp_grid(sch):
    """The VE σ of the schedule's steps t = T … 1, then 0 (eq. 15.1)."""
    return np.concatenate([sch.sigma[1:][::-1], [0.0]])


@settings(max_examples=examples(30), deadline=None)
@given(
    gaussian2(), st.sampled_from(["cosine", "linear", "scaled_linear"]), st.integers(1, 6), seeds
)
def test_unip1_is_ddim(g, name, n, seed):
    base = Sch.make_schedule(name, 1000)
    sch = Sch.respace(base, R.spaced_times(1000, n, "trailing"))
    x_vp = np.random.default_rng(seed).standard_normal((3, 2))
    want = sampling.ddim_sample(
        E.denoiser(g, base, "x0"), sch, x_T=x_vp, eta=0.0, prediction_type="x0"
    )
    sig = _vp_grid(sch)
    x_ve = x_vp * np.sqrt(1 + sig[0] ** 2)
    got = solvers.unipc(X.denoiser(g), sig, x_T=x_ve, order=1, corrector=False)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@settings(max_examples=examples(30), deadline=None)
@given(gaussian2(), st.sampled_from(["cosine", "linear"]), seeds)
def test_sde_dpm_solver_1_is_ddpm_fixed_small(g, name, seed):
    """Two steps (both first order under lower_order_final, n < 15): VE states, the same z."""
    base = Sch.make_schedule(name, 1000)
    sch = Sch.respace(base, R.spaced_times(1000, 2, "trailing"))
    rng = np.random.default_rng(seed)
    x_vp, z = sampling.draw_noise(rng, 2, (3, 2))
    want = sampling.ddpm_sample(
        E.denoiser(g, base, "x0"),
        sch,
        x_T=x_vp,
        step_noise=z,
        variance_type="fixed_small",
        prediction_type="x0",
    )
    sig = _vp_grid(sch)
    got = solvers.dpmpp_2m_sde(
        X.denoiser(g), sig, x_T=x_vp * np.sqrt(1 + sig[0] ** 2), step_noise=z, eta=1.0
    )
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_flow_euler_is_the_ve_euler_of_the_reparameterised_ode_at_first_order():
    """One flow-Euler step from t = 1 lands where the straight line through x̂_0 does:
    x_1 = ε, u = ε − x̂_0, x = ε + (t − 1)(ε − x̂_0) = (1 − t) x̂_0 + t ε (eq. 18.1 at x̂_0)."""
    g = E.Gaussian(np.array([1.0, -1.0]), np.diag([0.5, 2.0]))
    eps = np.array([[0.3, -0.7]])
    t = 0.4
    got = solvers.flow_euler(X.velocity(g), np.array([1.0, t]), x_T=eps)
    np.testing.assert_allclose(got, F.interpolate(g.mean[None], eps, t), atol=1e-14)
