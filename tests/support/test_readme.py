"""Every README example runs as written: each ```python block and each line of each ```sh
block, in the order the README gives them, in a temporary folder (so nothing is written into
the checkout), in one fresh interpreter whose Python blocks share one namespace, as a reader
pasting them one after the other would.  Shell lines run with this interpreter's ``bin/`` on
PATH (the ``refdiff`` command).

Artefacts a line needs are made first (the MLP weights the demo would have written).  Lines
skipped, and why — the list is meant to stay this short:
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refdiff import stats
from refdiff.mlp import init_mlp, save_mlp

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: shell lines not run (matched by substring), with the reason
SKIP = {
    "make demo": "builds .venv-demo and runs the whole demo (minutes); tests/test_demo.py runs "
    "the same code (refdiff.export.demo.main) on small settings",
    "make test": "is the command that runs this test",
    "--provider cuda": "needs an NVIDIA GPU and the reader's own unet.onnx",
}
#: lines that are expected to exit non-zero, and with what
EXIT = {"refdiff verify diffusers:DDIMScheduler": 1}
#: lines that need an optional package (skipped without it, like the tests of that tier)
NEEDS = {"diffusers:": "diffusers", "refdiff export": "onnx", "refdiff sample": "onnxruntime"}

__doc__ += "\n".join(f"- ``{k}``: {v}" for k, v in SKIP.items())

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)

_DRIVER = r"""
import json, subprocess, sys
steps = json.load(open(sys.argv[1], encoding="utf-8"))
ns = {"__name__": "__readme__"}
for i, (kind, text, rc) in enumerate(steps):
    print(f"--- README step {i}: {kind}", flush=True)
    if kind == "file":
        name, body = text
        with open(name, "w", encoding="utf-8") as f:
            f.write(body)
    elif kind == "python":
        exec(compile(text, f"<README python block {i}>", "exec"), ns)
    else:
        print("$ " + text, flush=True)
        got = subprocess.run(text, shell=True).returncode
        if got != rc:
            sys.exit(f"README line exited {got}, expected {rc}: {text}")
from refdiff import stats
print("LEDGER " + json.dumps([e.__dict__ for e in stats.LEDGER]))
"""


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of ``text``, in order."""
    return [(m[1], m[2]) for m in _FENCE.finditer(text)]


def plan(text: str) -> tuple[list[tuple[str, object, int]], list[tuple[str, str]]]:
    """(steps to run, lines skipped with the reason) for the README ``text``."""
    steps: list[tuple[str, object, int]] = []
    skipped: list[tuple[str, str]] = []
    for lang, body in readme_blocks(text):
        if lang == "python":
            first = body.splitlines()[0].strip()
            m = re.fullmatch(r"#\s*(\w+\.py)", first)
            if m:  # a file the reader saves ("# my_sched.py"), then imports
                steps.append(("file", (m[1], body), 0))
            else:
                steps.append(("python", body, 0))
        elif lang in ("sh", "console", "bash"):
            for line in body.splitlines():
                cmd = line.split("  #")[0].strip()
                if not cmd or cmd.startswith("#"):
                    continue
                why = next((v for k, v in SKIP.items() if k in cmd), None)
                if why is None:
                    mod = next((v for k, v in NEEDS.items() if k in cmd), None)
                    if mod and _missing(mod):
                        why = f"needs {mod}, not installed"
                if why:
                    skipped.append((cmd, why))
                    continue
                rc = next((v for k, v in EXIT.items() if k in cmd), 0)
                steps.append(("sh", cmd, rc))
    return steps, skipped


def _missing(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is None


def test_readme_parses_into_the_expected_examples():
    steps, skipped = plan(README.read_text(encoding="utf-8"))
    kinds = [k for k, *_ in steps]
    assert kinds.count("python") >= 3 and kinds.count("file") == 1 and kinds.count("sh") >= 5
    # the skip list stays tiny and every entry in it is still used
    assert {why for _, why in skipped} <= set(SKIP.values()) | {
        f"needs {m}, not installed" for m in NEEDS.values()
    }
    for key in SKIP:
        assert any(key in cmd for cmd, _ in skipped), f"SKIP entry {key!r} matches no line"


def test_every_readme_example_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    steps, skipped = plan(README.read_text(encoding="utf-8"))
    # the artefact `refdiff export --mlp refdiff-demo/models/mlp.npz` needs: what the demo
    # writes there (an MLP saved by refdiff.mlp.save_mlp), untrained here
    save_mlp(tmp_path / "refdiff-demo" / "models" / "mlp.npz", init_mlp(np.random.default_rng(0)))
    (tmp_path / "steps.json").write_text(json.dumps(steps), encoding="utf-8")
    (tmp_path / "driver.py").write_text(_DRIVER, encoding="utf-8")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ""  # the installed package, as a reader has it
    r = subprocess.run(
        [sys.executable, "driver.py", "steps.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    ledger = json.loads(out.split("LEDGER ", 1)[1].splitlines()[0])
    for e in ledger:  # the README's statistical assertions count in this session's budget
        stats.record(
            f"README: {e['name']}", e["alpha"], e["n"], e["discrepancy"], kind=e["kind"],
            measure=e["measure"], passed=e["passed"],
        )  # fmt: skip
    assert ledger, "the README's statistical example made no assertion"
    for cmd, _ in skipped:
        print(f"skipped README line: {cmd}")
