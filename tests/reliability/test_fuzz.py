"""Hypothesis fuzzing of every public entry point (docs/reliability.md §2).

Three properties:

1. **Finite in, finite out.**  Random *valid* input — schedules (random β, named, respaced,
   zero-terminal-SNR), states of any magnitude 1e-300 … 1e100, every option — never gives a
   NaN or an Inf, and never a RuntimeWarning (pyproject turns refdiff's into errors).  The
   only exceptions allowed are the documented ones: :class:`UndefinedError` for
   ε/score-prediction where ᾱ = 0.  Legitimately infinite quantities are named and checked
   to be exactly where the docs say (snr[0], log_snr at the ends, σ at ᾱ = 0, DDIM log σ²
   where σ = 0).
2. **Junk in, typed error out.**  Every argument of every entry point (except ``schedule``
   itself, see docs) replaced by junk — None, strings, NaN, Inf, huge ints, ragged lists,
   object/complex/bool arrays, wrong shapes, callables — raises a
   :class:`~refdiff.errors.RefdiffError` or one of the documented others.
3. **Corrupted bytes to every loader** (``load_npz``, ``load_mlp``, ONNX ``load_model`` /
   ``open_denoiser``, golden-vector manifests) raise :class:`FileFormatError` only.

Array values come from ``numpy.random.default_rng(seed)`` with the seed drawn by Hypothesis.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdiff import errors as E
from refdiff import forward as F
from refdiff import losses as L
from refdiff import mlp as M
from refdiff import parameterization as PZ
from refdiff import posterior as P
from refdiff import respacing as RS
from refdiff import reverse as R
from refdiff import sampling as SA
from refdiff import schedule as S
from refdiff._io import load_npz
from tests.strategies import schedules, seeds, state_shapes


def fuzz(max_examples: int) -> settings:
    """Per-test example counts (they keep the file within its time budget); no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def finite(*arrays) -> None:
    for a in arrays:
        a = np.asarray(a)
        assert a.dtype == np.float64 or a.dtype.kind in "iu", a.dtype
        assert np.isfinite(a).all(), f"non-finite output: {a.ravel()[:8]}"


# -- strategies for valid input -------------------------------------------------------------
@st.composite
def any_schedule(draw) -> S.Schedule:
    """Random β (respaced or not), named schedules, and zero-terminal-SNR versions."""
    kind = draw(st.sampled_from(["random", "named", "zero_snr"]))
    if kind == "random":
        return draw(schedules(max_T=40))
    name = draw(st.sampled_from(sorted(S.SCHEDULES)))
    T = draw(st.integers(20 if name == "linear_iddpm" else 2, 60))
    s = S.make_schedule(name, T, zero_terminal_snr=kind == "zero_snr")
    if draw(st.booleans()):
        n = draw(st.integers(1, T))
        spacing = draw(st.sampled_from(RS.SPACINGS))
        try:
            s = S.respace(s, RS.spaced_times(T, n, spacing))
        except E.InputError:  # this spacing repeats times for (T, n): documented
            pass
    return s


magnitudes = st.sampled_from([1e-300, 1e-12, 1e-3, 1.0, 10.0, 1e6, 1e50, 1e100])


@st.composite
def cases(draw):
    """(schedule, state x, a second state y, t (scalar or (B,)), rng seed)."""
    s = draw(any_schedule())
    shape = draw(state_shapes())
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * draw(magnitudes)
    y = rng.standard_normal(shape) * draw(magnitudes)
    if draw(st.booleans()):
        t = draw(st.integers(1, s.T))
    else:
        t = np.array(draw(st.lists(st.integers(1, s.T), min_size=shape[0], max_size=shape[0])))
    return s, x, y, t, seed


def zero_alpha_bar_at(s: S.Schedule, t) -> bool:
    return bool(np.any(s.alpha_bar[np.asarray(t)] == 0.0))


def allowed_undefined(s, t, prediction_type) -> bool:
    return prediction_type in ("epsilon", "score") and zero_alpha_bar_at(s, t)


