"""The MLP denoiser (docs/math.md §10): embedding and forward pass by hand, save/load."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from scipy.special import expit

from refdiff import mlp as M
from refdiff._io import save_npz
from refdiff.errors import FileFormatError, InputError, ShapeError


def test_timestep_embedding_by_hand():
    # embed_dim 4: half 2, f = exp(−ln(10000)·j/2) = (1, 0.01);
    # e = [cos t, cos(t/100), sin t, sin(t/100)]
    e = M.timestep_embedding(np.array([0.0, 1.0, 250.0]), 4)
    want = [
        [1.0, 1.0, 0.0, 0.0],
        [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)],
        [math.cos(250), math.cos(2.5), math.sin(250), math.sin(2.5)],
    ]
    np.testing.assert_allclose(e, want, rtol=1e-13, atol=1e-15)
    assert M.timestep_embedding(np.array([3]), 8, max_period=100.0).shape == (1, 8)


def test_forward_pass_by_hand():
    # D = 1, embed 2 (f = 1: e = [cos t, sin t]), one hidden layer of 2, output 1
    W0 = np.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0]])
    b0 = np.array([0.1, -0.2])
    W1 = np.array([[1.5], [-0.5]])
    b1 = np.array([0.3])
    mlp = M.MLP(((W0, b0), (W1, b1)), embed_dim=2)
    assert mlp.data_dim == 1 and mlp.out_dim == 1
    x, t = 0.7, 3.0
    h = np.array([x, math.cos(t), math.sin(t)]) @ W0 + b0
    h = h * expit(h)  # SiLU
    want = h @ W1 + b1
    np.testing.assert_allclose(mlp(np.array([[x]]), np.array([t])), [want], rtol=1e-14)
    # t may be a scalar for the whole batch, int or float
    np.testing.assert_array_equal(
        mlp(np.array([[x], [x]]), 3), mlp(np.array([[x], [x]]), [3.0, 3.0])
    )
    with pytest.raises(ShapeError) as e:
        mlp(np.zeros((2, 3)), 1)
    assert e.value.argument == "x"


def test_save_load_roundtrip(tmp_path):
    mlp = M.init_mlp(np.random.default_rng(0), data_dim=3, hidden=16, depth=2, embed_dim=8)
    path = tmp_path / "w.npz"
    M.save_mlp(path, mlp)
    back = M.load_mlp(path)
    assert back.embed_dim == 8 and back.max_period == mlp.max_period
    assert len(back.layers) == len(mlp.layers) == 3
    for (W, b), (W2, b2) in zip(mlp.layers, back.layers):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)
    x = np.random.default_rng(1).standard_normal((5, 3))
    t = np.arange(5)
    np.testing.assert_array_equal(mlp(x, t), back(x, t))
    # overwriting is atomic: no temporary files left behind
    M.save_mlp(path, back)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


def test_init_mlp_shapes_and_errors():
    mlp = M.init_mlp(
        np.random.default_rng(0), data_dim=2, hidden=8, depth=3, embed_dim=4, out_dim=4
    )
    assert [W.shape for W, _ in mlp.layers] == [(6, 8), (8, 8), (8, 8), (8, 4)]
    assert mlp(np.zeros((3, 2)), np.ones(3)).shape == (3, 4)
    for kw, arg in (
        (dict(hidden=0), "hidden"),
        (dict(depth=-1), "depth"),
        (dict(embed_dim=3), "embed_dim"),
        (dict(data_dim=1.5), "data_dim"),
    ):
        with pytest.raises(InputError) as e:
            M.init_mlp(np.random.default_rng(0), **kw)
        assert e.value.argument == arg


def test_load_rejects_bad_files(tmp_path):
    mlp = M.init_mlp(np.random.default_rng(0), data_dim=2, hidden=4, depth=1, embed_dim=2)
    good = tmp_path / "good.npz"
    M.save_mlp(good, mlp)
    # truncated
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:100])
    # missing key
    missing = tmp_path / "missing.npz"
    arrays = mlp.to_arrays()
    del arrays["b1"]
    save_npz(missing, **arrays)
    # shapes that do not chain
    bad = tmp_path / "bad.npz"
    arrays = mlp.to_arrays()
    arrays["W1"] = np.zeros((3, 2))
    save_npz(bad, **arrays)
    # a pickled object array inside a valid zip
    pickled = tmp_path / "pickled.npz"
    with open(pickled, "wb") as f:
        np.savez(f, embed_dim=np.array(2), W0=np.array([{"a": 1}], dtype=object))
    # embed_dim that is not a scalar, or does not fit the first layer
    nonscalar = tmp_path / "nonscalar.npz"
    save_npz(nonscalar, **{**mlp.to_arrays(), "embed_dim": np.array([2, 3])})
    toobig = tmp_path / "toobig.npz"
    save_npz(toobig, **{**mlp.to_arrays(), "embed_dim": np.array(6)})
    for p in (trunc, missing, bad, pickled, nonscalar, toobig, tmp_path / "absent.npz"):
        with pytest.raises(FileFormatError) as e:
            M.load_mlp(p)
        assert e.value.path == p
    assert zipfile.is_zipfile(good)
