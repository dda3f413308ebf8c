"""Golden vectors a port can use: inputs-only directories the port fills, per-array
tolerances and options without effect in the manifest, its JSON Schema, σ-view sampler
trajectories, and ``vectors check`` giving verify's diagnoses with the time convention stated
(docs/verify.md §Golden vectors)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refdiff import _io, cli
from refdiff.conformance import vectors
from refdiff.conformance.vectors import ARRAYS, MANIFEST_SCHEMA, grid, make_case
from refdiff.testing import Tolerance


# -- a tiny JSON Schema validator (the subset the manifest schema uses) ----------------------
def _validate(x, schema, path="$"):
    errs = []
    t = schema.get("type")
    types = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
    }
    if t is not None:
        ok = any(
            isinstance(x, types[k]) and not (k in ("integer", "number") and isinstance(x, bool))
            for k in ([t] if isinstance(t, str) else t)
        )
        if not ok:
            return [f"{path}: {type(x).__name__} is not {t}"]
    if "const" in schema and x != schema["const"]:
        errs.append(f"{path}: {x!r} != {schema['const']!r}")
    if "enum" in schema and x not in schema["enum"]:
        errs.append(f"{path}: {x!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(x, int | float) and x < schema["minimum"]:
        errs.append(f"{path}: {x} < {schema['minimum']}")
    if "pattern" in schema and isinstance(x, str):
        import re

        if not re.search(schema["pattern"], x):
            errs.append(f"{path}: {x!r} does not match {schema['pattern']}")
    if isinstance(x, dict):
        for k in schema.get("required", []):
            if k not in x:
                errs.append(f"{path}: missing {k!r}")
        props = schema.get("properties", {})
        for k, v in x.items():
            if k in props:
                errs += _validate(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected key {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += _validate(v, schema["additionalProperties"], f"{path}.{k}")
    if isinstance(x, list) and "items" in schema:
        for i, v in enumerate(x):
            errs += _validate(v, schema["items"], f"{path}[{i}]")
    return errs


@pytest.fixture(scope="module")
def inputs_only(tmp_path_factory):
    d = tmp_path_factory.mktemp("vec") / "port"
    vectors.write(d, grid_name="small", inputs_only=True)
    return d


def _fill(directory, fn):
    """A port filling every output of every case with ``fn(reference array)``."""
    manifest = json.loads((directory / "manifest.json").read_text())
    by_id = {c.id: c for c in grid("small")}
    for e in manifest["cases"]:
        path = directory / e["file"]
        arrays = _io.load_npz(path)
        ref = make_case(by_id[e["id"]], manifest["seed"])
        for name, meta in e["arrays"].items():
            if meta["role"] == "output":
                arrays[name] = fn(ref[name])
        _io.save_npz(path, **arrays)


def test_manifest_matches_its_schema(inputs_only, tmp_path):
    m = json.loads((inputs_only / "manifest.json").read_text())
    assert json.loads((inputs_only / "manifest.schema.json").read_text()) == MANIFEST_SCHEMA
    assert _validate(m, MANIFEST_SCHEMA) == []
    full = tmp_path / "full"
    vectors.write(full, grid_name="small")
    assert _validate(json.loads((full / "manifest.json").read_text()), MANIFEST_SCHEMA) == []
    bad = dict(m, surprise=1)
    bad["cases"] = [dict(m["cases"][0], sampler="plms")]
    errs = _validate(bad, MANIFEST_SCHEMA)
    assert any("surprise" in e for e in errs) and any("plms" in e for e in errs)


def test_inputs_only_lists_outputs_with_tolerances(inputs_only):
    m = json.loads((inputs_only / "manifest.json").read_text())
    assert m["inputs_only"] is True
    for e in m["cases"]:
        stored = _io.load_npz(inputs_only / e["file"])
        outs = {n: meta for n, meta in e["arrays"].items() if meta["role"] == "output"}
        assert outs and not set(outs) & set(stored)
        for n, meta in outs.items():
            assert meta["filled"] is False and meta["sha256"] is None
            if n not in ("alpha_bar", "beta", "timesteps"):
                t = meta["tolerance"]
                assert 0 < t["float64"] < t["float32"] < t["float16"], (n, t)


def test_unfilled_outputs_fail_and_a_filled_port_passes(inputs_only, tmp_path, capsys):
    import shutil

    assert cli.main(["vectors", "check", str(inputs_only)]) == 1
    out = capsys.readouterr().out
    assert "outputs not filled" in out and "0-based" in out
    port = tmp_path / "port"
    shutil.copytree(inputs_only, port)
    _fill(port, lambda a: a.astype(np.float32).astype(a.dtype))  # a float32 port
    assert cli.main(["vectors", "check", str(port), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "NOTE" not in out  # the outputs are the port's, not the reference's own bytes
    assert cli.main(["vectors", "check", str(port)]) == 1  # not at the float64 tolerance


def test_checking_the_reference_against_itself_is_said(tmp_path, capsys):
    d = tmp_path / "ref"
    vectors.write(d, grid_name="small")
    assert cli.main(["vectors", "check", str(d)]) == 0
    assert "compares refdiff with itself" in capsys.readouterr().out


def test_options_without_effect_are_marked(tmp_path):
    d = tmp_path / "v"
    m = vectors.write(d, grid_name="small")
    marks = {e["id"]: e.get("no_effect", {}) for e in m["cases"]}
    # DDPM adds no noise at t = 1: the t = 1 log-variance convention changes nothing
    assert all(
        "log_variance_clipping" in marks[e["id"]] for e in m["cases"] if e["sampler"] == "ddpm"
    )
    # an option that matters is not marked
    assert not any(
        "final_alpha_bar" in marks[e["id"]]
        for e in m["cases"]
        if e["sampler"] == "ddim" and e["config"].get("eta") == 0.0
    )


def test_check_gives_verify_diagnoses_with_the_time_convention(tmp_path, capsys):
    d = tmp_path / "v"
    vectors.write(d, grid_name="small")
    m = json.loads((d / "manifest.json").read_text())
    e = next(c for c in m["cases"] if c["sampler"] == "ddpm")
    path = d / e["file"]
    arrays = _io.load_npz(path)
    z, idx = arrays["step_noise"], arrays["step_index"]
    # plant σ² z for σ z in the steps that add noise (the step's own variance, recomputed)
    from refdiff.conformance.cases import Case
    from refdiff.conformance.vectors import _setting_options

    setting, opts = _setting_options(e["config"])
    resp = setting.respaced()
    out = arrays["ddpm_step"].copy()
    for k, i in enumerate(idx):
        t = int(np.flatnonzero(resp.timesteps == i + 1)[0])
        if t > 1:
            from refdiff.conformance.diagnoses import ddpm_noise_missing_sqrt

            inp = {
                "x_t": arrays["x_t"][k],
                "model_output": arrays["model_output"][k],
                "noise": z[k],
            }
            if "model_variance" in arrays:
                inp["model_variance"] = arrays["model_variance"][k]
            out[k] = ddpm_noise_missing_sqrt(Case("ddpm_step", setting, t, dict(opts), inp))
    arrays["ddpm_step"] = out
    _io.save_npz(path, **arrays)
    e["arrays"]["ddpm_step"]["sha256"] = vectors.array_sha256(out)
    _io.write_json(d / "manifest.json", m)
    res = {r.id: r for r in vectors.check(d, Tolerance("float64"))}
    bad = [c for c in res[e["id"]].checks if c.status == "FAIL"]
    assert bad and all("missing sqrt" in (c.diagnosis or "") for c in bad)
    assert all("refdiff t=" in c.message() for c in bad)


def test_sigma_trajectories_round_trip_and_a_bug_is_named(tmp_path):
    d = tmp_path / "s"
    m = vectors.write(d, grid_name="sigma")
    samplers = {e["config"]["sampler"] for e in m["cases"]}
    assert {"dpmpp_2m", "dpmpp_3m_sde", "unipc", "flow_euler", "heun", "dpm_2", "lms"} <= samplers
    res = vectors.check(d, Tolerance("float64"))
    assert all(r.passed for r in res), [r.problem for r in res if not r.passed]
    # a port whose ancestral Euler drops η: same model calls, no noise
    e = next(c for c in m["cases"] if c["config"]["sampler"] == "euler_ancestral")
    path = d / e["file"]
    arrays = _io.load_npz(path)
    from refdiff import solvers

    model = vectors._Replay(arrays["model_calls"], arrays["model_call_sigma"])
    _, traj = solvers.sample(
        model,
        arrays["sigmas"],
        sampler="euler_ancestral",
        x_T=arrays["x_T"],
        eta=0.0,
        return_trajectory=True,
    )
    arrays["trajectory"] = traj
    _io.save_npz(path, **arrays)
    e["arrays"]["trajectory"]["sha256"] = vectors.array_sha256(traj)
    _io.write_json(d / "manifest.json", m)
    r = {x.id: x for x in vectors.check(d, Tolerance("float64"))}[e["id"]]
    assert not r.passed and "η missing" in (r.checks[0].diagnosis or "")


def test_every_stored_name_is_documented():
    for c in grid("sigma")[:2] + grid("small")[:2]:
        assert set(make_case(c)) <= set(ARRAYS)