# -- 1. finite in, finite out ---------------------------------------------------------------
@fuzz(60)
@given(st.sampled_from(sorted(S.SCHEDULES)), st.integers(1, 5000), st.booleans())
def test_named_schedules_are_finite_where_documented(name, T, zero_snr):
    try:
        s = S.make_schedule(name, T, zero_terminal_snr=zero_snr)
    except E.InputError:
        # documented refusals: linear_iddpm needs T >= 20 (β_T <= 1); zero SNR needs T >= 2
        assert (name == "linear_iddpm" and T < 20) or (zero_snr and T < 2)
        return
    finite(s.beta, s.alpha_bar, s.alpha, s.alpha_bar_prev, s.sqrt_alpha_bar)
    finite(s.sqrt_one_minus_alpha_bar, s.snr[1:])
    assert s.snr[0] == np.inf and s.log_snr[0] == np.inf and s.sigma[0] == 0.0
    assert np.all(np.diff(s.alpha_bar) < 0)
    # linear_iddpm at T = 20 has β_T = 0.02·1000/20 = 1 exactly: zero terminal SNR by itself
    if zero_snr or (name == "linear_iddpm" and T == 20):
        assert s.alpha_bar[-1] == 0.0 and s.beta[-1] == 1.0
        assert s.log_snr[-1] == -np.inf and s.sigma[-1] == np.inf
        finite(s.log_snr[1:-1], s.sigma[:-1])
    else:
        finite(s.log_snr[1:], s.sigma)


@fuzz(80)
@given(cases(), st.integers(0, 2**31))
def test_forward_and_posterior_finite(case, salt):
    s, x, y, t, seed = case
    z = np.random.default_rng(salt).standard_normal(x.shape)
    finite(*F.q_step_mean_var(s, x, t), F.q_step_sample(s, x, t, noise=z))
    finite(*F.q_mean_var(s, x, t), F.q_sample(s, x, t, noise=z), F.q_sample(s, x, 0, noise=z))
    finite(F.q_step_log_prob(s, y, x, t), F.q_log_prob(s, y, x, t))
    if s.T >= 2:
        tt = np.maximum(np.asarray(t), 2)
        ss = tt - 1
        finite(*F.q_transition_mean_var(s, x, tt, ss), F.q_transition_sample(s, x, tt, ss, noise=z))
        finite(F.q_transition_log_prob(s, y, x, tt, ss))
    finite(*P.posterior_coefficients(s, t), P.posterior_variance(s, t))
    for clipping in P.LOG_VARIANCE_CLIPPINGS:
        finite(P.posterior_log_variance(s, t, clipping))
    finite(*P.posterior_mean_var(s, x, y, t), P.posterior_sample(s, x, y, t, noise=z))


@fuzz(60)
@given(cases(), st.sampled_from(PZ.PREDICTION_TYPES), st.sampled_from(PZ.PREDICTION_TYPES))
def test_convert_finite(case, source, target):
    s, x, y, t, _ = case
    try:
        out = PZ.convert(s, x, t, y, source, target)
    except E.UndefinedError:
        assert source != target and (
            allowed_undefined(s, t, source) or allowed_undefined(s, t, target)
        )
        return
    finite(out)


def _step_kwargs(draw, s, x, t, seed):
    pt = draw(st.sampled_from(PZ.PREDICTION_TYPES))
    kw = {"prediction_type": pt}
    post = draw(st.sampled_from(["none", "clip", "threshold"]))
    if post == "clip":
        kw["clip"] = draw(st.sampled_from([0.5, 1.0, 3.0]))
    elif post == "threshold":
        kw["threshold_ratio"] = draw(st.sampled_from([0.5, 0.995, 1.0]))
        kw["threshold_max"] = draw(st.sampled_from([1.0, 2.0]))
    return kw


@fuzz(80)
@given(cases(), st.sampled_from(R.VARIANCE_TYPES), st.data())
def test_ddpm_step_finite(case, variance_type, data):
    s, x, y, t, seed = case
    kw = _step_kwargs(data.draw, s, x, t, seed)
    rng = np.random.default_rng(seed + 1)
    mv = None
    if variance_type == "learned":
        mv = rng.uniform(-20.0, 2.0, x.shape)
    elif variance_type == "learned_linear":
        mv = rng.uniform(1e-8, 2.0, x.shape)
    elif variance_type == "learned_range":
        mv = rng.uniform(-1.0, 1.0, x.shape)
    kw["log_variance_clipping"] = data.draw(st.sampled_from(P.LOG_VARIANCE_CLIPPINGS))
    try:
        parts = R.ddpm_parts(s, x, t, y, variance_type=variance_type, model_variance=mv, **kw)
        out = R.ddpm_step(
            s,
            x,
            t,
            y,
            variance_type=variance_type,
            model_variance=mv,
            noise=rng.standard_normal(x.shape),
            **kw,
        )
    except E.UndefinedError:
        assert allowed_undefined(s, t, kw["prediction_type"])
        return
    finite(*parts, out)


