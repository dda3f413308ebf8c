"""DESIGN §6 for the reference core: every bad input raises a typed error naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import errors as E
from refdiff import forward as F
from refdiff import losses as L
from refdiff import parameterization as PZ
from refdiff import posterior as P
from refdiff import respacing as RS
from refdiff import reverse as R
from refdiff import sampling as SM
from refdiff import schedule as S

SCH = S.from_betas([0.1, 0.2, 0.5])  # T = 3
X = np.zeros((2, 3))
NAN = np.array([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]])
INF = np.array([[0.0, 0.0, np.inf], [0.0, 0.0, 0.0]])
RNG = np.random.default_rng(0)


def zero(x, t):
    return np.zeros_like(x)


def nan_denoiser(x, t):
    return np.full_like(x, np.nan)


CASES = {
    # -- β outside (0, 1] and other schedule parameters ----------------------------------------
    "beta zero": (lambda: S.from_betas([0.1, 0.0]), E.ScheduleError, "betas"),
    "beta negative": (lambda: S.from_betas([-0.1, 0.2]), E.ScheduleError, "betas"),
    "beta above one": (lambda: S.from_betas([0.1, 1.5]), E.ScheduleError, "betas"),
    "beta one before last": (lambda: S.from_betas([1.0, 0.5]), E.ScheduleError, "betas"),
    "beta one with T=1": (lambda: S.from_betas([1.0]), E.ScheduleError, "betas"),
    "alpha_bar zero at t=1": (lambda: S.from_alpha_bar([0.0]), E.ScheduleError, "alpha_bar"),
    "betas 2-D": (lambda: S.from_betas([[0.1, 0.2]]), E.ScheduleError, "betas"),
    "betas empty": (lambda: S.from_betas([]), E.ScheduleError, "betas"),
    "betas NaN": (lambda: S.from_betas([0.1, np.nan]), E.NonFiniteError, "betas"),
    "betas complex": (lambda: S.from_betas([0.1 + 1j]), E.DTypeError, "betas"),
    "beta_start zero": (lambda: S.linear(10, beta_start=0.0), E.ScheduleError, "beta_start"),
    "beta_end above one": (lambda: S.linear(10, beta_end=1.5), E.ScheduleError, "beta_end"),
    "scaled beta_end NaN": (
        lambda: S.scaled_linear(10, beta_end=float("nan")),
        E.ScheduleError,
        "beta_end",
    ),
    "sigmoid beta_start": (lambda: S.sigmoid(10, beta_start=-1e-4), E.ScheduleError, "beta_start"),
    "cosine max_beta": (lambda: S.cosine(10, max_beta=0.0), E.ScheduleError, "max_beta"),
    "cosine s": (lambda: S.cosine(10, s=-0.1), E.ScheduleError, "s"),
    "iddpm linear small T": (lambda: S.linear_iddpm(10), E.ScheduleError, "T"),
    "T zero": (lambda: S.linear(0), E.InputError, "T"),
    "T float": (lambda: S.cosine(10.0), E.InputError, "T"),
    "T bool": (lambda: S.linear(True), E.InputError, "T"),
    "T huge": (lambda: S.linear(10**12), E.InputError, "T"),
    # -- non-monotone ᾱ ------------------------------------------------------------------------
    "alpha_bar increasing": (lambda: S.from_alpha_bar([0.9, 0.95]), E.ScheduleError, "alpha_bar"),
    "alpha_bar flat": (lambda: S.from_alpha_bar([0.9, 0.9]), E.ScheduleError, "alpha_bar"),
    "alpha_bar one": (lambda: S.from_alpha_bar([1.0, 0.5]), E.ScheduleError, "alpha_bar"),
    "alpha_bar negative": (lambda: S.from_alpha_bar([0.5, -0.1]), E.ScheduleError, "alpha_bar"),
    "alpha_bar NaN": (lambda: S.from_alpha_bar([0.5, np.nan]), E.NonFiniteError, "alpha_bar"),
    "Schedule raw bad t=0": (
        lambda: S.Schedule(np.array([0.1, 0.1]), np.array([0.9, 0.8]), np.array([0, 1]), 0.9),
        E.ScheduleError,
        "alpha_bar",
    ),
    "Schedule raw timesteps": (
        lambda: S.Schedule(np.array([0.0, 0.1]), np.array([1.0, 0.9]), np.array([0, 0]), 0.9),
        E.ScheduleError,
        "timesteps",
    ),
    "zero snr of respaced": (
        lambda: S.rescale_zero_terminal_snr(S.respace(SCH, [1, 3])),
        E.ScheduleError,
        "schedule",
    ),
    "zero snr T=1": (
        lambda: S.rescale_zero_terminal_snr(S.from_betas([0.5])),
        E.ScheduleError,
        "schedule",
    ),
    "zero snr not a schedule": (
        lambda: S.rescale_zero_terminal_snr([0.1]),
        E.InputError,
        "schedule",
    ),
    # -- t out of range / not an integer -------------------------------------------------------
    "t above T": (lambda: F.q_sample(SCH, X, 4, noise=X), E.TimestepError, "t"),
    "t negative": (lambda: F.q_mean_var(SCH, X, -1), E.TimestepError, "t"),
    "t zero reverse": (lambda: R.ddpm_step(SCH, X, 0, X, noise=X), E.TimestepError, "t"),
    "t zero log prob": (lambda: F.q_log_prob(SCH, X, X, 0), E.TimestepError, "t"),
    "t per-sample out of range": (
        lambda: R.ddim_step(SCH, X, np.array([1, 4]), X),
        E.TimestepError,
        "t",
    ),
    "t fractional": (lambda: F.q_sample(SCH, X, 1.5, noise=X), E.TimestepError, "t"),
    "t fractional array": (
        lambda: P.posterior_mean_var(SCH, X, X, np.array([1.0, 2.5])),
        E.TimestepError,
        "t",
    ),
    "t string": (lambda: P.posterior_variance(SCH, "2"), E.TimestepError, "t"),
    "t bool": (lambda: P.posterior_variance(SCH, True), E.TimestepError, "t"),
    "t NaN": (lambda: P.posterior_variance(SCH, np.nan), E.TimestepError, "t"),
    "t 2-D": (lambda: F.q_mean_var(SCH, X, np.array([[1], [2]])), E.TimestepError, "t"),
    "s not below t": (lambda: F.q_transition_mean_var(SCH, X, 2, 2), E.TimestepError, "s"),
    "s out of range": (lambda: F.q_transition_mean_var(SCH, X, 2, -1), E.TimestepError, "s"),
    "inverse s = T": (lambda: R.ddim_inverse_step(SCH, X, 3, X), E.InputError, "s"),
    "index_from_t zero": (lambda: S.index_from_t(0), E.TimestepError, "t"),
    "index_from_t fractional": (lambda: S.index_from_t(1.5), E.TimestepError, "t"),
    "t_from_index fractional": (lambda: S.t_from_index([0.5]), E.TimestepError, "i"),
    "t_from_index negative": (lambda: S.t_from_index(-1), E.TimestepError, "i"),
    "t_from_index string": (lambda: S.t_from_index("3"), E.TimestepError, "i"),
    "respace times out of range": (lambda: S.respace(SCH, [1, 4]), E.TimestepError, "times"),
    "respace times repeated": (lambda: S.respace(SCH, [2, 2]), E.ScheduleError, "times"),
    "respace times decreasing": (lambda: S.respace(SCH, [3, 1]), E.ScheduleError, "times"),
    "respace times empty": (lambda: S.respace(SCH, []), E.ScheduleError, "times"),
    "respace times fractional": (lambda: S.respace(SCH, [1.5]), E.TimestepError, "times"),
    # -- more inference steps than T -----------------------------------------------------------
    "num_steps above T": (lambda: RS.spaced_times(10, 11), E.InputError, "num_steps"),
    "num_steps zero": (lambda: RS.spaced_times(10, 0, "trailing"), E.InputError, "num_steps"),
    "num_steps float": (lambda: RS.spaced_times(10, 5.0), E.InputError, "num_steps"),
    "ddimN above T": (lambda: RS.space_timesteps(10, "ddim11"), E.InputError, "sections"),
    "section above T": (lambda: RS.space_timesteps(10, [11]), E.InputError, "sections"),
    "section too long": (lambda: RS.space_timesteps(10, "6,1"), E.InputError, "sections"),
    "sections garbage": (lambda: RS.space_timesteps(10, "ten"), E.InputError, "sections"),
    "ddim garbage": (lambda: RS.space_timesteps(10, "ddimX"), E.InputError, "sections"),
    "sections negative": (lambda: RS.space_timesteps(10, [-1]), E.InputError, "sections"),
    "sections empty": (lambda: RS.space_timesteps(10, [0]), E.InputError, "sections"),
    "steps_offset float": (
        lambda: RS.spaced_times(10, 2, "leading", steps_offset=0.5),
        E.InputError,
        "steps_offset",
    ),
    "steps_offset reaches T": (
        lambda: RS.spaced_times(10, 10, "leading", steps_offset=1),
        E.InputError,
        "steps_offset",
    ),
    # -- shape mismatches ----------------------------------------------------------------------
    "state scalar": (lambda: F.q_sample(SCH, 1.0, 1, noise=1.0), E.ShapeError, "x0"),
    "noise shape": (lambda: F.q_sample(SCH, X, 1, noise=np.zeros((2, 2))), E.ShapeError, "noise"),
    "t length": (lambda: F.q_mean_var(SCH, X, np.array([1, 2, 3])), E.ShapeError, "t"),
    "x0 vs x_t": (lambda: P.posterior_mean_var(SCH, np.zeros((2, 2)), X, 2), E.ShapeError, "x0"),
    "log prob x_t": (lambda: F.q_log_prob(SCH, np.zeros((3, 3)), X, 2), E.ShapeError, "x_t"),
    "convert prediction": (
        lambda: PZ.convert(SCH, X, 1, np.zeros((2, 1)), "epsilon", "x0"),
        E.ShapeError,
        "prediction",
    ),
    "model_output": (lambda: R.ddpm_parts(SCH, X, 2, np.zeros(2)), E.ShapeError, "model_output"),
    "ddim model_output": (lambda: R.ddim_step(SCH, X, 2, X[:1]), E.ShapeError, "model_output"),
    "model_variance": (
        lambda: R.ddpm_parts(SCH, X, 2, X, variance_type="learned", model_variance=X[:, :2]),
        E.ShapeError,
        "model_variance",
    ),
    "target noise": (lambda: L.training_target(SCH, X, 1, X[:, :1]), E.ShapeError, "noise"),
    "mse prediction": (lambda: L.mse_loss(SCH, X[:1], X, 1, X), E.ShapeError, "prediction"),
    "vlb model_mean": (
        lambda: L.vlb_term_bpd(SCH, X, X, 2, X[:1], 0.0),
        E.ShapeError,
        "model_mean",
    ),
    "step_noise shape": (
        lambda: SM.ddpm_sample(zero, SCH, x_T=X, step_noise=np.zeros((2, 2, 3))),
        E.ShapeError,
        "step_noise",
    ),
    "sampler shape": (lambda: SM.ddim_sample(zero, SCH, (0, 2), rng=RNG), E.ShapeError, "shape"),
    "sampler no shape": (lambda: SM.ddim_sample(zero, SCH, rng=RNG), E.InputError, "shape"),
    "sampler schedule": (
        lambda: SM.ddim_sample(zero, [0.1], (1, 2), rng=RNG),
        E.InputError,
        "schedule",
    ),
    # -- dtype mismatches ----------------------------------------------------------------------
    "x0 complex": (lambda: F.q_mean_var(SCH, X + 1j, 1), E.DTypeError, "x0"),
    "x_t bool": (lambda: R.ddpm_parts(SCH, X > 0, 1, X), E.DTypeError, "x_t"),
    "noise object": (
        lambda: F.q_sample(SCH, X, 1, noise=np.array([[None] * 3] * 2)),
        E.DTypeError,
        "noise",
    ),
    "model_output string": (
        lambda: R.ddim_parts(SCH, X, 1, np.full((2, 3), "a")),
        E.DTypeError,
        "model_output",
    ),
    "x_T complex": (lambda: SM.ddim_sample(zero, SCH, x_T=X + 0j), E.DTypeError, "x_T"),
    # -- NaN / Inf -----------------------------------------------------------------------------
    "x0 NaN": (lambda: F.q_sample(SCH, NAN, 1, noise=X), E.NonFiniteError, "x0"),
    "noise Inf": (lambda: F.q_sample(SCH, X, 1, noise=INF), E.NonFiniteError, "noise"),
    "x_prev Inf": (lambda: F.q_step_mean_var(SCH, INF, 1), E.NonFiniteError, "x_prev"),
    "x_t NaN": (lambda: R.ddpm_step(SCH, NAN, 2, X, noise=X), E.NonFiniteError, "x_t"),
    "model_output Inf": (lambda: R.ddim_step(SCH, X, 2, INF), E.NonFiniteError, "model_output"),
    "model_variance NaN": (
        lambda: R.ddpm_parts(SCH, X, 2, X, variance_type="learned_range", model_variance=NAN),
        E.NonFiniteError,
        "model_variance",
    ),
    "posterior x0 NaN": (lambda: P.posterior_mean_var(SCH, NAN, X, 2), E.NonFiniteError, "x0"),
    "x_T NaN": (lambda: SM.ddim_sample(zero, SCH, x_T=NAN), E.NonFiniteError, "x_T"),
    "step_noise Inf": (
        lambda: SM.ddpm_sample(zero, SCH, x_T=X, step_noise=np.full((3, 2, 3), np.inf)),
        E.NonFiniteError,
        "step_noise",
    ),
    "denoiser output NaN": (
        lambda: SM.ddim_sample(nan_denoiser, SCH, x_T=X),
        E.NonFiniteError,
        "denoiser output",
    ),
    # -- unknown option names ------------------------------------------------------------------
    "variance_type": (
        lambda: R.ddpm_parts(SCH, X, 1, X, variance_type="fixed_large_log"),
        E.OptionError,
        "variance_type",
    ),
    "sampler variance_type": (
        lambda: SM.ddpm_sample(zero, SCH, (1, 2), rng=RNG, variance_type="small"),
        E.OptionError,
        "variance_type",
    ),
    "prediction_type ddpm": (
        lambda: R.ddpm_parts(SCH, X, 1, X, prediction_type="sample"),
        E.OptionError,
        "prediction_type",
    ),
    "prediction_type ddim": (
        lambda: R.ddim_step(SCH, X, 1, X, prediction_type="v_prediction"),
        E.OptionError,
        "prediction_type",
    ),
    "prediction_type target": (
        lambda: L.training_target(SCH, X, 1, X, "eps"),
        E.OptionError,
        "prediction_type",
    ),
    "prediction_type inverse": (
        lambda: R.ddim_inverse_step(SCH, X, 1, X, prediction_type="x_0"),
        E.OptionError,
        "prediction_type",
    ),
    "convert source": (lambda: PZ.convert(SCH, X, 1, X, "eps", "x0"), E.OptionError, "source"),
    "convert target": (lambda: PZ.convert(SCH, X, 1, X, "x0", "noise"), E.OptionError, "target"),
    "spacing": (lambda: RS.spaced_times(10, 2, "uniform"), E.OptionError, "spacing"),
    "schedule name": (lambda: S.make_schedule("squaredcos_cap_v2", 10), E.OptionError, "name"),
    "schedule kwargs": (lambda: S.make_schedule("linear", 10, s=0.1), E.InputError, "kwargs"),
    "log_variance_clipping": (
        lambda: P.posterior_log_variance(SCH, 1, "clip"),
        E.OptionError,
        "log_variance_clipping",
    ),
    "ddpm log_variance_clipping": (
        lambda: R.ddpm_parts(SCH, X, 1, X, log_variance_clipping=None),
        E.OptionError,
        "log_variance_clipping",
    ),
    "vlb log_variance_clipping": (
        lambda: L.vlb_term_bpd(SCH, X, X, 2, X, 0.0, log_variance_clipping="1e-20"),
        E.OptionError,
        "log_variance_clipping",
    ),
    "final_alpha_bar name": (
        lambda: R.ddim_step(SCH, X, 1, X, final_alpha_bar="zero"),
        E.OptionError,
        "final_alpha_bar",
    ),
    "final_alpha_bar zero": (
        lambda: R.ddim_step(SCH, X, 1, X, final_alpha_bar=0.0),
        E.InputError,
        "final_alpha_bar",
    ),
    "final_alpha_bar above one": (
        lambda: R.ddim_step(SCH, X, 1, X, final_alpha_bar=1.5),
        E.InputError,
        "final_alpha_bar",
    ),
    "final_alpha_bar None": (
        lambda: R.ddim_step(SCH, X, 2, X, final_alpha_bar=None),
        E.InputError,
        "final_alpha_bar",
    ),
    # -- missing randomness --------------------------------------------------------------------
    "q_sample no noise": (lambda: F.q_sample(SCH, X, 1), E.RandomnessError, "rng"),
    "q_step no noise": (lambda: F.q_step_sample(SCH, X, 1), E.RandomnessError, "rng"),
    "q_transition no noise": (
        lambda: F.q_transition_sample(SCH, X, 2, 1),
        E.RandomnessError,
        "rng",
    ),
    "posterior no noise": (lambda: P.posterior_sample(SCH, X, X, 2), E.RandomnessError, "rng"),
    "ddpm no noise": (lambda: R.ddpm_step(SCH, X, 2, X), E.RandomnessError, "rng"),
    "ddim eta no noise": (lambda: R.ddim_step(SCH, X, 2, X, eta=0.5), E.RandomnessError, "rng"),
    "rng is a seed": (lambda: F.q_sample(SCH, X, 1, rng=0), E.RandomnessError, "rng"),
    "rng legacy": (
        lambda: F.q_sample(SCH, X, 1, rng=np.random.RandomState(0)),
        E.RandomnessError,
        "rng",
    ),
    "sampler no rng": (lambda: SM.ddpm_sample(zero, SCH, (1, 2)), E.RandomnessError, "rng"),
    "vlb no noise": (lambda: L.vlb_bpd(SCH, X, zero), E.RandomnessError, "rng"),
    # -- eta and the other step parameters -----------------------------------------------------
    "eta negative": (lambda: R.ddim_step(SCH, X, 2, X, eta=-0.1), E.InputError, "eta"),
    "eta above one": (lambda: R.ddim_parts(SCH, X, 2, X, eta=1.5), E.InputError, "eta"),
    "eta NaN": (lambda: R.ddim_parts(SCH, X, 2, X, eta=float("nan")), E.InputError, "eta"),
    "eta string": (lambda: R.ddim_parts(SCH, X, 2, X, eta="1"), E.InputError, "eta"),
    "sampler eta": (
        lambda: SM.ddim_sample(zero, SCH, (1, 2), rng=RNG, eta=2.0),
        E.InputError,
        "eta",
    ),
    "clip negative": (lambda: R.ddpm_parts(SCH, X, 2, X, clip=-1.0), E.InputError, "clip"),
    "clip and threshold": (
        lambda: R.ddpm_parts(SCH, X, 2, X, clip=1.0, threshold_ratio=0.9),
        E.InputError,
        "clip",
    ),
    "threshold_ratio": (
        lambda: R.ddim_parts(SCH, X, 2, X, threshold_ratio=0.0),
        E.InputError,
        "threshold_ratio",
    ),
    "threshold_max": (
        lambda: R.ddim_parts(SCH, X, 2, X, threshold_ratio=0.9, threshold_max=0.5),
        E.InputError,
        "threshold_max",
    ),
    "learned_linear non-positive": (
        lambda: R.ddpm_parts(SCH, X, 2, X, variance_type="learned_linear", model_variance=X),
        E.InputError,
        "model_variance",
    ),
    # a bool is not a number here: eta=True would silently read as 1
    "eta bool": (lambda: R.ddim_step(SCH, X, 2, X, eta=True), E.InputError, "eta"),
    "clip bool": (lambda: R.ddpm_step(SCH, X, 2, X, noise=X, clip=True), E.InputError, "clip"),
    "final_alpha_bar bool": (
        lambda: R.ddim_step(SCH, X, 2, X, final_alpha_bar=True),
        E.InputError,
        "final_alpha_bar",
    ),
    "cosine s bool": (lambda: S.cosine(10, s=False), E.InputError, "s"),
    "inverse s=0 not epsilon": (
        lambda: R.ddim_inverse_step(SCH, X, 0, X, prediction_type="v"),
        E.InputError,
        "prediction_type",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_typed_error_naming_argument(name):
    fn, exc, argument = CASES[name]
    with pytest.raises(exc) as info:
        fn()
    assert info.value.argument == argument, str(info.value)
    # the message names the argument too, and every typed error is a RefdiffError + ValueError
    assert str(info.value).startswith(f"{argument}:")
    assert isinstance(info.value, E.RefdiffError) and isinstance(info.value, ValueError)


def test_error_hierarchy():
    for cls in (
        E.ScheduleError,
        E.TimestepError,
        E.ShapeError,
        E.DTypeError,
        E.OptionError,
        E.NonFiniteError,
        E.UndefinedError,
        E.RandomnessError,
    ):
        assert issubclass(cls, E.InputError)
    assert issubclass(E.DTypeError, TypeError) and issubclass(E.RandomnessError, TypeError)
    e = E.OptionError("spacing", "uniform", ["leading", "trailing"])
    assert e.value == "uniform" and e.valid == ("leading", "trailing")
    assert "'leading'" in str(e) and "'uniform'" in str(e)
    f = E.FileFormatError("x.onnx", "truncated")
    assert f.path == "x.onnx" and isinstance(f, ValueError) and "truncated" in str(f)


def test_numpy_scalars_are_accepted_as_options():
    """np.float32 / np.int64 options work and give the Python-float result (is_real)."""
    x, z = np.linspace(-3, 3, 6).reshape(2, 3), np.ones_like(X)
    for kw in ({"eta": 0.5}, {"clip": 1.5}, {"final_alpha_bar": 0.9}, {"threshold_ratio": 0.9}):
        (k, v), *_ = kw.items()
        want = R.ddim_step(SCH, x, 2, x, noise=z, **kw)
        got = R.ddim_step(SCH, x, 2, x, noise=z, **{k: np.float32(v)})
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # v rounded to float32
    np.testing.assert_array_equal(
        R.ddpm_step(SCH, x, 2, x, noise=z, clip=np.int64(1)),
        R.ddpm_step(SCH, x, 2, x, noise=z, clip=1),
    )
