"""Bad model files and bad arguments get clear, typed errors (docs/reliability.md, docs/deploy.md).

Wrong signature → SignatureError; too-new IR/opset → UnsupportedVersionError; truncated or
corrupted → CorruptModelError; external data outside the model's folder → ExternalDataError
(all FileFormatError); bad arguments → InputError subclasses naming the argument.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import refdiff.export as ex
from onnx import TensorProto, helper

from refdiff.errors import FileFormatError, InputError, NonFiniteError, OptionError, ShapeError
from refdiff.schedule import linear
from tests.export.test_export_helpers import small_mlp

BASE = linear(20)


def _model():
    return ex.mlp_denoiser_model(small_mlp(), schedule=BASE)


def _graph(inputs, outputs, nodes, opset=21, ir=10):
    g = helper.make_graph(nodes, "g", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def _vi(name, t, shape):
    return helper.make_tensor_value_info(name, t, shape)


F, I64 = TensorProto.FLOAT, TensorProto.INT64


# -- signature ---------------------------------------------------------------------------------
BAD_SIGNATURES = {
    "three unnamed inputs": (
        [_vi("a", F, ["B", 2]), _vi("b", I64, ["B"]), _vi("c", F, ["B", 4, 3])],
        [_vi("y", F, ["B", 2])],
        [helper.make_node("Identity", ["a"], ["y"])],
        "state_input=",
    ),
    "one input": (
        [_vi("x", F, ["B", 2])],
        [_vi("y", F, ["B", 2])],
        [helper.make_node("Identity", ["x"], ["y"])],
        "at least 2",
    ),
    "integer state": (
        [_vi("x", I64, ["B", 2]), _vi("t", I64, ["B"])],
        [_vi("y", I64, ["B", 2])],
        [helper.make_node("Identity", ["x"], ["y"])],
        "must be a float tensor",
    ),
    "state without data axes": (
        [_vi("x", F, ["B"]), _vi("t", I64, ["B"])],
        [_vi("y", F, ["B"])],
        [helper.make_node("Identity", ["x"], ["y"])],
        "rank >= 2",
    ),
    "2-D timestep": (
        [_vi("x", F, ["B", 2]), _vi("t", I64, ["B", 3])],
        [_vi("y", F, ["B", 2])],
        [helper.make_node("Identity", ["x"], ["y"])],
        "scalar, \\(1,\\) or \\(B,\\)",
    ),
    "learned-variance output": (
        [_vi("x", F, ["B", 2]), _vi("t", I64, ["B"])],
        [_vi("y", F, ["B", 4])],
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=1)],
        "2C channels",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGNATURES))
def test_wrong_signature_is_a_signature_error(case, tmp_path):
    ins, outs, nodes, msg = BAD_SIGNATURES[case]
    path = tmp_path / "m.onnx"
    path.write_bytes(_graph(ins, outs, nodes).SerializeToString())
    with pytest.raises(ex.SignatureError, match=msg) as e:
        ex.open_denoiser(path, prediction_type="epsilon", timestep_convention="refdiff")
    assert isinstance(e.value, FileFormatError) and e.value.path == str(path)


def test_names_that_are_not_there_and_non_denoiser_models():
    m = _model()
    with pytest.raises(ex.SignatureError, match="state_input='sample'"):
        ex.open_denoiser(m, state_input="sample")
    with pytest.raises(ex.SignatureError, match="output='eps'"):
        ex.open_denoiser(m, output="eps")
    sampler = ex.sampler_model(ex.open_denoiser(m), ex.step_tables(BASE))
    with pytest.raises(ex.SignatureError):
        ex.open_denoiser(sampler)
    with pytest.raises(InputError, match="contradicts"):
        ex.open_denoiser(m, prediction_type="v")  # the metadata says epsilon


# -- versions ----------------------------------------------------------------------------------
def test_too_new_ir_or_opset_is_refused_with_the_limits(tmp_path):
    max_ir, max_opset = ex.runtime_limits()
    assert max_ir >= 10 and max_opset >= 21
    for field, value, what in (("ir", max_ir + 1, "IR version"), ("opset", max_opset + 1, "opset")):
        m = _model()
        if field == "ir":
            m.ir_version = value
        else:
            m.opset_import[0].version = value
        path = tmp_path / f"{field}.onnx"
        path.write_bytes(m.SerializeToString())
        with pytest.raises(ex.UnsupportedVersionError, match=f"{what} {value} is newer") as e:
            ex.OrtSampler(path, provider="cpu")
        assert isinstance(e.value, FileFormatError)
    m = _model()  # positive control: the newest accepted IR loads and runs in onnxruntime
    m.ir_version = max_ir
    ex.OnnxDenoiser(m, provider="cpu")(np.zeros((1, 2)), np.array([1]))


# -- truncation and corruption -------------------------------------------------------------------
def test_truncated_files_are_corrupt_model_errors(tmp_path):
    data = _model().SerializeToString()
    last = _model().metadata_props[-1]
    cut_sentinel = len(data) - (len(last.SerializeToString()) + 2)  # drop exactly the last entry
    cuts = sorted(
        {0, 1, 7, len(data) // 3, len(data) // 2, len(data) - 40, cut_sentinel, len(data) - 1}
    )
    for cut in cuts:
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ex.CorruptModelError) as e:
            ex.load_model(path)
        assert isinstance(e.value, FileFormatError), cut
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xff" * 500)
    with pytest.raises(ex.CorruptModelError):
        ex.OrtSampler(path, provider="cpu")
    with pytest.raises(FileFormatError, match="no such file"):
        ex.load_model(tmp_path / "missing.onnx")
    path.write_bytes(data)  # positive control: the whole file loads
    ex.load_model(path)


# -- external data -----------------------------------------------------------------------------
def _external(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    m = _model()
    onnx.save_model(
        m,
        folder / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    return folder


def _relocate(folder, location):
    m = onnx.load(folder / "m.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    (folder / "m.onnx").write_bytes(m.SerializeToString())


def test_external_data_inside_the_folder_loads(tmp_path):
    folder = _external(tmp_path)
    y = ex.OrtSampler(folder / "m.onnx", provider="cpu", mode="graph").sample(shape=4, seed=0)
    assert y.shape == (4, 2) and np.isfinite(y).all()


@pytest.mark.parametrize("where", ["parent", "absolute", "missing", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path, where):
    folder = _external(tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((folder / "w.bin").read_bytes())
    loc = {
        "parent": "../outside.bin",
        "absolute": str(outside),
        "missing": "nope.bin",
        "symlink": "link.bin",
    }[where]
    if where == "symlink":
        os.symlink(outside, folder / "link.bin")
    _relocate(folder, loc)
    with pytest.raises(ex.ExternalDataError) as e:
        ex.open_denoiser(folder / "m.onnx")
    assert isinstance(e.value, FileFormatError)
    with pytest.raises(ex.ExternalDataError):
        ex.OrtSampler(folder / "m.onnx", provider="cpu")


def test_external_data_without_a_path_is_refused(tmp_path):
    folder = _external(tmp_path)
    data = (folder / "m.onnx").read_bytes()
    with pytest.raises(ex.ExternalDataError, match="file path"):
        ex.load_model(data)


# -- arguments -----------------------------------------------------------------------------------
def test_bad_sampling_arguments_are_typed_errors():
    s = ex.OrtSampler(_model(), provider="cpu", mode="fused")
    x = np.zeros((3, 2))
    z = np.zeros((BASE.T, 3, 2))
    with pytest.raises(ShapeError, match="x_T"):
        s.sample(np.zeros((3, 5)), z)
    with pytest.raises(ShapeError, match="step_noise"):
        s.sample(x, z[:-1])
    with pytest.raises(InputError, match="step_noise"):
        s.sample(x)
    with pytest.raises(NonFiniteError):
        s.sample(np.full((3, 2), np.nan), z)
    with pytest.raises(InputError, match="shape"):
        s.sample()
    with pytest.raises(OptionError):
        ex.OrtSampler(_model(), provider="cpu", mode="loop")
    with pytest.raises(OptionError):
        ex.OrtSampler(_model(), provider="gpu")
    with pytest.raises(OptionError):
        ex.OrtSampler(_model(), provider="cpu", noise="device")
    with pytest.raises(InputError, match="seed"):
        ex.OrtSampler(_model(), provider="cpu", noise="graph", seed=-1)
    with pytest.raises(InputError, match="cuda_graph"):
        ex.OrtSampler(_model(), provider="cpu", cuda_graph=True, batch=4)
    with pytest.raises(OptionError):
        ex.mixture_denoiser_model(
            {"weights": [1.0], "means": [[0.0]], "covs": [[[1.0]]]}, BASE, dtype="bfloat16"
        )
    with pytest.raises(InputError, match="semi-definite"):
        ex.mixture_denoiser_model(
            {"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 0.0], [0.0, -1.0]]]}, BASE
        )


# -- failures while sampling: every mode maps them alike ---------------------------------------
def _nan_denoiser():
    nan = helper.make_tensor("nan", F, [], [float("nan")])
    return _graph(
        [_vi("x", F, ["B", 2]), _vi("t", I64, ["B"])],
        [_vi("y", F, ["B", 2])],
        [
            helper.make_node("Constant", [], ["c"], value=nan),
            helper.make_node("Mul", ["x", "c"], ["y"]),
        ],
    )


def _fails_from_step_6():
    """y = x + table[25 − t]: fine for t ≥ 16; onnxruntime's Gather fails from t = 15 (step 6)."""
    table = helper.make_tensor("table", F, [10], [0.0] * 10)
    k25 = helper.make_tensor("k25", I64, [], [25])
    return _graph(
        [_vi("x", F, ["B", 2]), _vi("t", I64, ["B"])],
        [_vi("y", F, ["B", 2])],
        [
            helper.make_node("Constant", [], ["tab"], value=table),
            helper.make_node("Constant", [], ["c"], value=k25),
            helper.make_node("Sub", ["c", "t"], ["i"]),
            helper.make_node("Gather", ["tab", "i"], ["g"]),
            helper.make_node("Unsqueeze", ["g", "ax"], ["u"]),
            helper.make_node("Add", ["x", "u"], ["y"]),
        ],
    )