@fuzz(80)
@given(cases(), st.data())
def test_ddim_step_finite(case, data):
    s, x, y, t, seed = case
    kw = _step_kwargs(data.draw, s, x, t, seed)
    kw["eta"] = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    kw["rederive_eps"] = data.draw(st.booleans())
    kw["final_alpha_bar"] = data.draw(st.sampled_from(["one", "first", 0.5]))
    fsn = data.draw(st.booleans())
    try:
        p = R.ddim_parts(s, x, t, y, **kw)
        out = R.ddim_step(
            s,
            x,
            t,
            y,
            noise=np.random.default_rng(seed).standard_normal(x.shape),
            final_step_noise=fsn,
            **kw,
        )
    except E.UndefinedError:
        assert allowed_undefined(s, t, kw["prediction_type"])
        return
    finite(p.mean, p.variance, p.x0, p.eps, out)
    # log σ² is −inf exactly where σ² = 0 (documented), finite elsewhere
    lv = np.broadcast_to(p.log_variance, np.shape(p.variance))
    assert np.array_equal(np.isneginf(lv), np.asarray(p.variance) == 0.0)
    finite(lv[np.asarray(p.variance) > 0])


@fuzz(60)
@given(cases(), st.sampled_from(PZ.PREDICTION_TYPES))
def test_ddim_inverse_finite(case, prediction_type):
    s, x, y, t, _ = case
    if s.T < 2:
        return
    sv = np.minimum(np.asarray(t), s.T - 1) - 1  # s in [0, T−1)
    if prediction_type != "epsilon":
        sv = np.maximum(sv, 1)
    try:
        out = R.ddim_inverse_step(s, x, sv, y, prediction_type=prediction_type)
    except E.UndefinedError:
        assert allowed_undefined(s, sv, prediction_type)
        return
    finite(out)


def _bounded_denoiser(scale: float, channels: int = 1) -> Callable:
    def f(x, t):
        out = np.tanh(x / scale) * np.cos(t.reshape((-1,) + (1,) * (x.ndim - 1)))
        return np.concatenate([out] * channels, axis=1) if channels > 1 else out

    return f


@fuzz(40)
@given(any_schedule(), state_shapes(), seeds, st.sampled_from(["ddpm", "ddim"]), st.data())
def test_samplers_finite(s, shape, seed, sampler, data):
    if len(shape) < 2:
        shape = (*shape, 2)
    pt = data.draw(st.sampled_from(["v", "x0", "epsilon"]))
    kw = {"prediction_type": pt}
    if data.draw(st.booleans()):
        kw["clip"] = 1.0
    if sampler == "ddpm":
        vt = data.draw(st.sampled_from(R.VARIANCE_TYPES))
        kw["variance_type"] = vt
        den = _bounded_denoiser(3.0, 2 if vt in R.LEARNED else 1)
        if vt == "learned_linear":
            base = den

            def den(x, t):  # a positive variance half
                out = base(x, t)
                half = out.shape[1] // 2
                out[:, half:] = np.abs(out[:, half:]) + 0.1
                return out

        run = SA.ddpm_sample
    else:
        kw["eta"] = data.draw(st.sampled_from([0.0, 1.0]))
        den, run = _bounded_denoiser(3.0), SA.ddim_sample
    try:
        x0, traj = run(den, s, shape, rng=np.random.default_rng(seed), return_trajectory=True, **kw)
    except E.UndefinedError:
        assert pt == "epsilon" and s.alpha_bar[-1] == 0.0
        return
    finite(x0, traj)
    assert traj.shape == (s.T + 1, *shape)


@fuzz(60)
@given(cases(), st.sampled_from(["epsilon", "x0", "v"]))
def test_losses_finite(case, prediction_type):
    s, x, y, t, seed = case
    x0 = np.clip(x, -1.0, 1.0)
    finite(L.training_target(s, x, t, y, prediction_type))
    finite(L.mse_loss(s, y, x0, t, y, prediction_type))
    finite(L.prior_bpd(s, x))
    p = R.ddpm_parts(s, x, t, y, prediction_type="v")
    finite(L.vlb_term_bpd(s, x0, x, t, p.mean, p.log_variance))
    finite(L.normal_kl(x, 0.0, y, 0.0), L.discretized_gaussian_log_likelihood(x0, y, 0.0))


@fuzz(15)
@given(any_schedule(), seeds)
def test_vlb_bpd_finite(s, seed):
    if s.T > 40:
        s = S.respace(s, np.unique(np.linspace(1, s.T, 20).astype(np.int64)))
    x0 = np.random.default_rng(seed).uniform(-1, 1, (3, 2))
    total, terms = L.vlb_bpd(
        s, x0, _bounded_denoiser(1.0), rng=np.random.default_rng(seed), prediction_type="v"
    )
    finite(total, terms)


