"""Golden vectors: written by refdiff, read and recomputed by an independent reader
(tests/golden_reader.py: NumPy + json, run in a subprocess without refdiff), round-tripped
exactly, and checked when another implementation wrote the outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refdiff import _io, cli, vectors
from refdiff.conformance import vectors as vectors_impl
from refdiff.errors import FileFormatError, InputError
from refdiff.testing import Tolerance
from tests import golden_reader

READER = Path(golden_reader.__file__)


def _reader(*args: str) -> subprocess.CompletedProcess:
    """The independent reader in a fresh interpreter; it reports which refdiff modules it saw."""
    return subprocess.run(
        [sys.executable, str(READER), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gv") / "small"
    vectors.write(d, grid_name="small")
    return d


def test_default_grid_is_read_by_the_independent_reader(tmp_path):
    """The acceptance test: the default grid (every schedule × spacing × prediction × variance
    type / η × clipping) is written, then read without refdiff: every SHA-256 verifies and the
    reader's own recomputation agrees with refdiff's outputs to float64 rounding."""
    d = tmp_path / "vectors"
    m = vectors.write(d)
    assert m["schema_version"] == 1 and len(m["cases"]) > 300
    cfgs = [c["config"] for c in m["cases"]]
    for key, values in {
        "schedule": {"linear", "scaled_linear", "cosine"},
        "spacing": {"leading", "trailing", "linspace"},
        "prediction_type": {"epsilon", "x0", "v"},
        "variance_type": {
            "fixed_small",
            "fixed_large",
            "fixed_large_iddpm",
            "learned",
            "learned_linear",
            "learned_range",
        },
        "eta": {0.0, 0.5, 1.0},
    }.items():
        assert values <= {c.get(key) for c in cfgs}, key
    assert {(c.get("clip"), c.get("threshold_ratio")) for c in cfgs} >= {
        (None, None),
        (1.0, None),
        (None, 0.9),
    }
    r = _reader(str(d), "--rtol", "1e-12")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all sha256 verified" in r.stdout
    assert "modules: []" in r.stdout  # refdiff was not imported by the reader


def test_round_trip_is_exact(small, tmp_path):
    """Reader reads, rewrites the very same arrays; every array hash and value is identical,
    and refdiff's checker finds zero error."""
    manifest, cases = golden_reader.read(str(small))
    out = tmp_path / "copy"
    same = {
        cid: {k: a for k, a in arr.items() if k in golden_reader.OUTPUTS}
        for cid, arr in cases.items()
    }
    golden_reader.write(str(out), manifest, cases, same)
    m2, cases2 = vectors.read(out)
    for e1, e2 in zip(manifest["cases"], m2["cases"]):
        assert {k: v["sha256"] for k, v in e1["arrays"].items()} == {
            k: v["sha256"] for k, v in e2["arrays"].items()
        }
        for k, a in cases[e1["id"]].items():
            np.testing.assert_array_equal(a, cases2[e1["id"]][k])
    res = vectors.check(out)
    assert all(r.passed for r in res)
    assert max(c.max_abs for r in res for c in r.checks) == 0.0


