"""refdiff.testing: tolerances, the assertion API, duck typing, strategies, the statistical form.

The "other implementations" here are examples/numpy_scheduler.py (written independently of
refdiff, 0-based, in float64/float32/float16) and the planted bugs of examples/planted_bugs.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff import testing as rt
from refdiff.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from numpy_scheduler import NumpyScheduler  # noqa: E402
from planted_bugs import BetaForBetaTilde, MissingSqrt  # noqa: E402

LINEAR = rt.Setting("linear", 1000)
RESPACED = rt.Setting("cosine", 1000, 20, "trailing")


def _ddpm_fn(impl, setting, **options):
    ab = np.array(setting.base().alpha_bar[1:])
    ts = setting.times()[::-1] - 1

    def fn(x_t, t, model_output, noise, **kw):
        return impl.ddpm_step(ab, ts, t, x_t, model_output, noise, **options, **kw)

    return fn


def _ddim_fn(impl, setting, **options):
    ab = np.array(setting.base().alpha_bar[1:])
    ts = setting.times()[::-1] - 1

    def fn(x_t, t, model_output, noise):
        return impl.ddim_step(ab, ts, t, x_t, model_output, noise, **options)

    return fn


# -- tolerances -------------------------------------------------------------------------------
def test_tolerance_presets():
    assert rt.Tolerance.for_dtype("float32").u_state == 2.0**-24
    assert rt.Tolerance.for_dtype(np.float64).u_schedule == 2.0**-53
    half = rt.Tolerance.for_dtype("float16")
    assert half.u_state == 2.0**-11 and half.schedule_precision == "float32"
    assert "float16 states, float32 schedule" in half.describe()
    with pytest.raises(InputError, match="state"):
        rt.Tolerance("float8")
    with pytest.raises(InputError, match="factor"):
        rt.Tolerance(factor=0)


@pytest.mark.parametrize("op", ["q_sample", "posterior_mean", "ddpm_step", "ddim_step"])
def test_tolerance_is_the_pass_fail_boundary(op):
    """An output off by half the tolerance passes, by twice the tolerance fails; the
    tolerance scales exactly with the unit roundoff (2^29 from float64 to float32)."""
    setting = RESPACED if op.endswith("step") else LINEAR
    opts = {"prediction_type": "v", "variance_type": "fixed_small"} if op == "ddpm_step" else {}
    if op == "ddim_step":
        opts = {"prediction_type": "epsilon", "eta": 0.5}
    sched = setting.respaced() if op.endswith("step") else setting.base()
    for t in (1, 2, sched.T // 2, sched.T):
        inp = rt.make_inputs(op, sched, t, opts, np.random.default_rng(t))
        case = rt.Case(op, setting, t, opts, inp)
        exp = rt.expected(case)
        t32 = rt.tolerance_array(case, rt.Tolerance("float32"))
        t64 = rt.tolerance_array(case, rt.Tolerance("float64"))
        np.testing.assert_allclose(t32, t64 * 2.0**29, rtol=1e-12)
        sign = np.where(np.random.default_rng(0).random(exp.shape) < 0.5, -1.0, 1.0)
        assert rt.compare(case, exp + 0.5 * sign * t32, rt.Tolerance("float32")).passed
        bad = rt.compare(case, exp + 2.0 * sign * t32, rt.Tolerance("float32"))
        assert not bad.passed and 1.9 < bad.ratio < 2.1


def test_tolerance_accounts_for_schedule_cancellation():
    """At t = 1 of a linear schedule 1 − ᾱ_1 = β_1 = 1e-4: a float32 ᾱ_1 carries a relative
    error u/β_1 in 1 − ᾱ_1, so the schedule term of the tolerance is ~1e4 larger there than
    in the middle of the chain."""
    opts = {"prediction_type": "epsilon", "variance_type": "fixed_small"}
    ratio = []
    for t in (2, 500):
        inp = rt.make_inputs("ddpm_step", LINEAR.base(), t, opts, np.random.default_rng(1))
        case = rt.Case("ddpm_step", LINEAR, t, opts, inp)
        s = rt.schedule_sensitivity(case)
        ratio.append(float(np.median(s / rt.magnitude(case))))
    assert ratio[0] > 100 * ratio[1]


# -- the assertion API against an independent implementation ------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_example_implementation_passes_at_its_precision(dtype):
    impl = NumpyScheduler(dtype)
    conv = dict(impl.conventions)
    rt.assert_alpha_bar_close(
        impl.alpha_bar("cosine", 1000), LINEAR.__class__("cosine"), dtype=dtype
    )
    ab = np.array(LINEAR.base().alpha_bar[1:])
    rt.assert_q_sample_close(lambda x0, t, z: impl.q_sample(ab, x0, t, z), LINEAR, dtype=dtype)
    rt.assert_posterior_close(lambda x0, x, t: impl.posterior(ab, x0, x, t), LINEAR, dtype=dtype)
    for vt in ("fixed_small", "learned_range"):
        o = {"prediction_type": "v", "variance_type": vt}
        rt.assert_ddpm_step_close(
            _ddpm_fn(impl, RESPACED, **o),
            RESPACED,
            dtype=dtype,
            options={**o, "log_variance_clipping": conv["log_variance_clipping"]},
        )
    o = {"prediction_type": "epsilon", "eta": 1.0, "final_alpha_bar": "first", "clip": 1.0}
    rt.assert_ddim_step_close(_ddim_fn(impl, RESPACED, **o), RESPACED, dtype=dtype, options=o)


def test_float32_implementation_fails_the_float64_tolerance():
    """The tolerance matters: the float32 implementation is ~1e-7 off, far beyond float64's."""
    impl = NumpyScheduler("float32")
    o = {"prediction_type": "epsilon", "eta": 0.0}
    checks = rt.check_ddim_step(_ddim_fn(impl, RESPACED, **o), RESPACED, options=o, dtype="float64")
    assert not all(c.passed for c in checks)
    worst = max(checks, key=lambda c: c.ratio)
    assert 1e-9 < worst.max_rel < 1e-5