@fuzz(60)
@given(st.integers(1, 3000), st.integers(1, 3000), st.sampled_from(RS.SPACINGS), st.integers(0, 2))
def test_spacings_give_valid_times_or_input_error(T, N, spacing, offset):
    offset = offset if spacing == "leading" else 0
    try:
        tau = RS.spaced_times(T, N, spacing, offset)
    except E.InputError as e:
        assert e.argument in ("num_steps", "steps_offset")
        return
    assert tau.dtype == np.int64 and tau.shape == (N,)
    assert tau[0] >= 1 and tau[-1] <= T and np.all(np.diff(tau) > 0)


@fuzz(40)
@given(
    st.integers(1, 2000),
    st.one_of(
        st.integers(0, 2100).map(lambda n: f"ddim{n}"),
        st.lists(st.integers(0, 300), min_size=1, max_size=6),
    ),
)
def test_space_timesteps_valid_or_input_error(T, sections):
    try:
        tau = RS.space_timesteps(T, sections)
    except E.InputError as e:
        assert e.argument == "sections"
        return
    assert tau.size >= 0 and np.all(np.diff(tau) > 0)
    if tau.size:
        assert tau[0] >= 1 and tau[-1] <= T


@fuzz(20)
@given(seeds, st.integers(1, 5), st.integers(1, 16), st.integers(1, 3), magnitudes)
def test_mlp_finite(seed, d, hidden, depth, mag):
    rng = np.random.default_rng(seed)
    mlp = M.init_mlp(rng, data_dim=d, hidden=hidden, depth=depth, embed_dim=4)
    x = rng.standard_normal((3, d)) * min(mag, 1e6)
    finite(mlp(x, rng.integers(1, 1000, 3)))


# -- 2. junk in, typed error out ------------------------------------------------------------
def _junk_values():
    return [
        None,
        "abc",
        "",
        b"\x00",
        1.5,
        -1,
        0,
        2**70,
        -(2**70),
        float("nan"),
        float("inf"),
        -float("inf"),
        True,
        1j,
        [],
        [[]],
        [1, [2, 3]],
        {},
        {"a": 1},
        object(),
        (lambda: 0),
        np.array([]),
        np.zeros((0, 3)),
        np.zeros((2, 3, 4, 5)),
        np.array(["a", "b"]),
        np.array([1, None], dtype=object),
        np.full((2, 3), np.nan),
        np.full((2, 3), -np.inf),
        np.ones((2, 3), np.complex64),
        np.ones((2, 3), bool),
        np.ones((2, 3), np.float16),
        np.array(2**64 - 1, dtype=np.uint64),
        np.int8(-128),
        np.float32("nan"),
        np.random.RandomState(0),
        slice(None),
        np.ones((3, 2)),
        np.ones(2),
        np.ones((2, 3)) * 1e100,
    ]


JUNK = _junk_values()