def _with_axes(m):
    m.graph.initializer.append(helper.make_tensor("ax", I64, [1], [1]))
    return m


def _sampler(model, tmp_path, mode):
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return ex.OrtSampler(
        path,
        BASE,
        provider="cpu",
        mode=mode,
        prediction_type="epsilon",
        timestep_convention="refdiff",
    )


@pytest.mark.parametrize("mode", ["steps", "fused", "graph"])
def test_nan_from_the_model_is_a_typed_error_in_every_mode(mode, tmp_path):
    s = _sampler(_nan_denoiser(), tmp_path, mode)
    with pytest.raises(NonFiniteError, match="NaN or Inf") as e:
        s.sample(np.zeros((3, 2)), np.zeros((BASE.T, 3, 2)))
    assert e.value.argument == "model"


@pytest.mark.parametrize("mode", ["steps", "fused", "graph"])
def test_onnxruntime_failure_mid_loop_is_a_typed_error_in_every_mode(mode, tmp_path):
    s = _sampler(_with_axes(_fails_from_step_6()), tmp_path, mode)
    with pytest.raises(ex.CorruptModelError, match="onnxruntime failed") as e:
        s.sample(np.zeros((3, 2)), np.zeros((BASE.T, 3, 2)))
    assert isinstance(e.value, FileFormatError)
    if mode != "graph":
        assert "at step 6 of 20" in str(e.value)