def test_failure_message_names_option_t_errors_and_cause():
    bug = BetaForBetaTilde()
    o = {"prediction_type": "epsilon", "variance_type": "fixed_small"}
    with pytest.raises(AssertionError) as e:
        rt.assert_ddpm_step_close(_ddpm_fn(bug, LINEAR, **o), LINEAR, options=o, dtype="float32")
    msg = str(e.value)
    assert "ddpm_step prediction_type=epsilon variance_type=fixed_small" in msg
    assert "t=1 (0-based; refdiff t=2)" in msg
    assert "max abs err" in msg and "max rel err" in msg
    assert "looks like β used instead of β̃" in msg


def test_missing_sqrt_is_named():
    o = {"prediction_type": "x0", "variance_type": "fixed_large"}
    with pytest.raises(AssertionError, match="missing sqrt"):
        rt.assert_ddpm_step_close(
            _ddpm_fn(MissingSqrt(), RESPACED, **o), RESPACED, options=o, dtype="float32"
        )


def test_alpha_bar_bugs_are_named():
    ab = np.array(LINEAR.base().alpha_bar[1:])
    with pytest.raises(AssertionError, match="off-by-one"):
        rt.assert_alpha_bar_close(np.append(ab[1:], ab[-1] * 0.98), LINEAR)
    betas = np.linspace(1e-4, 0.02, 1000)
    half = np.cumprod((1 - betas).astype(np.float16)).astype(np.float64)
    with pytest.raises(AssertionError, match="float16"):
        rt.assert_alpha_bar_close(half, LINEAR, dtype="float16")
    # with ᾱ_0 = 1 prepended it is accepted too
    rt.assert_alpha_bar_close(np.concatenate([[1.0], ab]), LINEAR)


def test_one_based_implementations_and_times_selection():
    ab = np.array(LINEAR.base().alpha_bar[1:])

    def q1(x0, t, z):  # refdiff's 1-based time
        return math.sqrt(ab[t - 1]) * x0 + math.sqrt(1 - ab[t - 1]) * z

    checks = rt.assert_q_sample_close(q1, LINEAR, index_base=1, times=[1, 2, 1000])
    assert [c.base_time for c in checks] == [1, 2, 1000]
    with pytest.raises(AssertionError, match="off-by-one"):
        rt.assert_q_sample_close(q1, LINEAR, index_base=0)
    with pytest.raises(InputError, match="not a kept step"):
        rt.check_ddim_step(lambda *a: a[0], RESPACED, times=[5])


class _ArrayOnly:
    def __init__(self, a):
        self._a = np.asarray(a)

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class _DLPackOnly:
    def __init__(self, a):
        self._a = np.ascontiguousarray(a)

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


@pytest.mark.parametrize("wrap", ["array", "dlpack", "torch"])
def test_outputs_are_duck_typed(wrap):
    if wrap == "torch":
        torch = pytest.importorskip("torch")
        box = torch.from_numpy
    else:
        box = {"array": _ArrayOnly, "dlpack": _DLPackOnly}[wrap]
    ab = np.array(LINEAR.base().alpha_bar[1:])
    impl = NumpyScheduler("float64")
    rt.assert_q_sample_close(lambda x0, t, z: box(impl.q_sample(ab, x0, t, z)), LINEAR)


def test_shape_and_nan_are_reported():
    ab = np.array(LINEAR.base().alpha_bar[1:])
    impl = NumpyScheduler("float64")
    with pytest.raises(AssertionError, match="shape"):
        rt.assert_q_sample_close(lambda x0, t, z: impl.q_sample(ab, x0, t, z)[0], LINEAR)
    with pytest.raises(AssertionError, match="NaN or Inf"):
        rt.assert_q_sample_close(lambda x0, t, z: impl.q_sample(ab, x0, t, z) * np.inf, LINEAR)