def _entry_points():
    """name -> (function, a dict of valid keyword arguments)."""
    s = S.linear(10)
    x = np.zeros((2, 3))
    z = np.ones((2, 3))
    rng = np.random.default_rng(0)

    def den(a, b):
        return np.asarray(a) * 0.5

    return {
        "from_betas": (S.from_betas, {"betas": [0.1, 0.2]}),
        "from_alpha_bar": (S.from_alpha_bar, {"alpha_bar": [0.9, 0.5]}),
        "linear": (S.linear, {"T": 10, "beta_start": 1e-4, "beta_end": 0.02}),
        "cosine": (S.cosine, {"T": 10, "s": 0.008, "max_beta": 0.999}),
        "sigmoid": (S.sigmoid, {"T": 10, "beta_start": 1e-4, "beta_end": 0.02}),
        "scaled_linear": (S.scaled_linear, {"T": 10}),
        "make_schedule": (S.make_schedule, {"name": "linear", "T": 10, "zero_terminal_snr": False}),
        "respace": (S.respace, {"schedule": s, "times": [2, 5, 10]}),
        "rescale_zero_terminal_snr": (S.rescale_zero_terminal_snr, {"schedule": s}),
        "check_t": (s.check_t, {"t": 3}),
        "spaced_times": (
            RS.spaced_times,
            {"T": 10, "num_steps": 5, "spacing": "leading", "steps_offset": 0},
        ),
        "space_timesteps": (RS.space_timesteps, {"T": 10, "sections": "ddim5"}),
        "q_step_sample": (F.q_step_sample, {"schedule": s, "x_prev": x, "t": 3, "noise": z}),
        "q_sample": (F.q_sample, {"schedule": s, "x0": x, "t": 3, "noise": z, "rng": None}),
        "q_transition_sample": (
            F.q_transition_sample,
            {"schedule": s, "x_s": x, "t": 5, "s": 2, "noise": z},
        ),
        "q_log_prob": (F.q_log_prob, {"schedule": s, "x_t": z, "x0": x, "t": 3}),
        "q_transition_log_prob": (
            F.q_transition_log_prob,
            {"schedule": s, "x_t": z, "x_s": x, "t": 5, "s": 2},
        ),
        "posterior_log_variance": (
            P.posterior_log_variance,
            {"schedule": s, "t": 3, "log_variance_clipping": "next"},
        ),
        "posterior_sample": (
            P.posterior_sample,
            {"schedule": s, "x0": x, "x_t": z, "t": 3, "noise": z},
        ),
        "convert": (
            PZ.convert,
            {"schedule": s, "x_t": x, "t": 3, "prediction": z, "source": "epsilon", "target": "v"},
        ),
        "ddpm_step": (
            R.ddpm_step,
            {
                "schedule": s,
                "x_t": x,
                "t": 3,
                "model_output": z,
                "noise": z,
                "prediction_type": "epsilon",
                "variance_type": "fixed_small",
                "clip": None,
                "threshold_ratio": None,
                "threshold_max": 1.0,
                "log_variance_clipping": "next",
            },
        ),
        "ddpm_learned": (
            R.ddpm_parts,
            {
                "schedule": s,
                "x_t": x,
                "t": 3,
                "model_output": z,
                "variance_type": "learned_range",
                "model_variance": np.zeros((2, 3)),
            },
        ),
        "ddim_step": (
            R.ddim_step,
            {
                "schedule": s,
                "x_t": x,
                "t": 3,
                "model_output": z,
                "noise": z,
                "eta": 0.5,
                "clip": 1.0,
                "rederive_eps": True,
                "final_alpha_bar": "one",
            },
        ),
        "ddim_inverse_step": (
            R.ddim_inverse_step,
            {"schedule": s, "x_s": x, "s": 2, "model_output": z, "prediction_type": "epsilon"},
        ),
        "dynamic_threshold": (R.dynamic_threshold, {"x0": z, "ratio": 0.9, "max_value": 2.0}),
        "ddpm_sample": (
            SA.ddpm_sample,
            {
                "denoiser": den,
                "schedule": s,
                "shape": (2, 3),
                "rng": rng,
                "variance_type": "fixed_large",
            },
        ),
        "ddim_sample": (
            SA.ddim_sample,
            {
                "denoiser": den,
                "schedule": s,
                "shape": None,
                "x_T": x,
                "step_noise": np.zeros((10, 2, 3)),
                "eta": 1.0,
            },
        ),
        "draw_noise": (SA.draw_noise, {"rng": rng, "num_steps": 3, "shape": (2, 3)}),
        "training_target": (
            L.training_target,
            {"schedule": s, "x0": x, "t": 3, "noise": z, "prediction_type": "v"},
        ),
        "mse_loss": (L.mse_loss, {"schedule": s, "prediction": z, "x0": x, "t": 3, "noise": z}),
        "prior_bpd": (L.prior_bpd, {"schedule": s, "x0": x}),
        "vlb_term_bpd": (
            L.vlb_term_bpd,
            {"schedule": s, "x0": x, "x_t": z, "t": 3, "model_mean": z, "model_log_variance": -2.0},
        ),
        "vlb_bpd": (
            L.vlb_bpd,
            {"schedule": s, "x0": x, "denoiser": den, "noise": None, "rng": rng},
        ),
        "init_mlp": (
            M.init_mlp,
            {"rng": rng, "data_dim": 2, "hidden": 4, "depth": 1, "embed_dim": 4},
        ),
        **_more_entry_points(s, rng),
    }


