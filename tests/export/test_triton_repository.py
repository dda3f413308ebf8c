"""``export --triton DIR``: a Triton model repository of the whole-sampler graph (export/triton.py).

Its ``config.pbtxt`` is parsed with Triton's own model-config schema (``model_config.proto``
as shipped in ``tritonclient``), and its ``model.onnx`` is run with onnxruntime the way
Triton's dynamic batcher would run it: requests concatenated along the first dimension of
every input.  Triton itself cannot run on these machines (docs/scale.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import refdiff.export as ex  # noqa: E402
from refdiff.export.noise import host_noise  # noqa: E402
from refdiff.export.triton import BMAJOR, write_triton_repository  # noqa: E402

from refdiff.errors import InputError  # noqa: E402
from refdiff.schedule import make_schedule  # noqa: E402

BASE = make_schedule("linear", 20)
DEN = ex.open_denoiser(ex.mixture_denoiser_model(ex.builtin_mixture("two"), BASE))


def _model_config_pb2():
    """Triton's ModelConfig protobuf module from tritonclient, loaded by file (importing
    ``tritonclient.grpc`` itself would need grpcio)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs tritonclient (pip install tritonclient==2.73.0) for Triton's schema")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    mspec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def parse_config(folder: Path):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    return text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig()), pb2


def sampler(name: str, **kw):
    sampler_, opts = {"ddpm": ("ddpm", {}), "ddim0": ("ddim", {"eta": 0.0})}[name]
    return ex.sampler_model(DEN, ex.step_tables(BASE, sampler_, **opts), **kw)


def run(folder: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return sess.run(["x_0"], feeds)[0]


@pytest.mark.parametrize("name", ["ddpm", "ddim0"])
def test_batchable_sampler_config_passes_tritons_schema_and_batches_exactly(tmp_path, name):
    model = sampler(name)
    folder = write_triton_repository(model, tmp_path, name="rd", max_batch_size=64, instances=2)
    cfg, pb2 = parse_config(folder)
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("rd", "onnxruntime_onnx", 64)
    assert cfg.default_model_filename == "model.onnx" and cfg.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_GPU)]
    s = ex.OrtSampler(model, mode="graph", provider="cpu")
    noisy = s.noisy
    want_in = [("x_T", [2])] + ([(BMAJOR, [BASE.T, 2])] if noisy else [])
    assert [(i.name, list(i.dims)) for i in cfg.input] == want_in
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("x_0", [2])]
    assert {i.data_type for i in [*cfg.input, *cfg.output]} == {pb2.TYPE_FP32}
    # Triton's dynamic batcher: two requests (3 and 2 samples) concatenated on axis 0.
    reqs = [host_noise(seed, BASE.T, (b, 2)) for seed, b in ((1, 3), (2, 2))]

    def feeds(parts):
        f = {"x_T": np.concatenate([x for x, _ in parts])}
        if noisy:
            f[BMAJOR] = np.concatenate([z.transpose(1, 0, 2) for _, z in parts])
        return f

    both = run(folder, feeds(reqs))
    alone = [run(folder, feeds([r])) for r in reqs]
    assert np.array_equal(both, np.concatenate(alone))
    for (x_T, z), x in zip(reqs, alone):  # the repository's model is the sampler itself
        assert np.array_equal(x, s.sample(x_T, z if noisy else None))


def test_in_graph_noise_and_trajectory_samplers_do_not_batch(tmp_path):
    for kw, inputs in (({"noise": "graph"}, ["batch_size"]), ({"trajectory": True}, None)):
        folder = write_triton_repository(sampler("ddpm", **kw), tmp_path / str(len(kw)), name="m")
        cfg, pb2 = parse_config(folder)
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching"), kw
        if inputs == ["batch_size"]:  # a scalar input: dims [1], reshaped to ()
            (i,) = cfg.input
            assert (i.name, list(i.dims), i.data_type) == ("batch_size", [1], pb2.TYPE_INT64)
            assert i.HasField("reshape") and list(i.reshape.shape) == []
            assert [list(o.dims) for o in cfg.output] == [[-1, 2]]
        else:  # full shapes, batch dim included (-1: dynamic)
            assert [list(i.dims) for i in cfg.input] == [[-1, 2], [BASE.T, -1, 2]]
            assert [list(o.dims) for o in cfg.output] == [[-1, 2], [BASE.T, -1, 2]]


def test_schema_check_is_strict_and_bad_arguments_are_refused(tmp_path):
    from google.protobuf import text_format

    folder = write_triton_repository(sampler("ddpm"), tmp_path, name="rd")
    text = (folder / "config.pbtxt").read_text()
    pb2 = _model_config_pb2()
    with pytest.raises(text_format.ParseError):  # a misspelt field fails Triton's schema
        text_format.Parse(text.replace("max_batch_size", "max_batchsize"), pb2.ModelConfig())
    with pytest.raises(InputError) as e:
        write_triton_repository(DEN.model, tmp_path, name="den")  # a denoiser, not a sampler
    assert e.value.argument == "model"
    for bad in ({"max_batch_size": 0}, {"kind": "GPU"}, {"name": "../x"}, {"version": 0}):
        with pytest.raises(InputError) as e:
            write_triton_repository(sampler("ddpm"), tmp_path, **{"name": "ok", **bad})
        assert e.value.argument == next(iter(bad)), bad