# -- strategies: the float32 implementation over random settings and options --------------------
@settings(max_examples=25)
@given(
    setting=rt.settings(max_T=1000, zero_terminal_snr=None),
    options=rt.ddpm_options(),
    seed=st.integers(0, 2**31),
)
def test_float32_ddpm_conforms_on_random_settings(setting, options, seed):
    impl = NumpyScheduler("float32")
    options = {**options, "log_variance_clipping": "floor"}  # the implementation's convention
    fn = _ddpm_fn(
        impl, setting, **{k: v for k, v in options.items() if k != "log_variance_clipping"}
    )
    rt.assert_checks(rt.check_ddpm_step(fn, setting, options=options, dtype="float32", seed=seed))


@settings(max_examples=25)
@given(
    setting=rt.settings(max_T=1000, zero_terminal_snr=None),
    options=rt.ddim_options(),
    seed=st.integers(0, 2**31),
)
def test_float32_ddim_conforms_on_random_settings(setting, options, seed):
    impl = NumpyScheduler("float32")
    options = {**options, "final_step_noise": False}
    fn = _ddim_fn(impl, setting, **{k: v for k, v in options.items() if k != "final_step_noise"})
    rt.assert_checks(rt.check_ddim_step(fn, setting, options=options, dtype="float32", seed=seed))


@settings(max_examples=20)
@given(schedule=rt.schedules(max_T=200), data=st.data())
def test_strategies_produce_valid_objects(schedule, data):
    t = data.draw(rt.timesteps(schedule))
    assert 1 <= t <= schedule.T
    x = data.draw(rt.states())
    assert x.ndim == 2 and np.isfinite(x).all() and np.abs(x).max() <= 3.0


# -- the statistical form: a whole sampler with its own random numbers ---------------------------
def _numpy_sampler(impl, setting, kind, options, seed):
    ab = np.array(setting.base().alpha_bar[1:])
    ts = setting.times()[::-1] - 1
    rng = np.random.default_rng(seed)

    def sampler(denoiser, n):
        x = rng.standard_normal((n, 2)).astype(np.float32)
        for t in ts:
            out = denoiser(x, np.full(n, t))
            z = rng.standard_normal((n, 2))
            step = impl.ddim_step if kind == "ddim" else impl.ddpm_step
            x = step(ab, ts, int(t), x, out, z, **options)
        return x

    return sampler


def test_sampler_law_accepts_a_correct_float32_sampler():
    """α = 1e-6 (one statistical assertion, recorded in the error budget)."""
    setting = rt.Setting("linear", 1000, 10, "trailing")
    o = {"prediction_type": "epsilon", "eta": 1.0}
    res = rt.assert_sampler_law(
        _numpy_sampler(NumpyScheduler("float32"), setting, "ddim", o, 7),
        setting,
        sampler="ddim",
        options=o,
        n=4000,
        false_fail_rate=1e-6,
    )
    assert res.passed and res.alpha == 1e-6 and res.n == 4000


def test_sampler_law_rejects_a_planted_bug():
    """σ² z for σ z (missing sqrt) in a 10-step DDPM: the output variance is far from the
    exact law's; α = 1e-6."""
    setting = rt.Setting("linear", 1000, 10, "leading")
    o = {"prediction_type": "epsilon", "variance_type": "fixed_small"}
    with pytest.raises(AssertionError, match="gaussian|variance|mean"):
        rt.assert_sampler_law(
            _numpy_sampler(MissingSqrt(), setting, "ddpm", o, 11),
            setting,
            sampler="ddpm",
            options=o,
            n=4000,
            false_fail_rate=1e-6,
        )


def test_conformance_modules_import_no_framework():
    """refdiff.testing / verify / vectors / adapters load neither torch, diffusers nor (until a
    strategy is built) hypothesis."""
    import subprocess

    code = (
        "import sys, refdiff.testing, refdiff.verify, refdiff.vectors, refdiff.adapters; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'diffusers', 'hypothesis', 'onnx', 'onnxruntime'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sampler_law_former_keywords_warn():
    """``kind=`` (and the callable as ``sampler=``) still work, with a DeprecationWarning; an
    unknown step kind is refused before anything is sampled."""

    def never(denoiser, n):
        raise AssertionError("not reached")

    with pytest.warns(DeprecationWarning, match="kind="), pytest.raises(InputError) as e:
        rt.assert_sampler_law(never, kind="euler")
    assert e.value.argument == "sampler"
    with pytest.warns(DeprecationWarning) as rec, pytest.raises(InputError):
        rt.assert_sampler_law(sampler=never, kind="euler")
    assert any("callable" in str(w.message) for w in rec)