def _more_entry_points(s, rng) -> dict:
    """exact ground truth, statistics, data sets, training configuration."""
    from refdiff import data as DA
    from refdiff import exact as EX
    from refdiff import stats as ST
    from refdiff import train as TR

    g = EX.Gaussian(np.zeros(2), np.eye(2))
    mix = EX.GaussianMixture(
        np.array([0.5, 0.5]), np.array([[1.0, 0.0], [-1.0, 0.0]]), np.stack([np.eye(2)] * 2)
    )
    den = EX.denoiser(mix, s)
    smp = np.random.default_rng(1).standard_normal((200, 2))
    return {
        "exact.Gaussian": (EX.Gaussian, {"mean": np.zeros(2), "cov": np.eye(2)}),
        "exact.GaussianMixture": (
            EX.GaussianMixture,
            {
                "weights": np.array([0.5, 0.5]),
                "means": np.zeros((2, 2)),
                "covs": np.stack([np.eye(2)] * 2),
            },
        ),
        "exact.marginal": (EX.marginal, {"data": mix, "schedule_or_alpha_bar": s, "t": 3}),
        "exact.denoiser": (EX.denoiser, {"data": mix, "schedule": s, "prediction_type": "v"}),
        "exact.denoiser()": (den, {"x_t": np.zeros((3, 2)), "t": np.array([1, 2, 3])}),
        "exact.reverse_sample": (
            EX.reverse_sample,
            {"data": mix, "schedule": s, "n": 5, "rng": rng},
        ),
        "exact.ddpm_law": (EX.ddpm_law, {"data": g, "schedule": s, "variance_type": "fixed_large"}),
        "exact.ddim_law": (EX.ddim_law, {"data": g, "schedule": s, "eta": 0.5}),
        "exact.score": (EX.score, {"data": mix, "x_t": np.zeros((3, 2)), "alpha_bar": 0.5}),
        "stats.check_mean": (
            ST.check_mean,
            {"samples": smp, "mean": np.zeros(2), "cov": np.eye(2), "false_fail_rate": 1e-6},
        ),
        "stats.check_mvn": (
            ST.check_mvn,
            {"samples": smp, "mean": np.zeros(2), "cov": np.eye(2), "false_fail_rate": 1e-6},
        ),
        "stats.check_two_sample": (
            ST.check_two_sample,
            {"samples1": smp[:100, 0], "samples2": smp[100:, 0], "false_fail_rate": 1e-6},
        ),
        "stats.check_covariance": (
            ST.check_covariance,
            {"samples": smp, "cov": np.eye(2), "false_fail_rate": 1e-6},
        ),
        "data.get_dataset": (DA.get_dataset, {"name": "ring"}),
        "data.sample_moons": (DA.sample_moons, {"rng": rng, "n": 10, "noise": 0.1}),
        "data.ring_mixture": (DA.ring_mixture, {"k": 3, "radius": 1.0, "std": 0.1}),
        "train.TrainConfig": (
            TR.TrainConfig,
            {
                "steps": 10,
                "batch_size": 8,
                "lr": 1e-3,
                "hidden": 4,
                "seed": 0,
                "prediction_type": "v",
            },
        ),
    }


ENTRY_POINTS = _entry_points()
# Arguments not fuzzed with junk, as documented (docs/reliability.md, "Exceptions that are
# not RefdiffError"): ``schedule`` is used, not type-checked, by the math functions; boolean
# flags are taken for their truth value (a NumPy array of several values raises NumPy's
# ValueError).  A junk *callable* denoiser is called, and what it raises propagates.
NOT_FUZZED = {"schedule", "zero_terminal_snr", "rederive_eps"}


def _call_with_junk(name: str, fn, valid: dict, arg: str, junk: object) -> None:
    from refdiff.stats import StatisticalAssertionError

    kw = dict(valid)
    kw[arg] = junk
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            fn(**kw)
        except E.RefdiffError:
            pass
        except StatisticalAssertionError:  # documented: NaN samples fail the check
            assert name.startswith("stats.") and arg.startswith("samples")
        except TypeError as e:  # only from calling a junk callable (user code)
            assert callable(junk) and "positional argument" in str(e), repr(e)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_junk_arguments_raise_typed_errors(name):
    """Every (argument, junk value) pair of the entry point, exhaustively."""
    fn, valid = ENTRY_POINTS[name]
    for arg in sorted(set(valid) - NOT_FUZZED):
        for junk in JUNK:
            _call_with_junk(name, fn, valid, arg, junk)


junk_arrays = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=2)),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
)


@fuzz(120)
@given(st.sampled_from(sorted(ENTRY_POINTS)), st.data())
def test_random_arrays_raise_typed_errors(name, data):
    """Arrays of random dtype (ints, floats with NaN/Inf, complex, bool, datetimes, bytes,
    strings) and random shape (empty sides included) in a random argument."""
    fn, valid = ENTRY_POINTS[name]
    args = sorted(set(valid) - NOT_FUZZED)
    if not args:
        return
    arg = data.draw(st.sampled_from(args), label="argument")
    junk = data.draw(junk_arrays, label="junk")
    if junk.dtype.kind == "f":  # finite values beyond the documented domain (≤ 1e100) → Inf
        with np.errstate(invalid="ignore", over="ignore"):
            big = np.abs(junk.astype(np.float64)) > 1e100
            junk = np.where(big, np.copysign(np.inf, junk), junk).astype(junk.dtype)
    _call_with_junk(name, fn, valid, arg, junk)