def test_independent_implementation_passes_the_check(small, tmp_path):
    """Outputs recomputed by the reader's own code pass `refdiff vectors check` (float64)."""
    out = tmp_path / "reader64"
    r = _reader(str(small), "--write", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert cli.main(["vectors", "check", str(out)]) == 0


def test_float32_implementation_needs_the_float32_tolerance(small, tmp_path, capsys):
    out = tmp_path / "reader32"
    r = _reader(str(small), "--write", str(out), "--dtype", "float32", "--rtol", "1")
    assert r.returncode == 0, r.stderr
    assert cli.main(["vectors", "check", str(out)]) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "max abs err" in text
    assert cli.main(["vectors", "check", str(out), "--dtype", "float32"]) == 0
    assert "cases pass" in capsys.readouterr().out


def test_a_wrong_output_fails_its_case(small, tmp_path, capsys):
    """Another implementation with β for β̃: its ddpm_step outputs fail, named per case."""
    manifest, cases = golden_reader.read(str(small))
    outs = {}
    for e in manifest["cases"]:
        arr = cases[e["id"]]
        mine = golden_reader.compute(e, arr)
        if e["sampler"] == "ddpm" and e["config"]["variance_type"] == "fixed_small":
            cfg = dict(e["config"], variance_type="fixed_large")
            mine["ddpm_step"] = golden_reader.compute(dict(e, config=cfg), arr)["ddpm_step"]
        outs[e["id"]] = mine
    out = tmp_path / "buggy"
    golden_reader.write(str(out), manifest, cases, outs)
    res = {r.id: r for r in vectors.check(out)}
    bad = {
        e["id"]
        for e in manifest["cases"]
        if e["sampler"] == "ddpm" and e["config"]["variance_type"] == "fixed_small"
    }
    assert bad and {i for i, r in res.items() if not r.passed} == bad
    assert cli.main(["vectors", "check", str(out)]) == 1
    text = capsys.readouterr().out
    assert "ddpm_step" in text and "variance_type=fixed_small" in text


def test_tampering_and_versions_are_refused(small, tmp_path):
    d = tmp_path / "t"
    shutil.copytree(small, d)
    m = json.loads((d / "manifest.json").read_text())
    first = d / m["cases"][0]["file"]
    arrays = _io.load_npz(first)
    arrays["x_t"] = arrays["x_t"] + 1e-12
    _io.save_npz(first, **arrays)
    with pytest.raises(FileFormatError, match="sha256"):
        vectors.read(d)
    assert cli.main(["vectors", "check", str(d)]) == 2
    m["schema_version"] = 2
    _io.write_json(d / "manifest.json", m)
    with pytest.raises(FileFormatError, match="schema_version 2"):
        vectors.read(d)
    with pytest.raises(FileFormatError, match="manifest"):
        vectors.read(tmp_path / "nothing")
    m["schema_version"] = 1
    m["cases"][0]["file"] = "../../etc/passwd"
    _io.write_json(d / "manifest.json", m)
    with pytest.raises(FileFormatError, match="outside"):
        vectors.read(d)


def test_writes_are_atomic_and_refuse_foreign_directories(small, tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a refdiff vectors directory"):
        vectors.write(foreign, grid_name="small")
    assert (foreign / "notes.txt").read_text() == "mine"
    d = tmp_path / "v"
    shutil.copytree(small, d)
    before = (d / "manifest.json").read_bytes()
    calls = {"n": 0}
    real = vectors_impl.save_npz

    def dying(path, **arrays):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed mid-write")
        real(path, **arrays)

    monkeypatch.setattr(vectors_impl, "save_npz", dying)
    with pytest.raises(KeyboardInterrupt):
        vectors.write(d, grid_name="small", seed=1)
    assert (d / "manifest.json").read_bytes() == before  # the old vectors, untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no debris
    vectors.read(d)
    monkeypatch.setattr(vectors_impl, "save_npz", real)
    vectors.write(d, grid_name="small", seed=1)  # overwriting a vectors directory is fine
    assert json.loads((d / "manifest.json").read_text())["seed"] == 1


def test_same_seed_same_arrays(small, tmp_path):
    d2 = tmp_path / "again"
    vectors.write(d2, grid_name="small")
    a = json.loads((small / "manifest.json").read_text())
    b = json.loads((d2 / "manifest.json").read_text())
    assert [c["arrays"] for c in a["cases"]] == [c["arrays"] for c in b["cases"]]


def test_check_table_and_tolerance_option(small, capsys):
    assert cli.main(["vectors", "check", str(small), "--verbose", "--factor", "4"]) == 0
    out = capsys.readouterr().out
    assert "K=4" in out and out.count("pass") >= len(vectors.grid("small"))
    assert vectors.check(small, Tolerance("float16"))[0].passed
