"""refdiff.solvers: the contract of docs/samplers.md — noise layout, rng path, trajectory and
callback, shapes, typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import exact_sigma as X
from refdiff import flow as F
from refdiff import sigma as S
from refdiff import solvers
from refdiff.errors import InputError, OptionError, RandomnessError, ScheduleError, ShapeError
from refdiff.exact import Gaussian

G = Gaussian(np.array([0.3, -0.4, 1.0, 0.0]), np.diag([1.0, 0.5, 0.2, 2.0]))
STOCHASTIC = {
    "euler": {"s_churn": 1.0},
    "heun": {"s_churn": 1.0},
    "dpm_2": {"s_churn": 1.0},
    "euler_ancestral": {},
    "dpmpp_2m_sde": {},
    "dpmpp_3m_sde": {},
    "flow_euler": {"stochastic": True},
}


def _setup(sampler):
    if sampler == "flow_euler":
        return X.velocity(G), F.flow_sigmas(4, shift_factor=2.0)
    return X.denoiser(G), S.karras(4, 0.1, 10.0)


@pytest.mark.parametrize("sampler", list(solvers.SAMPLERS))
def test_rng_path_is_the_injected_noise_path(sampler):
    model, sig = _setup(sampler)
    opts = STOCHASTIC.get(sampler, {})
    shape = (3, 2, 2)  # (B, *data_shape) with prod = D = 4
    a = solvers.sample(model, sig, shape, sampler=sampler, rng=np.random.default_rng(5), **opts)
    x_T, z = solvers.draw_noise(np.random.default_rng(5), sig, shape, sampler, **opts)
    assert (z is None) == (sampler not in STOCHASTIC)
    b = solvers.sample(model, sig, sampler=sampler, x_T=x_T, step_noise=z, **opts)
    np.testing.assert_array_equal(a, b)
    assert a.shape == shape and a.dtype == np.float64
    scale = 1.0 if sampler == "flow_euler" else sig[0]
    np.testing.assert_array_equal(x_T, np.random.default_rng(5).standard_normal(shape) * scale)


@pytest.mark.parametrize("sampler", list(STOCHASTIC))
def test_step_noise_slice_i_is_used_by_step_i(sampler):
    """Changing step_noise[k] leaves the states before step k untouched and changes the
    state after it (when step k adds noise; the last step to σ = 0 adds none)."""
    model, sig = _setup(sampler)
    opts = STOCHASTIC[sampler]
    x_T, z = solvers.draw_noise(np.random.default_rng(1), sig, (2, 4), sampler, **opts)
    _, base = solvers.sample(
        model, sig, sampler=sampler, x_T=x_T, step_noise=z, return_trajectory=True, **opts
    )
    for k in range(len(sig) - 2):
        z2 = z.copy()
        z2[k] += 1.0
        _, traj = solvers.sample(
            model, sig, sampler=sampler, x_T=x_T, step_noise=z2, return_trajectory=True, **opts
        )
        np.testing.assert_array_equal(traj[: k + 1], base[: k + 1])
        assert np.abs(traj[k + 1] - base[k + 1]).max() > 1e-6, (sampler, k)


@pytest.mark.parametrize("sampler", list(solvers.SAMPLERS))
def test_trajectory_and_callback(sampler):
    model, sig = _setup(sampler)
    seen = []
    x, traj = solvers.sample(
        model,
        sig,
        (2, 4),
        sampler=sampler,
        rng=np.random.default_rng(0),
        return_trajectory=True,
        callback=lambda i, s, x: seen.append((i, s, x.copy())),
        **STOCHASTIC.get(sampler, {}),
    )
    assert traj.shape == (len(sig), 2, 4)
    np.testing.assert_array_equal(traj[-1], x)
    assert [i for i, *_ in seen] == list(range(len(sig) - 1))
    assert [s for _, s, _ in seen] == list(sig[1:])
    for i, _, xi in seen:
        np.testing.assert_array_equal(xi, traj[i + 1])


def test_needs_noise():
    assert not solvers.needs_noise("euler")
    assert solvers.needs_noise("euler", s_churn=0.5)
    assert solvers.needs_noise("dpmpp_2m_sde") and not solvers.needs_noise("dpmpp_2m_sde", eta=0.0)
    assert not solvers.needs_noise("unipc") and not solvers.needs_noise("dpmpp_2m")


def test_errors_name_their_argument():
    D, sig = _setup("euler")
    x = np.zeros((2, 4))
    cases = [
        (lambda: solvers.sample(D, sig, sampler="ddpm", x_T=x), OptionError, "sampler"),
        (lambda: solvers.sample(D, sig[::-1], x_T=x), ScheduleError, "sigmas"),
        (lambda: solvers.sample(D, [1.0], x_T=x), ScheduleError, "sigmas"),
        (lambda: solvers.sample(D, sig, sampler="euler_ancestral", x_T=x), RandomnessError, "rng"),
        (lambda: solvers.sample(D, sig, (2, 4)), RandomnessError, "rng"),
        (lambda: solvers.sample(D, sig), InputError, "shape"),
        (
            lambda: solvers.sample(
                D, sig, sampler="euler_ancestral", x_T=x, step_noise=np.zeros((3, 2, 4))
            ),
            ShapeError,
            "step_noise",
        ),
        (lambda: solvers.sample(D, sig, x_T=x, bogus=1), InputError, "options"),
        (lambda: solvers.sample(D, sig, sampler="unipc", x_T=x, order=4), InputError, "order"),
        (
            lambda: solvers.sample(D, sig, sampler="unipc", x_T=x, solver_type="bh3"),
            OptionError,
            "solver_type",
        ),
        (lambda: solvers.sample(D, sig, x_T=x, s_churn=-1.0), InputError, "s_churn"),
        (lambda: solvers.sample(lambda x, s: x[:1], sig, x_T=x), ShapeError, "model output"),
        (lambda: solvers.flow_euler(D, [2.0, 1.0, 0.0], x_T=x), ScheduleError, "sigmas"),
        (lambda: solvers.sample(3, sig, x_T=x), InputError, "model"),
    ]
    for call, err, arg in cases:
        with pytest.raises(err) as e:
            call()
        assert e.value.argument == arg, (arg, e.value)


def test_deterministic_samplers_ignore_no_noise_and_draw_none():
    """A deterministic sampler with rng draws x_T only: the Generator is left where a
    single draw of x_T leaves it."""
    D, sig = _setup("dpmpp_2m")
    r = np.random.default_rng(3)
    solvers.dpmpp_2m(D, sig, (2, 4), rng=r)
    r2 = np.random.default_rng(3)
    r2.standard_normal((2, 4))
    assert r.standard_normal() == r2.standard_normal()


@pytest.mark.parametrize(
    "sampler, options",
    [
        ("euler", {}),
        ("dpmpp_2m", {}),
        ("dpmpp_2m", {"lower_order_final": False}),
        ("flow_euler", {}),
    ],
)
def test_linear_coefficient_tables_reproduce_the_samplers(sampler, options):
    model, _ = _setup(sampler)
    for sig in (
        S.karras(7, 0.05, 20.0),
        S.karras(20, 0.05, 20.0, final_sigma="none"),
        F.flow_sigmas(6, shift_factor=3.0),
    ):
        if (sampler == "flow_euler") != (sig[0] == 1.0):
            continue
        x_T = np.random.default_rng(2).standard_normal((3, 4)) * sig[0]
        want = solvers.sample(model, sig, sampler=sampler, x_T=x_T, **options)
        tab = solvers.linear_coefficients(sampler, sig, **options)
        x, prev = x_T, None
        for i, (a, b, c) in enumerate(tab):
            m = model(x, np.full(3, sig[i]))
            x = a * x + b * m + (c * prev if c else 0.0)
            prev = m
        np.testing.assert_allclose(x, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(InputError) as e:
        solvers.linear_coefficients("euler", S.karras(3, 0.1, 1.0), s_churn=1.0)
    assert e.value.argument == "options"