def test_every_entry_point_accepts_its_valid_arguments():
    """The junk test is only meaningful if the untouched calls succeed."""
    for fn, valid in ENTRY_POINTS.values():
        fn(**valid)


# -- 3. corrupted bytes to every loader -----------------------------------------------------
@st.composite
def corruptions(draw, data: bytes) -> bytes:
    """Truncate, flip bytes, overwrite a run, insert garbage, or replace everything."""
    n = len(data)
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "random", "empty"]))
    rng = np.random.default_rng(draw(seeds))
    b = bytearray(data)
    if how == "truncate":
        return bytes(b[: draw(st.integers(0, n - 1))])
    if how == "flip":
        for i in rng.integers(0, n, draw(st.integers(1, 16))):
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b)
    if how == "overwrite":
        i = draw(st.integers(0, n - 1))
        k = draw(st.integers(1, 64))
        b[i : i + k] = rng.bytes(k)
        return bytes(b)
    if how == "insert":
        i = draw(st.integers(0, n))
        return bytes(b[:i]) + rng.bytes(draw(st.integers(1, 64))) + bytes(b[i:])
    if how == "random":
        return rng.bytes(draw(st.integers(1, 4096)))
    return b""


def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(40.0).reshape(8, 5), b=np.array(3), c=np.ones(3, np.int32))
    return buf.getvalue()


def _mlp_bytes() -> bytes:
    buf = io.BytesIO()
    mlp = M.init_mlp(np.random.default_rng(0), data_dim=2, hidden=4, depth=2, embed_dim=4)
    np.savez(buf, **mlp.to_arrays())
    return buf.getvalue()


NPZ, MLP_NPZ = _npz_bytes(), _mlp_bytes()


def _only_file_format_errors(load, data: bytes, path) -> object | None:
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            return load(path)
        except E.FileFormatError as e:
            assert e.path is not None
            return None


@fuzz(100)
@given(st.data())
def test_load_npz_corrupted_gives_file_format_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("npz") / "c.npz"
    out = _only_file_format_errors(load_npz, data.draw(corruptions(NPZ)), path)
    if out is not None:  # a harmless corruption (e.g. in a zip comment): arrays intact
        assert set(out) <= {"a", "b", "c"}


@fuzz(100)
@given(st.data())
def test_load_mlp_corrupted_gives_file_format_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("mlp") / "c.npz"
    mlp = _only_file_format_errors(M.load_mlp, data.draw(corruptions(MLP_NPZ)), path)
    if mlp is not None:  # loaded: must be a usable network
        out = mlp(np.zeros((1, mlp.data_dim)), np.array([1]))
        assert out.shape == (1, mlp.out_dim)


@st.composite
def mlp_arrays(draw) -> dict:
    """Well-formed .npz files with ill-formed MLP contents (keys, dtypes, shapes, values)."""
    arrays = M.init_mlp(
        np.random.default_rng(0), data_dim=2, hidden=4, depth=2, embed_dim=4
    ).to_arrays()
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(arrays) + ["W9", "extra"]))
        value = draw(
            st.sampled_from(
                [
                    np.array(0),
                    np.array(-4),
                    np.array(3),
                    np.array([4, 4]),
                    np.array(1e300),
                    np.array(np.nan),
                    np.array("x"),
                    np.zeros((0,)),
                    np.zeros((4, 4)),
                    np.zeros((2, 3, 4)),
                    np.ones(4, np.complex128),
                    np.ones(4, bool),
                    np.array(2**62),
                    None,
                ]
            )
        )
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    return arrays


