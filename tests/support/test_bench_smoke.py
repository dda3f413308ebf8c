"""Smoke test of the benchmark harness (`refdiff bench --smoke`): every section runs at toy
sizes and the JSON it writes has the documented schema.  No timing is asserted — the numbers
of a smoke run mean nothing — only that each is a finite positive time where a time belongs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.run import main  # noqa: E402


def _pos(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "r.json"
    rc = main(["--smoke", "--no-peers", "--out", str(out)])
    assert rc == 0, "a benchmark section raised (see the captured output)"
    leftovers = [p.name for p in out.parent.iterdir() if p.name != "r.json"]
    assert leftovers == [], f"atomic write left temporary files: {leftovers}"
    return json.loads(out.read_text())


def test_top_level_schema(result):
    assert set(result) >= {"machine", "size", "provider", "sections", "errors", "targets", "wall_s"}
    assert result["size"] == "smoke" and result["provider"] == "cpu" and result["errors"] == {}
    m = result["machine"]
    assert isinstance(m["cpu"], str) and m["cpu"]
    assert isinstance(m["cores"], int) and m["cores"] >= 1
    assert _pos(m["copy_bandwidth_GBps"])
    want = {"steps", "ort", "scaling", "stats", "assertions", "loops", "sigma"}
    assert set(result["sections"]) == want
    for t in result["targets"]:
        assert set(t) >= {"section", "target", "value", "goal", "met"}
        assert isinstance(t["met"], bool) and _num(t["value"])
        assert t["section"] in result["sections"]


def test_steps_section(result):
    sec = result["sections"]["steps"]
    assert [r["shape"] for r in sec["rows"]] == ["1x2", "64x2"]
    assert any("skipped" in n for n in sec["notes"])  # --no-peers says so
    for row in sec["rows"]:
        assert set(row["us"]) == {
            "ref_ddpm",
            "ref_ddim",
            "spec_ddpm",
            "spec_ddim",
            "noise",
            "pass4",
            "pass3",
        }
        assert all(_pos(v) for v in row["us"].values())
        for k in (
            "floor_ddpm_us",
            "floor_ddim_us",
            "ref_ddpm_over_floor",
            "ref_ddim_over_floor",
            "spec_ddpm_over_floor",
            "spec_over_ref_ddpm",
            "spec_over_ref_ddim",
            "bw_floor_ddpm_us",
            "bw_floor_ddim_us",
        ):
            assert _pos(row[k]), k
        assert row["elements"] == math.prod(int(s) for s in row["shape"].split("x"))
        assert row["loop_steps"] == 2
        assert set(row["loop_us_per_step"]) == {"ref_ddpm_loop", "ref_ddim_loop"}
        assert "diffusers_over_ref_ddpm" not in row
    kinds = [t["target"] for t in sec["targets"]]
    assert len(kinds) == 2 and all("floor" in k for k in kinds)  # no peer: no speed-up targets


def test_ort_section(result):
    sec = result["sections"]["ort"]
    assert {(r["sampler"], r["batch"]) for r in sec["rows"]} == {("ddim", 1), ("ddpm", 1)}
    for row in sec["rows"]:
        assert row["provider"] == "cpu" and row["steps"] == 2
        for k in (
            "bare_us",
            "bare_bound_us",
            "loop_us_per_step",
            "fused_us_per_step",
            "graph_us_per_step",
            "loop_over_graph",
            "fused_over_graph",
            "graph_over_bare",
        ):
            assert _pos(row[k]), k
        assert _num(row["loop_overhead"]) and row["loop_overhead"] > -1.0
        assert "dstyle_us_per_step" not in row
    kinds = " ".join(t["target"] for t in sec["targets"])
    assert "whole-sampler graph" in kinds


def test_scaling_section(result):
    rows = result["sections"]["scaling"]["rows"]
    names = {r["sampler"] for r in rows}
    assert names == {"ref ddpm", "ref ddim", "ort ddim steps", "ort ddim graph"}
    for row in rows:
        assert _pos(row["ms"]) and _pos(row["us_per_step"])
        assert math.isclose(row["us_per_step"] * row["steps"], 1e3 * row["ms"], rel_tol=1e-9)
        if row["sampler"].startswith("ref"):
            assert _pos(row["peak_mib"])  # tracemalloc sees the state and the noise at least


def test_stats_section(result):
    sec = result["sections"]["stats"]
    assert sec["exit_code"] == 0 and sec["tests"] == 1 and sec["statistical_tests"] == 1
    assert sec["assertions"] == 1 and sec["alpha_total"] == pytest.approx(1e-6)
    assert _pos(sec["s_per_assertion"]) and sec["s_per_assertion"] <= sec["wall_s"]


def test_assertions_and_loops_sections(result):
    rows = result["sections"]["assertions"]["rows"]
    want = {"cdf", "two_sample", "mean", "covariance", "gaussian", "mvn", "mixture"}
    assert {r["check"] for r in rows} == want
    for r in rows:
        for k in ("ours_ms", "primitive_ms", "ours_over_primitive", "samples_mib"):
            assert _pos(r[k]), k
        assert r["ours_extra_mib"] >= 0 and r["primitive_extra_mib"] >= 0
    assert len(result["sections"]["assertions"]["targets"]) == len(want)
    (row,) = result["sections"]["loops"]["rows"]
    for s in ("ddpm", "ddim"):
        for k in ("loop_us_per_step", "step_us", "loop_over_step", "peak_states"):
            assert _pos(row[f"{s}_{k}"]), (s, k)
    assert _pos(row["coefficients_us"])


def test_sigma_section(result):
    sec = result["sections"]["sigma"]
    names = {"euler", "euler_ancestral", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde"}
    names |= {"dpmpp_3m_sde", "unipc", "flow_euler"}
    assert {r["sampler"] for r in sec["rows"]} == names
    for r in sec["rows"]:
        assert _pos(r["us"]["ref"]) and _pos(r["floor_us"]) and _pos(r["ref_over_floor"])
        assert "diffusers_over_ref" not in r  # --no-peers
    assert any("skipped" in n for n in sec["notes"])


def test_tables_render_from_json(result):
    text = report.render(result)
    md = report.render(result, markdown=True)
    for name in ("steps", "ort", "scaling", "stats", "targets"):
        assert name in text and f"## {name}" in md
    assert md.count("|---|") >= 5  # one Markdown table per section at least


def test_cli_dispatches_bench():
    from refdiff.cli import main as cli_main

    assert cli_main(["bench", "--help"]) == 0
