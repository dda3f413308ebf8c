"""The whole-sampler graph's layout: chunks of steps (outer Loop) run by a lean Scan body.

- Chunking changes nothing: with ``CHUNK_BYTES`` shrunk so that 50 steps fall into chunks of
  7 (the last one ragged), the outputs are bit for bit those of one chunk, for injected noise
  (and within float32 tolerance of the reference) and for in-graph noise.
- In-graph noise is the documented stream: x_T is one ``RandomNormalLike`` draw with seed
  attribute 2·seed, the step noise the stream of seed 2·seed + 1 read in step-major order
  (checked by feeding exactly those draws to the noise-as-input graph: same bits).
- The Scan body holds only the embedded denoiser and the update's Mul/Mul/Add (and one Add
  of the scaled noise; no Gather, Shape, Expand or noise node): onnxruntime charges ~1 µs per
  node per step at batch 1, which is what the 2× target of docs/benchmarks.md rests on
  (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import refdiff.export as ex
import refdiff.export.sampler_graph as sg
from onnx import TensorProto, helper

from refdiff.sampling import ddpm_sample, draw_noise
from refdiff.schedule import linear
from tests.export.test_export_helpers import F32_TOL, rel_err, small_mlp

BASE = linear(50)
MLP = small_mlp(seed=3)


def _den(data_dim: int = 2):
    mlp = MLP if data_dim == 2 else small_mlp(seed=3, data_dim=data_dim)
    return mlp, ex.open_denoiser(ex.mlp_denoiser_model(mlp, schedule=BASE))


def _run(model, feeds):
    return ex.make_session(model, "cpu", threads=1).run(["x_0"], feeds)[0]


def _chunk_bytes_for(k: int, batch: int, data_dim: int) -> int:
    """CHUNK_BYTES that makes chunks of k steps: 8 B per state element (z and S·z) plus the
    MLP's int64 time per sample (the module docstring's rule)."""
    return k * (8 * batch * data_dim + 8 * batch)


def _scan_bodies(g: onnx.GraphProto, depth: int = 0):
    """(depth, Scan body, the graph holding the Scan) for every Scan under ``g``."""
    for node in g.node:
        for a in node.attribute:
            if a.HasField("g"):
                if node.op_type == "Scan":
                    yield depth + 1, a.g, g
                yield from _scan_bodies(a.g, depth + 1)


@pytest.mark.parametrize("batch,data_dim", [(16, 2), (5, 3)])  # 32 (even), 15 (odd) per step
def test_chunked_steps_give_the_bits_of_one_chunk(monkeypatch, batch, data_dim):
    mlp, den = _den(data_dim)
    tb = ex.step_tables(BASE)
    x_T, z = draw_noise(np.random.default_rng(4), BASE.T, (batch, data_dim))
    feeds = {"x_T": x_T.astype(np.float32), "step_noise": z.astype(np.float32)}
    whole_in = _run(sg.sampler_model(den, tb), feeds)
    whole_graph = _run(
        sg.sampler_model(den, tb, noise="graph", seed=9), {"batch_size": np.array(batch, np.int64)}
    )
    monkeypatch.setattr(sg, "CHUNK_BYTES", _chunk_bytes_for(7, batch, data_dim))
    chunked = sg.sampler_model(den, tb, noise="graph", seed=9)
    assert np.array_equal(_run(sg.sampler_model(den, tb), feeds), whole_in)
    assert rel_err(whole_in, ddpm_sample(mlp, BASE, x_T=x_T, step_noise=z)) < F32_TOL
    a = _run(chunked, {"batch_size": np.array(batch, np.int64)})
    assert np.array_equal(
        a, _run(chunked, {"batch_size": np.array(batch, np.int64)})
    )  # fresh session: same bits
    if batch * data_dim % 2 == 0:  # even count per step: the chunking does not move the stream
        assert np.array_equal(a, whole_graph)


def _draw(seed_attr: int, shape) -> np.ndarray:
    """One RandomNormalLike draw of a fresh onnxruntime session (CPU), float32."""
    g = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["zeros"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
            ),
            helper.make_node(
                "RandomNormalLike", ["zeros"], ["z"], dtype=TensorProto.FLOAT, seed=float(seed_attr)
            ),
        ],
        "draw",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [len(shape)])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, list(shape))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return ex.make_session(m, "cpu").run(None, {"shape": np.array(shape, np.int64)})[0]


@pytest.mark.parametrize("chunk_steps", [None, 7])
def test_in_graph_noise_is_the_documented_stream(monkeypatch, chunk_steps):
    _, den = _den()
    tb, seed, batch = ex.step_tables(BASE), 21, 8
    if chunk_steps is not None:
        monkeypatch.setattr(sg, "CHUNK_BYTES", _chunk_bytes_for(chunk_steps, batch, 2))
    y = _run(
        sg.sampler_model(den, tb, noise="graph", seed=seed),
        {"batch_size": np.array(batch, np.int64)},
    )
    x_T = _draw(2 * seed, (batch, 2))
    z = _draw(2 * seed + 1, (BASE.T, batch, 2))
    assert abs(float(z.std()) - 1.0) < 0.1 and not np.array_equal(z[0], z[1])
    assert np.array_equal(y, _run(sg.sampler_model(den, tb), {"x_T": x_T, "step_noise": z}))


def test_the_scan_body_is_the_denoiser_and_a_few_update_nodes():
    _, den = _den()
    ddim = sg.sampler_model(den, ex.step_tables(BASE, "ddim"))
    ((_, body, _),) = list(_scan_bodies(ddim.graph))
    own = [n.op_type for n in body.node if not n.output[0].startswith("den/")]
    assert sorted(own) == ["Add", "Mul", "Mul"]  # no noise term
    for noise in ("input", "graph"):
        m = sg.sampler_model(den, ex.step_tables(BASE), noise=noise, seed=1)
        ((depth, body, parent),) = list(_scan_bodies(m.graph))
        nodes = [n for n in body.node if not n.output[0].startswith("den/")]
        own = [n.op_type for n in nodes]
        # B o + S z first, then A x + that: two full-state temporaries at a time; host noise
        # is scaled here (the Scan reads step_noise in place), in-graph noise per chunk
        muls = ["Mul"] * (3 if noise == "input" else 2)
        assert sorted(own) == ["Add", "Add", *muls]
        # A x last but one in node order: priority order runs it after o is freed
        assert "A_k" in nodes[-2].input and nodes[-1].output[0] == "x_next"
        assert not {"Gather", "Shape", "Expand", "RandomNormalLike"} & set(own)
        # the denoiser's weights sit in the graph right above the Scan: the main graph for a
        # host-noise run (one Scan), the chunk Loop's body for in-graph noise
        assert depth == (1 if noise == "input" else 2) and not len(body.initializer)
        assert any(t.name.startswith("den/") for t in parent.initializer)
        if depth == 2:
            assert not any(t.name.startswith("den/") for t in m.graph.initializer)
    traj = sg.sampler_model(den, ex.step_tables(BASE), trajectory=True)
    ((depth, _, parent),) = list(_scan_bodies(traj.graph))
    assert depth == 1 and parent is traj.graph


def _graph_sampler(**kw):
    return ex.OrtSampler(ex.mlp_denoiser_model(MLP, schedule=BASE), BASE, mode="graph", **kw)


@pytest.mark.parametrize("chunk_steps", [None, 7])
@pytest.mark.parametrize("sampler", ["ddpm", "euler_ancestral"])
def test_cpu_graph_mode_draws_in_graph_noise_a_chunk_at_a_time(monkeypatch, chunk_steps, sampler):
    """On CPU, graph mode with in-graph noise draws it a chunk of steps at a time
    (``noise_model``: the sampler graph's seeds and order) and runs the host-noise graph on
    each chunk in place: the bits of its one-run sampler graph in a fresh session, for a
    first sample and the next (both streams continue), whole and in chunks of 7 steps (even
    B·|S|); the σ-view sampler scales x_T as the graph does."""
    from refdiff.export import runtime as RT

    from refdiff import sigma

    batch = 16
    monkeypatch.setattr(RT, "CHUNKED_NOISE_SAMPLE_BYTES", 8)  # the MLP's samples: 8 bytes
    if chunk_steps is not None:
        monkeypatch.setattr(RT, "HOST_CHUNK_BYTES", 4 * batch * 2 * chunk_steps)
    kw = {}
    if sampler == "euler_ancestral":
        grid = sigma.karras(12, float(BASE.sigma[1]), float(BASE.sigma[-1]))
        kw = dict(sampler=sampler, sigmas=grid, eta=1.0)
    s = _graph_sampler(noise="graph", seed=9, provider="cpu", **kw)
    assert s._noise_session is not None and s._graph_in_place
    monkeypatch.setattr(RT, "CHUNKED_NOISE_SAMPLE_BYTES", 9)  # smaller samples: one run
    assert _graph_sampler(noise="graph", seed=9, provider="cpu", **kw)._noise_session is None
    one = ex.make_session(s.graph_model, "cpu", threads=1)
    for _ in range(2):
        y = s.sample(shape=(batch, 2))
        assert np.array_equal(y, one.run(["x_0"], {"batch_size": np.array(batch, np.int64)})[0])


def test_host_noise_graph_runs_write_x_0_over_x_T():
    """CPU graph mode with host noise: each run's x_0 is written over its x_T (one state
    buffer for all runs), bit for bit the runs that return a fresh array.  Only a Scan whose
    body reads all of x_k before it writes x_next may run so (a body that reads x_k after,
    as a noisy multistep sampler's m_next would, may not)."""
    from refdiff.export.runtime import _scan_updates_in_place

    s = _graph_sampler(provider="cpu")
    assert s._graph_in_place
    y = s.sample(shape=(6, 2), seed=4)
    s._graph_in_place = False
    assert np.array_equal(y, s.sample(shape=(6, 2), seed=4))

    def scan_graph(late_read: bool):
        N, vi = helper.make_node, helper.make_tensor_value_info
        f = TensorProto.FLOAT
        nodes = [N("Neg", ["x_k"], ["a"]), N("Relu", ["a"], ["x_next"])]
        outs = [vi("x_next", f, [2])]
        if late_read:
            nodes.append(N("Abs", ["x_k"], ["w"]))
            outs.append(vi("w", f, [2]))
        body = helper.make_graph(nodes, "body", [vi("x_k", f, [2])], outs)
        scan_outs = ["x_0", "w_0"][: len(outs)]
        scan = N("Scan", ["x_T"], scan_outs, body=body, num_scan_inputs=0)
        return helper.make_graph([scan], "g", [vi("x_T", f, [2])], [vi("x_0", f, [2])])

    assert _scan_updates_in_place(scan_graph(late_read=False))
    assert not _scan_updates_in_place(scan_graph(late_read=True))