@fuzz(80)
@given(mlp_arrays())
def test_load_mlp_bad_contents_give_file_format_error(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("mlpc") / "w.npz"
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    mlp = _only_file_format_errors(M.load_mlp, buf.getvalue(), path)
    if mlp is not None:
        out = mlp(np.zeros((1, mlp.data_dim)), np.array([1]))
        assert out.shape == (1, mlp.out_dim) and np.isfinite(out).all()


def _onnx_bytes() -> bytes:
    from tests.reliability.test_reliability import tiny_denoiser_model

    return tiny_denoiser_model().SerializeToString()


@fuzz(100)
@given(st.data())
def test_onnx_loader_corrupted_gives_file_format_error(tmp_path_factory, data):
    pytest.importorskip("onnx")
    from refdiff.export import open_denoiser

    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    blob = data.draw(corruptions(_ONNX()))
    den = _only_file_format_errors(
        lambda p: open_denoiser(p, prediction_type="epsilon", timestep_convention="refdiff"),
        blob,
        path,
    )
    if den is not None:
        assert den.signature.state_input and den.signature.time_input


_ONNX_CACHE: list[bytes] = []


def _ONNX() -> bytes:
    if not _ONNX_CACHE:
        _ONNX_CACHE.append(_onnx_bytes())
    return _ONNX_CACHE[0]


_SAMPLER_CACHE: list[bytes] = []


def _sampler_bytes() -> bytes:
    """A whole DDIM sampler (η = 1, exact mixture denoiser, 3 steps) as one ONNX graph."""
    if not _SAMPLER_CACHE:
        from refdiff.export import mixture_denoiser_model, open_denoiser, sampler_model, step_tables

        from refdiff.exact import GaussianMixture

        base = S.linear(100)
        mix = GaussianMixture(
            np.array([0.5, 0.5]),
            np.array([[1.0, 0.0], [-1.0, 0.0]]),
            np.stack([np.eye(2) * 0.1] * 2),
        )
        den = open_denoiser(mixture_denoiser_model(mix, base))
        tables = step_tables(
            S.respace(base, [10, 50, 100]), "ddim", prediction_type=den.prediction_type, eta=1.0
        )
        _SAMPLER_CACHE.append(sampler_model(den, tables).SerializeToString())
    return _SAMPLER_CACHE[0]


@fuzz(60)
@given(st.data())
def test_onnx_sampler_model_corrupted_gives_typed_errors(tmp_path_factory, data):
    """A corrupted whole-sampler file: loading raises FileFormatError; a file that still
    loads either samples finite values or raises NonFiniteError (NaN weights), nothing else."""
    pytest.importorskip("onnxruntime")
    from refdiff.export import OrtSampler

    path = tmp_path_factory.mktemp("sampler") / "s.onnx"
    path.write_bytes(data.draw(corruptions(_sampler_bytes())))
    try:
        x = OrtSampler(path, provider="cpu").sample(shape=(3, 2), seed=0)
    except E.FileFormatError:
        return
    except E.NonFiniteError as e:
        assert e.argument == "model"
        return
    assert x.shape == (3, 2) and np.isfinite(x).all()


_VEC_CACHE: list = []


def _vectors_dir():
    """A one-case golden-vectors folder and its manifest (dict)."""
    import json
    import tempfile
    from pathlib import Path

    from refdiff import vectors as V

    if not _VEC_CACHE:
        d = Path(tempfile.mkdtemp(prefix="refdiff-fuzz-vec-")) / "v"
        V.write(d, grid_name="small", T=20, steps=4)
        m = json.loads((d / "manifest.json").read_text())
        m["cases"] = m["cases"][:1]
        (d / "manifest.json").write_text(json.dumps(m))
        _VEC_CACHE.append((d, m))
    return _VEC_CACHE[0]


def _json_paths(o, prefix=()):
    yield prefix
    items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
    for k, v in items:
        yield from _json_paths(v, (*prefix, k))


JSON_JUNK = [
    None,
    0,
    -1,
    1.5,
    1e308,
    2**70,
    True,
    "",
    "x",
    "../../x.npz",
    "/etc/passwd",
    [],
    [1],
    {},
    {"a": 1},
    [[[]]],
]


@fuzz(30)
@given(st.data())
def test_vectors_manifest_corrupted_gives_file_format_error(tmp_path_factory, data):
    """Manifest corruption — bytes (truncation, flips, garbage) or structure (any value of the
    JSON tree replaced by junk, or a key deleted) — gives FileFormatError from ``read`` and
    ``check``; a manifest that still reads gives per-case results."""
    import copy
    import json
    import shutil

    from refdiff import vectors as V

    src, manifest = _vectors_dir()
    d = tmp_path_factory.mktemp("vec") / "v"
    shutil.copytree(src, d)
    if data.draw(st.booleans(), label="structural"):
        m = copy.deepcopy(manifest)
        path = data.draw(st.sampled_from([p for p in _json_paths(m) if p]), label="path")
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(st.sampled_from(JSON_JUNK), label="junk")
        (d / "manifest.json").write_text(json.dumps(m))
    else:
        raw = (src / "manifest.json").read_bytes()
        (d / "manifest.json").write_bytes(data.draw(corruptions(raw)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            results = V.check(d)
        except E.FileFormatError:
            return
    assert all(isinstance(r, V.CaseResult) for r in results)
