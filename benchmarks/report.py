"""Tables from the benchmark JSON: plain text for the terminal, Markdown for RESULTS.md.

``python -m benchmarks.report benchmarks/results.json [--markdown]`` re-prints the tables of
a saved run (no timing is redone).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

__all__ = ["section_rows", "section_table", "collect_targets", "targets_table", "render"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01 or v == 0:
            return f"{v:.2f}"
        return f"{v:.1e}"
    return str(v)


def _text(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[_fmt(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
        if j == 0:
            out.append("  ".join("-" * x for x in w))
    return "\n".join(out)


def _markdown(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _g(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


# -- one builder per section: (title, headers, rows) lists ----------------------------------------
def _steps(sec: dict) -> list[tuple[str, list[str], list[list]]]:
    h1 = [
        "shape",
        "ref DDPM µs",
        "noise µs",
        "pass µs",
        "floor µs",
        "ref/floor",
        "BW floor µs",
        "diffusers DDPM µs",
        "diffusers/ref",
        "spec step µs",
        "spec/floor",
        "diffusers/spec",
    ]
    r1 = []
    h2 = [
        "shape",
        "ref DDIM µs",
        "floor (pass) µs",
        "ref/floor",
        "diffusers DDIM µs",
        "diffusers/ref",
        "spec step µs",
        "diffusers/spec",
    ]
    r2 = []
    h3 = [
        "shape",
        "steps",
        "ref DDPM µs/step",
        "diffusers µs/step",
        "diffusers/ref",
        "ref DDIM µs/step",
        "diffusers µs/step",
        "diffusers/ref",
    ]
    r3 = []
    for row in sec.get("rows", []):
        us = row["us"]
        r1.append(
            [
                row["shape"],
                us["ref_ddpm"],
                us["noise"],
                us["pass4"],
                row["floor_ddpm_us"],
                row["ref_ddpm_over_floor"],
                row["bw_floor_ddpm_us"],
                us.get("diffusers_ddpm"),
                row.get("diffusers_over_ref_ddpm"),
                us.get("spec_ddpm"),
                row.get("spec_ddpm_over_floor"),
                row.get("diffusers_over_spec_ddpm"),
            ]
        )
        r2.append(
            [
                row["shape"],
                us["ref_ddim"],
                row["floor_ddim_us"],
                row["ref_ddim_over_floor"],
                us.get("diffusers_ddim"),
                row.get("diffusers_over_ref_ddim"),
                us.get("spec_ddim"),
                row.get("diffusers_over_spec_ddim"),
            ]
        )
        lp = row.get("loop_us_per_step")
        if lp:
            r3.append(
                [
                    row["shape"],
                    row["loop_steps"],
                    lp["ref_ddpm_loop"],
                    lp.get("diffusers_ddpm_loop"),
                    row.get("diffusers_over_ref_ddpm_loop"),
                    lp["ref_ddim_loop"],
                    lp.get("diffusers_ddim_loop"),
                    row.get("diffusers_over_ref_ddim_loop"),
                ]
            )
    out = [("DDPM step (noise drawn inside)", h1, r1), ("DDIM step (η = 0)", h2, r2)]
    if r3:
        out.append(("sampling loops (fixed ε̂ denoiser)", h3, r3))
    h4 = [
        "shape",
        "ref DDPM µs",
        "floor µs",
        "ref/floor",
        "ref DDIM µs",
        "ref/floor (default malloc)",
    ]
    r4 = []
    for row in sec.get("rows", []):
        nt = row.get("no_trim")
        if nt:
            us = nt["us"]
            r4.append(
                [
                    row["shape"],
                    us["ref_ddpm"],
                    us["noise"] + us["pass4"],
                    nt["ref_ddpm_over_floor"],
                    us["ref_ddim"],
                    row["ref_ddpm_over_floor"],
                ]
            )
    if r4:
        out.append(
            ("large steps with glibc's trimming off (a child process, GLIBC_TUNABLES)", h4, r4)
        )
    return out


def _ort(sec: dict) -> list[tuple[str, list[str], list[list]]]:
    h = [
        "sampler",
        "batch",
        "steps",
        "bare run µs",
        "loop µs/step",
        "loop overhead",
        "graph µs/step",
        "loop/graph",
        "diffusers-style µs/step",
        "dstyle/loop",
        "dstyle/graph",
    ]
    rows = []
    for row in sec.get("rows", []):
        rows.append(
            [
                row["sampler"],
                row["batch"],
                row["steps"],
                row.get("bare_us"),
                row.get("loop_us_per_step"),
                row.get("loop_overhead"),
                row.get("graph_us_per_step"),
                row.get("loop_over_graph"),
                row.get("dstyle_us_per_step"),
                row.get("dstyle_over_loop"),
                row.get("dstyle_over_graph"),
            ]
        )
    return [(f"onnxruntime ({sec.get('provider', '?')})", h, rows)]


def _scaling(sec: dict) -> list[tuple[str, list[str], list[list]]]:
    h = [
        "sampler",
        "batch",
        "steps",
        "ms total",
        "µs/step",
        "ns/elem/step",
        "peak MiB",
        "peak/state",
    ]
    rows = []
    for row in sec.get("rows", []):
        rows.append(
            [
                row["sampler"],
                row["batch"],
                row["steps"],
                row["ms"],
                row["us_per_step"],
                row.get("ns_per_elem_step"),
                row.get("peak_mib"),
                row.get("peak_over_state"),
            ]
        )
    return [("scaling (steps, batch, memory)", h, rows)]


def _stats(sec: dict) -> list[tuple[str, list[str], list[list]]]:
    h = ["scope", "tests", "with assertions", "assertions", "their s", "s/assertion", "Σα", "exit"]
    r = [
        [
            sec.get("scope"),
            sec.get("tests"),
            sec.get("statistical_tests"),
            sec.get("assertions"),
            sec.get("statistical_tests_s"),
            sec.get("s_per_assertion"),
            sec.get("alpha_total"),
            sec.get("exit_code"),
        ]
    ]
    out = [("statistical suite", h, r)]
    slow = sec.get("slowest_per_assertion") or []
    if slow:
        h2 = ["test", "s", "assertions", "s/assertion"]
        r2 = [[d["test"], d["s"], d["assertions"], d["s_per_assertion"]] for d in slow]
        out.append(("most expensive assertions", h2, r2))
    return out


def _assertions(sec: dict) -> list[tuple[str, list[str], list[list]]]:
    h = [
        "check",
        "n",
        "d",
        "ours ms",
        "primitive ms",
        "ours/primitive",
        "ours extra MiB",
        "primitive extra MiB",
        "samples MiB",
    ]
    rows = [
        [
            r["check"],
            r["n"],
            r["d"],
            r["ours_ms"],
            r["primitive_ms"],
            r["ours_over_primitive"],
            r["ours_extra_mib"],
            r["primitive_extra_mib"],
            r["samples_mib"],
        ]
        for r in sec.get("rows", [])
    ]
    return [("statistical checks against their NumPy/SciPy primitive", h, rows)]


def _loops(sec: dict) -> list[tuple[str, list[str], list[list]]]:
    h = [
        "sampler",
        "steps",
        "loop µs/step",
        "bare step µs",
        "loop/step",
        "tables µs (once per schedule)",
        "peak states",
        "at",
    ]
    rows = []
    for r in sec.get("rows", []):
        for s in ("ddpm", "ddim"):
            rows.append(
                [
                    f"{s.upper()} {r['shape']}",
                    r["steps"],
                    r[f"{s}_loop_us_per_step"],
                    r[f"{s}_step_us"],
                    r[f"{s}_loop_over_step"],
                    r["coefficients_us"],
                    r[f"{s}_peak_states"],
                    r["memory_shape"],
                ]
            )
    return [("sampling loops at batch 1 against their bare step", h, rows)]


def _sigma(sec: dict) -> list[tuple[str, list[str], list[list]]]:
    h = [
        "sampler",
        "shape",
        "ref µs",
        "floor µs",
        "ref/floor",
        "diffusers µs",
        "diffusers/ref",
    ]
    rows = [
        [
            r["sampler"],
            r["shape"],
            r["us"]["ref"],
            r["floor_us"],
            r["ref_over_floor"],
            r["us"].get("diffusers"),
            r.get("diffusers_over_ref"),
        ]
        for r in sec.get("rows", [])
    ]
    return [("σ-view sampler steps against diffusers' (same sampler, float64 CPU)", h, rows)]


BUILDERS = {
    "steps": _steps,
    "ort": _ort,
    "scaling": _scaling,
    "stats": _stats,
    "assertions": _assertions,
    "loops": _loops,
    "sigma": _sigma,
}


def section_rows(name: str, sec: dict):
    return BUILDERS[name](sec)


def section_table(name: str, sec: dict, *, markdown: bool = False) -> str:
    out = []
    fmt = _markdown if markdown else _text
    for title, h, rows in section_rows(name, sec):
        out.append(("### " if markdown else "-- ") + title)
        out.append(fmt(h, rows) if rows else "(no rows)")
    for n in sec.get("notes", []):
        out.append(f"note: {n}")
    return "\n".join(out)


def collect_targets(sections: dict) -> list[dict]:
    out = []
    for name, sec in sections.items():
        for t in sec.get("targets", []):
            out.append({"section": name, **t})
    return out


def targets_table(targets: list[dict], *, markdown: bool = False) -> str:
    h = ["target", "measured", "goal", "met"]
    rows = [[t["target"], t.get("value"), t["goal"], t.get("met")] for t in targets]
    return (_markdown if markdown else _text)(h, rows) if rows else "(no targets checked)"


def render(result: dict, *, markdown: bool = False) -> str:
    out = []
    for name, sec in result.get("sections", {}).items():
        out.append(("## " if markdown else "== ") + name)
        out.append(section_table(name, sec, markdown=markdown))
        out.append("")
    out.append(("## " if markdown else "== ") + "targets")
    out.append(targets_table(result.get("targets", []), markdown=markdown))
    return "\n".join(out)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "results.json"
    print(render(json.loads(path.read_text()), markdown="--markdown" in sys.argv))
