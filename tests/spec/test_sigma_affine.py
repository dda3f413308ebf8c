"""refdiff.sigma_affine: the σ-view samplers as affine programs read off refdiff.solvers.

The fast run equals the specification within a stated rounding bound for every sampler and
the options where the peers differ; the noise stream, trajectory and callback are the
specification's; the coefficients are those of the specification (by hand for Euler and
DPM-Solver++(2M), whose steps have closed forms in docs/math.md §19).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import exact, exact_sigma, flow, sigma, solvers
from refdiff import sigma_affine as SA
from refdiff.errors import InputError, NonFiniteError, ShapeError

G = exact.Gaussian([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]])
MIX = exact.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, 0.0]], [np.eye(2) * 0.2, np.eye(2)])
KARRAS = sigma.karras(12, 0.02, 80.0)
FLOW = flow.flow_sigmas(12, shift_factor=3.0)

CASES = [
    ("euler", {}),
    ("euler", {"s_churn": 1.0}),
    ("euler", {"s_churn": 1.0, "churn_model_input": "unchurned"}),
    ("euler_ancestral", {}),
    ("euler_ancestral", {"eta": 0.5}),
    ("heun", {}),
    ("heun", {"s_churn": 0.5}),
    ("dpm_2", {}),
    ("dpm_2", {"s_churn": 0.5}),
    ("lms", {}),
    ("lms", {"order": 2}),
    ("dpmpp_2m", {}),
    ("dpmpp_2m", {"lower_order_final": False}),
    ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5}),
    ("dpmpp_3m_sde", {}),
    ("dpmpp_3m_sde", {"eta": 0.0, "taylor_d2": True}),
    ("unipc", {}),
    ("unipc", {"order": 3, "solver_type": "bh1"}),
    ("unipc", {"order": 1, "corrector": False}),
    ("flow_euler", {}),
    ("flow_euler", {"stochastic": True}),
]


def _model(name: str, data):
    return exact_sigma.velocity(data) if name == "flow_euler" else exact_sigma.denoiser(data)


def _grid(name: str, final: str = "zero"):
    if name == "flow_euler":
        return FLOW
    return KARRAS if final == "zero" else sigma.karras(12, 0.02, 80.0, final_sigma=final)


def _bound(traj: np.ndarray) -> float:
    """The stated rounding bound: 1e-11 · (1 + max |x|) over the trajectory (measured worst
    over these cases: ~2e-16 relative; a wrong coefficient is ≥ 1e-8 relative)."""
    return 1e-11 * (1.0 + float(np.max(np.abs(traj))))


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
@pytest.mark.parametrize("data", [G, MIX], ids=["gaussian", "mixture"])
def test_fast_run_is_the_specification(name, options, data):
    grid = _grid(name)
    kw = {"rng": np.random.default_rng(3), "return_trajectory": True, **options}
    want, wtraj = solvers.sample(_model(name, data), grid, (16, 2), sampler=name, **kw)
    kw["rng"] = np.random.default_rng(3)
    got, gtraj = SA.sample(_model(name, data), grid, (16, 2), sampler=name, **kw)
    assert np.max(np.abs(gtraj - wtraj)) <= _bound(wtraj)
    np.testing.assert_array_equal(got, gtraj[-1])


@pytest.mark.parametrize("final", ["sigma_min", "none"])
@pytest.mark.parametrize(
    "name", ["euler", "heun", "dpm_2", "dpmpp_2m", "dpmpp_3m_sde", "unipc", "lms"]
)
def test_grids_that_end_above_zero(name, final):
    grid = _grid(name, final)
    x_T = grid[0] * np.random.default_rng(4).standard_normal((8, 2))
    noise = np.random.default_rng(5).standard_normal((grid.shape[0] - 1, 8, 2))
    step_noise = noise if solvers.needs_noise(name) else None
    want = solvers.sample(_model(name, G), grid, sampler=name, x_T=x_T, step_noise=step_noise)
    got = SA.sample(_model(name, G), grid, sampler=name, x_T=x_T, step_noise=step_noise)
    assert np.max(np.abs(got - want)) <= _bound(want)


def test_coefficients_by_hand():
    """Euler: x_{i+1} = x + (σ'−σ)(x − D)/σ, so a = σ'/σ, b_0 = 1 − σ'/σ; DPM-Solver++(2M)
    after its first step: a = σ'/σ, b = −(e^{−h}−1)·(1 + 1/2r, −1/2r) (eq. 19.5)."""
    g = KARRAS
    p = SA.program("euler", g)
    for i, st in enumerate(p.steps):
        assert st.calls[0].sigma == g[i] and st.calls[0].alpha == 1.0
        assert st.a == pytest.approx(g[i + 1] / g[i], rel=1e-14, abs=1e-15)
        assert dict(st.b)[0] == pytest.approx(1 - g[i + 1] / g[i], rel=1e-14)
    p = SA.program("dpmpp_2m", g, lower_order_final=False)
    for i in range(1, 11):
        h, h_last = math.log(g[i] / g[i + 1]), math.log(g[i - 1] / g[i])
        r = h_last / h
        st = p.steps[i]
        assert st.a == pytest.approx(g[i + 1] / g[i], rel=1e-13)
        b = dict(st.b)
        assert b[0] == pytest.approx(-math.expm1(-h) * (1 + 1 / (2 * r)), rel=1e-12)
        assert b[1] == pytest.approx(math.expm1(-h) / (2 * r), rel=1e-12)
    assert dict(p.steps[-1].b) == {0: 1.0} and p.steps[-1].a == 0.0  # into σ = 0: x = D


def test_noise_stream_callback_and_programs_are_the_specifications():
    calls_spec, calls_fast = [], []
    kw = {"sampler": "euler_ancestral", "rng": np.random.default_rng(9)}
    want = solvers.sample(
        _model("euler", G), KARRAS, (4, 2), callback=lambda *a: calls_spec.append(a[:2]), **kw
    )
    kw["rng"] = np.random.default_rng(9)
    got = SA.sample(
        _model("euler", G), KARRAS, (4, 2), callback=lambda *a: calls_fast.append(a[:2]), **kw
    )
    assert calls_fast == calls_spec and len(calls_fast) == 12
    assert np.max(np.abs(got - want)) <= _bound(want)
    assert SA.program("dpmpp_2m", KARRAS) is SA.program("dpmpp_2m", KARRAS.copy())
    assert SA.program("dpmpp_2m", KARRAS) is not SA.program("dpmpp_2m", KARRAS[1:])


def test_typed_errors():
    with pytest.raises(InputError) as e:
        SA.program("nope", KARRAS)
    assert e.value.argument == "sampler"
    bad = np.ones((2, 2))
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError) as e:
        SA.sample(lambda x, s: bad, KARRAS, (2, 2), rng=np.random.default_rng(0))
    assert e.value.argument == "model output"
    with pytest.raises(ShapeError) as e:
        SA.sample(lambda x, s: np.ones((3, 2)), KARRAS, (2, 2), rng=np.random.default_rng(0))
    assert e.value.argument == "model output"


@pytest.mark.parametrize("n", [1 << 15, (1 << 15) + 3])
def test_combine_is_blocked_without_changing_the_sum(n):
    rng = np.random.default_rng(n)
    vs = [rng.standard_normal((n // 2 + 1, 2)) for _ in range(3)]
    cs = [0.3, -1.7, 2.5]
    want = vs[0] * cs[0] + vs[1] * cs[1] + vs[2] * cs[2]
    np.testing.assert_array_equal(SA.combine(list(zip(vs, cs))), want)
