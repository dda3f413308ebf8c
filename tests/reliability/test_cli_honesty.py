"""The honest command line and the fast start of ``refdiff sample`` / ``refdiff export``.

The bad-input cases each have a row in tests/test_reliability.py (docs/reliability.md); these
tests show that the accepted spellings take effect (peers' aliases, ``--override-metadata``),
that errors list every missing option with flag names, that nothing heavy is imported before
the arguments are checked, and that the provider fallback is one short line, printed once.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from refdiff import exact
from refdiff.cli import main
from refdiff.errors import InputError
from refdiff.sampling import ddpm_sample
from refdiff.schedule import cosine, linear

ROOT = Path(__file__).resolve().parents[2]
F32_TOL = 2e-5  # float32 sampler vs float64 reference, relative to the sample scale


def _run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _ring(tmp: Path, T: int = 50) -> Path:
    from refdiff.export import builtin_mixture, mixture_denoiser_model, save_model

    return save_model(mixture_denoiser_model(builtin_mixture("ring8"), linear(T)), tmp / "d.onnx")


def _foreign(tmp: Path) -> Path:
    """f(x, t) = x·W with no metadata at all (prediction type, convention, schedule unknown)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[0.5, 0.1], [-0.2, 0.4]], np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["out"])],
        "foreign",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("t", TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 2])],
        initializer=[w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    p = tmp / "foreign.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


# -- flags take effect ------------------------------------------------------------------------
def test_peer_schedule_alias_takes_effect(tmp_path):
    """``--schedule squaredcos_cap_v2`` (diffusers) samples exactly as ``--schedule cosine``,
    and differs from linear: the alias is not silently ignored."""
    model = _foreign(tmp_path)
    flags = ["--prediction-type", "epsilon", "--timestep-convention", "index", "--T", "40"]
    outs = {}
    for name in ("squaredcos_cap_v2", "cosine", "linear"):
        out = tmp_path / f"{name}.npy"
        code, _, err = _run(
            ["sample", "--model", model, "--schedule", name, "--provider", "cpu"]
            + [*flags, "--batch", "6", "--seed", "2", "--quiet", "-o", out]
        )
        assert code == 0, err
        outs[name] = np.load(out)
    assert np.array_equal(outs["squaredcos_cap_v2"], outs["cosine"])
    assert _rel(outs["cosine"], outs["linear"]) > 1e-3


def test_override_metadata_samples_with_the_given_schedule(tmp_path):
    """With ``--override-metadata`` the sampler walks the command line's schedule: the
    reference is the same denoiser (built for linear) driven along cosine."""
    from refdiff.export import builtin_mixture

    model = _ring(tmp_path)
    out = tmp_path / "x.npy"
    code, _, err = _run(
        ["sample", "--model", model, "--schedule", "cosine", "--override-metadata"]
        + ["--provider", "cpu", "--batch", "8", "--seed", "5", "--quiet", "-o", out]
    )
    assert code == 0, err
    from refdiff.export.noise import host_noise

    x_T, z = host_noise(5, 50, (8, 2))  # the samplers' seeded host-noise layout
    mix = builtin_mixture("ring8")
    ref = ddpm_sample(exact.denoiser(mix, linear(50)), cosine(50), x_T=x_T, step_noise=z)
    assert _rel(np.load(out), ref) < F32_TOL


def test_flags_that_agree_with_the_metadata_are_accepted(tmp_path):
    model = _ring(tmp_path)
    code, _, err = _run(
        ["sample", "--model", model, "--schedule", "linear", "--T", "50", "--prediction-type"]
        + ["epsilon", "--provider", "cpu", "--batch", "2", "--quiet", "-o", tmp_path / "x.npy"]
    )
    assert code == 0, err


def test_graph_noise_sampler_file_accepts_its_own_seed(tmp_path):
    s = tmp_path / "s.onnx"
    code, _, err = _run(
        ["export", "--mixture", "ring8", "--kind", "sampler", "--T", "20", "--noise", "graph"]
        + ["--seed", "4", "--quiet", "-o", s]
    )
    assert code == 0, err
    base = ["sample", "--model", s, "--provider", "cpu", "--batch", "3", "--quiet", "-o"]
    assert _run([*base, tmp_path / "a.npy", "--seed", "4"])[0] == 0
    code, _, err = _run([*base, tmp_path / "b.npy", "--seed", "5"])
    assert code == 2 and "--seed" in err and not (tmp_path / "b.npy").exists()


# -- errors speak CLI -------------------------------------------------------------------------
def test_every_missing_option_at_once_with_choices(tmp_path):
    code, _, err = _run(["sample", "--model", _foreign(tmp_path), "-o", tmp_path / "x.npy"])
    assert code == 2
    for flag, choice in (
        ("--prediction-type", "epsilon, x0, v, score"),
        ("--timestep-convention", "refdiff, index"),
        ("--schedule", "cosine"),
    ):
        assert f"{flag}: missing" in err and choice in err, err
    assert "prediction_type" not in err and "Traceback" not in err


def test_api_errors_are_reworded_with_flag_names():
    from refdiff.export.cli import _cli_message

    e = InputError("num_steps", "must be an int in [1, T=50]; pass num_steps= or use the default")
    assert (
        _cli_message(e) == "--steps: must be an int in [1, T=50]; pass --steps or use the default"
    )
    assert _cli_message(InputError("other", "x")) == "other: x"


def test_problems_found_before_any_work_are_reported_together(tmp_path):
    code, _, err = _run(
        ["sample", "--model", tmp_path / "missing.onnx", "--shape", "4,x", "-o", tmp_path]
    )
    assert code == 2
    assert "3 problems" in err and "--shape" in err and "--output" in err and "--model" in err


# -- fast start -------------------------------------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_sample_help_imports_neither_onnx_nor_onnxruntime():
    proc = _python(
        """
        import sys
        from refdiff.cli import main
        try:
            main(["sample", "--help"])
        except SystemExit:
            pass
        print("LOADED", sorted(m for m in ("onnx", "onnxruntime", "ml_dtypes") if m in sys.modules))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "--model" in proc.stdout and "LOADED []" in proc.stdout, proc.stdout[-500:]


def test_import_refdiff_export_without_onnx_names_the_extra():
    """A ``sys.meta_path`` finder hides onnx, as if it were not installed."""
    proc = _python(
        """
        import sys

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "onnx":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Hide())
        try:
            import refdiff.export
        except ImportError as e:
            print("IMPORTERROR", type(e).__name__, e)
        import refdiff  # the NumPy half still imports
        print("REFDIFF OK", refdiff.__version__)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTERROR ImportError refdiff.export needs onnx" in proc.stdout, proc.stdout
    assert 'pip install "refdiff[deploy]"' in proc.stdout and "REFDIFF OK" in proc.stdout


def test_refdiff_cli_names_the_extra_when_onnxruntime_is_missing():
    proc = _python(
        """
        import sys

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "onnxruntime":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Hide())
        from refdiff.cli import main
        sys.exit(main(["sample", "--model", "m.onnx"]))
        """
    )
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr  # extra missing
    assert "onnxruntime" in proc.stderr and "refdiff[deploy]" in proc.stderr


def test_peek_metadata_reads_what_onnx_reads(tmp_path):
    from refdiff.export import load_model, read_metadata
    from refdiff.export.metadata import peek_metadata

    path = _ring(tmp_path)
    data = path.read_bytes()
    assert peek_metadata(data) == read_metadata(load_model(path)[0])
    assert peek_metadata(data)["refdiff.kind"] == "denoiser"
    for bad in (b"not a model", data[: len(data) // 2]):
        assert peek_metadata(bad) is None


# -- provider messages ------------------------------------------------------------------------
def test_no_cuda_session_is_probed_without_a_visible_gpu(monkeypatch):
    import onnxruntime as ort
    from refdiff.export import providers as P

    def no_session(*a, **k):
        raise AssertionError("a session was created to probe CUDA")

    monkeypatch.setattr(P, "nvidia_visible", lambda: False)
    monkeypatch.setattr(ort, "InferenceSession", no_session)
    P._probe.cache_clear()
    P.cuda_details.cache_clear()
    try:
        with pytest.warns(P.ProviderFallbackWarning) as rec:
            assert P.resolve_provider("auto") == "cpu"
        msg = str(rec[0].message)
        assert msg in (
            "running on CPU: no NVIDIA GPU visible",
            "running on CPU: this onnxruntime is the CPU build",
        )
        assert rec[0].message.details and "pip" in rec[0].message.details
        with pytest.raises(P.ProviderError) as e:
            P.resolve_provider("cuda")
        assert "\n" not in str(e.value) and e.value.details
    finally:
        P._probe.cache_clear()
        P.cuda_details.cache_clear()


def test_cli_prints_the_fallback_once_in_one_line_and_details_on_request(tmp_path, monkeypatch):
    from refdiff.export import providers as P

    monkeypatch.setattr(P, "nvidia_visible", lambda: False)
    P._probe.cache_clear()
    P.cuda_details.cache_clear()
    try:
        argv = ["sample", "--model", _ring(tmp_path), "--batch", "2", "--quiet"]
        for mode in ("steps", "fused", "graph"):
            code, _, err = _run([*argv, "--mode", mode, "-o", tmp_path / f"{mode}.npy"])
            assert code == 0, err
            lines = [ln for ln in err.splitlines() if "running on CPU" in ln]
            assert len(lines) == 1, err
            assert len(lines[0]) < 80 and "pip" not in lines[0] and "(" not in lines[0]
            assert "details" not in err
        code, _, err = _run([*argv, "--verbose", "-o", tmp_path / "v.npy"])
        assert code == 0 and "details:" in err and "pip install" in err, err
    finally:
        P._probe.cache_clear()
        P.cuda_details.cache_clear()


def test_auto_warning_is_filterable_and_explicit_cpu_is_silent(tmp_path):
    from refdiff.export import OrtSampler

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OrtSampler(_ring(tmp_path), provider="cpu")


# -- conditioning, guidance and the PNG grid on the command line ------------------------------
def test_cli_cond_and_guidance_sample_what_the_api_samples(tmp_path):
    """``--cond``/``--uncond``/``--guidance-*`` reach the sampler: the CLI's samples equal
    :class:`OrtSampler`'s with the same arrays and seed, and guidance changes them."""
    from refdiff.export import OrtSampler

    from tests.export.test_export_guidance import SCHED, _conds, cond_model

    model = tmp_path / "cond.onnx"
    model.write_bytes(cond_model().SerializeToString())
    c, u = _conds(4)
    files = []
    for kind, arrays in (("cond", c), ("uncond", u)):
        for name, value in arrays.items():
            np.save(tmp_path / f"{kind}-{name}.npy", value)
            files += [f"--{kind}", f"{name}={tmp_path / f'{kind}-{name}.npy'}"]
    argv = ["sample", "--model", model, "--prediction-type", "epsilon"]
    argv += ["--timestep-convention", "refdiff", "--schedule", "linear", "--T", str(SCHED.T)]
    argv += ["--provider", "cpu", "--batch", "4", "--seed", "3", "--quiet"]
    guide = ["--guidance-scale", "3.5", "--guidance-rescale", "0.7", "--guidance-mode", "two_pass"]
    code, _, err = _run([*argv, *files, *guide, "-o", tmp_path / "g.npy"])
    assert code == 0, err
    api = OrtSampler(
        cond_model(),
        SCHED,
        provider="cpu",
        prediction_type="epsilon",
        timestep_convention="refdiff",
        guidance_scale=3.5,
        guidance_rescale=0.7,
        guidance_mode="two_pass",
    ).sample(shape=(4, 2), seed=3, cond=c, uncond=u)
    assert np.array_equal(np.load(tmp_path / "g.npy"), api)
    cond_only = files[: 2 * len(c)]  # the same --cond, no guidance
    code, _, err = _run([*argv, *cond_only, "-o", tmp_path / "p.npy"])
    assert code == 0, err
    assert _rel(np.load(tmp_path / "p.npy"), api) > 1e-2


def test_cli_guidance_without_uncond_and_missing_cond_are_refused(tmp_path):
    from tests.export.test_export_guidance import cond_model

    model = tmp_path / "cond.onnx"
    model.write_bytes(cond_model().SerializeToString())
    np.save(tmp_path / "c.npy", np.zeros((1, 4)))
    argv = ["sample", "--model", model, "--prediction-type", "epsilon", "--timestep-convention"]
    argv += ["refdiff", "--schedule", "linear", "--T", "12", "--provider", "cpu", "--quiet"]
    code, _, err = _run([*argv, "--cond", f"cond={tmp_path / 'c.npy'}", "--guidance-scale", "2"])
    assert code == 2 and "--guidance-scale: needs --uncond" in err, err
    code, _, err = _run([*argv, "--cond", f"cond={tmp_path / 'c.npy'}", "-o", tmp_path / "x.npy"])
    assert code == 2 and "--cond" in err and "label" in err and "cond=" not in err, err
    code, _, err = _run([*argv, "--cond", "cond", "--guidance-rescale", "0.5"])
    assert code == 2 and "is not NAME=FILE.npy" in err and "add --guidance-scale" in err, err
    assert not (tmp_path / "x.npy").exists()


def _image_model(tmp: Path) -> Path:
    """f(x, t) = 0.5·x on (B, 3, 4, 4) images, with metadata-free prediction/time."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "half"], ["out"])],
        "img",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 4, 4]),
            helper.make_tensor_value_info("t", TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 3, 4, 4])],
        initializer=[numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    p = tmp / "img.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def test_cli_png_grid_beside_the_npy(tmp_path):
    from refdiff.export.png import image_grid, png_bytes

    argv = ["sample", "--model", _image_model(tmp_path), "--prediction-type", "epsilon"]
    argv += ["--timestep-convention", "refdiff", "--schedule", "linear", "--T", "10"]
    argv += ["--provider", "cpu", "--batch", "5", "--quiet", "--png"]
    code, _, err = _run([*argv, "-o", tmp_path / "imgs.npy"])
    assert code == 0, err
    x = np.load(tmp_path / "imgs.npy")
    assert x.shape == (5, 3, 4, 4)
    assert (tmp_path / "imgs.png").read_bytes() == png_bytes(image_grid(x))
    # 2-D samples are not images: refused before sampling, nothing written
    ring = _ring(tmp_path)
    code, _, err = _run(["sample", "--model", ring, "--png", "--quiet", "-o", tmp_path / "r.npy"])
    assert code == 2 and "--png" in err and "not images" in err
    assert not (tmp_path / "r.npy").exists() and not (tmp_path / "r.png").exists()


# -- OrtSampler(num_inference_steps=, spacing=) and the onnx-free sampler-file path ------------
def test_ortsampler_num_inference_steps_equals_the_respaced_schedule(tmp_path):
    from refdiff.export import OrtSampler, build_schedule

    model = _ring(tmp_path, T=100)
    for spacing in ("leading", "trailing", "linspace", "ddim10"):
        s = OrtSampler(model, num_inference_steps=10, spacing=spacing, provider="cpu")
        _, walk = build_schedule("linear", 100, steps=10, spacing=spacing)
        ref = OrtSampler(model, walk, provider="cpu")
        assert np.array_equal(s.schedule.timesteps, walk.timesteps) and s.num_steps == 10
        assert np.array_equal(s.sample(shape=3, seed=1), ref.sample(shape=3, seed=1))
    with pytest.raises(InputError) as e:
        OrtSampler(model, spacing="trailing", provider="cpu")
    assert e.value.argument == "spacing" and "num_inference_steps" in str(e.value)
    with pytest.raises(InputError) as e:
        OrtSampler(model, num_inference_steps=0, provider="cpu")
    assert e.value.argument == "num_inference_steps"


def test_sampler_file_runs_from_bytes_without_onnx(tmp_path):
    """``refdiff sample`` on a sampler file never imports onnx, and the bytes path samples
    exactly what loading the file with onnx samples."""
    from refdiff.export import OrtSampler
    from refdiff.export.metadata import ModelBytes

    s = tmp_path / "s.onnx"
    assert _run(["export", "--mixture", "ring8", "--kind", "sampler", "--T", "20", "--quiet"]
                + ["-o", s])[0] == 0  # fmt: skip
    mb = ModelBytes.read(s)
    assert mb is not None and mb.is_sampler_file
    a = OrtSampler(mb, provider="cpu").sample(shape=4, seed=2)
    b = OrtSampler(s, provider="cpu").sample(shape=4, seed=2)
    assert np.array_equal(a, b)
    proc = _python(
        f"""
        import sys
        from refdiff.cli import main
        code = main(["sample", "--model", {str(s)!r}, "--provider", "cpu", "--batch", "4",
                     "--seed", "2", "--quiet", "-o", {str(tmp_path / "x.npy")!r}])
        print("CODE", code, "LOADED", [m for m in ("onnx", "ml_dtypes") if m in sys.modules])
        """
    )
    assert "CODE 0 LOADED []" in proc.stdout, proc.stdout + proc.stderr
    assert np.array_equal(np.load(tmp_path / "x.npy"), a)


def test_zero_valued_options_count_as_given(tmp_path):
    """``--eta 0`` or ``--steps-offset 0`` for a sampler file are refused like any other
    value (0 is a value, not "not given")."""
    s = tmp_path / "s.onnx"
    assert _run(["export", "--mixture", "ring8", "--kind", "sampler", "--T", "20", "--quiet"]
                + ["--sampler", "ddim", "-o", s])[0] == 0  # fmt: skip
    code, _, err = _run(["sample", "--model", s, "--eta", "0", "-o", tmp_path / "x.npy"])
    assert code == 2 and "--eta" in err and "complete sampler" in err, err


def test_export_guidance_flags_reach_the_graph(tmp_path):
    from refdiff.export import load_model

    from tests.export.test_export_guidance import cond_model

    den = tmp_path / "cond.onnx"
    den.write_bytes(cond_model().SerializeToString())
    argv = ["export", "--denoiser", den, "--kind", "sampler", "--prediction-type", "epsilon"]
    argv += ["--timestep-convention", "refdiff", "--schedule", "linear", "--T", "12", "--quiet"]
    code, _, err = _run([*argv, "--guidance-scale", "2", "-o", tmp_path / "g.onnx"])
    assert code == 0, err
    names = [i.name for i in load_model(tmp_path / "g.onnx")[0].graph.input]
    assert "uncond/cond" in names and "uncond/label" in names
    code, _, err = _run([*argv, "--guidance-rescale", "0.5", "-o", tmp_path / "h.onnx"])
    assert code == 2 and "add --guidance-scale" in err
    # the guided sampler file samples with --cond/--uncond (guidance baked in)
    np.save(tmp_path / "c.npy", np.ones((1, 4)))
    np.save(tmp_path / "l.npy", np.array([1]))
    np.save(tmp_path / "u.npy", np.zeros((1, 4)))
    conds = ["--cond", f"cond={tmp_path / 'c.npy'}", "--cond", f"label={tmp_path / 'l.npy'}"]
    conds += ["--uncond", f"cond={tmp_path / 'u.npy'}", "--uncond", f"label={tmp_path / 'l.npy'}"]
    code, _, err = _run(
        ["sample", "--model", tmp_path / "g.onnx", "--batch", "1", "--provider", "cpu"]
        + [*conds, "--quiet", "-o", tmp_path / "x.npy"]
    )
    assert code == 0, err
    code, _, err = _run(
        ["sample", "--model", tmp_path / "g.onnx", "--guidance-scale", "3", *conds]
        + ["-o", tmp_path / "y.npy"]
    )
    assert code == 2 and "--guidance-scale" in err and "complete sampler" in err, err


def test_sample_loads_and_checks_a_denoiser_file_once(tmp_path, monkeypatch):
    """The CLI parses and checks the user's file once (main read it three times: the CLI,
    open_denoiser and onnxruntime; the checker ran twice)."""
    import onnx
    from refdiff.export import model_io

    model = _ring(tmp_path)
    loads, checks = [], []
    real_load, real_check = model_io.load_model, onnx.checker.check_model

    def load(src, **kw):
        loads.append(src)
        return real_load(src, **kw)

    def check(m, *a, **kw):
        if (
            not isinstance(m, str)
            and dict((p.key, p.value) for p in m.metadata_props).get("refdiff.kind") == "denoiser"
        ):
            checks.append(m)
        return real_check(m, *a, **kw)

    monkeypatch.setattr(model_io, "load_model", load)
    monkeypatch.setattr(onnx.checker, "check_model", check)
    for mode in ("steps", "fused", "graph"):
        loads.clear(), checks.clear()
        code, _, err = _run(
            ["sample", "--model", model, "--mode", mode, "--provider", "cpu", "--batch", "2"]
            + ["--steps", "5", "--quiet", "-o", tmp_path / "x.npy"]
        )
        assert code == 0, err
        assert len(loads) == 1 and len(checks) == 1, (mode, loads, len(checks))


# -- the σ-view samplers on the command line ---------------------------------------------------
@pytest.mark.parametrize(
    "flags, sampler, grid",
    [
        (["--sampler", "euler", "--steps", "8"], "euler", ("from_schedule", {})),
        (
            ["--sampler", "dpmpp_2m", "--steps", "8", "--spacing", "trailing"],
            "dpmpp_2m",
            ("from_schedule", {"spacing": "trailing"}),
        ),
        (
            ["--sampler", "euler_ancestral", "--steps", "8", "--eta", "0.5", "--sigmas", "karras"],
            "euler_ancestral",
            ("karras", {}),
        ),
    ],
)
def test_cli_sigma_samplers_sample_what_the_api_samples(tmp_path, flags, sampler, grid):
    from refdiff.export import OrtSampler

    from refdiff import sigma

    model = _ring(tmp_path)
    out = tmp_path / "x.npy"
    code, _, err = _run(
        ["sample", "--model", model, "--provider", "cpu", "--batch", "5", "--seed", "4"]
        + [*flags, "--quiet", "-o", out]
    )
    assert code == 0, err
    base = linear(50)
    if grid[0] == "karras":
        sig = sigma.karras(8, float(base.sigma[1]), float(base.sigma[-1]))
    else:
        sig = sigma.from_schedule(base, 8, **grid[1])
    opts = {"eta": 0.5} if sampler == "euler_ancestral" else {}
    ref = OrtSampler(model, base, sampler=sampler, sigmas=sig, provider="cpu", **opts)
    assert np.array_equal(np.load(out), ref.sample(shape=5, seed=4))


def test_cli_sigma_sampler_options_are_checked(tmp_path):
    model = _ring(tmp_path)
    argv = ["sample", "--model", model, "--quiet", "-o", tmp_path / "x.npy"]
    code, _, err = _run([*argv, "--sampler", "euler", "--clip", "1", "--sigmas", "karras"])
    assert code == 2 and "--steps: missing" in err and "--clip: applies to" in err, err
    code, _, err = _run([*argv, "--sampler", "euler", "--steps", "5", "--spacing", "leading"])
    assert code == 2 and "linspace | trailing" in err
    code, _, err = _run([*argv, "--sigmas", "karras", "--steps", "5"])
    assert code == 2 and "--sigmas: applies to --sampler euler" in err
    assert not (tmp_path / "x.npy").exists()


def test_cli_flow_euler_needs_no_diffusion_options(tmp_path):
    """A velocity model needs neither a schedule nor a prediction type: none is asked for,
    and one given is refused (it would change nothing); the sample is the API's."""
    from refdiff.export import OrtSampler

    from refdiff.flow import flow_sigmas

    model = _foreign(tmp_path)
    argv = ["sample", "--model", model, "--sampler", "flow_euler", "--steps", "6"]
    argv += ["--flow-shift", "3", "--provider", "cpu", "--batch", "4", "--seed", "1", "--quiet"]
    code, _, err = _run([*argv, "-o", tmp_path / "f.npy"])
    assert code == 0, err
    ref = OrtSampler(
        model,
        sampler="flow_euler",
        sigmas=flow_sigmas(6, shift_factor=3.0),
        provider="cpu",
        prediction_type="epsilon",
        timestep_convention="refdiff",
    ).sample(shape=4, seed=1)
    assert np.array_equal(np.load(tmp_path / "f.npy"), ref)
    code, _, err = _run([*argv, "--prediction-type", "v", "-o", tmp_path / "g.npy"])
    assert code == 2 and "has no effect with --sampler flow_euler" in err
